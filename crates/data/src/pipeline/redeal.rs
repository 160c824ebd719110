//! Resuming a pool's epoch in another rank layout. A position says what it means: the
//! layouts its epoch ran in so far (world size, per-rank batch, stripes, sampler, seed), each
//! with the batches every rank took in it. Replaying them — each old rank's view and sampler,
//! labels only, no image read — gives the records the epoch consumed, keyed by shard file and
//! record; each rank of the new layout then draws the rest of the epoch from the records of
//! its own view not consumed yet. The next epoch starts as usual in the new layout.

use super::partition::RankView;
#[cfg(test)]
use super::sampler::RestEpoch;
use super::sampler::{balanced_epoch, group_by_label, Sampler, SamplerKind, SamplerPosition};
use crate::rng::{mix, Rng};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

const REST_SALT: u64 = 0x4E57_DEA1_0F5E_9A7B;

/// What decides which records each rank reads in an epoch, and in which order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub world: usize,
    /// Records per rank per step.
    pub batch: usize,
    /// Records split across ranks instead of whole shards.
    pub stripe: bool,
    pub sampler: SamplerKind,
    pub seed: u64,
}

/// A finished part of an epoch: its layout and the batches each of its ranks took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    #[serde(flatten)]
    pub layout: Layout,
    pub done: u64,
}

/// A pool's position as `state.json` keeps it: the next batch (`batch` counts within the
/// current layout's part of `epoch`), that layout, and the epoch's earlier parts. Positions
/// written before layouts were kept have only `epoch` and `batch`: their layout is the
/// writer's (its world size and settings in the same `state.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPosition {
    pub epoch: u64,
    pub batch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Segment>,
}

/// How a pool's loader starts after a resume.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// The saved position in the layout it was saved in: it replays exactly.
    At(SamplerPosition),
    /// The rest of an epoch begun in another layout.
    Rest(Rest),
}

/// The rest of an epoch on one rank of the new layout.
#[derive(Debug, PartialEq, Eq)]
pub struct Rest {
    pub epoch: u64,
    /// The epoch's parts before this one; this one is part `earlier.len()`.
    pub earlier: Vec<Segment>,
    /// The rank's view indices not consumed yet this epoch, in view order.
    pub remaining: Vec<u32>,
    /// Batches of this part already taken (a resume in the layout the rest began in).
    pub batch: u64,
}

impl Rest {
    /// Slots the earlier parts used on a rank (each slot draws its own flip).
    pub fn slot_base(&self) -> u64 {
        self.earlier.iter().map(|s| s.done * s.layout.batch as u64).sum()
    }
}

/// Opens rank `rank` of `world`'s view of the pool's datasets (`stripe`: split records).
pub type OpenView<'a> = dyn FnMut(usize, usize, bool) -> Result<RankView> + 'a;

/// Where the pool goes on in layout `now` on `view`'s rank; `was` is the layout the saved
/// position was taken in.
pub fn resume(
    saved: &PoolPosition,
    was: &Layout,
    now: &Layout,
    view: &RankView,
    open: &mut OpenView,
) -> Result<Resume> {
    let mut earlier = saved.earlier.clone();
    let batch = if was == now {
        saved.batch
    } else {
        if saved.batch > 0 {
            earlier.push(Segment { layout: was.clone(), done: saved.batch });
        }
        0
    };
    if earlier.is_empty() {
        return Ok(Resume::At(SamplerPosition { epoch: saved.epoch, batch }));
    }
    let consumed = Consumed::replay(saved.epoch, &earlier, open)?;
    let remaining = consumed.remaining(view);
    Ok(Resume::Rest(Rest { epoch: saved.epoch, earlier, remaining, batch }))
}

