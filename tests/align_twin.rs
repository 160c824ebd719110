//! Cross-check against `benches/align_twin.py`: the matrix against scikit-image and the NumPy
//! Umeyama, the pixels against `cv2.warpAffine` and the NumPy float warp.
//!
//! Needs `TRAINER_REF_PYTHON` naming a python with numpy, opencv-python-headless and
//! scikit-image (launch/setup.sh); without one the test fails under `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use image::RgbImage;
use trainer_data::codec::align::{estimate_norm, norm_crop_with, Affine, AlignOptions, Interp, Landmarks, ARCFACE_112};

struct Case {
    name: &'static str,
    image: (u32, u32),
    /// Face centre in the source, degrees (screen clockwise), source px per template px.
    centre: [f64; 2],
    angle: f64,
    zoom: f64,
    size: u32,
    jitter: f64,
}

const CASES: [Case; 7] = [
    Case { name: "upright", image: (250, 250), centre: [125.0, 120.0], angle: 0.0, zoom: 1.0, size: 112, jitter: 0.0 },
    Case {
        name: "tilted-large",
        image: (250, 250),
        centre: [131.3, 118.7],
        angle: 25.0,
        zoom: 1.6,
        size: 112,
        jitter: 1.5,
    },
    Case {
        name: "tilted-small",
        image: (250, 250),
        centre: [90.2, 160.9],
        angle: -40.0,
        zoom: 0.7,
        size: 112,
        jitter: 2.0,
    },
    Case { name: "corner", image: (200, 160), centre: [30.4, 35.8], angle: 10.0, zoom: 1.2, size: 112, jitter: 0.5 },
    Case {
        name: "upside-down-edge",
        image: (200, 160),
        centre: [185.5, 120.2],
        angle: 170.0,
        zoom: 0.9,
        size: 112,
        jitter: 0.0,
    },
    Case { name: "upsampled", image: (90, 120), centre: [44.7, 61.1], angle: -8.0, zoom: 0.5, size: 224, jitter: 0.3 },
    Case { name: "odd-size", image: (250, 250), centre: [126.0, 124.0], angle: 3.0, zoom: 1.1, size: 100, jitter: 1.0 },
];

/// Min fraction of pixels within one grey level, as the module promises.
const MIN_WITHIN_ONE: f64 = 0.995;

