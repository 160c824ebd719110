use std::collections::HashMap;

use image::RgbImage;

use super::*;

fn noise_image(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    RgbImage::from_fn(w, h, |_, _| {
        let mut byte = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        };
        image::Rgb([byte(), byte(), byte()])
    })
}

fn similarity(angle_deg: f64, scale: f64, tx: f64, ty: f64) -> Affine {
    let (s, c) = angle_deg.to_radians().sin_cos();
    Affine([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])
}

fn assert_close(a: &Affine, b: &Affine, tol: f64) {
    for (x, y) in a.0.iter().flatten().zip(b.0.iter().flatten()) {
        assert!((x - y).abs() <= tol, "{a:?} != {b:?} (tolerance {tol})");
    }
}

fn err_text(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn template_onto_itself_is_identity_and_keeps_the_image() {
    let img = noise_image(112, 112, 1);
    for interp in [Interp::Float, Interp::Fixed] {
        let opts = AlignOptions { interp, ..Default::default() };
        let m = estimate_norm(&ARCFACE_112, 112, &opts).unwrap();
        assert_close(&m, &Affine::IDENTITY, 1e-12);
        let out = norm_crop_with(&img, &ARCFACE_112, 112, &opts).unwrap();
        assert_eq!(out, img, "{interp:?}");
    }
}

#[test]
fn template_scales_with_the_output_size() {
    let m = estimate_norm(&ARCFACE_112, 224, &AlignOptions::default()).unwrap();
    assert_close(&m, &similarity(0.0, 2.0, 0.0, 0.0), 1e-12);
}

#[test]
fn recovers_a_known_rotation_scale_and_shift() {
    for (angle, scale, tx, ty) in
        [(30.0, 0.5, 10.0, -20.0), (-75.0, 1.7, -3.5, 40.25), (180.0, 0.25, 100.0, 7.0), (5.0, 3.0, 0.0, 0.0)]
    {
        let truth = similarity(angle, scale, tx, ty);
        let inv = truth.invert().unwrap();
        let src = ARCFACE_112.map(|p| inv.apply(p));
        let m = umeyama(&src, &ARCFACE_112).unwrap();
        assert_close(&m, &truth, 1e-9);
        let turn = (m.rotation_deg() - angle).to_radians();
        assert!((m.scale() - scale).abs() < 1e-9 && turn.cos() > 1.0 - 1e-12, "{m:?}");
    }
}

fn residual(m: &Affine, src: &[[f64; 2]], dst: &[[f64; 2]]) -> f64 {
    src.iter().zip(dst).map(|(s, d)| (m.apply(*s)[0] - d[0]).powi(2) + (m.apply(*s)[1] - d[1]).powi(2)).sum()
}

#[test]
fn fit_is_the_least_squares_similarity() {
    let src: Landmarks = [[101.0, 97.5], [149.2, 103.0], [122.0, 131.4], [99.1, 160.0], [144.0, 166.6]];
    let m = umeyama(&src, &ARCFACE_112).unwrap();
    let best = residual(&m, &src, &ARCFACE_112);
    let (p, q) = (m.0[0][0], m.0[1][0]);
    for (dp, dq, dx, dy) in [
        (1e-4, 0.0, 0.0, 0.0),
        (-1e-4, 0.0, 0.0, 0.0),
        (0.0, 1e-4, 0.0, 0.0),
        (0.0, -1e-4, 0.0, 0.0),
        (0.0, 0.0, 1e-3, 0.0),
        (0.0, 0.0, 0.0, -1e-3),
    ] {
        let moved = Affine([[p + dp, -(q + dq), m.0[0][2] + dx], [q + dq, p + dp, m.0[1][2] + dy]]);
        assert!(residual(&moved, &src, &ARCFACE_112) > best, "a nudge by {dp} {dq} {dx} {dy} fits better");
    }
}

#[test]
fn mirrored_landmarks_still_give_a_proper_rotation() {
    let mirrored = ARCFACE_112.map(|[x, y]| [200.0 - x, y + 50.0]);
    let m = estimate_norm(&mirrored, 112, &AlignOptions::default()).unwrap();
    let [[a, b, _], [c, d, _]] = m.0;
    assert!(m.det() > 0.0, "{m:?}");
    assert!((a - d).abs() < 1e-12 && (b + c).abs() < 1e-12, "not a rotation: {m:?}");
}

#[test]
fn bad_landmarks_are_errors_that_say_why() {
    let opts = AlignOptions::default();
    let mut nan = ARCFACE_112;
    nan[2][1] = f64::NAN;
    assert!(err_text(estimate_norm(&nan, 112, &opts)).contains("nose tip landmark is not finite"));
    let mut inf = ARCFACE_112;
    inf[4][0] = f64::INFINITY;
    assert!(err_text(estimate_norm(&inf, 112, &opts)).contains("right mouth corner"));
    assert!(err_text(estimate_norm(&[[50.0, 60.0]; 5], 112, &opts)).contains("coincide"));
    let line = [[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0], [50.0, 50.0 + 1e-3]];
    assert!(err_text(estimate_norm(&line, 112, &opts)).contains("collinear"));
    let tiny = ARCFACE_112.map(|[x, y]| [x * 0.05, y * 0.05]);
    assert!(err_text(estimate_norm(&tiny, 112, &opts)).contains("absurd scale"));
    let unit = ARCFACE_112.map(|[x, y]| [x / 112.0, y / 112.0]);
    assert!(err_text(estimate_norm(&unit, 112, &opts)).contains("coincide"));
    assert!(err_text(estimate_norm(&ARCFACE_112, 0, &opts)).contains("output size 0"));
}

#[test]
fn landmarks_that_do_not_fit_the_image_are_errors() {
    let img = noise_image(250, 250, 2);
    let far = ARCFACE_112.map(|[x, y]| [x + 400.0, y]);
    assert!(err_text(norm_crop(&img, &far, 112)).contains("outside the 250x250 image"));
    let huge = ARCFACE_112.map(|[x, y]| [125.0 + (x - 56.0) * 10.0, 125.0 + (y - 72.0) * 10.0]);
    assert!(err_text(norm_crop(&img, &huge, 112)).contains("absurd scale"));
    assert!(norm_crop(&img, &ARCFACE_112.map(|[x, y]| [x + 60.0, y + 60.0]), 112).is_ok());
}

#[test]
fn singular_or_oversized_warps_are_errors() {
    let img = noise_image(8, 8, 3);
    let flat = Affine([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]);
    assert!(err_text(warp_affine(&img, &flat, 4, 4, Interp::Float)).contains("singular"));
    assert!(err_text(warp_affine(&img, &Affine::IDENTITY, 0, 4, Interp::Float)).contains("outside"));
    assert!(warp_affine(&img, &Affine::IDENTITY, MAX_SIZE + 1, 4, Interp::Fixed).is_err());
}

fn row(img: &RgbImage, y: u32) -> Vec<u8> {
    (0..img.width()).map(|x| img.get_pixel(x, y).0[0]).collect()
}

#[test]
fn samples_partly_off_the_image_blend_with_black() {
    let img = RgbImage::from_pixel(4, 3, image::Rgb([200, 200, 200]));
    let half_right = Affine([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]);
    for interp in [Interp::Float, Interp::Fixed] {
        let out = warp_affine(&img, &half_right, 6, 4, interp).unwrap();
        assert_eq!(row(&out, 0), [100, 200, 200, 200, 100, 0], "{interp:?}");
        assert_eq!(row(&out, 3), [0; 6], "{interp:?}: row below the image");
    }
}

#[test]
fn rounding_follows_each_opencv_generation() {
    let img = RgbImage::from_fn(4, 1, |x, _| image::Rgb([[1, 2, 2, 3][x as usize]; 3]));
    let half = Affine([[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]]);
    let float = warp_affine(&img, &half, 3, 1, Interp::Float).unwrap();
    assert_eq!(row(&float, 0), [2, 2, 2], "1.5 → 2 and 2.5 → 2: half to even");
    let fixed = warp_affine(&img, &half, 3, 1, Interp::Fixed).unwrap();
    assert_eq!(row(&fixed, 0), [2, 2, 3], "fixed point rounds halves up");
}

#[test]
fn fixed_point_quantises_positions_to_a_32nd() {
    let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([[0, 255][x as usize]; 3]));
    let shift = Affine([[1.0, 0.0, -0.01], [0.0, 1.0, 0.0]]);
    assert_eq!(row(&warp_affine(&img, &shift, 1, 1, Interp::Float).unwrap(), 0), [3]);
    assert_eq!(row(&warp_affine(&img, &shift, 1, 1, Interp::Fixed).unwrap(), 0), [0]);
}