/// Part `part`'s batches on `rank`: `steps × batch` view indices from `remaining` — uniform:
/// a shuffle of (seed, epoch, part, rank); sequential: view order; P×K: balanced batches over
/// the remaining records grouped by identity (over the whole view once fewer than P
/// identities remain, as P×K batches repeat records anyway). A shorter `steps` gives a prefix.
pub fn rest_plan(
    labels: &[i32],
    layout: &Layout,
    (epoch, part, rank): (u64, usize, usize),
    remaining: &[u32],
    steps: u64,
) -> Result<Vec<u32>> {
    let total = steps as usize * layout.batch;
    let mut rng = Rng::derive(mix(layout.seed ^ REST_SALT ^ part as u64), epoch, rank as u64);
    match layout.sampler {
        SamplerKind::Uniform | SamplerKind::Sequential => {
            if remaining.len() < total {
                bail!(
                    "rank {rank}: {} records left in epoch {epoch} for {steps} steps of {}",
                    remaining.len(),
                    layout.batch
                );
            }
            let mut order = remaining.to_vec();
            if layout.sampler == SamplerKind::Uniform {
                rng.shuffle(&mut order);
            }
            order.truncate(total);
            Ok(order)
        }
        SamplerKind::Balanced { p, k } => {
            let mut by_identity: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
            for &i in remaining.iter().filter(|&&i| labels[i as usize] >= 0) {
                by_identity.entry(labels[i as usize]).or_default().push(i);
            }
            let mut classes: Vec<Vec<u32>> = by_identity.into_values().collect();
            if classes.len() < p {
                classes = group_by_label(labels);
            }
            if classes.len() < p {
                bail!("rank {rank}: P×K needs {p} identities but the rank's records hold {}", classes.len());
            }
            Ok(balanced_epoch(&mut rng, &classes, p, k, steps as usize))
        }
    }
}

/// The records an epoch consumed, by shard file and record index.
#[derive(Default)]
struct Consumed {
    files: HashMap<PathBuf, u32>,
    keys: HashSet<u64>,
}

fn key(file: u32, index: u32) -> u64 {
    (u64::from(file) << 32) | u64::from(index)
}

impl Consumed {
    /// Replays every rank of every part in order; a part's draws depend on the parts before.
    fn replay(epoch: u64, earlier: &[Segment], open: &mut OpenView) -> Result<Consumed> {
        let mut consumed = Consumed::default();
        for (part, seg) in earlier.iter().enumerate() {
            let l = &seg.layout;
            let mut taken = Vec::new();
            for rank in 0..l.world {
                let view = open(rank, l.world, l.stripe).with_context(|| {
                    format!("replaying epoch {epoch}'s part {part} (rank {rank} of {}, {} batches)", l.world, seg.done)
                })?;
                let plan = consumed.plan(&view, seg, (epoch, part, rank))?;
                let files = consumed.file_ids(&view);
                let n = (seg.done as usize * l.batch).min(plan.len());
                taken.extend(plan[..n].iter().map(|&i| {
                    let r = view.records[i as usize];
                    key(files[r.shard as usize], r.index)
                }));
            }
            consumed.keys.extend(taken);
        }
        Ok(consumed)
    }

    /// What `rank` drew in `seg`: part 0 is the epoch's own sampler, a later part a rest.
    fn plan(&self, view: &RankView, seg: &Segment, (epoch, part, rank): (u64, usize, usize)) -> Result<Vec<u32>> {
        let l = &seg.layout;
        if part == 0 {
            let sampler = Sampler::new(l.sampler, view.labels(), l.batch, l.seed, rank, Some(seg.done.max(1)))?;
            return Ok(sampler.epoch(epoch));
        }
        rest_plan(view.labels(), l, (epoch, part, rank), &self.remaining(view), seg.done)
    }

    fn file_ids(&mut self, view: &RankView) -> Vec<u32> {
        let next = |files: &HashMap<PathBuf, u32>| files.len() as u32;
        view.dataset
            .shards
            .iter()
            .map(|s| {
                let id = next(&self.files);
                *self.files.entry(s.bin_path().to_path_buf()).or_insert(id)
            })
            .collect()
    }

