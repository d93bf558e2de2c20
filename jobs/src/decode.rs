//! Decoding untrusted images within limits, shared by `image.resize` and the `pdf.report`
//! logo. The header's dimensions are checked before a single pixel is allocated, and the
//! decoder runs under `image::Limits`, so a decompression bomb or a header claiming
//! 100000 x 100000 fails permanently instead of exhausting memory. The image's EXIF
//! orientation is applied, so a photo stored sideways comes out upright. [`on_white`] lays a
//! transparent image on white for an output without alpha. A JPEG that ends before its
//! end-of-image marker (an upload cut short) is refused: its decoder fills the missing part
//! with grey and reports success. Call these from `spawn_blocking`: decoding is CPU work.

use std::io::Cursor;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use hopper_workers::JobError;

/// Decodes `bytes` (any enabled format, sniffed from the content) if the image has at most
/// `max_pixels` pixels, turned as its EXIF orientation says. Every failure is permanent: the
/// same bytes fail the same way. A truncated file is a failure, not a partly grey image.
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

    let header = reader(limits.clone())?;
    // The JPEG decoder is lenient (as browsers are): data missing at the end comes out grey
    // and the decode succeeds. An incomplete upload must fail instead of yielding outputs
    // that look fine as thumbnails and are damaged.
    if header.format() == Some(ImageFormat::Jpeg) && jpeg_ends_early(bytes) {
        return Err(JobError::permanent(format!(
            "{what}: truncated or corrupt JPEG: the data ends before its end-of-image marker \
             (an incomplete upload or a damaged file)"
        )));
    }
    let (w, h) = header
        .into_dimensions()
        .map_err(|e| JobError::permanent(format!("{what}: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(JobError::permanent(format!(
            "{what}: {w}x{h} is {pixels} pixels, over the limit of {max_pixels}"
        )));
    }
    let cannot = |e: ::image::ImageError| match &e {
        // A PNG (or WebP) cut short fails this way: say so rather than "end of file".
        ::image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            JobError::permanent(format!(
                "{what}: truncated or corrupt image: {e} (an incomplete upload or a damaged file)"
            ))
        }
        _ => JobError::permanent(format!("{what}: cannot decode: {e}")),
    };
    let mut decoder = reader(limits)?.into_decoder().map_err(cannot)?;
    // Photos are often stored sideways with an EXIF orientation saying how to show them.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// True when the JPEG `bytes` ends before its end-of-image marker (EOI), walking its
/// segments so that an EOI inside one (an EXIF thumbnail's) does not count. Markers are
/// 0xFF and a code: SOI, EOI, RSTn and TEM stand alone, every other one starts a segment
/// whose 2-byte length counts itself. Entropy-coded data (after SOS) holds no marker but
/// RSTn, 0xFF being followed by a stuffed 0x00, so the scan for the next 0xFF finds where
/// it ends. Bytes after EOI (some cameras append data) are fine.
fn jpeg_ends_early(bytes: &[u8]) -> bool {
    let mut i = 2; // past SOI, which the format sniffing found
    loop {
        // The next 0xFF, past fill bytes (0xFF 0xFF ...).
        let Some(at) = bytes
            .get(i..)
            .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
        else {
            return true;
        };
        i += at;
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = bytes.get(i) else {
            return true;
        };
        i += 1;
        match code {
            0xD9 => return false,
            // A stuffed 0xFF in entropy-coded data, a restart marker, TEM or SOI: no length.
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(&[hi, lo]) = bytes.get(i..i + 2) else {
                    return true;
                };
                i += usize::from(u16::from_be_bytes([hi, lo]));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal JPEG's segments: SOI, an APP1 holding an EOI (an EXIF thumbnail's), SOS,
    /// entropy data with a stuffed 0xFF and a restart marker, EOI.
    #[test]
    fn a_jpeg_ends_early_only_without_its_own_eoi() {
        let whole: &[u8] = &[
            0xFF, 0xD8, // SOI
            0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xAB, 0xCD, // APP1, an EOI inside
            0xFF, 0xDA, 0x00, 0x04, 0x01, 0x02, // SOS
            0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, // entropy data, 0xFF stuffed, RST0
            0xFF, 0xD9, // EOI
        ];
        assert!(!jpeg_ends_early(whole));
        let mut trailing = whole.to_vec();
        trailing.extend_from_slice(b"appended by a camera");
        assert!(!jpeg_ends_early(&trailing));
        for cut in 2..whole.len() {
            assert!(jpeg_ends_early(&whole[..cut]), "cut at {cut}");
        }
    }
}
