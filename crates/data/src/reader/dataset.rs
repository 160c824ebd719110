//! Opening a dataset: resolving `<dir>/<name>` to its shard files, memory-mapping each bin
//! and handing out zero-copy record slices whose offsets are checked against the bin.

use crate::format::idx::{self as format, Version, MAX_CLASSES};
use crate::format::Index;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One record, borrowing its payload from the shard's memory map.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub bytes: &'a [u8],
    pub label: u32,
    pub gender: i8,
    pub age: i8,
}

/// One bin/idx pair: the bin memory-mapped (so reader memory does not grow with its size)
/// and the idx parsed into columns.
pub struct Shard {
    bin_path: PathBuf,
    idx_path: PathBuf,
    /// None for an empty bin, which cannot be mapped.
    map: Option<Mmap>,
    index: Index,
    k: usize,
}

impl Shard {
    /// Opens a pair and checks every record lies inside the bin.
    pub fn open(bin: &Path, idx: &Path, k: usize) -> Result<Shard> {
        let shard = Shard::open_unchecked(bin, idx, k)?;
        if let Some((i, end)) = shard.index.max_end() {
            if end > shard.bin_len() {
                bail!(
                    "{} is {} bytes but record {i} ({}) of {} ends at byte {end}: the bin is truncated or the idx does not belong to it",
                    bin.display(),
                    shard.bin_len(),
                    shard.path_of(i),
                    idx.display()
                );
            }
        }
        Ok(shard)
    }

    /// Opens a pair without the bounds check, so `verify` can report every bad record.
    pub fn open_unchecked(bin: &Path, idx: &Path, k: usize) -> Result<Shard> {
        let index = Index::load(idx)?;
        let file = File::open(bin).with_context(|| format!("opening bin {}", bin.display()))?;
        let len = file.metadata().with_context(|| format!("reading size of {}", bin.display()))?.len();
        // SAFETY: the map is read-only; a bin truncated by someone else while we read it is the
        // same hazard every mmap reader accepts, and offsets are still checked per record.
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.with_context(|| format!("memory-mapping {}", bin.display()))?)
        };
        Ok(Shard { bin_path: bin.to_path_buf(), idx_path: idx.to_path_buf(), map, index, k })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Tells the kernel reads will be random (`MADV_RANDOM`): no readahead, so a shuffled
    /// epoch over a bin that is not in the page cache reads each record's pages, not the
    /// 128 KiB around them. `prefetch` then asks for exactly the records a batch needs.
    /// Both are hints; a kernel that refuses them changes nothing.
    pub fn advise_random_access(&self) {
        if let Some(map) = &self.map {
            if let Err(e) = map.advise(memmap2::Advice::Random) {
                tracing::debug!("madvise(RANDOM) on {}: {e}", self.bin_path.display());
            }
        }
    }

    /// Starts reading record `i`'s pages in the background (`MADV_WILLNEED`).
    pub fn prefetch(&self, i: usize) {
        if let (Some(map), true) = (&self.map, i < self.len()) {
            let (start, end) = self.index.range(i);
            if end <= map.len() as u64 && end > start {
                let _ = map.advise_range(memmap2::Advice::WillNeed, start as usize, (end - start) as usize);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Record `i`, with its offsets checked against the bin's length.
    pub fn record(&self, i: usize) -> Result<Record<'_>> {
        let c = &self.index.cols;
        Ok(Record { bytes: self.payload(i)?, label: c.labels[i], gender: c.genders[i], age: c.ages[i] })
    }

    /// The payload bytes of record `i`; errors name the bin, the record and its path.
    pub fn payload(&self, i: usize) -> Result<&[u8]> {
        if i >= self.len() {
            bail!("{}: record {i} out of range ({} records)", self.bin_path.display(), self.len());
        }
        let (start, end) = self.index.range(i);
        let data = self.map.as_deref().unwrap_or(&[]);
        if end > data.len() as u64 {
            bail!(
                "{}: record {i} ({}) spans bytes {start}..{end} but the bin has only {} bytes",
                self.bin_path.display(),
                self.path_of(i),
                data.len()
            );
        }
        Ok(&data[start as usize..end as usize])
    }

    /// The original relative path of record `i`.
    pub fn path_of(&self, i: usize) -> &str {
        self.index.path(i)
    }

    pub fn bin_path(&self) -> &Path {
        &self.bin_path
    }

    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }

    pub fn bin_len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    /// crc32c of record `i`'s payload as stored in the idx; None for the seed's format.
    pub fn checksum(&self, i: usize) -> Option<u32> {
        self.index.checksum(i)
    }

    pub fn labels(&self) -> &[u32] {
        &self.index.cols.labels
    }

    pub fn genders(&self) -> &[i8] {
        &self.index.cols.genders
    }

    pub fn ages(&self) -> &[i8] {
        &self.index.cols.ages
    }

    pub fn version(&self) -> Version {
        self.index.version
    }

    /// This shard's number k within the dataset (0 for a legacy pair).
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The idx line (1-based) holding record `i`, found by reading the file again; for
    /// error messages only. None if the file changed meanwhile.
    pub fn line_of(&self, i: usize) -> Option<usize> {
        let text = std::fs::read(&self.idx_path).ok()?;
        let skip = usize::from(self.version() == Version::V1);
        text.split(|&b| b == b'\n')
            .enumerate()
            .skip(skip)
            .filter(|(_, l)| !l.is_empty() && *l != b"\r")
            .nth(i)
            .map(|(n, _)| n + 1)
    }

    /// "`<idx>` line N (record i, `<path>`)", for messages about record `i`.
    pub fn describe(&self, i: usize) -> String {
        let line = self.line_of(i).map_or(String::new(), |n| format!(" line {n}"));
        format!("{}{line} (record {i}, {})", self.idx_path.display(), self.path_of(i))
    }
}