    /// View indices of `view` not consumed, in view order.
    fn remaining(&self, view: &RankView) -> Vec<u32> {
        let files: Vec<Option<u32>> =
            view.dataset.shards.iter().map(|s| self.files.get(s.bin_path()).copied()).collect();
        (0..view.len() as u32)
            .filter(|&i| {
                let r = view.records[i as usize];
                files[r.shard as usize].is_none_or(|f| !self.keys.contains(&key(f, r.index)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testdata::{write_shards, Rec};
    use std::collections::BTreeSet;
    use std::path::Path;

    /// `n` records of 8 identities, tiny payloads: a replay reads labels only.
    fn recs(n: usize) -> Vec<Rec> {
        (0..n).map(|i| ((i % 8) as u32, 0, 0, vec![i as u8; 3])).collect()
    }

    fn layout(world: usize, batch: usize, stripe: bool) -> Layout {
        Layout { world, batch, stripe, sampler: SamplerKind::Uniform, seed: 9 }
    }

    fn opener(spec: &Path) -> impl FnMut(usize, usize, bool) -> Result<RankView> + '_ {
        move |rank, world, stripe| RankView::open_paths(&[spec.to_path_buf()], rank, world, stripe)
    }

    /// (shard file, index) of view record `i`: the identity every layout agrees on.
    fn id(view: &RankView, i: u32) -> (String, u32) {
        let r = view.records[i as usize];
        (view.dataset.shards[r.shard as usize].bin_path().display().to_string(), r.index)
    }

    /// What `steps` batches on every rank of `now` draw after `saved` (taken in `was`), as
    /// `Pools` runs them: the ranks agree on the smallest share; `None` steps runs to the end
    /// of the epoch. Returns the records drawn and the position after.
    fn run_part(
        spec: &Path,
        saved: &PoolPosition,
        was: &Layout,
        now: &Layout,
        steps: Option<u64>,
    ) -> (Vec<(String, u32)>, PoolPosition) {
        let mut open = opener(spec);
        let views: Vec<RankView> = (0..now.world).map(|r| open(r, now.world, now.stripe).unwrap()).collect();
        let rests: Vec<Rest> = views
            .iter()
            .map(|v| match resume(saved, was, now, v, &mut open).unwrap() {
                Resume::Rest(rest) => rest,
                at => panic!("a layout change must re-deal: {at:?}"),
            })
            .collect();
        let agreed = rests.iter().map(|r| (r.remaining.len() / now.batch) as u64).min().unwrap();
        let take = steps.unwrap_or(agreed - rests[0].batch);
        assert!(rests[0].batch + take <= agreed, "the test asks for more steps than the epoch has left");
        let mut drawn = Vec::new();
        for (rank, (v, rest)) in views.iter().zip(&rests).enumerate() {
            let part = (rest.epoch, rest.earlier.len(), rank);
            let plan = rest_plan(v.labels(), now, part, &rest.remaining, agreed).unwrap();
            let (from, to) = (rest.batch as usize * now.batch, (rest.batch + take) as usize * now.batch);
            drawn.extend(plan[from..to].iter().map(|&i| id(v, i)));
        }
        let after = PoolPosition {
            epoch: saved.epoch,
            batch: rests[0].batch + take,
            layout: Some(now.clone()),
            earlier: rests[0].earlier.clone(),
        };
        (drawn, after)
    }

    /// Every record of the set, by shard file and index.
    fn all(spec: &Path) -> BTreeSet<(String, u32)> {
        let v = RankView::open_paths(&[spec.to_path_buf()], 0, 1, false).unwrap();
        (0..v.len() as u32).map(|i| id(&v, i)).collect()
    }

    #[test]
    fn a_position_written_before_layouts_reads_as_epoch_and_batch() {
        let old: PoolPosition = serde_json::from_str(r#"{"epoch":2,"batch":5}"#).unwrap();
        assert_eq!(old, PoolPosition { epoch: 2, batch: 5, layout: None, earlier: vec![] });
        let new = PoolPosition {
            epoch: 1,
            batch: 3,
            layout: Some(layout(3, 4, true)),
            earlier: vec![Segment { layout: layout(1, 8, false), done: 2 }],
        };
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.starts_with(r#"{"epoch":1,"batch":3,"layout":{"world":3"#), "{json}");
        assert_eq!(serde_json::from_str::<PoolPosition>(&json).unwrap(), new);
    }

    #[test]
    fn the_same_layout_resumes_at_the_saved_batch() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 2, &recs(40));
        let view = RankView::open_paths(std::slice::from_ref(&spec), 0, 1, false).unwrap();
        let saved = PoolPosition { epoch: 3, batch: 4, layout: None, earlier: vec![] };
        let l = layout(1, 4, false);
        let got = resume(&saved, &l, &l, &view, &mut opener(&spec)).unwrap();
        assert_eq!(got, Resume::At(SamplerPosition { epoch: 3, batch: 4 }));
        let fresh = PoolPosition { batch: 0, ..saved };
        let other = resume(&fresh, &l, &layout(2, 4, false), &view, &mut opener(&spec)).unwrap();
        assert_eq!(other, Resume::At(SamplerPosition { epoch: 3, batch: 0 }), "nothing consumed: a plain epoch");
    }

    /// One rank took 3 batches of its epoch; the replay on a 2-rank layout finds exactly
    /// those 12 records, and the new ranks' remaining records are the others, once each.
    #[test]
    fn the_replay_finds_exactly_the_consumed_records() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 4, &recs(60));
        let one = RankView::open_paths(std::slice::from_ref(&spec), 0, 1, false).unwrap();
        let was = layout(1, 4, false);
        let sampler = Sampler::new(SamplerKind::Uniform, one.labels(), 4, was.seed, 0, Some(15)).unwrap();
        let consumed: BTreeSet<(String, u32)> = sampler.epoch(1)[..12].iter().map(|&i| id(&one, i)).collect();
        assert_eq!(consumed.len(), 12);
        let saved = PoolPosition { epoch: 1, batch: 3, layout: Some(was.clone()), earlier: vec![] };
        let now = layout(2, 3, true);
        let mut left = Vec::new();
        for rank in 0..2 {
            let view = RankView::open_paths(std::slice::from_ref(&spec), rank, 2, true).unwrap();
            let Resume::Rest(rest) = resume(&saved, &was, &now, &view, &mut opener(&spec)).unwrap() else {
                panic!("a new layout re-deals")
            };
            assert_eq!(rest.earlier, vec![Segment { layout: was.clone(), done: 3 }]);
            assert_eq!((rest.batch, rest.slot_base()), (0, 12));
            left.extend(rest.remaining.iter().map(|&i| id(&view, i)));
        }
        let left_set: BTreeSet<_> = left.iter().cloned().collect();
        assert_eq!(left.len(), 48, "a remaining record was dealt twice");
        assert!(left_set.is_disjoint(&consumed));
        assert_eq!(left_set.union(&consumed).count(), 60);
    }

    /// 1 → 2 ranks (whole shards) → 3 ranks (stripes) → 1 rank within one epoch, with other
    /// batch sizes: every record is drawn once; each later part replays the earlier rests.
    #[test]
    fn an_epoch_through_four_layouts_draws_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 6, &recs(96));
        let one = RankView::open_paths(std::slice::from_ref(&spec), 0, 1, false).unwrap();
        let first = layout(1, 4, false);
        let sampler = Sampler::new(SamplerKind::Uniform, one.labels(), 4, first.seed, 0, Some(24)).unwrap();
        let mut drawn: Vec<(String, u32)> = sampler.epoch(0)[..8].iter().map(|&i| id(&one, i)).collect();
        let mut pos = PoolPosition { epoch: 0, batch: 2, layout: Some(first.clone()), earlier: vec![] };
        let mut was = first;
        // 8 + 2×3×2 + 3×2×2 = 32 records before the last part; 64 are left for batches of 4.
        for (now, steps) in [(layout(2, 3, false), Some(2)), (layout(3, 2, true), Some(2)), (layout(1, 4, false), None)]
        {
            let (got, after) = run_part(&spec, &pos, &was, &now, steps);
            drawn.extend(got);
            (pos, was) = (after, now);
        }
        assert_eq!(pos.batch, 16, "the last part runs the 64 records left");
        assert_eq!(pos.earlier.len(), 3);
        let distinct: BTreeSet<_> = drawn.iter().cloned().collect();
        assert_eq!(drawn.len(), 96, "drawn: {}", drawn.len());
        assert_eq!(distinct, all(&spec), "a record repeated or skipped");
    }

