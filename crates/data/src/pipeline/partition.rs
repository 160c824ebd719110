//! Which records a rank reads — whole shards k ≡ rank (mod world), or with `stripe` every
//! shard and records i ≡ rank (mod world) — and what each record teaches each head.
//! Several datasets become one view.

use crate::reader::Dataset;
use crate::targets::{check_classes, resolve_column, Column, ColumnStats, Head, SetSpec};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A record of the view: `shard` indexes `RankView::dataset.shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordId {
    pub shard: u32,
    pub index: u32,
}

/// How a view is cut and labelled.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    pub rank: usize,
    pub world: usize,
    /// Split records instead of shards across ranks.
    pub stripe: bool,
    /// The heads the run trains (what a dataset without a task prefix serves).
    pub heads: Vec<Head>,
    /// Gender classes: a class at or above it is an error naming the record.
    pub gender_classes: usize,
}

impl ViewOptions {
    /// One process reading everything for `heads`.
    pub fn whole(heads: &[Head]) -> ViewOptions {
        ViewOptions { rank: 0, world: 1, stripe: false, heads: heads.to_vec(), gender_classes: 2 }
    }
}

/// One dataset of a view: which column each head it serves reads, and how many of this
/// rank's records have that target known.
#[derive(Clone, Debug)]
pub struct SetInfo {
    pub spec: SetSpec,
    pub records: usize,
    pub targets: Vec<(Head, Column, usize)>,
}

/// One rank's records with each head's target, flattened across shards and datasets.
pub struct RankView {
    /// The opened shards of every dataset, in order (`name` joins the set names with `+`).
    pub dataset: Dataset,
    pub records: Vec<RecordId>,
    /// Each record's class for the FR, Gender and Age head (`Head as usize`); -1 where the
    /// dataset does not serve that head or the record's value is unknown. Identity labels
    /// of a later dataset are offset by the identities before it.
    pub targets: [Vec<i32>; 3],
    /// Identities over the FR datasets (the ArcFace layer's width).
    pub identities: usize,
    pub sets: Vec<SetInfo>,
    pub rank: usize,
    pub world: usize,
}

impl RankView {
    /// Opens the rank's shards of every dataset (k ≡ rank mod world). Fewer shards than
    /// ranks is an error naming both numbers, unless `stripe`.
    pub fn open(specs: &[SetSpec], opts: &ViewOptions) -> Result<RankView> {
        if specs.is_empty() {
            bail!("no datasets given");
        }
        if opts.world == 0 || opts.rank >= opts.world {
            bail!("rank {} is outside a world of {}", opts.rank, opts.world);
        }
        let mut view = RankView::empty(opts.rank, opts.world);
        for spec in specs {
            let ds = open_for_rank(&spec.path, opts.rank, opts.world, opts.stripe)?;
            // A label past the head's width would fail inside the loss, far from its file.
            ds.check_labels().with_context(|| format!("rank {}: checking the labels of {spec}", opts.rank))?;
            let columns = columns_for(spec, opts)?;
            view.append(spec, ds, &columns, opts.stripe);
        }
        if view.records.is_empty() {
            bail!("rank {} of {} has no records in {}", opts.rank, opts.world, describe(specs));
        }
        let files: Vec<String> = view.dataset.shards.iter().map(|s| s.bin_path().display().to_string()).collect();
        tracing::info!(
            "rank {}/{} reads {} shard file(s){}: {}",
            opts.rank,
            opts.world,
            files.len(),
            if opts.stripe { " (record stripes)" } else { "" },
            files.join(", ")
        );
        Ok(view)
    }

    /// Plain dataset paths read for FR by one rank (benchmarks, tools).
    pub fn open_paths(paths: &[PathBuf], rank: usize, world: usize, stripe: bool) -> Result<RankView> {
        let specs: Vec<SetSpec> = paths.iter().map(|p| SetSpec { head: None, path: p.clone(), column: None }).collect();
        RankView::open(&specs, &ViewOptions { rank, world, stripe, heads: vec![Head::Fr], gender_classes: 2 })
    }

    fn empty(rank: usize, world: usize) -> RankView {
        let dataset =
            Dataset { shards: Vec::new(), num_classes: 0, classes_from: None, name: String::new(), total_shards: 0 };
        RankView {
            dataset,
            records: Vec::new(),
            targets: Default::default(),
            identities: 0,
            sets: Vec::new(),
            rank,
            world,
        }
    }

    /// Appends a dataset; with `stripe`, the global record count so far decides which
    /// records of it are this rank's, so stripes stay disjoint across datasets.
    fn append(&mut self, spec: &SetSpec, ds: Dataset, columns: &[(Head, Column)], stripe: bool) {
        let offset = self.identities as i64;
        let mut global = self.dataset.len();
        let mut info =
            SetInfo { spec: spec.clone(), records: 0, targets: columns.iter().map(|&(h, c)| (h, c, 0)).collect() };
        for shard in ds.shards {
            let s = self.dataset.shards.len() as u32;
            for i in 0..shard.len() {
                if !stripe || global % self.world == self.rank {
                    self.records.push(RecordId { shard: s, index: i as u32 });
                    info.records += 1;
                    for head in Head::ALL {
                        let t = target(&shard, i, columns, head, offset);
                        if t >= 0 {
                            if let Some(slot) = info.targets.iter_mut().find(|(h, _, _)| *h == head) {
                                slot.2 += 1;
                            }
                        }
                        self.targets[head as usize].push(t as i32);
                    }
                }
                global += 1;
            }
            self.dataset.shards.push(shard);
        }
        if columns.iter().any(|(h, _)| *h == Head::Fr) {
            self.identities += ds.num_classes;
        }
        self.dataset.num_classes = self.identities;
        self.dataset.total_shards += ds.total_shards;
        if !self.dataset.name.is_empty() {
            self.dataset.name.push('+');
        }
        self.dataset.name.push_str(&ds.name);
        self.sets.push(info);
    }

    /// Identity classes over the FR datasets (the FR head's width).
    pub fn num_classes(&self) -> usize {
        self.identities
    }

    /// Identity labels (FR targets), as the P×K sampler groups them.
    pub fn labels(&self) -> &[i32] {
        &self.targets[Head::Fr as usize]
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Starts reading record `i` in the background (see `Shard::prefetch`).
    pub fn prefetch(&self, i: usize) {
        let id = self.records[i];
        self.dataset.shards[id.shard as usize].prefetch(id.index as usize);
    }

    /// The payload of view record `i`, checked against its crc32c when the idx has one
    /// (a flipped bit can still decode); errors name the shard file, record and path.
    pub fn bytes(&self, i: usize) -> Result<&[u8]> {
        let id = self.records[i];
        let shard = &self.dataset.shards[id.shard as usize];
        let bytes = shard.payload(id.index as usize)?;
        if let Some(want) = shard.checksum(id.index as usize) {
            let got = crc32c::crc32c(bytes);
            if got != want {
                bail!("{}: crc32c {got:08x} but the idx says {want:08x}", self.describe_record(i));
            }
        }
        Ok(bytes)
    }

    /// "`<bin>` record N (`<path>`)", for messages about view record `i`.
    pub fn describe_record(&self, i: usize) -> String {
        let id = self.records[i];
        let shard = &self.dataset.shards[id.shard as usize];
        format!("{} record {} ({})", shard.bin_path().display(), id.index, shard.path_of(id.index as usize))
    }
}

/// Record `i`'s class for `head` from its dataset's column (-1: not served or unknown).
fn target(shard: &crate::reader::Shard, i: usize, columns: &[(Head, Column)], head: Head, fr_offset: i64) -> i64 {
    let Some(&(_, column)) = columns.iter().find(|(h, _)| *h == head) else { return -1 };
    let v = column_value(shard, i, column);
    match (head, column) {
        (Head::Fr, _) if v >= 0 => v + fr_offset,
        _ => v,
    }
}

fn column_value(shard: &crate::reader::Shard, i: usize, column: Column) -> i64 {
    match column {
        Column::Label => shard.labels()[i] as i64,
        Column::Gender => shard.genders()[i] as i64,
        Column::Age => shard.ages()[i] as i64,
    }
}

/// Which column each head the dataset serves reads, decided on the whole dataset (every
/// shard's index) so every rank decides the same; a Gender class too large for the head is
/// an error naming the record.
fn columns_for(spec: &SetSpec, opts: &ViewOptions) -> Result<Vec<(Head, Column)>> {
    let serves = spec.serves(&opts.heads);
    let classifies = serves.iter().any(|&h| h != Head::Fr);
    if !classifies {
        return Ok(serves.into_iter().map(|h| (h, Column::Label)).collect());
    }
    let whole =
        Dataset::open(&spec.path).with_context(|| format!("opening {} to read its columns", spec.path.display()))?;
    let stats = column_stats(&whole);
    let only_one = serves.len() == 1;
    let mut out = Vec::new();
    for head in serves {
        let column = resolve_column(spec, head, only_one, &stats);
        check_classes(&spec.to_string(), head, column, opts.gender_classes, &stats, || {
            first_at_least(&whole, column, opts.gender_classes as i64)
        })?;
        out.push((head, column));
    }
    Ok(out)
}

pub(crate) fn column_stats(ds: &Dataset) -> ColumnStats {
    let mut stats = ColumnStats::default();
    for shard in &ds.shards {
        stats.records += shard.len();
        for i in 0..shard.len() {
            for c in [Column::Label, Column::Gender, Column::Age] {
                stats.add(c, column_value(shard, i, c));
            }
        }
    }
    stats
}

/// "`<idx>` line N (`<path>`)" of the first record whose `column` is at least `limit`.
fn first_at_least(ds: &Dataset, column: Column, limit: i64) -> Option<String> {
    ds.shards.iter().find_map(|shard| {
        let i = (0..shard.len()).find(|&i| column_value(shard, i, column) >= limit)?;
        Some(format!("record {i} of {} ({})", shard.idx_path().display(), shard.path_of(i)))
    })
}

fn open_for_rank(spec: &Path, rank: usize, world: usize, stripe: bool) -> Result<Dataset> {
    let total =
        Dataset::shard_count(spec).with_context(|| format!("rank {rank}: finding shards of {}", spec.display()))?;
    if stripe {
        return Dataset::open(spec).with_context(|| format!("rank {rank}: opening {}", spec.display()));
    }
    if total < world {
        bail!(
            "{} has {total} shard(s) but the job has {world} ranks, so some ranks would read nothing: \
             repack with `trainer pack --shards {world}` (or a multiple of it), run fewer ranks, or pass \
             --stripe-records to split records instead of shards",
            spec.display()
        );
    }
    if total % world != 0 {
        tracing::warn!(
            "{} has {total} shards for {world} ranks: ranks get unequal shares (steps per epoch are still equalised)",
            spec.display()
        );
    }
    Dataset::open_filtered(spec, |k, _| k % world == rank)
        .with_context(|| format!("rank {rank}: opening shards k ≡ {rank} (mod {world}) of {}", spec.display()))
}

fn describe(specs: &[SetSpec]) -> String {
    specs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testdata::{write_shards, Rec};
    use std::collections::BTreeSet;

    /// Tiny payloads are enough: partitioning never decodes.
    fn recs(n: usize) -> Vec<Rec> {
        (0..n).map(|i| ((i % 5) as u32, 0, 0, vec![i as u8; 3])).collect()
    }

    fn shard_ks(v: &RankView) -> Vec<usize> {
        v.dataset.shards.iter().map(|s| s.k()).collect()
    }

    fn paths(v: &RankView) -> BTreeSet<String> {
        v.records.iter().map(|r| v.dataset.shards[r.shard as usize].path_of(r.index as usize).to_string()).collect()
    }

    #[test]
    fn ranks_take_shards_k_mod_world_and_cover_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 5, &recs(40));
        let views: Vec<RankView> =
            (0..3).map(|r| RankView::open_paths(std::slice::from_ref(&spec), r, 3, false).unwrap()).collect();
        assert_eq!(shard_ks(&views[0]), vec![0, 3]);
        assert_eq!(shard_ks(&views[1]), vec![1, 4]);
        assert_eq!(shard_ks(&views[2]), vec![2]);
        let all: Vec<BTreeSet<String>> = views.iter().map(paths).collect();
        assert_eq!(all.iter().map(|s| s.len()).sum::<usize>(), 40);
        assert_eq!(all.iter().flatten().collect::<BTreeSet<_>>().len(), 40);
        assert!(views.iter().all(|v| v.labels().len() == v.records.len() && v.num_classes() == 5));
    }

    #[test]
    fn fewer_shards_than_ranks_names_both_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 2, &recs(10));
        let err = format!("{:#}", RankView::open_paths(&[spec], 0, 3, false).err().expect("must fail"));
        assert!(err.contains("2 shard") && err.contains("3 ranks") && err.contains("--stripe-records"), "{err}");
    }

    #[test]
    fn stripes_split_records_of_all_shards() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 2, &recs(31));
        let views: Vec<RankView> =
            (0..4).map(|r| RankView::open_paths(std::slice::from_ref(&spec), r, 4, true).unwrap()).collect();
        assert!(views.iter().all(|v| v.dataset.shards.len() == 2));
        let sizes: Vec<usize> = views.iter().map(|v| v.len()).collect();
        assert_eq!(sizes, vec![8, 8, 8, 7]);
        assert_eq!(views.iter().flat_map(paths).collect::<BTreeSet<_>>().len(), 31);
    }

    #[test]
    fn train_sets_are_concatenated_with_label_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_shards(dir.path(), "a", 1, &recs(10));
        let b = write_shards(dir.path(), "b", 1, &recs(6));
        let v = RankView::open_paths(&[a, b], 0, 1, false).unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(v.num_classes(), 10);
        assert_eq!(v.labels()[10..], [5, 6, 7, 8, 9, 5]);
        assert_eq!(v.dataset.name, "a+b");
        assert_eq!(v.records[12], RecordId { shard: 1, index: 2 });
    }

    /// The seed's Gender bins: no gender column, the label is the class.
    #[test]
    fn a_gender_only_set_reads_its_label_column_and_multi_sets_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let seed_style: Vec<Rec> = (0..6).map(|i| ((i % 2) as u32, -1, -1, vec![i as u8; 3])).collect();
        let g = write_shards(dir.path(), "g", 1, &seed_style);
        let heads = [Head::Fr, Head::Gender, Head::Age];
        let spec = |s: String| -> SetSpec { s.parse().unwrap() };
        let v = RankView::open(&[spec(format!("gender={}", g.display()))], &ViewOptions::whole(&heads)).unwrap();
        assert_eq!(v.targets[Head::Gender as usize], vec![0, 1, 0, 1, 0, 1]);
        assert!(v.targets[Head::Fr as usize].iter().chain(&v.targets[Head::Age as usize]).all(|&t| t == -1));
        assert_eq!(v.sets[0].targets, vec![(Head::Gender, Column::Label, 6)]);
        assert_eq!(v.num_classes(), 0, "a Gender set adds no identities");
        let shared = RankView::open(&[spec(g.display().to_string())], &ViewOptions::whole(&heads)).unwrap();
        assert!(
            shared.targets[Head::Gender as usize].iter().all(|&t| t == -1),
            "no fallback for a set that serves all heads"
        );
        let named = RankView::open(&[spec(format!("{}@label", g.display()))], &ViewOptions::whole(&heads)).unwrap();
        assert_eq!(named.targets[Head::Gender as usize][1], 1);
    }

    #[test]
    fn a_label_column_of_identities_is_no_gender() {
        let dir = tempfile::tempdir().unwrap();
        let seed_style: Vec<Rec> = (0..20).map(|i| ((i % 5) as u32, -1, -1, vec![i as u8; 3])).collect();
        let ids = write_shards(dir.path(), "ids", 2, &seed_style);
        let err = RankView::open(
            &[format!("gender={}", ids.display()).parse().unwrap()],
            &ViewOptions::whole(&[Head::Gender]),
        )
        .err()
        .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("`label` column")
                && msg.contains("record 1 of")
                && msg.contains("ids-00000-of-00002.idx")
                && msg.contains("2 classes"),
            "{msg}"
        );
    }

    #[test]
    fn a_label_outside_the_labels_table_names_its_idx_line() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 1, &recs(10));
        std::fs::write(dir.path().join("d.labels.tsv"), "label\tname\n0\ta\n1\tb\n2\tc\n").unwrap();
        let err =
            format!("{:#}", RankView::open_paths(&[spec], 0, 1, false).err().expect("labels 3 and 4 have no class"));
        assert!(
            err.contains("d-00000-of-00001.idx line 5 (record 3, c3/r3.png): label 3 is outside the 3 classes")
                && err.contains("d.labels.tsv"),
            "{err}"
        );
    }

    #[test]
    fn a_flipped_payload_byte_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 1, &recs(4));
        let bin = dir.path().join("d-00000-of-00001.bin");
        let mut bytes = std::fs::read(&bin).unwrap();
        bytes[4] ^= 0x40; // record 1
        std::fs::write(&bin, bytes).unwrap();
        let v = RankView::open_paths(&[spec], 0, 1, false).unwrap();
        assert!(v.bytes(0).is_ok());
        let err = format!("{:#}", v.bytes(1).unwrap_err());
        assert!(err.contains("record 1") && err.contains("crc32c") && err.contains("d-00000-of-00001.bin"), "{err}");
    }
}