fn header(names: &[&str]) -> HashMap<String, usize> {
    names.iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect()
}

const FULL: [&str; 12] = ["path", "label", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5"];

#[test]
fn landmark_columns_are_read_by_name() {
    let mut names = FULL.to_vec();
    names.swap(2, 11);
    let cols = LandmarkColumns::from_header(&header(&names)).unwrap().unwrap();
    let row = ["a.jpg", "3", "10", "1", "2", "3", "4", "5", "6", "7", "8", " 9.5 "];
    assert_eq!(cols.parse(&row).unwrap(), [[9.5, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 10.0]]);
    assert_eq!(LandmarkColumns::from_header(&header(&["path", "label"])).unwrap(), None);
    let partial = err_text(LandmarkColumns::from_header(&header(&FULL[..7])));
    assert!(partial.contains("lacks y3, x4, y4, x5, y5"), "{partial}");
}

#[test]
fn bad_landmark_cells_name_the_column_and_value() {
    let cols = LandmarkColumns::from_header(&header(&FULL)).unwrap().unwrap();
    let good = ["a.jpg", "3", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    let with = |i: usize, v: &'static str| {
        let mut r = good;
        r[i] = v;
        err_text(cols.parse(&r))
    };
    assert!(with(6, "").contains("nose tip landmark: column x3 is empty"));
    assert!(with(5, "abc").contains("column y2: \"abc\" is not a number"));
    assert!(with(11, "nan").contains("column y5: \"nan\" is not finite"));
    assert!(with(8, "-inf").contains("column x4"));
    assert!(err_text(cols.parse(&good[..7])).contains("column y3 (field 8) is missing"));
}

#[test]
fn samples_far_off_the_image_are_black() {
    let img = noise_image(16, 16, 4);
    for shift in [1e9, -1e12, 3e5] {
        let far = Affine([[1.0, 0.0, shift], [0.0, 1.0, -shift]]);
        for interp in [Interp::Float, Interp::Fixed] {
            let out = warp_affine(&img, &far, 8, 8, interp).unwrap();
            assert!(out.as_raw().iter().all(|&v| v == 0), "{interp:?} {shift}");
        }
    }
}
