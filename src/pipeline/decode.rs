//! One image's bytes → a normalised NCHW slot: decode (zune-jpeg for JPEG, `image` for
//! the rest), resize to the training size when it differs, optional flip, (x-127.5)/127.5.

use anyhow::{anyhow, bail, Context, Result};
use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};

/// Corrupt headers must not make us allocate gigabytes.
const MAX_SIDE: usize = 16384;

/// Per-worker decoder: owns the resizer and scratch buffers so the hot path reuses memory.
pub struct Decoder {
    resizer: Resizer,
    options: ResizeOptions,
    resized: Vec<u8>,
    lut: [f32; 256],
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        let mut lut = [0f32; 256];
        for (i, v) in lut.iter_mut().enumerate() {
            *v = (i as f32 - 127.5) / 127.5;
        }
        Decoder {
            resizer: Resizer::new(),
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            resized: Vec::new(),
            lut,
        }
    }

    /// Decodes `bytes` into `out` (3×size×size, channel-major RGB), mirrored when `flip`.
    pub fn decode_into(&mut self, bytes: &[u8], size: usize, flip: bool, out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(out.len() == 3 * size * size, "output slot holds {} floats, need 3×{size}×{size}", out.len());
        let (rgb, w, h) = decode_rgb(bytes)?;
        let pixels = if w == size && h == size {
            &rgb
        } else {
            self.resize(&rgb, w, h, size)?;
            &self.resized
        };
        write_chw(pixels, size, flip, &self.lut, out);
        Ok(())
    }

    fn resize(&mut self, rgb: &[u8], w: usize, h: usize, size: usize) -> Result<()> {
        let src = ImageRef::new(w as u32, h as u32, rgb, PixelType::U8x3).map_err(|e| anyhow!("resize source: {e}"))?;
        self.resized.resize(size * size * 3, 0);
        let mut dst = Image::from_slice_u8(size as u32, size as u32, &mut self.resized, PixelType::U8x3)
            .map_err(|e| anyhow!("resize target: {e}"))?;
        self.resizer.resize(&src, &mut dst, &self.options).map_err(|e| anyhow!("resize {w}x{h} to {size}: {e}"))
    }
}

/// Interleaved RGB8 → planar normalised floats, mirroring columns when `flip`.
fn write_chw(rgb: &[u8], size: usize, flip: bool, lut: &[f32; 256], out: &mut [f32]) {
    let plane = size * size;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for y in 0..size {
        let row = &rgb[y * size * 3..(y + 1) * size * 3];
        let base = y * size;
        for (x, px) in row.chunks_exact(3).enumerate() {
            let o = base + if flip { size - 1 - x } else { x };
            r[o] = lut[px[0] as usize];
            g[o] = lut[px[1] as usize];
            b[o] = lut[px[2] as usize];
        }
    }
}

/// Decodes to interleaved RGB8; returns (pixels, width, height).
pub fn decode_rgb(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    if bytes.is_empty() {
        bail!("empty record");
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes)
    } else {
        decode_other(bytes)
    }
}

fn decode_jpeg(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let rgb = dec.decode().map_err(|e| anyhow!("JPEG decode: {e:?}"))?;
    let info = dec.info().context("JPEG decode: no header")?;
    let (w, h) = (info.width as usize, info.height as usize);
    anyhow::ensure!(rgb.len() == w * h * 3, "JPEG decode: {} bytes for {w}x{h} RGB", rgb.len());
    Ok((rgb, w, h))
}

fn decode_other(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("image format")?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE as u32);
    limits.max_image_height = Some(MAX_SIDE as u32);
    reader.limits(limits);
    let img = reader.decode().context("image decode")?.into_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((img.into_raw(), w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn gradient(w: usize, h: usize) -> Vec<u8> {
        (0..h).flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 200])).collect()
    }

    fn png(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn jpeg(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn png_same_size_is_exact_planar_rgb_in_range() {
        let (w, s) = (16, 16);
        let rgb = gradient(w, w);
        let mut out = vec![9.0; 3 * s * s];
        Decoder::new().decode_into(&png(&rgb, w, w), s, false, &mut out).unwrap();
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
        // Red rises along x, green along y, blue constant: the planes are RGB in order.
        assert_eq!(out[0], -1.0);
        assert_eq!(out[s - 1], 1.0);
        assert_eq!(out[s * s], -1.0);
        assert_eq!(out[s * s + (s - 1) * s], 1.0);
        assert!(out[2 * s * s..].iter().all(|&v| v == (200.0 - 127.5) / 127.5));
    }

    #[test]
    fn flip_mirrors_columns() {
        let s = 12;
        let bytes = png(&gradient(s, s), s, s);
        let mut d = Decoder::new();
        let (mut a, mut b) = (vec![0.0; 3 * s * s], vec![0.0; 3 * s * s]);
        d.decode_into(&bytes, s, false, &mut a).unwrap();
        d.decode_into(&bytes, s, true, &mut b).unwrap();
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    assert_eq!(a[c * s * s + y * s + x], b[c * s * s + y * s + (s - 1 - x)]);
                }
            }
        }
        assert_ne!(a, b);
    }

    #[test]
    fn jpeg_is_resized_to_the_training_size() {
        let rgb = gradient(64, 48);
        let mut out = vec![0.0; 3 * 32 * 32];
        Decoder::new().decode_into(&jpeg(&rgb, 64, 48), 32, false, &mut out).unwrap();
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
        // Red still rises left to right after the resize.
        assert!(out[31] - out[0] > 1.5, "{} {}", out[0], out[31]);
        let (_, w, h) = decode_rgb(&jpeg(&rgb, 64, 48)).unwrap();
        assert_eq!((w, h), (64, 48));
    }

    #[test]
    fn garbage_and_truncated_records_are_errors_not_panics() {
        let good = jpeg(&gradient(32, 32), 32, 32);
        let mut d = Decoder::new();
        let mut out = vec![0.0; 3 * 16 * 16];
        assert!(d.decode_into(&[], 16, false, &mut out).is_err());
        assert!(d.decode_into(b"not an image at all", 16, false, &mut out).is_err());
        assert!(d.decode_into(&good[..20], 16, false, &mut out).is_err());
        assert!(d.decode_into(&[0xFF, 0xD8, 0xFF, 0xFF, 0, 1, 2], 16, false, &mut out).is_err());
        assert!(d.decode_into(&good, 16, false, &mut vec![0.0; 5]).is_err());
    }
}
