//! insightface's verification pair sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`,
//! `calfw.bin`, `cplfw.bin`) as validation sets, scored as insightface scores them: the
//! embedding of each image plus that of its mirror (added in f64), L2-normalised, squared
//! distances, 10-fold threshold search (`trainer_data::metrics::verification`), plus the
//! seed's Gap on the pairs and TAR at FAR = 1e-3 where the set is large enough.

use anyhow::{Context, Result};
use rayon::prelude::*;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Tensor};

use super::metrics::Metrics;
use super::table::Row;
use crate::model::Net;
use trainer_data::codec::Decoder;
use trainer_data::interop::pairs::PairSet;
use trainer_data::metrics::verification::{self, Verification};
use trainer_data::metrics::{pair_gap, Gap};

/// Whether `spec` names a pair set rather than a dataset. Decided by content: a `.bin` file
/// that starts like a pickle — protocol 2–5's PROTO opcode (0x80 then 2..=5), or, with no
/// `.idx` beside it, protocol 1's opening `(` or `]`. A legacy `NAME.bin` + `NAME.idx` pair
/// holds image files back to back, so it starts with an image signature and stays a dataset.
pub fn is_pair_set(spec: &Path) -> bool {
    if spec.extension().is_none_or(|e| e != "bin") || !spec.is_file() {
        return false;
    }
    let mut head = [0u8; 2];
    let read = std::fs::File::open(spec).and_then(|mut f| f.read_exact(&mut head));
    match (read, head) {
        (Ok(()), [0x80, 2..=5]) => true,
        (Ok(()), [b'(' | b']', _]) => !spec.with_extension("idx").exists(),
        _ => false,
    }
}

/// A pair set's name in log keys and tables: its file stem (`lfw` for `lfw.bin`).
pub fn set_name(spec: &Path) -> String {
    spec.file_stem().map_or_else(|| spec.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// The names of pair sets given together, in order: each its file stem, except that a
/// stem already taken by an earlier set (`lfw.bin sub/lfw.bin`) gets the lowest number
/// from 2 that no set's name uses (`lfw2`), so that no two sets share a log key.
pub fn set_names(specs: &[&Path]) -> Vec<String> {
    let stems: Vec<String> = specs.iter().map(|p| set_name(p)).collect();
    let mut names: Vec<String> = Vec::with_capacity(stems.len());
    for (i, stem) in stems.iter().enumerate() {
        let taken = |n: &str| names.iter().any(|m| m == n) || stems[i + 1..].iter().any(|m| m == n);
        let name = match names.contains(stem) {
            false => stem.clone(),
            true => (2..).map(|k| format!("{stem}{k}")).find(|n| !taken(n)).unwrap_or_default(),
        };
        names.push(name);
    }
    names
}

pub fn open(spec: &Path) -> Result<PairSet> {
    PairSet::read(spec).with_context(|| format!("reading pair set {}", spec.display()))
}

/// Per image, the embedding `[dim]` of the image and of its mirror, row-major.
pub struct Embeddings {
    pub plain: Vec<f32>,
    pub mirrored: Vec<f32>,
    pub dim: usize,
}

/// Embeds every image of `images` at `size`×`size`, `batch` at a time, decoding on all cores.
pub fn embed_images(
    net: &Net,
    images: &[Arc<[u8]>],
    size: usize,
    batch: usize,
    device: Device,
    mut progress: impl FnMut(usize),
) -> Result<Embeddings> {
    let mut out = Embeddings { plain: Vec::new(), mirrored: Vec::new(), dim: 0 };
    let slot = 3 * size * size;
    for (c, chunk) in images.chunks(batch.max(1)).enumerate() {
        let first = c * batch.max(1);
        let mut pixels = vec![0u8; chunk.len() * slot];
        pixels.par_chunks_mut(slot).zip(chunk.par_iter()).enumerate().try_for_each_init(
            Decoder::new,
            |d, (i, (out, bytes))| {
                d.decode_into(bytes, size, out).with_context(|| format!("image {} does not decode", first + i))
            },
        )?;
        let x = crate::model::input::pixels(&pixels, chunk.len(), size, &[], device)?;
        let (plain, mirrored) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            Ok((net.embed_batch(&x)?, net.embed_batch(&x.flip([3]))?))
        })?;
        out.dim = plain.size()[1] as usize;
        out.plain.extend(to_f32(&plain)?);
        out.mirrored.extend(to_f32(&mirrored)?);
        progress(chunk.len());
    }
    Ok(out)
}

