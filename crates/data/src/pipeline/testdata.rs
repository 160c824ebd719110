//! Test fixtures: small v1 shard sets written straight from synth images, so pipeline
//! unit tests do not depend on `pack`.

use crate::format::idx::{format_v1, header_line, shard_stem};
use crate::synth::{render, Identity, Pose};
use image::ImageEncoder;
use std::path::{Path, PathBuf};

/// One record: (label, gender, age, payload).
pub type Rec = (u32, i8, i8, Vec<u8>);

pub fn png_face(id: usize, k: usize, size: usize) -> Vec<u8> {
    let rgb = render(&Identity::new(5, id), &Pose::new(5, id, k), size);
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&rgb, size as u32, size as u32, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// `classes × per` face records, label = identity, gender = id % 2, age = id % 9 (so
/// some exceed 6 and test clipping).
pub fn faces(classes: usize, per: usize, size: usize) -> Vec<Rec> {
    (0..classes)
        .flat_map(|c| (0..per).map(move |k| (c as u32, (c % 2) as i8, (c % 9) as i8, png_face(c, k, size))))
        .collect()
}

/// Writes `dir/name-KKKKK-of-NNNNN.{bin,idx}` (record i to shard i % shards) and the
/// labels table, as `pack` would.
pub fn write_shards(dir: &Path, name: &str, shards: usize, recs: &[Rec]) -> PathBuf {
    for k in 0..shards {
        let (mut bin, mut idx) = (Vec::new(), header_line() + "\n");
        for (i, (label, g, a, bytes)) in recs.iter().enumerate().filter(|(i, _)| i % shards == k) {
            let start = bin.len() as u64;
            bin.extend_from_slice(bytes);
            let crc = crc32c::crc32c(bytes);
            idx.push_str(&format_v1(&format!("c{label}/r{i}.png"), *label, start, bin.len() as u64, *g, *a, crc));
        }
        let stem = dir.join(shard_stem(name, k, shards));
        std::fs::write(stem.with_extension("bin"), bin).unwrap();
        std::fs::write(stem.with_extension("idx"), idx).unwrap();
    }
    let classes = recs.iter().map(|r| r.0 + 1).max().unwrap_or(0);
    let table: String = (0..classes).map(|c| format!("{c}\tc{c}\n")).collect();
    std::fs::write(dir.join(crate::format::idx::labels_file(name)), format!("label\tname\n{table}")).unwrap();
    dir.join(name)
}
