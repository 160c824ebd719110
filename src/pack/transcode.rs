//! Turning an input file into the payload to store: kept as-is after a cheap validity check,
//! or decoded, resized/centre-cropped and re-encoded.

use image::{codecs::jpeg::JpegEncoder, codecs::png::PngEncoder, imageops::FilterType, ImageEncoder, ImageFormat};
use std::io::Cursor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Store the original bytes.
    Keep,
    Jpeg,
    Png,
}

#[derive(Clone, Copy, Debug)]
pub struct Transcode {
    pub encoding: Encoding,
    pub size: Option<u32>,
    pub quality: u8,
}

/// The payload for `bytes`, or why the input must be skipped.
pub fn prepare(bytes: Vec<u8>, t: &Transcode) -> Result<Vec<u8>, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let format = image::guess_format(&bytes).map_err(|_| "not an image (unknown signature)".to_string())?;
    check_header(&bytes, format)?;
    if t.encoding == Encoding::Keep && t.size.is_none() {
        check_complete(&bytes, format)?;
        return Ok(bytes);
    }
    reencode(&bytes, format, t)
}

/// Format and dimensions from the header alone.
fn check_header(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    let reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    match reader.into_dimensions() {
        Ok((w, h)) if w > 0 && h > 0 => Ok(()),
        Ok((w, h)) => Err(format!("{format:?} with empty dimensions {w}x{h}")),
        Err(e) => Err(format!("bad {format:?} header: {e}")),
    }
}

/// Catches truncation without a full decode: a JPEG must have an end-of-image marker after
/// its first scan, a PNG an IEND chunk.
fn check_complete(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    let complete = match format {
        ImageFormat::Jpeg => jpeg_complete(bytes),
        ImageFormat::Png => contains(&bytes[8.min(bytes.len())..], b"IEND"),
        _ => true,
    };
    if complete { Ok(()) } else { Err(format!("truncated {format:?} (no end marker)")) }
}

/// Walks the marker segments (so an EXIF thumbnail's EOI does not count) to the first SOS,
/// then looks for EOI in the entropy-coded data, where byte stuffing keeps FF D9 from
/// appearing by chance.
fn jpeg_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if marker == 0xDA {
            return contains(b.get(i + 2 + len..).unwrap_or(&[]), &[0xFF, 0xD9]);
        }
        if marker == 0xD9 {
            return false;
        }
        i += 2 + len;
    }
    false
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn reencode(bytes: &[u8], format: ImageFormat, t: &Transcode) -> Result<Vec<u8>, String> {
    let mut img = image::load_from_memory_with_format(bytes, format).map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    if let Some(s) = t.size {
        img = img.resize_to_fill(s, s, FilterType::Triangle);
    }
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let mut out = Vec::with_capacity(bytes.len());
    let result = match t.encoding {
        Encoding::Png => PngEncoder::new(&mut out).write_image(&rgb, w, h, image::ExtendedColorType::Rgb8),
        Encoding::Jpeg | Encoding::Keep => JpegEncoder::new_with_quality(&mut out, t.quality).write_image(&rgb, w, h, image::ExtendedColorType::Rgb8),
    };
    result.map_err(|e| format!("cannot encode: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90).write_image(&img, w, h, image::ExtendedColorType::Rgb8).unwrap();
        out
    }

    const KEEP: Transcode = Transcode { encoding: Encoding::Keep, size: None, quality: 95 };

    #[test]
    fn keep_returns_the_same_bytes_and_rejects_bad_inputs() {
        let good = jpeg(40, 30);
        assert_eq!(prepare(good.clone(), &KEEP).unwrap(), good);
        assert!(prepare(Vec::new(), &KEEP).unwrap_err().contains("empty"));
        assert!(prepare(b"hello, not an image".to_vec(), &KEEP).unwrap_err().contains("not an image"));
        let truncated = good[..good.len() / 2].to_vec();
        assert!(prepare(truncated, &KEEP).is_err());
        assert!(prepare(good[..4].to_vec(), &KEEP).is_err());
    }

    #[test]
    fn resize_makes_a_square_jpeg() {
        let t = Transcode { encoding: Encoding::Jpeg, size: Some(16), quality: 90 };
        let out = prepare(jpeg(40, 30), &t).unwrap();
        let img = image::load_from_memory(&out).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
        let png = prepare(jpeg(40, 30), &Transcode { encoding: Encoding::Png, size: Some(8), quality: 90 }).unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
    }
}
