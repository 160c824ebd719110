//! Bilinear affine warp with a black border: `cv2.warpAffine(img, M, (w, h))` with its defaults
//! (INTER_LINEAR, BORDER_CONSTANT, 0). Each output pixel samples the source at M⁻¹·(x, y); a
//! 2×2 neighbourhood partly off the image blends with 0 there, one wholly off it stays 0.

use anyhow::{ensure, Context, Result};
use image::RgbImage;

use super::{Affine, MAX_SIZE};

/// Which OpenCV arithmetic to reproduce. The two differ by at most a few grey levels at sharp
/// edges and by nothing visible on faces; pick the one matching the OpenCV a comparison uses.
/// The default is `Fixed`: insightface's published training and verification sets were
/// aligned with OpenCV 3/4, whose result it reproduces bit for bit (and it is faster).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Interp {
    /// OpenCV 5: float32 source coordinates and weights, rounded half to even. Within one
    /// grey level of an exact (float64) bilinear warp.
    Float,
    /// OpenCV 2.x–4.x: coordinates quantised to 1/32 pixel and integer weights summing to 1024;
    /// bit-exact with it.
    #[default]
    Fixed,
}

/// Largest source side: the float kernel's floor is exact up to 2²².
const MAX_SOURCE_SIDE: u32 = 1 << 22;

/// Warps `img` by the forward map `m` (source → output) into a `w`×`h` image.
pub fn warp_affine(img: &RgbImage, m: &Affine, w: u32, h: u32, interp: Interp) -> Result<RgbImage> {
    ensure!(
        (1..=MAX_SIZE).contains(&w) && (1..=MAX_SIZE).contains(&h),
        "output size {w}x{h} is outside 1..={MAX_SIZE}"
    );
    ensure!(
        img.width() <= MAX_SOURCE_SIDE && img.height() <= MAX_SOURCE_SIDE,
        "the source image ({}x{}) is over {MAX_SOURCE_SIDE} pixels on a side",
        img.width(),
        img.height()
    );
    let inv = m.invert().context("cannot warp")?;
    let src = Source { data: img.as_raw(), w: i64::from(img.width()), h: i64::from(img.height()) };
    let mut out = vec![0u8; w as usize * h as usize * 3];
    if src.w > 0 && src.h > 0 {
        match interp {
            Interp::Float => warp_float(&src, &inv, &mut out, w as usize),
            Interp::Fixed => warp_fixed(&src, &inv, &mut out, w as usize),
        }
    }
    RgbImage::from_raw(w, h, out).context("output buffer has the wrong length")
}

/// The source pixels, packed RGB rows.
struct Source<'a> {
    data: &'a [u8],
    w: i64,
    h: i64,
}

type Quad = [[u8; 3]; 4];

impl Source<'_> {
    /// Pixels (ix, iy), (ix+1, iy), (ix, iy+1), (ix+1, iy+1), zero where off the image;
    /// `None` when all four are off it.
    #[inline(always)]
    fn quad(&self, ix: i64, iy: i64) -> Option<Quad> {
        if ix >= 0 && iy >= 0 && ix + 1 < self.w && iy + 1 < self.h {
            let i = ((iy * self.w + ix) * 3) as usize;
            let j = i + (self.w * 3) as usize;
            let (t, b) = (&self.data[i..i + 6], &self.data[j..j + 6]);
            return Some([[t[0], t[1], t[2]], [t[3], t[4], t[5]], [b[0], b[1], b[2]], [b[3], b[4], b[5]]]);
        }
        if ix >= self.w || ix + 1 < 0 || iy >= self.h || iy + 1 < 0 {
            return None;
        }
        Some([self.pixel(ix, iy), self.pixel(ix + 1, iy), self.pixel(ix, iy + 1), self.pixel(ix + 1, iy + 1)])
    }

    fn pixel(&self, x: i64, y: i64) -> [u8; 3] {
        if x < 0 || y < 0 || x >= self.w || y >= self.h {
            return [0; 3];
        }
        let i = ((y * self.w + x) * 3) as usize;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// OpenCV 5's kernel: src = fma(m₀, x, m₁·y + m₂) in f32, then two f32 lerps as fma. A row
/// at a time, in planes: locating and blending run over plain arrays that the compiler
/// vectorises; only fetching the corners is scalar.
fn warp_float(src: &Source, inv: &Affine, out: &mut [u8], ow: usize) {
    let m = inv.0.map(|r| r.map(|v| v as f32));
    let mut row_buf = FloatRow::new(ow);
    for (y, row) in out.chunks_exact_mut(ow * 3).enumerate() {
        let yf = y as f32;
        let (bx, by) = (yf * m[0][1] + m[0][2], yf * m[1][1] + m[1][2]);
        row_buf.locate(|x| (fma(m[0][0], x, bx), fma(m[1][0], x, by)));
        row_buf.gather(src);
        row_buf.blend();
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = round_to_u8(row_buf.value[c * ow + x]);
            }
        }
    }
}