/// A dataset named `<dir>/<name>`: its (possibly filtered) shards and its class count.
pub struct Dataset {
    pub shards: Vec<Shard>,
    pub num_classes: usize,
    /// The labels table or manifest that declared `num_classes`; None when it is the
    /// largest label + 1.
    pub classes_from: Option<PathBuf>,
    pub name: String,
    /// Shards in the whole dataset, not just the opened ones.
    pub total_shards: usize,
}

/// The files a dataset spec resolves to, before anything is opened.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub name: String,
    pub total: usize,
    /// (k, bin, idx) for every shard, in k order.
    pub files: Vec<(usize, PathBuf, PathBuf)>,
}

impl Layout {
    /// Resolves `<dir>/<name>` to all `<name>-KKKKK-of-NNNNN` shards or a `<name>.bin/.idx` pair;
    /// a path ending in `.idx` or `.bin` names a single pair.
    pub fn resolve(spec: &Path) -> Result<Layout> {
        let spec_str = spec.to_string_lossy();
        let spec = match spec_str.strip_suffix(".idx").or_else(|| spec_str.strip_suffix(".bin")) {
            Some(stem) => return Layout::pair(Path::new(stem)),
            None => spec,
        };
        let (dir, name) = split_spec(spec)?;
        let shards = list_shards(&dir, &name)?;
        if shards.is_empty() {
            return Layout::pair(spec);
        }
        let total = shards[0].1;
        if let Some((k, n)) = shards.iter().find(|(_, n)| *n != total) {
            bail!(
                "{}: shard files disagree on the shard count ({} vs {k} of {n}); remove stale shards",
                spec.display(),
                total
            );
        }
        let files: Vec<_> = (0..total)
            .map(|k| {
                let stem = dir.join(format::shard_stem(&name, k, total));
                let (bin, idx) = (stem.with_extension("bin"), stem.with_extension("idx"));
                if !idx.is_file() || !bin.is_file() {
                    bail!(
                        "{}: shard {k} of {total} is missing ({} and {} must both exist)",
                        spec.display(),
                        bin.display(),
                        idx.display()
                    );
                }
                Ok((k, bin, idx))
            })
            .collect::<Result<_>>()?;
        Ok(Layout { dir, name, total, files })
    }

    fn pair(stem: &Path) -> Result<Layout> {
        let (dir, name) = split_spec(stem)?;
        let (bin, idx) = (dir.join(format!("{name}.bin")), dir.join(format!("{name}.idx")));
        if !idx.is_file() {
            let others = dataset_names(&dir);
            let hint = if others.is_empty() {
                String::new()
            } else {
                format!("; datasets in {}: {}", dir.display(), others.join(", "))
            };
            bail!(
                "no dataset at {}: expected {}-00000-of-NNNNN.idx shards or a {} / {} pair{hint}",
                stem.display(),
                stem.display(),
                bin.display(),
                idx.display()
            );
        }
        if !bin.is_file() {
            bail!("{} exists but its bin {} does not", idx.display(), bin.display());
        }
        Ok(Layout { dir, name, total: 1, files: vec![(0, bin, idx)] })
    }

    pub fn labels_path(&self) -> PathBuf {
        self.dir.join(format::labels_file(&self.name))
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(format::manifest_file(&self.name))
    }
}

impl Dataset {
    /// `spec` = "<dir>/<name>": all `<name>-KKKKK-of-NNNNN` shards, or a legacy
    /// `<name>.bin`/`<name>.idx` pair (the seed's 4-column idx without header).
    pub fn open(spec: &Path) -> Result<Dataset> {
        Dataset::open_filtered(spec, |_, _| true)
    }

