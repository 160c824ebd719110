//! `trainer pack SRC --list faces.tsv --align --size S`: faces aligned with their five
//! landmarks; records with missing or degenerate landmarks are skipped and reported.

mod common;

use common::shards::{fails, ok, tree};
use common::{png, s};

/// insightface's 112×112 ArcFace template.
const TEMPLATE: [[f64; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

fn face(seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(112, 112, |x, y| image::Rgb([(x * 2 + seed * 30) as u8, (y * 2) as u8, (x + y) as u8]))
}

fn cells(points: &[[f64; 2]; 5]) -> String {
    points.iter().map(|[x, y]| format!("{x}\t{y}")).collect::<Vec<_>>().join("\t")
}

#[test]
fn faces_are_aligned_and_bad_landmarks_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    let mut list = String::from("path\tlabel\tx1\ty1\tx2\ty2\tx3\ty3\tx4\ty4\tx5\ty5\n");
    for i in 0..4u32 {
        std::fs::write(src.join(format!("a/{i}.png")), png(&face(i))).unwrap();
    }
    // 0: the template itself, so the aligned 112 crop is the image; 1: the template at
    // half scale about the centre (a 2x zoom); 2: a missing landmark; 3: all points equal.
    let half = TEMPLATE.map(|[x, y]| [56.0 + (x - 56.0) / 2.0, 56.0 + (y - 56.0) / 2.0]);
    list.push_str(&format!("a/0.png\t0\t{}\n", cells(&TEMPLATE)));
    list.push_str(&format!("a/1.png\t0\t{}\n", cells(&half)));
    list.push_str(&format!("a/2.png\t0\t{}\n", cells(&TEMPLATE).replacen("38.2946", "", 1)));
    list.push_str(&format!("a/3.png\t0\t{}\n", cells(&[[50.0, 50.0]; 5])));
    let table = tmp.path().join("faces.tsv");
    std::fs::write(&table, list).unwrap();
    let out = tmp.path().join("o");
    let stdout = ok(&[
        "pack",
        s(&src),
        "--list",
        s(&table),
        "--align",
        "--size",
        "112",
        "--encoding",
        "png",
        "--name",
        "f",
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("packed 2 records") && stdout.contains("skipped 2 bad inputs"), "{stdout}");
    let skipped = std::fs::read_to_string(out.join("f.skipped.tsv")).unwrap();
    assert!(skipped.contains("a/2.png\tbad landmarks: left eye landmark: column x1 is empty"), "{skipped}");
    assert!(skipped.contains("a/3.png\tcannot align: the landmarks (nearly) coincide"), "{skipped}");
    let back = tmp.path().join("back");
    ok(&["unpack", s(&out.join("f")), "--out", s(&back)]);
    let files = tree(&back);
    assert_eq!(files.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["a/0.png", "a/1.png"]);
    let aligned: Vec<image::RgbImage> =
        files.iter().map(|(_, b)| image::load_from_memory(b).unwrap().to_rgb8()).collect();
    assert_eq!(aligned[0], face(0), "the template's own landmarks must give back the image");
    // A 2x zoom about the centre: output (x, y) samples source (28 + x/2, 28 + y/2).
    let src1 = face(1);
    for (x, y) in [(0u32, 0u32), (40, 90), (110, 20)] {
        let (sx, sy) = (28.0 + x as f64 / 2.0, 28.0 + y as f64 / 2.0);
        let want = src1.get_pixel(sx.round() as u32, sy.round() as u32);
        let got = aligned[1].get_pixel(x, y);
        assert!(
            want.0.iter().zip(got.0).all(|(a, b)| (*a as i32 - b as i32).abs() <= 8),
            "({x},{y}): {got:?} vs {want:?}"
        );
    }
    let err = fails(&["pack", s(&src), "--align", "--name", "g", "--out", s(&out)]);
    assert!(err.contains("--align needs --list"), "{err}");
}
