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

/// An insightface `.rec` of 5 identities × 4 faces, aligned with a list table that names
/// only identities 0 and 2: the 12 unlisted faces get one summary warning, not one line
/// each, and the 3 identities left without a record are named after the pack.
#[test]
fn a_partial_list_warns_once_and_empty_classes_are_named() {
    use common::rec::{pack, Label, RecWriter};
    let tmp = tempfile::tempdir().unwrap();
    let (classes, per) = (5u64, 4u64);
    let first_identity = classes * per + 1;
    let mut w = RecWriter::default();
    w.write(0, &pack(Label::Many(vec![first_identity as f32, (first_identity + classes) as f32]), 0, 0, b""));
    let mut list = String::from("path\tx1\ty1\tx2\ty2\tx3\ty3\tx4\ty4\tx5\ty5\n");
    for key in 1..first_identity {
        let class = (key - 1) / per;
        w.write(key, &pack(Label::One(class as f32), key, 0, &png(&face(key as u32))));
        if class == 0 || class == 2 {
            list.push_str(&format!("train.rec#{key}\t{}\n", cells(&TEMPLATE)));
        }
    }
    for c in 0..classes {
        let first = 1 + c * per;
        w.write(first_identity + c, &pack(Label::Many(vec![first as f32, (first + per) as f32]), 0, 0, b""));
    }
    let rec = w.save(tmp.path(), "train");
    std::fs::write(tmp.path().join("property"), format!("{classes},112,112\n")).unwrap();
    let table = tmp.path().join("landmarks.tsv");
    std::fs::write(&table, list).unwrap();
    let out = tmp.path().join("o");
    let args = ["pack", s(&rec), "--list", s(&table), "--align", "--name", "f", "--out", s(&out)];
    let res = common::trainer().args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("packed 8 records of 5 classes"), "{stdout}");
    let about_landmarks: Vec<&str> = stderr.lines().filter(|l| l.contains("no landmarks")).collect();
    assert_eq!(about_landmarks.len(), 1, "one summary warning:\n{stderr}");
    assert!(about_landmarks[0].contains("skipped 12 inputs") && about_landmarks[0].contains("train.rec#5"), "{stderr}");
    assert!(
        stdout.contains("WARNING: 3 of the 5 classes hold no record (all their inputs were skipped): labels 1, 3, 4"),
        "{stdout}"
    );
    let skipped = std::fs::read_to_string(out.join("f.skipped.tsv")).unwrap();
    assert_eq!(skipped.lines().filter(|l| l.contains("no landmarks")).count(), 12, "{skipped}");
}