#[test]
fn matches_scikit_image_opencv_and_the_numpy_twin() {
    let Some(python) = reference_python() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("align-twin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jobs: Vec<String> = CASES.iter().enumerate().map(|(i, c)| write_case(&dir, i, c)).collect();
    std::fs::write(dir.join("jobs.json"), format!("[{}]", jobs.join(","))).unwrap();
    let status = Command::new(&python).arg(twin_script()).arg("--jobs").arg(dir.join("jobs.json")).status().unwrap();
    assert!(status.success(), "the twin failed: {status}");
    for (i, case) in CASES.iter().enumerate() {
        check_case(&dir, i, case);
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn check_case(dir: &Path, i: usize, case: &Case) {
    let prefix = dir.join(format!("case{i}"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("json")).unwrap()).unwrap();
    let lm = landmarks(case, i as u64);
    let m = estimate_norm(&lm, case.size, &AlignOptions::default()).unwrap();
    let deltas = ["skimage", "twin"].map(|key| max_abs_diff(&m, &matrix(&meta[key])));
    eprintln!("{:>16}: matrix vs skimage {:.1e}, vs twin {:.1e}", case.name, deltas[0], deltas[1]);
    assert!(deltas.iter().all(|&d| d <= 1e-6), "{}: matrix differs: {deltas:?}", case.name);
    let img = texture(case.image.0, case.image.1, i as u64);
    let cv2_version = meta["cv2_version"].as_str().unwrap();
    let cv_interp = if cv2_version.starts_with(|c: char| c >= '5') { Interp::Float } else { Interp::Fixed };
    let ours = |interp| norm_crop_with(&img, &lm, case.size, &AlignOptions { interp, ..Default::default() }).unwrap();
    let vs_cv2 = compare(&ours(cv_interp), &read_npy(&prefix.with_extension("cv2.npy")));
    let other = if cv_interp == Interp::Float { Interp::Fixed } else { Interp::Float };
    let vs_cv2_other = compare(&ours(other), &read_npy(&prefix.with_extension("cv2.npy")));
    let float = ours(Interp::Float);
    let vs_twin = compare(&float, &read_npy(&prefix.with_extension("twin.npy")));
    eprintln!("{:>16}: vs cv2 {cv2_version}: {cv_interp:?} {vs_cv2}, {other:?} {vs_cv2_other}", case.name);
    eprintln!("{:>16}  vs NumPy twin: Float {vs_twin}", "");
    // The other generation is shown, not asserted: on this deliberately edgy texture OpenCV 4
    // and 5 themselves differ by up to 4 levels on ~0.5% of pixels.
    assert!(vs_cv2.within_one >= MIN_WITHIN_ONE, "{}: {cv_interp:?} vs cv2 {vs_cv2}", case.name);
    assert!(vs_twin.within_one >= MIN_WITHIN_ONE && vs_twin.max <= 1, "{}: vs twin {vs_twin}", case.name);
    assert!(float.pixels().any(|p| p.0 == [0; 3]) || case.name != "corner", "the corner case must reach the border");
}

/// A python that can run the twin fully (its `--check` imports and exercises cv2 and skimage).
fn reference_python() -> Option<PathBuf> {
    let python = common::ref_python("numpy, cv2, skimage")?;
    let probe = Command::new(&python).arg(twin_script()).arg("--check").output();
    match probe {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => common::missing(&format!(
            "{} cannot run the twin fully: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => common::missing(&format!("cannot run {}: {e}", python.display())),
    }
}

fn twin_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/align_twin.py")
}

/// Writes the case's image as .npy and returns its job entry for the twin.
fn write_case(dir: &Path, i: usize, case: &Case) -> String {
    let img = texture(case.image.0, case.image.1, i as u64);
    let path = dir.join(format!("case{i}.npy"));
    write_npy(&path, &img);
    let lm = landmarks(case, i as u64);
    let points: Vec<String> = lm.iter().map(|p| format!("[{:?},{:?}]", p[0], p[1])).collect();
    let out = dir.join(format!("case{i}"));
    format!(r#"{{"image":{:?},"landmarks":[{}],"size":{},"out":{:?}}}"#, path, points.join(","), case.size, out)
}

/// The template placed at the case's centre, angle and zoom, plus deterministic jitter.
fn landmarks(case: &Case, seed: u64) -> Landmarks {
    let (s, c) = case.angle.to_radians().sin_cos();
    let mut rng = Rng(seed + 101);
    ARCFACE_112.map(|[x, y]| {
        let (dx, dy) = ((x - 56.0) * case.zoom, (y - 72.0) * case.zoom);
        let j = case.jitter;
        [case.centre[0] + c * dx - s * dy + j * rng.signed(), case.centre[1] + s * dx + c * dy + j * rng.signed()]
    })
}

/// Smooth gradients, hard-edged blocks and a little noise: smooth parts test the geometry,
/// edges and noise expose any rounding or sub-pixel difference.
fn texture(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = Rng(seed);
    RgbImage::from_fn(w, h, |x, y| {
        let (xf, yf) = (f64::from(x), f64::from(y));
        let wave = 60.0 * (xf * 0.11 + seed as f64).sin() + 50.0 * (yf * 0.07 - xf * 0.03).cos();
        let block = if (x / 13 + y / 9) % 2 == 0 { 40.0 } else { -40.0 };
        let rgb = [0.0, 1.0, 2.0].map(|k: f64| {
            let v = 128.0 + wave * (1.0 - 0.3 * k) + block * (k - 1.0) + 12.0 * rng.signed();
            v.clamp(0.0, 255.0) as u8
        });
        image::Rgb(rgb)
    })
}

struct Rng(u64);

impl Rng {
    /// Uniform in [-1, 1) (splitmix64).
    fn signed(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn matrix(v: &serde_json::Value) -> Affine {
    let at = |r: usize, c: usize| v[r][c].as_f64().unwrap_or_else(|| panic!("the twin gave no usable matrix: {v}"));
    Affine([[at(0, 0), at(0, 1), at(0, 2)], [at(1, 0), at(1, 1), at(1, 2)]])
}

fn max_abs_diff(a: &Affine, b: &Affine) -> f64 {
    a.0.iter().flatten().zip(b.0.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

struct Diff {
    max: u8,
    within_one: f64,
    exact: f64,
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "max {} | {:.3}% within 1 | {:.3}% exact", self.max, 100.0 * self.within_one, 100.0 * self.exact)
    }
}

/// Per-channel differences over all pixels.
fn compare(ours: &RgbImage, theirs: &RgbImage) -> Diff {
    assert_eq!(ours.dimensions(), theirs.dimensions());
    let d: Vec<u8> = ours.as_raw().iter().zip(theirs.as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
    let n = d.len() as f64;
    Diff {
        max: d.iter().copied().max().unwrap_or(0),
        within_one: d.iter().filter(|&&v| v <= 1).count() as f64 / n,
        exact: d.iter().filter(|&&v| v == 0).count() as f64 / n,
    }
}

fn write_npy(path: &Path, img: &RgbImage) {
    let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({}, {}, 3), }}", img.height(), img.width());
    let pad = 64 - (10 + dict.len() + 1) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad % 64));
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(img.as_raw());
    std::fs::write(path, bytes).unwrap();
}

/// Reads the H x W x 3 uint8 C-order arrays the twin writes (npy format 1.0).
fn read_npy(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}: not npy 1.0", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'|u1'") && header.contains("False"), "{}: {header}", path.display());
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let dims: Vec<u32> = shape[..shape.find(')').unwrap()].split(',').filter_map(|s| s.trim().parse().ok()).collect();
    assert_eq!(dims.len(), 3, "{}: {header}", path.display());
    RgbImage::from_raw(dims[1], dims[0], bytes[10 + len..].to_vec()).expect("npy data length")
}
