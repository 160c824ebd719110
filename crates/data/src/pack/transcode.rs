//! Turning an input file into the payload to store: kept as-is after the completeness check,
//! or decoded, centre-cropped and resized, and re-encoded. JPEGs are decoded by
//! libjpeg-turbo at the smallest DCT scale that still covers `--size` (as the training
//! loader does), resized with fast_image_resize and encoded by libjpeg-turbo (4:2:0).

use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{codecs::png::PngEncoder, ImageEncoder, ImageFormat};
use turbojpeg::{Compressor, Decompressor, PixelFormat, Subsamp};

use crate::codec::{check_complete, decode_rgb_into};

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

/// The payload for `bytes`, or why the input must be skipped: kept as they are when
/// complete (`codec::check_complete`, the rule every reader applies), else re-encoded.
pub fn prepare(bytes: Vec<u8>, t: &Transcode) -> Result<Vec<u8>, String> {
    let format = check_complete(&bytes)?;
    if t.encoding == Encoding::Keep && t.size.is_none() {
        return Ok(bytes);
    }
    reencode(&bytes, format, t)
}

/// An RGB8 picture: pixels, width, height.
type Rgb = (Vec<u8>, usize, usize);

fn reencode(bytes: &[u8], format: ImageFormat, t: &Transcode) -> Result<Vec<u8>, String> {
    let min_side = t.size.map_or(usize::MAX, |s| s as usize);
    let mut rgb = Vec::new();
    let (w, h) = decode_rgb_into(Decompressor::new().ok().as_mut(), bytes, min_side, &mut rgb)
        .map_err(|e| format!("cannot decode {format:?}: {e:#}"))?;
    let (rgb, w, h) = match t.size {
        Some(s) => fill_square(&rgb, w, h, s as usize)?,
        None => (rgb, w, h),
    };
    encode_rgb(&rgb, w, h, t)
}

/// Interleaved RGB8 encoded as `t` asks (PNG, else JPEG at its quality).
pub fn encode_rgb(rgb: &[u8], w: usize, h: usize, t: &Transcode) -> Result<Vec<u8>, String> {
    match t.encoding {
        Encoding::Png => {
            let mut out = Vec::with_capacity(rgb.len() / 2);
            PngEncoder::new(&mut out)
                .write_image(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
                .map_err(|e| format!("cannot encode PNG: {e}"))?;
            Ok(out)
        }
        Encoding::Jpeg | Encoding::Keep => encode_jpeg(rgb, w, h, t.quality),
    }
}

/// Centre crop to a square, resized to `s`×`s` (bilinear).
fn fill_square(rgb: &[u8], w: usize, h: usize, s: usize) -> Result<Rgb, String> {
    let src = ImageRef::new(w as u32, h as u32, rgb, PixelType::U8x3).map_err(|e| format!("resize source: {e}"))?;
    let mut dst = Image::new(s as u32, s as u32, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .fit_into_destination(Some((0.5, 0.5)));
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| format!("resize {w}x{h} to {s}: {e}"))?;
    Ok((dst.into_vec(), s, s))
}

fn encode_jpeg(rgb: &[u8], w: usize, h: usize, quality: u8) -> Result<Vec<u8>, String> {
    let fail = |e: turbojpeg::Error| format!("cannot encode JPEG: {e}");
    let mut c = Compressor::new().map_err(fail)?;
    c.set_quality(quality as i32).map_err(fail)?;
    c.set_subsamp(Subsamp::Sub2x2).map_err(fail)?;
    c.compress_to_vec(turbojpeg::Image { pixels: rgb, width: w, pitch: w * 3, height: h, format: PixelFormat::RGB })
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;

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
        assert!(prepare(trailing.clone(), &KEEP).is_ok(), "bytes after the end marker are allowed");
        // One rule in both modes: the same cut fails a re-encode, the same tail passes it.
        let resize = Transcode { encoding: Encoding::Jpeg, size: Some(16), quality: 90 };
        assert!(prepare(good[..good.len() * 2 / 3].to_vec(), &resize).unwrap_err().contains("truncated"));
        assert!(prepare(trailing, &resize).is_ok());
    }

    #[test]
    fn resize_makes_a_square_jpeg() {
        let t = Transcode { encoding: Encoding::Jpeg, size: Some(16), quality: 90 };
        let out = prepare(jpeg(40, 30), &t).unwrap();
        let img = image::load_from_memory(&out).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
        let rgb = img.to_rgb8();
        // Red rises along x, green along y in the source; the crop keeps both.
        assert!(
            rgb.get_pixel(15, 8)[0] > rgb.get_pixel(0, 8)[0] + 60
                && rgb.get_pixel(8, 15)[1] > rgb.get_pixel(8, 0)[1] + 40
        );
        let same_size =
            prepare(jpeg(40, 30), &Transcode { encoding: Encoding::Jpeg, size: None, quality: 90 }).unwrap();
        let img = image::load_from_memory(&same_size).unwrap();
        assert_eq!((img.width(), img.height()), (40, 30), "no --size: re-encoded at full size");
        let png = prepare(jpeg(40, 30), &Transcode { encoding: Encoding::Png, size: Some(8), quality: 90 }).unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
    }
}
