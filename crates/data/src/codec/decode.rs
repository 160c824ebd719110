//! One image's bytes → a planar RGB u8 slot (3×size×size): decode, resize to the training
//! size when it differs. Flip and normalisation happen later, on the device
//! (`normalise` holds the rule).
//!
//! JPEGs go through libjpeg-turbo at the smallest DCT scale (n/8) that still covers the
//! training size, as PIL's `draft` and DALI do: a 224px face packed for 112px training is
//! decoded straight to 112px, skipping most of the inverse DCT, colour conversion and the
//! resize. Anything libjpeg-turbo refuses (CMYK, damaged data) and every other format goes
//! through the `image` crate.

use anyhow::{anyhow, Context, Result};
use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use turbojpeg::{Decompressor, PixelFormat, ScalingFactor};

use super::check::{check_complete, MAX_SIDE};

/// Per-worker decoder: owns the JPEG decompressor, the resizer and scratch buffers so the
/// hot path reuses memory.
pub struct Decoder {
    /// `None` only if libjpeg-turbo could not allocate a handle; JPEGs then use `image`.
    jpeg: Option<Decompressor>,
    resizer: Resizer,
    options: ResizeOptions,
    rgb: Vec<u8>,
    resized: Vec<u8>,
    /// Row of vertical pair sums for the 2× area downscale.
    sums: Vec<u16>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            jpeg: Decompressor::new().ok(),
            resizer: Resizer::new(),
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            rgb: Vec::new(),
            resized: Vec::new(),
            sums: Vec::new(),
        }
    }

    /// Decodes `bytes` into `out` (3×size×size, channel-major RGB).
    pub fn decode_into(&mut self, bytes: &[u8], size: usize, out: &mut [u8]) -> Result<()> {
        anyhow::ensure!(out.len() == 3 * size * size, "output slot holds {} bytes, need 3×{size}×{size}", out.len());
        let (w, h) = self.decode_rgb(bytes, size)?;
        let rgb = std::mem::take(&mut self.rgb);
        let done = self.from_rgb(&rgb, w, h, size, out);
        self.rgb = rgb;
        done
    }

    /// Interleaved RGB8 (w×h) → the planar 3×size×size slot.
    pub fn from_rgb(&mut self, rgb: &[u8], w: usize, h: usize, size: usize, out: &mut [u8]) -> Result<()> {
        anyhow::ensure!(
            rgb.len() == w * h * 3 && out.len() == 3 * size * size,
            "pixel buffers do not match {w}x{h} → {size}"
        );
        if w == size && h == size {
            write_chw(rgb, size, out);
        } else if w == 2 * size && h == 2 * size {
            area2_chw(rgb, size, &mut self.sums, out);
        } else {
            self.resize(rgb, w, h, size)?;
            write_chw(&self.resized, size, out);
        }
        Ok(())
    }

    /// Decodes into `self.rgb` at a size no smaller than `min_side` on either axis where the
    /// format allows (JPEG), else at full size; returns (width, height).
    fn decode_rgb(&mut self, bytes: &[u8], min_side: usize) -> Result<(usize, usize)> {
        decode_rgb_into(self.jpeg.as_mut(), bytes, min_side, &mut self.rgb)
    }

    fn resize(&mut self, rgb: &[u8], w: usize, h: usize, size: usize) -> Result<()> {
        let src = ImageRef::new(w as u32, h as u32, rgb, PixelType::U8x3).map_err(|e| anyhow!("resize source: {e}"))?;
        self.resized.resize(size * size * 3, 0);
        let mut dst = Image::from_slice_u8(size as u32, size as u32, &mut self.resized, PixelType::U8x3)
            .map_err(|e| anyhow!("resize target: {e}"))?;
        self.resizer.resize(&src, &mut dst, &self.options).map_err(|e| anyhow!("resize {w}x{h} to {size}: {e}"))
    }
}

/// Interleaved RGB8 → planar RGB8.
fn write_chw(rgb: &[u8], size: usize, out: &mut [u8]) {
    let plane = size * size;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
        (*r, *g, *b) = (px[0], px[1], px[2]);
    }
}

