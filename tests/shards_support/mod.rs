//! Helpers for the shard tests: tiny images in class folders, running the binary,
//! reading a dataset's files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

pub fn trainer(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("running trainer")
}

/// Runs and asserts success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = trainer(args);
    assert!(
        out.status.success(),
        "trainer {args:?} failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs and asserts an ordinary failure (exit 1, not a panic), returning stderr.
pub fn fails(args: &[&str]) -> String {
    let out = trainer(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "trainer {args:?} should fail cleanly:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A small image whose pixels depend on (class, i), as JPEG or PNG bytes.
pub fn image_bytes(class: u32, i: u32, png: bool) -> Vec<u8> {
    let (w, h) = (24 + i % 5, 20 + class % 3);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 9 + class * 40) as u8, (y * 11 + i * 7) as u8, (class * 3 + i) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    let fmt = if png { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
    img.write_to(&mut out, fmt).expect("encoding test image");
    out.into_inner()
}

/// A 128×128 JPEG whose entropy-coded data is most of the file, so cutting it in half cuts
/// the scan (as an interrupted download does), not the headers.
pub fn large_jpeg(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(128, 128, |x, y| {
        image::Rgb([(x * 2 + seed) as u8, (y * 2) as u8, ((x * y + seed) % 251) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).expect("encoding test image");
    out.into_inner()
}

/// `classes` folders with awkward names, `per_class` images each (JPEG and PNG mixed).
pub fn class_folders(root: &Path, classes: u32, per_class: u32) -> PathBuf {
    let src = root.join("src");
    for c in 0..classes {
        let dir = src.join(format!("{c}_person (é{c})"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let png = i % 3 == 0;
            let name = format!("enroll ({i}).{}", if png { "png" } else { "jpg" });
            std::fs::write(dir.join(name), image_bytes(c, i, png)).unwrap();
        }
    }
    src
}

/// Every file under `dir` as (relative path, bytes), sorted.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    collect(dir, dir, &mut out);
    out.sort();
    out
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push((p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
        }
    }
}

/// Record lines of an idx (header dropped), split into columns.
pub fn idx_rows(idx: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(idx)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

pub fn manifest(dir: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.manifest.json"))).unwrap()).unwrap()
}