/// Per output row: the source cells and fractions, the 2×2 corners per channel, and the
/// blended values.
struct FloatRow {
    n: usize,
    /// floor of the source position, as f32 (exact: positions are clamped to ±2²²).
    ix: Vec<f32>,
    iy: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    /// 12 planes of `n`: channel c, corner k (00, 01, 10, 11) at plane 4c + k.
    corners: Vec<u8>,
    /// 3 planes of `n`.
    value: Vec<f32>,
}

impl FloatRow {
    fn new(n: usize) -> Self {
        let plane = |k: usize| vec![0.0; k * n];
        Self { n, ix: plane(1), iy: plane(1), a: plane(1), b: plane(1), corners: vec![0; 12 * n], value: plane(3) }
    }

    /// Splits the source position of each output column into cell and fraction.
    fn locate(&mut self, at: impl Fn(f32) -> (f32, f32)) {
        let n = self.n;
        let (ix, iy, a, b) = (&mut self.ix[..n], &mut self.iy[..n], &mut self.a[..n], &mut self.b[..n]);
        for x in 0..n {
            let (sx, sy) = at(x as i32 as f32);
            (ix[x], iy[x]) = (floor(sx), floor(sy));
            (a[x], b[x]) = (sx - ix[x], sy - iy[x]);
        }
    }

    /// Fetches the 2×2 corners of each column's cell.
    fn gather(&mut self, src: &Source) {
        for x in 0..self.n {
            let q = src.quad(self.ix[x] as i64, self.iy[x] as i64).unwrap_or_default();
            for (k, p) in q.iter().enumerate() {
                for (c, &v) in p.iter().enumerate() {
                    self.corners[(4 * c + k) * self.n + x] = v;
                }
            }
        }
    }

    fn blend(&mut self) {
        let n = self.n;
        let (a, b) = (&self.a[..n], &self.b[..n]);
        for (c, value) in self.value.chunks_exact_mut(n).enumerate() {
            let plane = |k: usize| &self.corners[(4 * c + k) * n..(4 * c + k + 1) * n];
            let (p00, p01, p10, p11) = (plane(0), plane(1), plane(2), plane(3));
            for x in 0..n {
                let [c00, c01, c10, c11] = [p00[x], p01[x], p10[x], p11[x]].map(f32::from);
                value[x] = lerp(b[x], lerp(a[x], c00, c01), lerp(a[x], c10, c11));
            }
        }
    }
}

/// a·b + c rounded once to f32, as OpenCV's SIMD fma. The f64 product of two f32s is exact, so
/// only a sum landing exactly on an f32 rounding tie can differ; `f32::mul_add` would be exact
/// but becomes a slow libm call on x86-64 builds without the FMA feature.
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// floor(v) for |v| ≤ 2²², with values beyond clamped there (far off any image): rounding to
/// nearest by pushing v where the f32 spacing is 1, then stepping down if that went up. No
/// libm call, no saturating conversion, and it vectorises.
#[inline(always)]
fn floor(v: f32) -> f32 {
    const LIMIT: f32 = 4_194_304.0;
    let v = v.clamp(-LIMIT, LIMIT);
    let r = (v + ROUNDER) - ROUNDER;
    if r > v {
        r - 1.0
    } else {
        r
    }
}

