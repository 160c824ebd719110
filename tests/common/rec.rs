//! A RecordIO writer for tests that frames records as MXNet's (dmlc-core) writer does, and
//! `mx.recordio.pack`'s image header.

use std::path::{Path, PathBuf};

pub const MAGIC: u32 = 0xced7_230a;

/// What `mx.recordio.pack` is given as the label: a number, or an array (flag = its length).
pub enum Label {
    One(f32),
    Many(Vec<f32>),
}

/// `mx.recordio.pack`: the `IfQQ` header, the label array when there is one, the image.
pub fn pack(label: Label, id: u64, id2: u64, image: &[u8]) -> Vec<u8> {
    let (flag, single, labels) = match label {
        Label::One(v) => (0u32, v, Vec::new()),
        Label::Many(v) => (v.len() as u32, 0.0, v),
    };
    let mut out = Vec::new();
    out.extend_from_slice(&flag.to_le_bytes());
    out.extend_from_slice(&single.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&id2.to_le_bytes());
    for l in labels {
        out.extend_from_slice(&l.to_le_bytes());
    }
    out.extend_from_slice(image);
    out
}

pub fn part_header(out: &mut Vec<u8>, flag: u32, len: usize) {
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&((flag << 29) | len as u32).to_le_bytes());
}

/// Frames one record: split before every 4-aligned magic in the payload (the magic itself
/// is dropped), flags 1/2/3 for first/middle/last part, only the last part padded.
pub fn frame(out: &mut Vec<u8>, data: &[u8]) {
    let mut from = 0;
    for i in (0..data.len() / 4 * 4).step_by(4) {
        if data[i..i + 4] == MAGIC.to_le_bytes() {
            part_header(out, if from == 0 { 1 } else { 2 }, i - from);
            out.extend_from_slice(&data[from..i]);
            from = i + 4;
        }
    }
    part_header(out, if from == 0 { 0 } else { 3 }, data.len() - from);
    out.extend_from_slice(&data[from..]);
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// A `.rec` being built in memory with its idx lines.
#[derive(Default)]
pub struct RecWriter {
    pub rec: Vec<u8>,
    pub idx: Vec<(u64, u64)>,
}

impl RecWriter {
    /// Writes a record and returns its offset.
    pub fn write(&mut self, key: u64, payload: &[u8]) -> u64 {
        let offset = self.rec.len() as u64;
        self.idx.push((key, offset));
        frame(&mut self.rec, payload);
        offset
    }

    pub fn save(&self, dir: &Path, name: &str) -> PathBuf {
        let rec = dir.join(format!("{name}.rec"));
        std::fs::write(&rec, &self.rec).unwrap();
        let idx: String = self.idx.iter().map(|(k, o)| format!("{k}\t{o}\n")).collect();
        std::fs::write(rec.with_extension("idx"), idx).unwrap();
        rec
    }
}

/// Deterministic bytes for test images (xorshift), optionally with magic words planted.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