pub fn to_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(tch::Kind::Float).flatten(0, -1))?)
}

/// A pair set's scores.
pub struct PairScores {
    pub verification: Verification,
    pub gap: Gap,
    pub pairs: usize,
}

/// insightface's protocol on the embeddings of a pair set's images (2 per pair, in order).
pub fn score(e: &Embeddings, issame: &[bool]) -> Result<PairScores> {
    let emb = verification::flip_sum(&e.plain, &e.mirrored);
    let verification = verification::evaluate(&emb, e.dim, issame)?;
    let gap = pair_gap(&verification::pair_distances(&emb, e.dim, issame.len())?, issame);
    Ok(PairScores { verification, gap, pairs: issame.len() })
}

/// Embeds and scores a pair set.
pub fn evaluate(net: &Net, set: &PairSet, size: usize, batch: usize, device: Device) -> Result<PairScores> {
    let e = embed_images(net, &set.images, size, batch, device, |_| {})?;
    score(&e, &set.issame)
}

/// Log keys `valid_<set>_verif_acc`, `_verif_std`, `_gap`, and `_verif_tar` (TAR at FAR =
/// 1e-3, only when every training split has the 1000 different pairs it takes), a report
/// line and a table row.
pub fn record(name: &str, s: &PairScores, m: &mut Metrics) {
    let v = &s.verification;
    let threshold = v.threshold_mean();
    m.values.insert(format!("valid_{name}_verif_acc"), v.accuracy_mean);
    m.values.insert(format!("valid_{name}_verif_std"), v.accuracy_std);
    m.values.insert(format!("valid_{name}_gap"), s.gap.value);
    let mut row = Row::new(name)
        .cell("pairs", s.pairs)
        .cell("verification", format!("{:.4} ± {:.4}", v.accuracy_mean, v.accuracy_std));
    let mut report = format!(
        "{name}: verification {:.4} ± {:.4} on {} pairs (threshold {threshold:.3}), gap {:.3}",
        v.accuracy_mean, v.accuracy_std, s.pairs, s.gap.value
    );
    match v.tar_at_far.as_ref().filter(|t| t.reliable) {
        Some(t) => {
            m.values.insert(format!("valid_{name}_verif_tar"), t.tar_mean);
            row = row.cell("TAR@FAR=1e-3", format!("{:.4}", t.tar_mean));
            report.push_str(&format!(", TAR {:.4} ± {:.4} at FAR {:.5}", t.tar_mean, t.tar_std, t.far_mean));
        }
        None => report.push_str(", TAR at FAR = 1e-3 undefined (under 1000 different pairs per training split)"),
    }
    m.rows.push(row.cell("threshold", format!("{threshold:.3}")).cell("gap", format!("{:.3}", s.gap.value)));
    m.reports.push(report);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_sets_are_told_from_legacy_bins_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        assert!(is_pair_set(&write("lfw.bin", b"\x80\x02](U\x01ae](\x88e\x86.")));
        assert!(is_pair_set(&write("p4.bin", b"\x80\x04\x95")));
        // A seed-format pair: a JPEG first, and its .idx beside it.
        let legacy = write("seed.bin", b"\xff\xd8\xff\xe0rest");
        write("seed.idx", b"a.jpg\t0\t0\t8\r\n");
        assert!(!is_pair_set(&legacy));
        // Protocol 1 opens with `]`/`(`: a pair set unless an .idx says it is a dataset.
        let p1 = write("p1.bin", b"](U\x01a");
        assert!(is_pair_set(&p1));
        write("p1.idx", b"");
        assert!(!is_pair_set(&p1));
        assert!(!is_pair_set(&write("lfw.pkl", b"\x80\x02")));
        assert!(!is_pair_set(&dir.path().join("missing.bin")));
        assert_eq!(set_name(Path::new("sets/cfp_fp.bin")), "cfp_fp");
    }

    #[test]
    fn pair_sets_of_one_stem_get_distinct_names() {
        let names = |p: &[&str]| set_names(&p.iter().map(Path::new).collect::<Vec<_>>());
        assert_eq!(names(&["lfw.bin", "sub/lfw.bin"]), ["lfw", "lfw2"]);
        // A later set's own stem is not handed out: `lfw2.bin` keeps its name.
        assert_eq!(names(&["a/lfw.bin", "b/lfw.bin", "lfw2.bin", "c/lfw.bin"]), ["lfw", "lfw3", "lfw2", "lfw4"]);
        assert_eq!(names(&["lfw.bin", "cfp_fp.bin"]), ["lfw", "cfp_fp"]);
    }
}
