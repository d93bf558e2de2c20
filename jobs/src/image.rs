//! `image.resize`: one source image, several resized outputs. This module owns the payload,
//! the geometry of each fit, and the output names; decoding within limits is
//! `crate::decode`'s, fetching a URL is `crate::http`'s. Resampling uses
//! `fast_image_resize` (SIMD convolution, Lanczos3); decoding, resizing and encoding run in
//! `spawn_blocking`.
//!
//! Payload:
//!
//! ```json
//! {"source": "uploads/cat.jpg" | "https://example.com/cat.jpg" (default: a chain input's `path`),
//!  "sizes": [{"width": 1280}, {"width": 320, "height": 320, "fit": "cover"}],
//!  "format": "jpeg" | "png" | "webp", "quality": 85, "output_dir": "resized"}
//! ```
//!
//! Fits: `contain` (default) scales to fit inside width x height keeping the aspect ratio
//! (with no height, to the width); `cover` fills width x height exactly, cropping the centre;
//! `exact` stretches to width x height. `quality` applies to JPEG (WebP output is lossless).
//! PNG and WebP keep a source's transparency; JPEG, which has none, lays it on white.
//! Outputs are written to `<output_dir>/<job id>/<source stem>_<w>x<h>.<ext>` under the
//! files directory: no other job writes there (ten jobs resizing the same source to the same
//! sizes keep ten sets of files), and a retry overwrites its own files.
//!
//! `source` is an `http://` or `https://` URL (fetched as "Outgoing requests" in the README
//! says: public addresses only unless `[http] allow_hosts` lists them, redirects checked hop
//! by hop) or a relative path under the files directory; anything else that starts like a
//! URL (`file:`, `ftp:`, `gopher:`) is refused.
//!
//! Outputs are held to `[files] image_max_pixels` like sources: a `width` x `height` box over
//! it is refused by `check`; a width-only size whose height (from the source's aspect) takes
//! it over fails the job before its pixels are allocated.
//!
//! Errors: an undecodable source, a truncated one (a JPEG ending before its end-of-image
//! marker, whose decoder would fill the rest with grey; a PNG cut short), one over
//! `image_max_pixels` or `max_download_bytes` (a URL's body or a file's size), an
//! output over `image_max_pixels`, a missing file or an HTTP 4xx are permanent; network
//! errors, timeouts, 429 and 5xx retryable.
//!
//! Result: `{"outputs": [{"path", "width", "height", "bytes"}]}` with the real dimensions.
//!
//! [`Resize`] is a [`Kind`]: its payload is [`ResizeArgs`], the geometry limits and paths are
//! its `check`.

use std::io::Cursor;

use ::image::codecs::jpeg::JpegEncoder;
use ::image::codecs::png::PngEncoder;
use ::image::codecs::webp::WebPEncoder;
use ::image::{DynamicImage, ExtendedColorType, ImageEncoder};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use hopper_workers::FieldError;
use hopper_workers::{JobContext, JobError, JobResult, Kind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::JobsConfig;
use crate::decode::{decode_limited, on_white};
use crate::files::{FilesDir, check_relative, io_error, read_capped, safe_name};
use crate::http::{self, HttpClient, parse_url};

/// At most this many outputs per job.
pub const MAX_SIZES: usize = 32;
/// No output side may exceed this.
pub const MAX_SIDE: u32 = 16_384;

/// The payload of `image.resize` (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeArgs {
    /// Defaults to a chain input's `path`; read it through `source()`.
    #[serde(default)]
    source: String,
    sizes: Vec<Size>,
    #[serde(default)]
    format: Format,
    #[serde(default = "default_quality")]
    quality: u8,
    #[serde(default = "default_output_dir")]
    output_dir: String,
    /// A chain predecessor's result: its file is the default source.
    #[serde(default)]
    input: Option<PrevFile>,
}

/// The part of a chain predecessor's result `image.resize` reads: the file at `path` (e.g.
/// `pdf.report`'s, or any kind's single output file).
#[derive(Debug, Deserialize)]
struct PrevFile {
    path: Option<String>,
}