/// An exact 2× downscale (e.g. 224 → 112) as the mean of 2×2 blocks (area interpolation),
/// rounded half up to u8 as the general resize also ends in u8: one pass, no resize buffer.
fn area2_chw(rgb: &[u8], size: usize, sums: &mut Vec<u16>, out: &mut [u8]) {
    let (plane, row_bytes) = (size * size, size * 6);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    sums.resize(row_bytes, 0);
    for y in 0..size {
        let top = &rgb[2 * y * row_bytes..(2 * y + 1) * row_bytes];
        let bottom = &rgb[(2 * y + 1) * row_bytes..(2 * y + 2) * row_bytes];
        // Vertical pairs first: a straight element-wise add the compiler vectorises.
        for ((s, &t), &u) in sums.iter_mut().zip(top).zip(bottom) {
            *s = t as u16 + u as u16;
        }
        let mean = |a: u16, b: u16| ((a + b + 2) / 4) as u8;
        let row = y * size..(y + 1) * size;
        let px = sums.chunks_exact(6);
        for (((p, r), g), b) in px.zip(&mut r[row.clone()]).zip(&mut g[row.clone()]).zip(&mut b[row]) {
            (*r, *g, *b) = (mean(p[0], p[3]), mean(p[1], p[4]), mean(p[2], p[5]));
        }
    }
}

/// Decodes `bytes` to interleaved RGB8 in `rgb`: JPEGs through `tj` at the smallest DCT
/// scale covering `min_side` (full size when none does, e.g. for `usize::MAX`); every other
/// format, and JPEGs libjpeg-turbo refuses, through `image`. Returns (width, height).
/// A damaged image ([`check_complete`]) is an error before any decoder sees it.
pub fn decode_rgb_into(
    tj: Option<&mut Decompressor>,
    bytes: &[u8],
    min_side: usize,
    rgb: &mut Vec<u8>,
) -> Result<(usize, usize)> {
    let format = check_complete(bytes).map_err(|e| anyhow!("{e}"))?;
    if let (image::ImageFormat::Jpeg, Some(tj)) = (format, tj) {
        if let Ok(dims) = decode_jpeg_scaled(tj, bytes, min_side, rgb) {
            return Ok(dims);
        }
    }
    let (pixels, w, h) = decode_other(bytes)?;
    *rgb = pixels;
    Ok((w, h))
}

/// The smallest n/8 (n = 1..=8) at which a `w`×`h` JPEG still covers `min_side`×`min_side`.
fn covering_scale(w: usize, h: usize, min_side: usize) -> ScalingFactor {
    (1..=8)
        .map(|n| ScalingFactor::new(n, 8))
        .find(|f| f.scale(w) >= min_side && f.scale(h) >= min_side)
        .unwrap_or(ScalingFactor::ONE)
}

fn decode_jpeg_scaled(
    tj: &mut Decompressor,
    bytes: &[u8],
    min_side: usize,
    rgb: &mut Vec<u8>,
) -> Result<(usize, usize)> {
    let header = tj.read_header(bytes)?;
    anyhow::ensure!(
        header.width <= MAX_SIDE && header.height <= MAX_SIDE,
        "JPEG of {}x{} is too large",
        header.width,
        header.height
    );
    let scale =
        if header.is_lossless { ScalingFactor::ONE } else { covering_scale(header.width, header.height, min_side) };
    tj.set_scaling_factor(scale)?;
    let (w, h) = (scale.scale(header.width), scale.scale(header.height));
    rgb.resize(w * h * 3, 0);
    let image =
        turbojpeg::Image { pixels: rgb.as_mut_slice(), width: w, pitch: w * 3, height: h, format: PixelFormat::RGB };
    tj.decompress(bytes, image)?;
    Ok((w, h))
}

/// Whether `bytes` decode under the rule the loader applies (for `verify --decode`): the
/// completeness check, then a decode at the smallest scale, which still reads all the data.
pub fn check_decodes(tj: Option<&mut Decompressor>, bytes: &[u8], scratch: &mut Vec<u8>) -> Result<()> {
    decode_rgb_into(tj, bytes, 1, scratch).map(|_| ())
}