    /// Only shards k with `select(k, total)`; e.g. the rank's k ≡ rank (mod world).
    pub fn open_filtered(spec: &Path, select: impl Fn(usize, usize) -> bool) -> Result<Dataset> {
        Dataset::open_with(spec, select, true)
    }

    /// Like `open_filtered`; `check_bounds = false` lets records outside the bin through
    /// (each `record()` call still checks), for tools that report every bad record.
    pub fn open_with(spec: &Path, select: impl Fn(usize, usize) -> bool, check_bounds: bool) -> Result<Dataset> {
        let layout = Layout::resolve(spec)?;
        let chosen: Vec<_> = layout.files.iter().filter(|(k, _, _)| select(*k, layout.total)).collect();
        let shards: Vec<Shard> = chosen
            .par_iter()
            .map(
                |(k, bin, idx)| {
                    if check_bounds {
                        Shard::open(bin, idx, *k)
                    } else {
                        Shard::open_unchecked(bin, idx, *k)
                    }
                },
            )
            .collect::<Result<_>>()?;
        let (num_classes, classes_from) = match read_num_classes(&layout)? {
            Some((n, from)) => (n, Some(from)),
            None => (shards.iter().flat_map(|s| s.labels().iter().max()).max().map_or(0, |&m| m as usize + 1), None),
        };
        Ok(Dataset { shards, num_classes, classes_from, name: layout.name, total_shards: layout.total })
    }

    /// Training's check: every label is below the class count, and the count is at most
    /// `MAX_CLASSES`. The error names the idx file and line of the first record at fault
    /// and the file that declared the count.
    pub fn check_labels(&self) -> Result<()> {
        let declared =
            || self.classes_from.as_ref().map_or("the largest label + 1".to_string(), |f| f.display().to_string());
        if self.num_classes > MAX_CLASSES {
            let top = self
                .shards
                .iter()
                .flat_map(|s| s.labels().iter().enumerate().map(move |(i, &l)| (l, s, i)))
                .max_by_key(|t| t.0);
            let at = top.map_or(String::new(), |(l, s, i)| format!("; the largest label is {l}, at {}", s.describe(i)));
            bail!(
                "{} classes (from {}) is more than the {MAX_CLASSES} (2^24) supported{at}",
                self.num_classes,
                declared()
            );
        }
        for shard in &self.shards {
            if let Some(i) = shard.labels().iter().position(|&l| l as usize >= self.num_classes) {
                bail!(
                    "{}: label {} is outside the {} classes that {} declares; add the class there or fix the label (`trainer verify` lists every such record)",
                    shard.describe(i),
                    shard.labels()[i],
                    self.num_classes,
                    declared()
                );
            }
        }
        Ok(())
    }

    /// Shards in the dataset, from file names alone.
    pub fn shard_count(spec: &Path) -> Result<usize> {
        Ok(Layout::resolve(spec)?.total)
    }

    /// Records in the opened shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(Shard::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// From `<name>.labels.tsv` (max label + 1), else the manifest's `num_classes`, with the
/// file it came from.
fn read_num_classes(layout: &Layout) -> Result<Option<(usize, PathBuf)>> {
    let labels = layout.labels_path();
    if labels.is_file() {
        let table = crate::format::LabelTable::load(&labels)?;
        return Ok(Some((table.num_classes(), labels)));
    }
    let manifest = layout.manifest_path();
    if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
        if let Some(n) = json.get("num_classes").and_then(|v| v.as_u64()) {
            return Ok(Some((n as usize, manifest)));
        }
    }
    Ok(None)
}

fn split_spec(spec: &Path) -> Result<(PathBuf, String)> {
    let name = spec
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("dataset spec {} must end in a UTF-8 name (<dir>/<name>)", spec.display()))?;
    let dir = match spec.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string()))
}

/// (k, n) of every `<name>-KKKKK-of-NNNNN.idx` in `dir`.
fn list_shards(dir: &Path, name: &str) -> Result<Vec<(usize, usize)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("dataset directory {} does not exist", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let file = entry.file_name();
        let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".idx")) else { continue };
        if let Some(kn) = format::parse_shard_stem(stem, name) {
            found.push(kn);
        }
    }
    found.sort();
    Ok(found)
}