impl ResizeArgs {
    /// The source: the payload's, else the chain input's `path`; `""` when neither is given.
    fn source(&self) -> &str {
        match (&self.source[..], &self.input) {
            ("", Some(PrevFile { path: Some(path) })) => path.as_str(),
            (source, _) => source,
        }
    }
}

fn default_quality() -> u8 {
    85
}

fn default_output_dir() -> String {
    "resized".to_owned()
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Size {
    width: u32,
    height: Option<u32>,
    #[serde(default)]
    fit: Fit,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Fit {
    #[default]
    Contain,
    Cover,
    Exact,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Jpeg,
    Png,
    Webp,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
        }
    }
}

/// `image.resize`.
#[derive(Debug)]
pub struct Resize {
    files: FilesDir,
    http: HttpClient,
    max_download_bytes: u64,
    max_pixels: u64,
}

impl Resize {
    /// The handler, with the shared HTTP client.
    pub fn new(config: &JobsConfig, http: HttpClient) -> Self {
        Self {
            files: FilesDir::new(&config.files.dir),
            http,
            max_download_bytes: config.files.max_download_bytes,
            max_pixels: config.files.image_max_pixels,
        }
    }
}

/// True when `s` starts like a URL (`scheme:`), which is then never a path, whatever the
/// scheme: `file:`, `gopher:` and `ftp:` sources are refused, not read as odd file names.
fn is_url(s: &str) -> bool {
    let scheme = s.split_once(':').map_or("", |(scheme, _)| scheme);
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The file-name stem of the outputs: the source's, reduced to a safe alphabet.
fn stem(source: &str) -> String {
    let last = source
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let base = last.rsplit_once('.').map_or(last, |(s, _)| s);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        "image".to_owned()
    } else {
        clean
    }
}

/// A job id as one path component: ids are UUIDs, but a job is data, so anything else is
/// reduced to the same safe alphabet rather than trusted.
fn path_safe(id: &str) -> String {
    let clean = safe_name(id);
    if clean.is_empty() {
        "job".to_owned()
    } else {
        clean
    }
}

/// Output dimensions, and whether the source is cropped to the output's aspect first.
fn geometry(src_w: u32, src_h: u32, size: Size) -> (u32, u32, bool) {
    let scale_to = |scale: f64, side: u32| ((f64::from(side) * scale).round() as u32).max(1);
    match (size.fit, size.height) {
        (Fit::Exact, Some(h)) => (size.width, h, false),
        (Fit::Cover, Some(h)) => (size.width, h, true),
        (_, None) => {
            let scale = f64::from(size.width) / f64::from(src_w);
            (size.width, scale_to(scale, src_h).min(MAX_SIDE), false)
        }
        (Fit::Contain, Some(h)) => {
            let scale =
                (f64::from(size.width) / f64::from(src_w)).min(f64::from(h) / f64::from(src_h));
            (scale_to(scale, src_w), scale_to(scale, src_h), false)
        }
    }
}

/// One encoded output.
struct Output {
    width: u32,
    height: u32,
    bytes: Vec<u8>,
}

/// The CPU part: resize the decoded image to each size and encode it.
struct Work {
    src: Image<'static>,
    src_w: u32,
    src_h: u32,
    color: ExtendedColorType,
    resizer: Resizer,
}

impl Work {
    fn new(img: DynamicImage, format: Format) -> Result<Self, JobError> {
        // JPEG has no alpha (a transparent source is laid on white); keep it for PNG and WebP
        // only when the source has it.
        let keep_alpha = format != Format::Jpeg && img.color().has_alpha();
        let (w, h) = (img.width(), img.height());
        let (buf, pixel, color) = if keep_alpha {
            (
                img.into_rgba8().into_raw(),
                PixelType::U8x4,
                ExtendedColorType::Rgba8,
            )
        } else {
            (
                on_white(img).into_raw(),
                PixelType::U8x3,
                ExtendedColorType::Rgb8,
            )
        };
        let src = Image::from_vec_u8(w, h, buf, pixel)
            .map_err(|e| JobError::permanent(format!("image buffer: {e}")))?;
        Ok(Self {
            src,
            src_w: w,
            src_h: h,
            color,
            resizer: Resizer::new(),
        })
    }