/// 1.5·2²³: adding it to |v| < 2²² leaves v rounded to an integer, half to even.
const ROUNDER: f32 = 12_582_912.0;

/// Round half to even (as SIMD conversions do) for v in (−0.5, 255.5), with no libm call nor
/// saturating conversion: adding 1.5·2²³ moves v to where the f32 spacing is 1, so the rounded
/// integer lands in the low mantissa bits. A blend of u8 values stays in that range.
#[inline(always)]
fn round_to_u8(v: f32) -> u8 {
    (v + ROUNDER).to_bits() as u8
}

#[inline(always)]
fn lerp(t: f32, from: f32, to: f32) -> f32 {
    fma(t, to - from, from)
}

const INTER_BITS: u32 = 5;
const AB_BITS: u32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
/// Half a 1/32 step, so the truncation to 1/32 pixel rounds to nearest.
const ROUND_DELTA: i64 = 1 << (AB_BITS - INTER_BITS - 1);
const FRAC_MASK: i64 = (1 << INTER_BITS) - 1;

/// OpenCV ≤ 4's kernel: positions in 1/1024 px per row and column, cut to 1/32 px; weights
/// are products of the 1/32 fractions, so they sum to exactly 1024.
fn warp_fixed(src: &Source, inv: &Affine, out: &mut [u8], ow: usize) {
    let [[m0, m1, m2], [m3, m4, m5]] = inv.0;
    let ax: Vec<i64> = (0..ow).map(|x| cv_round(m0 * x as f64 * AB_SCALE)).collect();
    let ay: Vec<i64> = (0..ow).map(|x| cv_round(m3 * x as f64 * AB_SCALE)).collect();
    for (y, row) in out.chunks_exact_mut(ow * 3).enumerate() {
        let x0 = cv_round((m1 * y as f64 + m2) * AB_SCALE) + ROUND_DELTA;
        let y0 = cv_round((m4 * y as f64 + m5) * AB_SCALE) + ROUND_DELTA;
        for ((px, dx), dy) in row.chunks_exact_mut(3).zip(&ax).zip(&ay) {
            let sx = (x0 + dx) >> (AB_BITS - INTER_BITS);
            let sy = (y0 + dy) >> (AB_BITS - INTER_BITS);
            let Some(q) = src.quad(sx >> INTER_BITS, sy >> INTER_BITS) else {
                continue;
            };
            let (fx, fy) = ((sx & FRAC_MASK) as u32, (sy & FRAC_MASK) as u32);
            let (gx, gy) = (32 - fx, 32 - fy);
            let w = [gx * gy, fx * gy, gx * fy, fx * fy];
            for c in 0..3 {
                let sum: u32 = (0..4).map(|k| u32::from(q[k][c]) * w[k]).sum();
                px[c] = ((sum + 512) >> 10) as u8;
            }
        }
    }
}

/// OpenCV's `saturate_cast<int>(double)`: round half to even, clamp to the i32 range.
fn cv_round(v: f64) -> i64 {
    i64::from(v.round_ties_even() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_matches_std_and_clamps_far_values() {
        for v in [-2.5f32, -1.0, -0.75, -1e-7, 0.0, 1e-7, 0.5, 0.999_999_9, 1.0, 2.5, 3.5, 4_194_303.5] {
            assert_eq!(floor(v), v.floor(), "{v}");
        }
        assert_eq!(floor(1e12), 4_194_304.0);
        assert_eq!(floor(-1e12), -4_194_304.0);
    }

    #[test]
    fn rounding_to_u8_is_half_to_even() {
        let cases = [(-0.4, 0), (0.5, 0), (1.5, 2), (2.5, 2), (127.49, 127), (254.5, 254), (255.0001, 255)];
        for (v, want) in cases {
            assert_eq!(round_to_u8(v), want, "{v}");
        }
    }
}