fn decode_other(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().context("image format")?;
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
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 200]))
            .collect()
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
    fn png_same_size_is_exact_planar_rgb() {
        let (w, s) = (16, 16);
        let rgb = gradient(w, w);
        let mut out = vec![9; 3 * s * s];
        Decoder::new().decode_into(&png(&rgb, w, w), s, &mut out).unwrap();
        // Red rises along x, green along y, blue constant: the planes are RGB in order.
        for y in 0..s {
            for x in 0..s {
                let px = &rgb[(y * s + x) * 3..][..3];
                assert_eq!([out[y * s + x], out[s * s + y * s + x], out[2 * s * s + y * s + x]], px);
            }
        }
        assert_eq!((out[0], out[s - 1], out[s * s + (s - 1) * s]), (0, 255, 255));
    }

    #[test]
    fn jpeg_is_resized_to_the_training_size() {
        let rgb = gradient(64, 48);
        let mut out = vec![0; 3 * 32 * 32];
        Decoder::new().decode_into(&jpeg(&rgb, 64, 48), 32, &mut out).unwrap();
        // Red still rises left to right after the resize.
        assert!(out[31] as i32 - out[0] as i32 > 190, "{} {}", out[0], out[31]);
        // 64×48 covers 32×32 at 6/8 (48×36), not at 5/8 (40×30).
        assert_eq!(Decoder::new().decode_rgb(&jpeg(&rgb, 64, 48), 32).unwrap(), (48, 36));
    }

    #[test]
    fn dct_scaled_jpeg_matches_a_full_decode_then_area_downscale() {
        let (big, s) = (64, 32);
        let bytes = jpeg(&gradient(big, big), big, big);
        let mut d = Decoder::new();
        assert_eq!(d.decode_rgb(&bytes, s).unwrap(), (s, s), "64px covers 32px at 1/2");
        let mut scaled = vec![0; 3 * s * s];
        d.decode_into(&bytes, s, &mut scaled).unwrap();
        let (full, w, h) = decode_other(&bytes).unwrap();
        let mut reference = vec![0; 3 * s * s];
        d.from_rgb(&full, w, h, s, &mut reference).unwrap();
        let worst = scaled.iter().zip(&reference).map(|(&a, &b)| a.abs_diff(b)).max().unwrap();
        assert!(worst <= 6, "DCT-scaled decode differs from full decode + 2×2 mean by {worst}/255");
    }

    #[test]
    fn integer_downscale_averages_blocks_rounding_half_up() {
        // 4×4 → 2×2: each output pixel is the mean of a 2×2 block.
        let rgb: Vec<u8> = (0..16u8).flat_map(|i| [i * 10, 255 - i * 10, (i / 4) % 2 + 7]).collect();
        let mut out = vec![0; 3 * 4];
        Decoder::new().decode_into(&png(&rgb, 4, 4), 2, &mut out).unwrap();
        let mean = |idx: [u8; 4], c: usize| {
            let sum: u32 = idx.iter().map(|&i| rgb[i as usize * 3 + c] as u32).sum();
            (sum as f64 / 4.0 + 0.5).floor() as u8
        };
        let blocks = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]];
        for c in 0..3 {
            let want: Vec<u8> = blocks.iter().map(|&b| mean(b, c)).collect();
            assert_eq!(&out[c * 4..c * 4 + 4], want.as_slice(), "plane {c}");
        }
        // Blue blocks are 7,7,8,8 (mean 7.5): half rounds up.
        assert_eq!(out[8], 8);
    }

    #[test]
    fn garbage_and_truncated_records_are_errors_not_panics() {
        let good = jpeg(&gradient(32, 32), 32, 32);
        let mut d = Decoder::new();
        let mut out = vec![0; 3 * 16 * 16];
        assert!(d.decode_into(&[], 16, &mut out).is_err());
        assert!(d.decode_into(b"not an image at all", 16, &mut out).is_err());
        assert!(d.decode_into(&good[..20], 16, &mut out).is_err());
        assert!(d.decode_into(&[0xFF, 0xD8, 0xFF, 0xFF, 0, 1, 2], 16, &mut out).is_err());
        assert!(d.decode_into(&good, 16, &mut [0; 5]).is_err());
    }

    /// libjpeg-turbo and zune-jpeg both fill a cut JPEG with grey and carry on; the
    /// completeness check makes it an error at every scale, while trailing bytes pass.
    #[test]
    fn a_cut_jpeg_fails_at_every_scale_and_trailing_bytes_pass() {
        let good = jpeg(&gradient(64, 64), 64, 64);
        let mut d = Decoder::new();
        let mut out = vec![0; 3 * 16 * 16];
        let cut = &good[..good.len() * 2 / 3];
        for size in [8, 16, 64] {
            let mut out = vec![0; 3 * size * size];
            let err = format!("{:#}", d.decode_into(cut, size, &mut out).unwrap_err());
            assert!(err.contains("truncated"), "{err}");
        }
        assert!(check_decodes(None, cut, &mut Vec::new()).is_err());
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"\0\0 appended by some camera");
        d.decode_into(&trailing, 16, &mut out).unwrap();
        check_decodes(d.jpeg.as_mut(), &trailing, &mut Vec::new()).unwrap();
    }
}
