//! One shard's bin and idx, appended record by record into `Staging`'s `.partial` files.

use super::listing::Item;
use super::staging::Staging;
use crate::format::idx as format;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// One shard being written: payloads appended to the bin, one v1 line per record to the idx.
pub struct ShardWriter {
    bin: BufWriter<File>,
    idx: BufWriter<File>,
    bin_tmp: PathBuf,
    idx_tmp: PathBuf,
    offset: u64,
    pub records: usize,
    pub labels: std::collections::BTreeSet<u32>,
}

impl ShardWriter {
    pub fn create(staging: &mut Staging, name: &str, k: usize, n: usize) -> Result<ShardWriter> {
        let stem = format::shard_stem(name, k, n);
        let (bin, bin_tmp) = staging.create(&format!("{stem}.bin"))?;
        let (idx, idx_tmp) = staging.create(&format!("{stem}.idx"))?;
        let mut idx = BufWriter::with_capacity(1 << 16, idx);
        writeln!(idx, "{}", format::header_line()).with_context(|| format!("writing {}", idx_tmp.display()))?;
        Ok(ShardWriter {
            bin: BufWriter::with_capacity(1 << 20, bin),
            idx,
            bin_tmp,
            idx_tmp,
            offset: 0,
            records: 0,
            labels: Default::default(),
        })
    }

    pub fn append(&mut self, item: &Item, payload: &[u8], crc: u32) -> Result<()> {
        self.bin.write_all(payload).with_context(|| format!("writing {}", self.bin_tmp.display()))?;
        let end = self.offset + payload.len() as u64;
        let line = format::format_v1(&item.rel, item.label, self.offset, end, item.gender, item.age, crc);
        self.idx.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.idx_tmp.display()))?;
        self.offset = end;
        self.records += 1;
        self.labels.insert(item.label);
        Ok(())
    }

    /// Flushes and fsyncs both files; returns the bin's size.
    pub fn finish(self) -> Result<u64> {
        for (w, p) in [(self.bin, &self.bin_tmp), (self.idx, &self.idx_tmp)] {
            let file =
                w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("flushing {}", p.display()))?;
            file.sync_all().with_context(|| format!("syncing {}", p.display()))?;
        }
        Ok(self.offset)
    }
}
