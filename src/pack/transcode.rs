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
    if t.encoding == Encoding::Keep && t.size.is_none() {
        match format {
            ImageFormat::Jpeg => check_jpeg(&bytes)?,
            _ => {
                check_header(&bytes, format)?;
                check_complete(&bytes, format)?;
            }
        }
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

/// Catches a truncated PNG without a full decode: it must end with an IEND chunk.
fn check_complete(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    let complete = match format {
        ImageFormat::Png => rfind(&bytes[8.min(bytes.len())..], b"IEND"),
        _ => true,
    };
    if complete { Ok(()) } else { Err(format!("truncated {format:?} (no end marker)")) }
}

/// A JPEG's frame header and completeness from its marker segments alone (no Huffman
/// tables are built): walking segment lengths skips an EXIF thumbnail's own markers; a
/// frame header (SOFn) must give non-zero dimensions before the first scan, and an
/// end-of-image marker must follow the scan, where byte stuffing keeps FF D9 from
/// appearing by chance.
fn check_jpeg(b: &[u8]) -> Result<(), String> {
    let bad = |why: &str| Err(format!("bad JPEG: {why}"));
    if !b.starts_with(&[0xFF, 0xD8]) {
        return bad("no start-of-image marker");
    }
    let (mut i, mut frame) = (2, false);
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return bad("corrupt marker segment");
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
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let dims = b.get(i + 5..i + 9).map(|d| (u16::from_be_bytes([d[0], d[1]]), u16::from_be_bytes([d[2], d[3]])));
            match dims {
                Some((h, w)) if h > 0 && w > 0 => frame = true,
                _ => return bad("empty or cut frame header"),
            }
        }
        if marker == 0xDA {
            if !frame {
                return bad("scan before any frame header");
            }
            return if rfind(b.get(i + 2 + len..).unwrap_or(&[]), &[0xFF, 0xD9]) { Ok(()) } else { Err("truncated Jpeg (no end-of-image marker)".into()) };
        }
        if marker == 0xD9 {
            return bad("end of image before any scan");
        }
        i += 2 + len;
    }
    bad("cut before the first scan")
}

/// Searches from the end, where end markers are.
fn rfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).rev().any(|w| w == needle)
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
        for cut in [4, 20, 200, good.len() / 2, good.len() - 2] {
            assert!(prepare(good[..cut].to_vec(), &KEEP).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0u8; 5000]);
        assert!(prepare(trailing, &KEEP).is_ok(), "bytes after the end marker are allowed");
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
