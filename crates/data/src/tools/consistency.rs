//! `verify`'s checks of the sidecar files against the shards: the labels table names every
//! label the records use, and the manifest's counts are the shards' counts.

use crate::format::idx::MAX_CLASSES;
use crate::format::{LabelTable, Manifest};
use crate::reader::{Dataset, Layout, Shard};
use std::collections::{BTreeMap, BTreeSet};

/// Differences listed one by one before the rest are only counted.
const LISTED: usize = 5;

/// Records per label, with the first record (shard position in `ds.shards`, record) using it.
pub fn label_counts(ds: &Dataset) -> BTreeMap<u32, (usize, (usize, usize))> {
    let mut counts: BTreeMap<u32, (usize, (usize, usize))> = BTreeMap::new();
    for (s, shard) in ds.shards.iter().enumerate() {
        for (i, &l) in shard.labels().iter().enumerate() {
            counts.entry(l).or_insert((0, (s, i))).0 += 1;
        }
    }
    counts
}

/// Problems with the labels table and with labels beyond what the format allows.
pub fn check_labels(ds: &Dataset, layout: &Layout, counts: &BTreeMap<u32, (usize, (usize, usize))>) -> Vec<String> {
    let mut out = Vec::new();
    let first = |s: usize, i: usize| ds.shards[s].describe(i);
    for (&label, &(n, (s, i))) in counts.range(MAX_CLASSES as u32..) {
        out.push(format!(
            "label {label} ({n} records, first {}) is not below the {MAX_CLASSES} (2^24) classes a dataset may have",
            first(s, i)
        ));
    }
    let path = layout.labels_path();
    if !path.is_file() {
        return out;
    }
    let table = match LabelTable::load(&path) {
        Ok(t) => t,
        Err(e) => return [out, vec![format!("{e:#}")]].concat(),
    };
    let mut ids = BTreeSet::new();
    for (id, name) in &table.entries {
        if !ids.insert(*id) {
            out.push(format!("{}: label {id} ({name:?}) is listed twice", path.display()));
        } else if *id as usize >= MAX_CLASSES {
            out.push(format!(
                "{}: label {id} is not below the {MAX_CLASSES} (2^24) classes a dataset may have",
                path.display()
            ));
        }
    }
    let missing: Vec<_> = counts.iter().filter(|(l, _)| !ids.contains(l)).collect();
    for (label, &(n, (s, i))) in missing.iter().take(LISTED) {
        out.push(format!(
            "{}: no entry for label {label}, which {n} records use (first {})",
            path.display(),
            first(s, i)
        ));
    }
    if missing.len() > LISTED {
        out.push(format!("{}: ... and {} more labels without an entry", path.display(), missing.len() - LISTED));
    }
    out
}

/// Problems with the manifest, when there is one: shard count, records and bytes per shard
/// and in total, labels per shard, records per label, and the class count.
pub fn check_manifest(ds: &Dataset, layout: &Layout, counts: &BTreeMap<u32, (usize, (usize, usize))>) -> Vec<String> {
    let path = layout.manifest_path();
    if !path.exists() {
        return Vec::new();
    }
    let m = match Manifest::load(&path) {
        Ok(m) => m,
        Err(e) => return vec![format!("{e:#}")],
    };
    let p = path.display();
    let mut out = Vec::new();
    if m.num_shards != ds.total_shards || m.shards.len() != ds.total_shards {
        out.push(format!("{p}: says {} shards ({} listed), found {}", m.num_shards, m.shards.len(), ds.total_shards));
    }
    if m.num_records != ds.len() {
        out.push(format!("{p}: says {} records, the shards hold {}", m.num_records, ds.len()));
    }
    for s in &ds.shards {
        if let Some(e) = m.shards.get(s.k()) {
            let labels = distinct_labels(s);
            if e.records != s.len() || e.bytes != s.bin_len() || e.labels != labels {
                out.push(format!(
                    "{}: manifest says {} records / {} bytes / {} labels, found {} / {} / {labels}",
                    s.bin_path().display(),
                    e.records,
                    e.bytes,
                    e.labels,
                    s.len(),
                    s.bin_len()
                ));
            }
        }
    }
    let found: BTreeMap<u32, usize> = counts.iter().map(|(&l, &(n, _))| (l, n)).collect();
    let differ: Vec<u32> = found
        .keys()
        .chain(m.label_counts.keys())
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|l| found.get(l) != m.label_counts.get(l))
        .collect();
    for l in differ.iter().take(LISTED) {
        let (said, has) = (m.label_counts.get(l).copied().unwrap_or(0), found.get(l).copied().unwrap_or(0));
        out.push(format!("{p}: says label {l} has {said} records, the shards hold {has}"));
    }
    if differ.len() > LISTED {
        out.push(format!("{p}: ... and {} more labels whose counts differ", differ.len() - LISTED));
    }
    if layout.labels_path().is_file() && m.num_classes != ds.num_classes {
        out.push(format!(
            "{p}: says {} classes, {} declares {}",
            m.num_classes,
            layout.labels_path().display(),
            ds.num_classes
        ));
    }
    out
}

fn distinct_labels(s: &Shard) -> usize {
    s.labels().iter().collect::<BTreeSet<_>>().len()
}
