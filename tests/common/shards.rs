//! Helpers for the shard tests: tiny images in class folders, running the data commands,
//! reading a dataset's files.

use super::images::image_bytes;
use super::{lossy, output};
use std::path::{Path, PathBuf};

/// Runs and asserts success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = output(args);
    assert!(
        out.status.success(),
        "trainer {args:?} failed:\nstdout: {}\nstderr: {}",
        lossy(&out.stdout),
        lossy(&out.stderr)
    );
    lossy(&out.stdout)
}

/// Runs and asserts an ordinary failure (exit 1, not a panic), returning stderr.
pub fn fails(args: &[&str]) -> String {
    let out = output(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "trainer {args:?} should fail cleanly:\nstdout: {}\nstderr: {}",
        lossy(&out.stdout),
        lossy(&out.stderr)
    );
    lossy(&out.stderr)
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
