//! Decoding untrusted images within limits, shared by `image.resize` and the `pdf.report`
//! logo. The header's dimensions are checked before a single pixel is allocated, and the
//! decoder runs under `image::Limits`, so a decompression bomb or a header claiming
//! 100000 x 100000 fails permanently instead of exhausting memory. The image's EXIF
//! orientation is applied, so a photo stored sideways comes out upright. [`on_white`] lays a
//! transparent image on white for an output without alpha. Call these from
//! `spawn_blocking`: decoding is CPU work.

use std::io::Cursor;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use hopper_workers::JobError;

/// Decodes `bytes` (any enabled format, sniffed from the content) if the image has at most
/// `max_pixels` pixels, turned as its EXIF orientation says. Every failure is permanent: the
/// same bytes fail the same way.
pub(crate) fn decode_limited(
    bytes: &[u8],
    max_pixels: u64,
    what: &str,
) -> Result<DynamicImage, JobError> {
    let reader = |limits: Limits| -> Result<_, JobError> {
        let mut r = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| JobError::permanent(format!("{what}: {e}")))?;
        if r.format().is_none() {
            return Err(JobError::permanent(format!(
                "{what}: not an image in a supported format (jpeg, png, webp)"
            )));
        }
        r.limits(limits);
        Ok(r)
    };
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    // Room for the decoded image at 8 bytes a pixel (16-bit RGBA) plus the decoder's own
    // buffers; the header check below is what keeps oversized images out.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));

    let (w, h) = reader(limits.clone())?
        .into_dimensions()
        .map_err(|e| JobError::permanent(format!("{what}: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(JobError::permanent(format!(
            "{what}: {w}x{h} is {pixels} pixels, over the limit of {max_pixels}"
        )));
    }
    let cannot =
        |e: ::image::ImageError| JobError::permanent(format!("{what}: cannot decode: {e}"));
    let mut decoder = reader(limits)?.into_decoder().map_err(cannot)?;
    // Photos are often stored sideways with an EXIF orientation saying how to show them.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// `img` as RGB for an output without alpha (JPEG): a transparent pixel is laid on white, as
/// a viewer shows it, rather than losing its alpha (most editors store transparent pixels as
/// transparent black, which would come out black).
#[cfg(feature = "image")]
pub(crate) fn on_white(img: DynamicImage) -> ::image::RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    ::image::RgbImage::from_fn(w, h, |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u32::from(a);
        // c * a + 255 * (1 - a), rounded, in 0..=255.
        let mix = |c: u8| {
            u8::try_from((u32::from(c) * a + 255 * (255 - a) + 127) / 255).unwrap_or(u8::MAX)
        };
        ::image::Rgb([mix(r), mix(g), mix(b)])
    })
}