/// Names of datasets in `dir`, for error hints.
fn dataset_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".idx").map(|s| s.to_string()))
        .map(|stem| match stem.rsplit_once("-of-").and_then(|(a, _)| a.rsplit_once('-')) {
            Some((name, _)) => name.to_string(),
            None => stem,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_shard(dir: &Path, stem: &str, payloads: &[(&str, u32, &[u8])]) {
        let mut bin = Vec::new();
        let mut idx = format::header_line() + "\n";
        for (path, label, bytes) in payloads {
            let start = bin.len() as u64;
            bin.extend_from_slice(bytes);
            idx.push_str(&format::format_v1(path, *label, start, bin.len() as u64, -1, -1, crc32c::crc32c(bytes)));
        }
        std::fs::write(dir.join(format!("{stem}.bin")), bin).unwrap();
        std::fs::write(dir.join(format!("{stem}.idx")), idx).unwrap();
    }

    #[test]
    fn opens_all_shards_or_a_filtered_subset() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), "ds-00000-of-00002", &[("a b.jpg", 0, b"hello"), ("c.jpg", 2, b"")]);
        write_shard(dir.path(), "ds-00001-of-00002", &[("d.jpg", 1, b"world!")]);
        let spec = dir.path().join("ds");
        let ds = Dataset::open(&spec).unwrap();
        assert_eq!((ds.len(), ds.total_shards, ds.num_classes, ds.name.as_str()), (3, 2, 3, "ds"));
        assert_eq!(ds.shards[0].record(0).unwrap().bytes, b"hello");
        assert_eq!(ds.shards[0].record(1).unwrap().bytes, b"");
        assert_eq!(ds.shards[0].path_of(0), "a b.jpg");
        assert_eq!(ds.shards[1].record(0).unwrap().label, 1);
        assert_eq!(ds.shards[1].checksum(0), Some(crc32c::crc32c(b"world!")));
        let odd = Dataset::open_filtered(&spec, |k, n| k % n == 1).unwrap();
        assert_eq!((odd.shards.len(), odd.shards[0].k(), odd.total_shards), (1, 1, 2));
        assert_eq!(Dataset::shard_count(&spec).unwrap(), 2);
    }

    #[test]
    fn missing_shard_and_truncated_bin_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), "ds-00001-of-00002", &[("d.jpg", 1, b"world!")]);
        let err = format!("{:#}", Dataset::open(&dir.path().join("ds")).err().unwrap());
        assert!(err.contains("shard 0 of 2 is missing"), "{err}");
        write_shard(dir.path(), "ds-00000-of-00002", &[("x.jpg", 0, b"0123456789")]);
        std::fs::write(dir.path().join("ds-00000-of-00002.bin"), b"01234").unwrap();
        let err = format!("{:#}", Dataset::open(&dir.path().join("ds")).err().unwrap());
        assert!(err.contains("ds-00000-of-00002.bin is 5 bytes but record 0 (x.jpg)"), "{err}");
        let lenient = Dataset::open_with(&dir.path().join("ds"), |_, _| true, false).unwrap();
        assert!(lenient.shards[0].record(0).is_err());
        // Read hints on a record past the bin's end, or past the index, are no-ops.
        lenient.shards[0].advise_random_access();
        (0..3).for_each(|i| lenient.shards[0].prefetch(i));
        assert!(lenient.shards[0].record(0).is_err());
    }

    #[test]
    fn reads_a_seed_pair_and_labels_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seed.bin"), b"AAABB").unwrap();
        std::fs::write(
            dir.path().join("seed.idx"),
            "__gender_test/0_male/enroll (10).jpg\t0\t0\t3\n__gender_test/1_female/x.jpg\t1\t3\t5\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("seed.labels.tsv"), "label\tname\n0\tm\n1\tf\n9\tz\n").unwrap();
        let ds = Dataset::open(&dir.path().join("seed")).unwrap();
        assert_eq!((ds.len(), ds.total_shards, ds.num_classes), (2, 1, 10));
        assert_eq!(ds.shards[0].version(), Version::Legacy);
        assert_eq!(ds.shards[0].record(1).unwrap().bytes, b"BB");
        assert_eq!(ds.shards[0].checksum(0), None);
        assert!(Dataset::open(&dir.path().join("seed.idx")).is_ok());
        ds.check_labels().unwrap();
        std::fs::write(dir.path().join("seed.labels.tsv"), "label\tname\n0\tm\n").unwrap();
        let short = Dataset::open(&dir.path().join("seed")).unwrap();
        let err = format!("{:#}", short.check_labels().unwrap_err());
        assert!(
            err.contains(
                "seed.idx line 2 (record 1, __gender_test/1_female/x.jpg): label 1 is outside the 1 classes that"
            ) && err.contains("seed.labels.tsv"),
            "{err}"
        );
        let err = format!("{:#}", Dataset::open(&dir.path().join("nope")).err().unwrap());
        assert!(err.contains("no dataset at") && err.contains("seed"), "{err}");
    }
}