    fn resize(
        &mut self,
        size: Size,
        format: Format,
        quality: u8,
        max_pixels: u64,
    ) -> Result<Output, JobError> {
        let (width, height, crop) = geometry(self.src_w, self.src_h, size);
        // `check` holds a box to the limit; a width-only size's height follows from the
        // source, known only now. Either way, refused before a pixel is allocated.
        let pixels = u64::from(width) * u64::from(height);
        if pixels > max_pixels {
            return Err(JobError::permanent(format!(
                "output {width}x{height} is {pixels} pixels, over [files] image_max_pixels \
                 ({max_pixels})"
            )));
        }
        let mut dst = Image::new(width, height, self.src.pixel_type());
        let mut options =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        if crop {
            options = options.fit_into_destination(Some((0.5, 0.5)));
        }
        self.resizer
            .resize(&self.src, &mut dst, &options)
            .map_err(|e| JobError::permanent(format!("resize to {width}x{height}: {e}")))?;
        let mut bytes = Vec::new();
        let pixels = dst.buffer();
        let encoded = match format {
            Format::Jpeg => JpegEncoder::new_with_quality(Cursor::new(&mut bytes), quality)
                .write_image(pixels, width, height, self.color),
            Format::Png => PngEncoder::new(Cursor::new(&mut bytes))
                .write_image(pixels, width, height, self.color),
            Format::Webp => WebPEncoder::new_lossless(Cursor::new(&mut bytes))
                .write_image(pixels, width, height, self.color),
        };
        encoded.map_err(|e| JobError::permanent(format!("encode {width}x{height}: {e}")))?;
        Ok(Output {
            width,
            height,
            bytes,
        })
    }
}

impl Kind for Resize {
    const NAME: &'static str = "image.resize";
    type Args = ResizeArgs;

