//! Which records a rank reads: whole shards k ≡ rank (mod world), or with `stripe` every
//! shard and records i ≡ rank (mod world). Several train sets become one view.

use crate::reader::Dataset;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A record of the view: `shard` indexes `RankView::dataset.shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordId {
    pub shard: u32,
    pub index: u32,
}

/// One rank's records with their label columns, flattened across shards and train sets.
pub struct RankView {
    /// The opened shards of every train set, in order (`name` joins the set names with `+`).
    pub dataset: Dataset,
    pub records: Vec<RecordId>,
    /// Identity labels; a later train set's labels are offset by the classes before it.
    pub labels: Vec<u32>,
    pub genders: Vec<i8>,
    pub ages: Vec<i8>,
    pub rank: usize,
    pub world: usize,
}

impl RankView {
    /// Opens the rank's shards (k ≡ rank mod world). Fewer shards than ranks is an error
    /// naming both numbers, unless `stripe` (then all shards, records i ≡ rank mod world).
    pub fn open(specs: &[PathBuf], rank: usize, world: usize, stripe: bool) -> Result<RankView> {
        if specs.is_empty() {
            bail!("no train sets given");
        }
        if world == 0 || rank >= world {
            bail!("rank {rank} is outside a world of {world}");
        }
        let mut view = RankView::empty(rank, world);
        for spec in specs {
            let ds = open_for_rank(spec, rank, world, stripe)?;
            // A label past the head's width would fail inside the loss, far from its file.
            ds.check_labels().with_context(|| format!("rank {rank}: checking the labels of {}", spec.display()))?;
            view.append(ds, stripe);
        }
        if view.records.is_empty() {
            bail!("rank {rank} of {world} has no records in {}", describe(specs));
        }
        let files: Vec<String> = view.dataset.shards.iter().map(|s| s.bin_path().display().to_string()).collect();
        tracing::info!(
            rank, world, stripe, records = view.records.len(),
            "rank {rank}/{world} reads {} shard file(s){}: {}",
            files.len(), if stripe { " (record stripes)" } else { "" }, files.join(", ")
        );
        Ok(view)
    }

    fn empty(rank: usize, world: usize) -> RankView {
        let dataset = Dataset { shards: Vec::new(), num_classes: 0, classes_from: None, name: String::new(), total_shards: 0 };
        RankView { dataset, records: Vec::new(), labels: Vec::new(), genders: Vec::new(), ages: Vec::new(), rank, world }
    }

    /// Appends a train set; with `stripe`, the global record count so far decides which
    /// records of it are this rank's, so stripes stay disjoint across sets.
    fn append(&mut self, ds: Dataset, stripe: bool) {
        let offset = self.dataset.num_classes as u32;
        let mut global = self.dataset.len();
        for shard in ds.shards {
            let s = self.dataset.shards.len() as u32;
            let (labels, genders, ages) = (shard.labels(), shard.genders(), shard.ages());
            for i in 0..shard.len() {
                if !stripe || global % self.world == self.rank {
                    self.records.push(RecordId { shard: s, index: i as u32 });
                    self.labels.push(labels[i] + offset);
                    self.genders.push(genders[i]);
                    self.ages.push(ages[i]);
                }
                global += 1;
            }
            self.dataset.shards.push(shard);
        }
        self.dataset.num_classes += ds.num_classes;
        self.dataset.total_shards += ds.total_shards;
        if !self.dataset.name.is_empty() {
            self.dataset.name.push('+');
        }
        self.dataset.name.push_str(&ds.name);
    }

    /// Identity classes over all train sets (the FR head's width).
    pub fn num_classes(&self) -> usize {
        self.dataset.num_classes
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

fn open_for_rank(spec: &Path, rank: usize, world: usize, stripe: bool) -> Result<Dataset> {
    let total = Dataset::shard_count(spec).with_context(|| format!("rank {rank}: finding shards of {}", spec.display()))?;
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
        tracing::warn!("{} has {total} shards for {world} ranks: ranks get unequal shares (steps per epoch are still equalised)", spec.display());
    }
    Dataset::open_filtered(spec, |k, _| k % world == rank)
        .with_context(|| format!("rank {rank}: opening shards k ≡ {rank} (mod {world}) of {}", spec.display()))
}

fn describe(specs: &[PathBuf]) -> String {
    specs.iter().map(|s| s.display().to_string()).collect::<Vec<_>>().join(", ")
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
        let views: Vec<RankView> = (0..3).map(|r| RankView::open(std::slice::from_ref(&spec), r, 3, false).unwrap()).collect();
        assert_eq!(shard_ks(&views[0]), vec![0, 3]);
        assert_eq!(shard_ks(&views[1]), vec![1, 4]);
        assert_eq!(shard_ks(&views[2]), vec![2]);
        let all: Vec<BTreeSet<String>> = views.iter().map(paths).collect();
        assert_eq!(all.iter().map(|s| s.len()).sum::<usize>(), 40);
        assert_eq!(all.iter().flatten().collect::<BTreeSet<_>>().len(), 40);
        assert!(views.iter().all(|v| v.labels.len() == v.records.len() && v.num_classes() == 5));
    }

    #[test]
    fn fewer_shards_than_ranks_names_both_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 2, &recs(10));
        let err = format!("{:#}", RankView::open(&[spec], 0, 3, false).err().expect("must fail"));
        assert!(err.contains("2 shard") && err.contains("3 ranks") && err.contains("--stripe-records"), "{err}");
    }

    #[test]
    fn stripes_split_records_of_all_shards() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 2, &recs(31));
        let views: Vec<RankView> = (0..4).map(|r| RankView::open(std::slice::from_ref(&spec), r, 4, true).unwrap()).collect();
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
        let v = RankView::open(&[a, b], 0, 1, false).unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(v.num_classes(), 10);
        assert_eq!(v.labels[10..], [5, 6, 7, 8, 9, 5]);
        assert_eq!(v.dataset.name, "a+b");
        assert_eq!(v.records[12], RecordId { shard: 1, index: 2 });
    }

    #[test]
    fn a_label_outside_the_labels_table_names_its_idx_line() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 1, &recs(10));
        std::fs::write(dir.path().join("d.labels.tsv"), "label\tname\n0\ta\n1\tb\n2\tc\n").unwrap();
        let err = format!("{:#}", RankView::open(&[spec], 0, 1, false).err().expect("labels 3 and 4 have no class"));
        assert!(err.contains("d-00000-of-00001.idx line 5 (record 3, c3/r3.png): label 3 is outside the 3 classes") && err.contains("d.labels.tsv"), "{err}");
    }

    #[test]
    fn a_flipped_payload_byte_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 1, &recs(4));
        let bin = dir.path().join("d-00000-of-00001.bin");
        let mut bytes = std::fs::read(&bin).unwrap();
        bytes[4] ^= 0x40; // record 1
        std::fs::write(&bin, bytes).unwrap();
        let v = RankView::open(&[spec], 0, 1, false).unwrap();
        assert!(v.bytes(0).is_ok());
        let err = format!("{:#}", v.bytes(1).unwrap_err());
        assert!(err.contains("record 1") && err.contains("crc32c") && err.contains("d-00000-of-00001.bin"), "{err}");
    }
}
