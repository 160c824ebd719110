//! The one rule for a damaged image (shards/FORMAT.md, "Damaged images"), applied by
//! `pack` in every mode, by `verify` and by the training loader before any decoder runs.
//!
//! An image is complete when its signature is a format this build decodes (JPEG, PNG,
//! WebP, BMP), its header gives non-zero dimensions of at most [`MAX_SIDE`], and its data
//! reaches the format's end: a JPEG's end-of-image marker after its last scan, a PNG's
//! IEND chunk, the length a WebP's RIFF header or a BMP's file header states. Bytes after
//! that end are ignored (cameras and editors append them). Decoders that meet a truncated
//! file fill the missing rows with grey rather than fail, so this check, not the decoder,
//! is what makes a truncated image damaged everywhere.

use image::ImageFormat;
use std::io::Cursor;

/// The largest width or height decoded; larger headers are refused rather than allocated.
pub const MAX_SIDE: usize = 16384;

/// The format of a complete image, or why `bytes` are not one.
pub fn check_complete(bytes: &[u8]) -> Result<ImageFormat, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let format = image::guess_format(bytes).map_err(|_| "not an image (unknown signature)".to_string())?;
    match format {
        ImageFormat::Jpeg => check_jpeg(bytes)?,
        ImageFormat::Png => check_png(bytes)?,
        ImageFormat::WebP => {
            check_dimensions(bytes, format)?;
            let riff = u32::from_le_bytes(bytes[4..8].try_into().map_err(|_| "truncated WebP header")?) as usize;
            if bytes.len() < riff.saturating_add(8) {
                return Err(format!("truncated WebP ({} of {} bytes)", bytes.len(), riff + 8));
            }
        }
        ImageFormat::Bmp => {
            check_dimensions(bytes, format)?;
            let field =
                |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let (size, data) = (field(2).unwrap_or(0), field(10).unwrap_or(usize::MAX));
            if bytes.len() < size || bytes.len() < data {
                return Err(format!("truncated BMP ({} bytes, the header says {})", bytes.len(), size.max(data)));
            }
        }
        other => return Err(format!("{other:?} images are not supported (JPEG, PNG, WebP, BMP are)")),
    }
    Ok(format)
}

/// Dimensions from the header alone.
fn check_dimensions(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    match image::ImageReader::with_format(Cursor::new(bytes), format).into_dimensions() {
        Ok((w, h)) => check_sides(format, w as usize, h as usize),
        Err(e) => Err(format!("bad {format:?} header: {e}")),
    }
}

fn check_sides(format: ImageFormat, w: usize, h: usize) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("{format:?} with empty dimensions {w}x{h}"));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("{format:?} of {w}x{h} is larger than {MAX_SIDE} px on a side"));
    }
    Ok(())
}

/// A PNG's chunks walked by their lengths from IHDR to IEND (CRCs are left to the decoder).
fn check_png(b: &[u8]) -> Result<(), String> {
    let mut i = 8;
    let mut first = true;
    loop {
        let Some(head) = b.get(i..i + 8) else { return Err("truncated Png (no IEND chunk)".into()) };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        if first {
            let dims = b.get(i + 8..i + 16).filter(|_| kind == b"IHDR");
            let Some(d) = dims else { return Err("bad Png: no IHDR chunk first".into()) };
            let (w, h) = (u32::from_be_bytes([d[0], d[1], d[2], d[3]]), u32::from_be_bytes([d[4], d[5], d[6], d[7]]));
            check_sides(ImageFormat::Png, w as usize, h as usize)?;
            first = false;
        }
        if kind == b"IEND" {
            return if b.len() >= i + 12 { Ok(()) } else { Err("truncated Png (IEND chunk cut)".into()) };
        }
        i = i.saturating_add(12).saturating_add(len);
    }
}

/// A JPEG's frame header and completeness from its marker segments alone (no Huffman
/// tables are built): walking segment lengths skips an EXIF thumbnail's own markers; a
/// frame header (SOFn) must come before the first scan, and an end-of-image marker must
/// follow the scans, where byte stuffing keeps FF D9 from appearing by chance.
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
            let dims =
                b.get(i + 5..i + 9).map(|d| (u16::from_be_bytes([d[0], d[1]]), u16::from_be_bytes([d[2], d[3]])));
            match dims {
                Some((h, w)) => check_sides(ImageFormat::Jpeg, w as usize, h as usize)?,
                None => return bad("cut frame header"),
            }
            frame = true;
        }
        if marker == 0xDA {
            if !frame {
                return bad("scan before any frame header");
            }
            let scans = b.get(i + 2 + len..).unwrap_or(&[]);
            return if scans.windows(2).rev().any(|w| w == [0xFF, 0xD9]) {
                Ok(())
            } else {
                Err("truncated Jpeg (no end-of-image marker)".into())
            };
        }
        if marker == 0xD9 {
            return bad("end of image before any scan");
        }
        i += 2 + len;
    }
    bad("cut before the first scan")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn complete_images_pass_and_every_cut_fails() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Bmp, ImageFormat::WebP] {
            let good = encoded(format, 40, 30);
            assert_eq!(check_complete(&good), Ok(format));
            for cut in [1, 10, 30, good.len() / 2, good.len() - 1] {
                assert!(check_complete(&good[..cut]).is_err(), "{format:?} cut at {cut} of {}", good.len());
            }
            let mut trailing = good.clone();
            trailing.extend_from_slice(&[0u8; 3000]);
            assert_eq!(check_complete(&trailing), Ok(format), "{format:?}: bytes after the end are allowed");
        }
    }

    #[test]
    fn a_thumbnails_end_marker_does_not_complete_a_cut_jpeg() {
        let (main, thumb) = (encoded(ImageFormat::Jpeg, 64, 48), encoded(ImageFormat::Jpeg, 8, 8));
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
        app1.extend_from_slice(&thumb);
        let with_thumb: Vec<u8> = main[..2].iter().chain(&app1).chain(&main[2..]).copied().collect();
        assert!(check_complete(&with_thumb).is_ok());
        assert!(check_complete(&with_thumb[..with_thumb.len() - 40]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn other_inputs_say_why() {
        assert!(check_complete(b"").unwrap_err().contains("empty"));
        assert!(check_complete(b"plain text, no picture").unwrap_err().contains("not an image"));
        assert!(check_complete(b"GIF89a\x01\x00\x01\x00").unwrap_err().contains("not supported"));
        let mut huge = encoded(ImageFormat::Png, 4, 4);
        huge[16..20].copy_from_slice(&20000u32.to_be_bytes());
        assert!(check_complete(&huge).unwrap_err().contains("larger than 16384"));
    }
}