    async fn run(&self, cx: JobContext, args: ResizeArgs) -> JobResult {
        let source = args.source().to_owned();
        let bytes = if is_url(&source) {
            let url = parse_url(&source).ok_or_else(|| {
                JobError::permanent(format!("source {source:?} is not an http(s) URL"))
            })?;
            tokio::select! {
                () = cx.cancelled() => return Err(JobError::retryable("cancelled while downloading")),
                body = http::download(&self.http, url, self.max_download_bytes) => body?,
            }
        } else {
            let path = self.files.existing(&source)?;
            let what = format!("source {source:?}");
            let max = self.max_download_bytes;
            tokio::task::spawn_blocking(move || {
                read_capped(&path, &what, max, || {
                    JobError::permanent(format!("{what}: over the {max}-byte download limit"))
                })
            })
            .await
            .map_err(|e| JobError::retryable(format!("source read task failed: {e}")))??
        };
        cx.progress(5, Some("source read".to_owned()));

        let files = self.files.clone();
        let max_pixels = self.max_pixels;
        let stem = stem(&source);
        let job_dir = path_safe(cx.job().id.as_str());
        let cx2 = cx.clone();
        let outputs = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, JobError> {
            let img = decode_limited(&bytes, max_pixels, "source")?;
            drop(bytes);
            let mut work = Work::new(img, args.format)?;
            cx2.progress(20, Some("decoded".to_owned()));
            let n = args.sizes.len();
            let mut outputs = Vec::with_capacity(n);
            for (i, size) in args.sizes.iter().enumerate() {
                if cx2.is_cancelled() {
                    return Err(JobError::retryable("cancelled while resizing"));
                }
                let out = work.resize(*size, args.format, args.quality, max_pixels)?;
                let rel = format!(
                    "{}/{job_dir}/{stem}_{}x{}.{}",
                    args.output_dir.trim_end_matches('/'),
                    out.width,
                    out.height,
                    args.format.extension()
                );
                let path = files.output(&rel)?;
                std::fs::write(&path, &out.bytes)
                    .map_err(|e| io_error(&format!("output {rel:?}"), &e))?;
                outputs.push(json!({
                    "path": files.relative(&path),
                    "width": out.width,
                    "height": out.height,
                    "bytes": out.bytes.len(),
                }));
                let pct = 20 + 80 * (i + 1) / n;
                cx2.progress(
                    u8::try_from(pct).unwrap_or(100),
                    Some(format!("{}/{n} outputs", i + 1)),
                );
            }
            Ok(outputs)
        })
        .await
        .map_err(|e| JobError::retryable(format!("resize task failed: {e}")))??;
        Ok(json!({ "outputs": outputs }))
    }

    /// The rules serde cannot express: a source, sizes within limits, paths under the files
    /// directory.
    fn check(&self, args: &ResizeArgs) -> Result<(), FieldError> {
        let source = args.source();
        if source.is_empty() {
            return Err(FieldError::new(
                "payload.source",
                "give a path under the files directory or an http(s) URL",
            ));
        }
        if !is_url(source) {
            check_relative(source).map_err(|m| FieldError::new("payload.source", m))?;
        } else if parse_url(source).is_none() {
            return Err(FieldError::new(
                "payload.source",
                "must be an http:// or https:// URL with a host (and no credentials), or a \
                 path under the files directory",
            ));
        }
        if args.sizes.is_empty() || args.sizes.len() > MAX_SIZES {
            return Err(FieldError::new(
                "payload.sizes",
                format!("needs 1 to {MAX_SIZES} sizes"),
            ));
        }
        for (i, s) in args.sizes.iter().enumerate() {
            if s.width == 0 || s.width > MAX_SIDE {
                return Err(FieldError::new(
                    format!("payload.sizes[{i}].width"),
                    format!("must be between 1 and {MAX_SIDE}"),
                ));
            }
            match s.height {
                Some(h) if h == 0 || h > MAX_SIDE => {
                    return Err(FieldError::new(
                        format!("payload.sizes[{i}].height"),
                        format!("must be between 1 and {MAX_SIDE}"),
                    ));
                }
                None if s.fit != Fit::Contain => {
                    return Err(FieldError::new(
                        format!("payload.sizes[{i}].height"),
                        "is required with fit \"cover\" or \"exact\"",
                    ));
                }
                Some(h) if u64::from(s.width) * u64::from(h) > self.max_pixels => {
                    return Err(FieldError::new(
                        format!("payload.sizes[{i}]"),
                        format!(
                            "{}x{h} is over [files] image_max_pixels ({} pixels)",
                            s.width, self.max_pixels
                        ),
                    ));
                }
                _ => {}
            }
        }
        if !(1..=100).contains(&args.quality) {
            return Err(FieldError::new(
                "payload.quality",
                "must be between 1 and 100",
            ));
        }
        check_relative(&args.output_dir).map_err(|m| FieldError::new("payload.output_dir", m))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u32, height: Option<u32>, fit: Fit) -> Size {
        Size { width, height, fit }
    }

    #[test]
    fn geometry_of_each_fit() {
        assert_eq!(
            geometry(4000, 3000, size(800, None, Fit::Contain)),
            (800, 600, false)
        );
        assert_eq!(
            geometry(4000, 3000, size(800, Some(800), Fit::Contain)),
            (800, 600, false)
        );
        assert_eq!(
            geometry(4000, 3000, size(300, Some(300), Fit::Cover)),
            (300, 300, true)
        );
        assert_eq!(
            geometry(4000, 3000, size(100, Some(50), Fit::Exact)),
            (100, 50, false)
        );
        assert_eq!(
            geometry(10, 1000, size(1, None, Fit::Contain)),
            (1, 100, false)
        );
    }

    #[test]
    fn stems() {
        assert_eq!(stem("uploads/cat photo.jpg"), "cat_photo");
        assert_eq!(stem("https://x.test/a/b.png?x=1"), "b");
        assert_eq!(stem("https://x.test/"), "image");
    }
}
