//! Writing shards so that a crash never leaves a valid-looking one: everything goes to
//! `*.partial` files, is fsynced, and only then renamed into place; the manifest is last.

use super::listing::Item;
use crate::format::idx as format;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Files written under temporary names; dropped without `commit`, they are deleted.
pub struct Staging {
    out: PathBuf,
    name: String,
    /// (temporary, final) in commit order.
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Staging {
    pub fn new(out: &Path, name: &str) -> Result<Staging> {
        std::fs::create_dir_all(out).with_context(|| format!("creating output directory {}", out.display()))?;
        Ok(Staging { out: out.to_path_buf(), name: name.to_string(), files: Vec::new(), committed: false })
    }

    /// A new temporary file that `commit` will rename to `<out>/<file_name>`.
    pub fn create(&mut self, file_name: &str) -> Result<(File, PathBuf)> {
        let target = self.out.join(file_name);
        let tmp = self.out.join(format!("{file_name}.partial"));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        self.files.push((tmp.clone(), target));
        Ok((file, tmp))
    }

    /// Writes a small file completely (fsynced) under its temporary name.
    pub fn write_small(&mut self, file_name: &str, bytes: &[u8]) -> Result<()> {
        let (mut file, tmp) = self.create(file_name)?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))
    }

    /// Removes the old manifest first (so a crash mid-commit leaves no manifest), renames
    /// everything into place in order, deletes stale shards of another count, syncs the dir.
    pub fn commit(mut self) -> Result<()> {
        let manifest = self.out.join(format::manifest_file(&self.name));
        remove_if_exists(&manifest)?;
        for (tmp, target) in &self.files {
            std::fs::rename(tmp, target).with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
        }
        self.committed = true;
        let keep: Vec<&PathBuf> = self.files.iter().map(|(_, t)| t).collect();
        for stale in stale_shards(&self.out, &self.name)?.into_iter().filter(|p| !keep.contains(&p)) {
            remove_if_exists(&stale)?;
        }
        File::open(&self.out).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", self.out.display()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", p.display())),
        _ => Ok(()),
    }
}

/// Existing `<name>-KKKKK-of-NNNNN.{bin,idx}` files of any count.
fn stale_shards(out: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        let path = entry?.path();
        let stem = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".bin").or_else(|| f.strip_suffix(".idx")));
        if stem.is_some_and(|s| format::parse_shard_stem(s, name).is_some()) {
            found.push(path);
        }
    }
    Ok(found)
}

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
        Ok(ShardWriter { bin: BufWriter::with_capacity(1 << 20, bin), idx, bin_tmp, idx_tmp, offset: 0, records: 0, labels: Default::default() })
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
            let file = w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("flushing {}", p.display()))?;
            file.sync_all().with_context(|| format!("syncing {}", p.display()))?;
        }
        Ok(self.offset)
    }
}
