//! `<name>.manifest.json`: counts per shard and label, sizes and the pack settings.
//! Written last by `pack`, so its presence means every shard was committed.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub name: String,
    pub num_shards: usize,
    pub num_records: usize,
    pub num_classes: usize,
    pub total_bytes: u64,
    pub shards: Vec<ShardEntry>,
    /// Records per label id over the whole dataset.
    pub label_counts: BTreeMap<u32, usize>,
    /// Bad inputs skipped at pack time.
    pub skipped: usize,
    /// Entries left out on purpose (hidden, outside class folders, folder links not
    /// followed); absent from manifests of older packs.
    #[serde(default)]
    pub excluded: usize,
    /// The pack command's settings (source, encoding, size, seed, ...), for provenance.
    pub settings: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    pub bin: String,
    pub idx: String,
    pub records: usize,
    pub bytes: u64,
    pub labels: usize,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}
