//! Five-point face alignment as insightface's `face_align.norm_crop` does it: the least-squares
//! similarity (Umeyama, as scikit-image estimates it) from the detected landmarks onto the
//! ArcFace template, then a bilinear warp with a black border, as `cv2.warpAffine`.
//!
//! Coordinates follow OpenCV: pixel (i, j) has its centre at x = i, y = j. Anything that would
//! make a meaningless crop (missing, non-finite, coincident or collinear landmarks, an absurd
//! scale, a face centre off the image) is an error naming the problem, so a packer can skip
//! and report the record instead of training on garbage.

mod landmarks;
mod similarity;
mod warp;

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;

pub use landmarks::{LandmarkColumns, LANDMARK_COLUMNS};
pub use similarity::{umeyama, Affine};
pub use warp::{warp_affine, Interp};

/// Five (x, y) points in the order left eye, right eye, nose tip, left and right mouth corner.
pub type Landmarks = [[f64; 2]; 5];

/// Names used in error messages, in the order of [`Landmarks`].
pub const LANDMARK_NAMES: [&str; 5] = ["left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner"];

/// insightface's ArcFace template for a 112×112 crop.
pub const ARCFACE_112: Landmarks =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// Largest output side accepted; beyond it a typo in `--size` would allocate gigabytes.
pub const MAX_SIZE: u32 = 8192;

/// The ArcFace template for an S×S crop: the 112 one scaled by S/112.
pub fn arcface_template(size: u32) -> Landmarks {
    let k = f64::from(size) / 112.0;
    ARCFACE_112.map(|[x, y]| [x * k, y * k])
}

/// Sanity limits that separate a usable detection from a broken one, and the warp flavour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlignOptions {
    pub interp: Interp,
    /// Smallest landmark spread (RMS distance from their centroid, in source pixels): below it
    /// the points coincide and the scale blows up.
    pub min_spread_px: f64,
    /// Smallest ratio of the landmarks' minor to major standard deviation: below it they lie
    /// on a line (a broken detection, or x and y columns mixed up).
    pub min_aspect: f64,
    /// Smallest side, in source pixels, of the square the crop covers (landmarks given in
    /// normalised 0..1 units land far below it).
    pub min_crop_side_px: f64,
    /// Largest crop side as a multiple of the image's longer side (landmarks in another
    /// image's units land far above it).
    pub max_crop_side_ratio: f64,
}

impl Default for AlignOptions {
    fn default() -> Self {
        Self {
            interp: Interp::Fixed,
            min_spread_px: 1.0,
            min_aspect: 0.02,
            min_crop_side_px: 8.0,
            max_crop_side_ratio: 4.0,
        }
    }
}

/// Aligns a face to `size`×`size` with the default options.
pub fn norm_crop(img: &RgbImage, lm: &Landmarks, size: u32) -> Result<RgbImage> {
    norm_crop_with(img, lm, size, &AlignOptions::default())
}

/// Aligns a face: estimates the transform, checks it against the image, and warps.
pub fn norm_crop_with(img: &RgbImage, lm: &Landmarks, size: u32, opts: &AlignOptions) -> Result<RgbImage> {
    let m = estimate_norm(lm, size, opts)?;
    check_against_image(&m, lm, img.width(), img.height(), size, opts)?;
    warp_affine(img, &m, size, size, opts.interp)
}

/// The 2×3 matrix mapping source pixels onto the `size`×`size` ArcFace crop
/// (insightface's `estimate_norm`), after checking the landmarks and the resulting scale.
pub fn estimate_norm(lm: &Landmarks, size: u32, opts: &AlignOptions) -> Result<Affine> {
    check_size(size)?;
    check_finite(lm)?;
    check_spread(lm, opts)?;
    let m = umeyama(lm, &arcface_template(size)).context("cannot fit the landmarks to the template")?;
    ensure!(m.is_finite() && m.det() > 0.0, "the fitted transform is degenerate: {m:?}");
    let side = crop_side(&m, size);
    ensure!(
        side >= opts.min_crop_side_px,
        "absurd scale {:.4}: the crop would cover only {side:.2} source pixels (minimum {}); \
         are the landmarks in pixel units?",
        m.scale(),
        opts.min_crop_side_px
    );
    Ok(m)
}

/// Side, in source pixels, of the square that the crop covers.
fn crop_side(m: &Affine, size: u32) -> f64 {
    f64::from(size) / m.scale()
}

fn check_size(size: u32) -> Result<()> {
    ensure!((1..=MAX_SIZE).contains(&size), "output size {size} is outside 1..={MAX_SIZE}");
    Ok(())
}

fn check_finite(lm: &Landmarks) -> Result<()> {
    for (p, name) in lm.iter().zip(LANDMARK_NAMES) {
        ensure!(p[0].is_finite() && p[1].is_finite(), "the {name} landmark is not finite: ({}, {})", p[0], p[1]);
    }
    Ok(())
}

/// Rejects coincident or collinear landmarks from the eigenvalues of their 2×2 covariance.
fn check_spread(lm: &Landmarks, opts: &AlignOptions) -> Result<()> {
    let (major, minor) = covariance_eigenvalues(lm);
    let rms = (major + minor).sqrt();
    if rms < opts.min_spread_px {
        bail!("the landmarks (nearly) coincide: spread {rms:.3} px < {} px", opts.min_spread_px);
    }
    let aspect = (minor.max(0.0) / major).sqrt();
    if aspect < opts.min_aspect {
        bail!("the landmarks are (nearly) collinear: minor/major spread {aspect:.4} < {}", opts.min_aspect);
    }
    Ok(())
}

/// Eigenvalues (larger, smaller) of the landmarks' population covariance.
fn covariance_eigenvalues(lm: &Landmarks) -> (f64, f64) {
    let n = lm.len() as f64;
    let (mx, my) = (lm.iter().map(|p| p[0]).sum::<f64>() / n, lm.iter().map(|p| p[1]).sum::<f64>() / n);
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for p in lm {
        let (dx, dy) = (p[0] - mx, p[1] - my);
        sxx += dx * dx;
        syy += dy * dy;
        sxy += dx * dy;
    }
    let (sxx, syy, sxy) = (sxx / n, syy / n, sxy / n);
    let half_trace = 0.5 * (sxx + syy);
    let root = (0.25 * (sxx - syy).powi(2) + sxy * sxy).sqrt();
    (half_trace + root, half_trace - root)
}

/// Rejects landmarks that cannot belong to this image: a face centre off the picture, or a
/// crop much larger than the picture itself.
fn check_against_image(m: &Affine, lm: &Landmarks, w: u32, h: u32, size: u32, opts: &AlignOptions) -> Result<()> {
    ensure!(w > 0 && h > 0, "the image is empty ({w}x{h})");
    let cx = lm.iter().map(|p| p[0]).sum::<f64>() / 5.0;
    let cy = lm.iter().map(|p| p[1]).sum::<f64>() / 5.0;
    let (right, bottom) = (f64::from(w) - 0.5, f64::from(h) - 0.5);
    ensure!(
        (-0.5..=right).contains(&cx) && (-0.5..=bottom).contains(&cy),
        "the landmarks' centre ({cx:.1}, {cy:.1}) lies outside the {w}x{h} image"
    );
    let side = crop_side(m, size);
    let limit = opts.max_crop_side_ratio * f64::from(w.max(h));
    ensure!(
        side <= limit,
        "absurd scale {:.5}: the crop would cover {side:.0} source pixels, over {} x the {w}x{h} image",
        m.scale(),
        opts.max_crop_side_ratio
    );
    Ok(())
}

#[cfg(test)]
mod tests;
