//! The least-squares similarity between two point sets (Umeyama 1991), in closed form for 2-D.
//!
//! With A = dstᵀ·src / n (both centred), α = (a₀₀ + a₁₁)/2 and β = (a₁₀ − a₀₁)/2, the proper
//! rotation maximising tr(Rᵀ·A) is the one by atan2(β, α), and the trace it reaches is
//! 2·|(α, β)| = σ₁ ± σ₂ (the sign of det A): Umeyama's tr(D·S). Hence
//! scale·R = (2/σ²_src)·[[α, −β], [β, α]], the matrix scikit-image's SVD route gives
//! (reflections excluded, rank-deficient A included), without an SVD.

use anyhow::{ensure, Result};

/// A 2×3 affine map, rows `[a, b, tx]` and `[c, d, ty]`, laid out as OpenCV's `M`:
/// `(x, y) ↦ (a·x + b·y + tx, c·x + d·y + ty)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [[f64; 3]; 2]);

impl Affine {
    pub const IDENTITY: Affine = Affine([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);

    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        let [r0, r1] = self.0;
        [r0[0] * x + r0[1] * y + r0[2], r1[0] * x + r1[1] * y + r1[2]]
    }

    pub fn det(&self) -> f64 {
        let [r0, r1] = self.0;
        r0[0] * r1[1] - r0[1] * r1[0]
    }

    /// Uniform scale of a similarity (for a general affine map, the geometric mean of its two).
    pub fn scale(&self) -> f64 {
        self.det().abs().sqrt()
    }

    /// Rotation angle in degrees, counter-clockwise in a y-up frame (clockwise on screen).
    pub fn rotation_deg(&self) -> f64 {
        self.0[1][0].atan2(self.0[0][0]).to_degrees()
    }

    pub fn is_finite(&self) -> bool {
        self.0.iter().flatten().all(|v| v.is_finite())
    }

    /// The inverse map, computed in the operation order of `cv2.invertAffineTransform`, so the
    /// warp sees bit-identical coefficients.
    pub fn invert(&self) -> Result<Affine> {
        let [[m0, m1, m2], [m3, m4, m5]] = self.0;
        let det = m0 * m4 - m1 * m3;
        ensure!(det != 0.0 && det.is_finite(), "the transform is singular (determinant {det})");
        let d = 1.0 / det;
        let (a11, a22, a12, a21) = (m4 * d, m0 * d, -m1 * d, -m3 * d);
        let b1 = -a11 * m2 - a12 * m5;
        let b2 = -a21 * m2 - a22 * m5;
        let inv = Affine([[a11, a12, b1], [a21, a22, b2]]);
        ensure!(inv.is_finite(), "the inverse transform is not finite: {inv:?}");
        Ok(inv)
    }
}

/// The similarity (rotation, uniform scale, translation; never a reflection) that maps `src`
/// onto `dst` with the least squared error, as scikit-image's `SimilarityTransform.estimate`.
pub fn umeyama(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Result<Affine> {
    ensure!(src.len() == dst.len(), "{} source points but {} target points", src.len(), dst.len());
    ensure!(src.len() >= 2, "a similarity needs at least 2 point pairs, got {}", src.len());
    let (ms, md) = (mean(src), mean(dst));
    let n = src.len() as f64;
    let (mut var, mut a) = (0.0, [[0.0; 2]; 2]);
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy, dx, dy) = (s[0] - ms[0], s[1] - ms[1], d[0] - md[0], d[1] - md[1]);
        var += sx * sx + sy * sy;
        a[0][0] += dx * sx;
        a[0][1] += dx * sy;
        a[1][0] += dy * sx;
        a[1][1] += dy * sy;
    }
    var /= n;
    ensure!(var > 0.0 && var.is_finite(), "the source points coincide (variance {var})");
    let alpha = (a[0][0] + a[1][1]) / (2.0 * n);
    let beta = (a[1][0] - a[0][1]) / (2.0 * n);
    ensure!(alpha != 0.0 || beta != 0.0, "no rotation correlates the two point sets (zero scale)");
    let (p, q) = (2.0 * alpha / var, 2.0 * beta / var);
    let tx = md[0] - (p * ms[0] - q * ms[1]);
    let ty = md[1] - (q * ms[0] + p * ms[1]);
    Ok(Affine([[p, -q, tx], [q, p, ty]]))
}

fn mean(pts: &[[f64; 2]]) -> [f64; 2] {
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(x, y), p| (x + p[0], y + p[1]));
    [sx / n, sy / n]
}