    /// A resume in the layout a rest began in continues that rest exactly.
    #[test]
    fn a_rest_resumed_in_its_own_layout_continues_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", 2, &recs(48));
        let (a, b) = (layout(1, 4, false), layout(2, 2, true));
        let saved = PoolPosition { epoch: 0, batch: 3, layout: Some(a.clone()), earlier: vec![] };
        let (whole, _) = run_part(&spec, &saved, &a, &b, Some(5));
        let (head, mid) = run_part(&spec, &saved, &a, &b, Some(2));
        let (tail, _) = run_part(&spec, &mid, &b, &b, Some(3));
        let mut split: BTreeSet<_> = head.into_iter().collect();
        split.extend(tail);
        assert_eq!(split, whole.into_iter().collect::<BTreeSet<_>>());
    }

    #[test]
    fn a_balanced_rest_draws_p_identities_from_the_records_left() {
        let labels: Vec<i32> = (0..60).map(|i| i % 10).collect();
        let remaining: Vec<u32> = (0..60).filter(|i| i % 3 != 0).collect();
        let l = Layout { world: 1, batch: 6, stripe: false, sampler: SamplerKind::Balanced { p: 3, k: 2 }, seed: 1 };
        let plan = rest_plan(&labels, &l, (0, 1, 0), &remaining, 4).unwrap();
        assert_eq!(plan.len(), 24);
        assert!(plan.iter().all(|i| i % 3 != 0), "a consumed record was drawn again: {plan:?}");
        for batch in plan.chunks(6) {
            let ids: BTreeSet<i32> = batch.iter().map(|&i| labels[i as usize]).collect();
            assert_eq!(ids.len(), 3, "{batch:?}");
        }
        assert_eq!(rest_plan(&labels, &l, (0, 1, 0), &remaining, 2).unwrap(), plan[..12], "a shorter rest is a prefix");
    }

    #[test]
    fn a_rest_epoch_ends_in_its_own_steps_and_the_next_epoch_is_the_usual_one() {
        let labels: Vec<i32> = (0..20).map(|i| i % 4).collect();
        let plain = Sampler::new(SamplerKind::Uniform, &labels, 4, 5, 0, None).unwrap();
        let rest = RestEpoch { epoch: 2, records: (0..8).collect(), steps: 2, slot_base: 12 };
        let s = plain.clone().with_rest(rest).unwrap();
        assert_eq!((s.steps_in(2), s.steps_in(3), s.slot_base(2), s.slot_base(3)), (2, 5, 12, 0));
        assert_eq!(s.epoch(2), (0..8).collect::<Vec<u32>>());
        let after = s.advance(s.advance(SamplerPosition { epoch: 2, batch: 0 }));
        assert_eq!(after, SamplerPosition { epoch: 3, batch: 0 });
        assert_eq!(s.epoch(3), plain.epoch(3));
        let short = RestEpoch { epoch: 2, records: (0..7).collect(), steps: 2, slot_base: 0 };
        assert!(plain.with_rest(short).is_err());
    }
}
