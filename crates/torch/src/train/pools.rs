//! Where each step's batches come from. Datasets without a task prefix serve every task,
//! so one loader feeds all heads (each record carries the columns its tasks need). Once
//! tasks have datasets of their own (`fr=... gender=... age=...`, the seed's design), each
//! task gets its own loader over its datasets and the datasets without a prefix: its own
//! sampler, epoch and position, split across ranks on their own, and resumed exactly.
//! A resume on another rank layout (world size, batch, stripes) re-deals the rest of each
//! pool's epoch (`trainer_data::pipeline::redeal`).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::record_trace::RecordTrace;
use crate::config::{SamplerChoice, TrainConfig};
use crate::dist::{Comm, ReduceOp};
use crate::model::Head;
use trainer_data::pipeline::redeal::{self, Segment};
use trainer_data::pipeline::{Batch, Layout, Loader, LoaderConfig, PoolPosition, RankView, RestEpoch, Resume};
use trainer_data::pipeline::{Sampler, SamplerKind, SamplerPosition, ViewOptions};
use trainer_data::reader::Dataset;
use trainer_data::targets::SetSpec;

/// Which loader: the one every task shares, or a task's own. Written `all` or the task's
/// name (`FR`, `Gender`, `Age`), as in `state.json`'s `positions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PoolKey {
    Shared,
    Own(Head),
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolKey::Shared => "all",
            PoolKey::Own(head) => head.name(),
        })
    }
}

impl From<PoolKey> for String {
    fn from(key: PoolKey) -> String {
        key.to_string()
    }
}

impl TryFrom<String> for PoolKey {
    type Error = String;
    fn try_from(s: String) -> Result<PoolKey, String> {
        match Head::ALL.into_iter().find(|h| h.name() == s) {
            Some(head) => Ok(PoolKey::Own(head)),
            None if s == "all" => Ok(PoolKey::Shared),
            None => Err(format!("{s:?} is not a data pool (all, FR, Gender or Age)")),
        }
    }
}

/// One loader and the heads its batches teach.
pub struct Pool {
    pub key: PoolKey,
    pub heads: Vec<Head>,
    pub view: Arc<RankView>,
    loader: Loader,
    pub batch_size: usize,
    /// Records split across ranks instead of shards.
    pub striped: bool,
    layout: Layout,
    rest: Option<EarlierParts>,
}

/// An epoch begun in another rank layout, and its parts before this process's.
type EarlierParts = (u64, Vec<Segment>);

/// A batch and the heads that learn from it this step.
pub struct Part {
    pub batch: Batch,
    pub heads: Vec<Head>,
}

/// The pools of a run, in FR, Gender, Age order.
pub struct Pools {
    pools: Vec<Pool>,
    trace: Option<RecordTrace>,
}

/// What a resume starts from: each pool's saved position, and the world and settings that
/// wrote them (the layout of a position saved before positions kept theirs).
pub struct Saved<'a> {
    pub positions: &'a BTreeMap<PoolKey, PoolPosition>,
    pub world: usize,
    pub config: &'a TrainConfig,
}

/// Which datasets each pool reads: one shared pool when no dataset names a task.
pub fn plan(cfg: &TrainConfig) -> Vec<(PoolKey, Vec<Head>, Vec<SetSpec>)> {
    let heads = cfg.heads();
    let sets = cfg.sets(&cfg.data.train_sets);
    if sets.iter().all(|s| s.head.is_none()) || heads.len() == 1 {
        return vec![(PoolKey::Shared, heads, sets)];
    }
    heads
        .iter()
        .map(|&h| (PoolKey::Own(h), vec![h], sets.iter().filter(|s| s.head.is_none_or(|x| x == h)).cloned().collect()))
        .collect()
}

impl Pools {
    /// Opens every pool's view for this rank and starts its loader where `saved` left it.
    pub fn open(comm: &dyn Comm, cfg: &TrainConfig, saved: Option<&Saved>) -> Result<Pools> {
        let (rank, world) = (comm.rank(), comm.world());
        let mut pools = Vec::new();
        for (key, heads, specs) in plan(cfg) {
            let layout = layout(cfg, key, &heads, &specs, world)?;
            let view = RankView::open(&specs, &view_options(cfg, rank, world, layout.stripe))
                .with_context(|| format!("rank {rank} of {world}: opening the {key} training data"))?;
            let view = Arc::new(view);
            let (loader, rest) = match saved.and_then(|s| Some((s, s.positions.get(&key)?))) {
                Some((saved, pos)) => resumed(comm, cfg, saved, (key, &heads, &specs), &view, &layout, pos)?,
                None => (loader(comm, cfg, &view, &layout, SamplerPosition::START, None)?, None),
            };
            let (batch_size, striped) = (layout.batch, layout.stripe);
            pools.push(Pool { key, heads, view, loader, batch_size, striped, layout, rest });
        }
        Ok(Pools { pools, trace: RecordTrace::from_env(rank)? })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter()
    }

    /// Identities over the FR datasets this rank reads.
    pub fn identities(&self) -> usize {
        self.pools.iter().map(|p| p.view.num_classes()).max().unwrap_or(0)
    }

    /// The next batch of every pool that teaches one of `heads`, with the heads it teaches.
    pub fn next(&mut self, heads: &[Head]) -> Result<Vec<Part>> {
        let mut parts = Vec::new();
        for pool in &mut self.pools {
            let taught: Vec<Head> = pool.heads.iter().copied().filter(|h| heads.contains(h)).collect();
            if taught.is_empty() {
                continue;
            }
            let at = pool.loader.position();
            let batch = pool.loader.next_batch()?.with_context(|| format!("the {} training loader ended", pool.key))?;
            if let Some(trace) = &mut self.trace {
                trace.batch(&pool.key.to_string(), at, &pool.view, &batch.records)?;
            }
            parts.push(Part { batch, heads: taught });
        }
        Ok(parts)
    }

    /// Hands the image buffers of `parts` (as `next(heads)` returned them) back to their
    /// loaders, which refill them instead of allocating and zeroing fresh pages.
    pub fn recycle(&self, heads: &[Head], parts: Vec<Part>) {
        let teaching = self.pools.iter().filter(|p| p.heads.iter().any(|h| heads.contains(h)));
        for (pool, part) in teaching.zip(parts) {
            pool.loader.recycle(part.batch.images);
        }
    }

    /// Every pool's position with its layout (what a checkpoint keeps).
    pub fn positions(&self) -> BTreeMap<PoolKey, PoolPosition> {
        let at = |p: &Pool| {
            let SamplerPosition { epoch, batch } = p.loader.position();
            let earlier = p.rest.as_ref().filter(|(e, _)| *e == epoch).map(|(_, parts)| parts.clone());
            PoolPosition { epoch, batch, layout: Some(p.layout.clone()), earlier: earlier.unwrap_or_default() }
        };
        self.pools.iter().map(|p| (p.key, at(p))).collect()
    }

    /// The epoch each head's pool is in.
    /// How many loaders: one, or one per task once tasks have their own datasets.
    pub fn count(&self) -> usize {
        self.pools.len()
    }

    pub fn epochs(&self) -> BTreeMap<Head, u64> {
        self.pools.iter().flat_map(|p| p.heads.iter().map(|&h| (h, p.loader.position().epoch))).collect()
    }

    /// Images per rank per optimiser step over the pools that `heads` use.
    pub fn images_per_step(&self, heads: &[Head]) -> usize {
        self.pools.iter().filter(|p| p.heads.iter().any(|h| heads.contains(h))).map(|p| p.batch_size).sum()
    }
}

/// Whether some dataset has fewer shards than ranks (then its task splits records
/// instead, and says so).
fn needs_stripes(specs: &[SetSpec], world: usize) -> Result<bool> {
    for spec in specs {
        let shards = Dataset::shard_count(&spec.path)
            .with_context(|| format!("finding the shards of {}", spec.path.display()))?;
        if shards < world {
            tracing::info!("{spec} has {shards} shard(s) for {world} ranks: its records are split across ranks instead (record stripes)");
            return Ok(true);
        }
    }
    Ok(false)
}

/// The shared pool shuffles with the run's seed; a task's pool with its own stream (mixed
/// from its name, so a resume of an older run draws the same order).
fn pool_seed(seed: u64, key: PoolKey) -> u64 {
    match key {
        PoolKey::Shared => seed,
        PoolKey::Own(head) => head.name().bytes().fold(seed, |h, b| trainer_data::rng::mix(h ^ u64::from(b))),
    }
}

/// How `cfg` on `world` ranks reads a pool: its per-rank batch, stripes, sampler and seed.
fn layout(cfg: &TrainConfig, key: PoolKey, heads: &[Head], specs: &[SetSpec], world: usize) -> Result<Layout> {
    // Gender and Age sets are small: they split records when they have too few
    // shards. FR data keeps the shard rule (and its error) unless --stripe-records.
    let stripe = cfg.data.stripe_records || (!heads.contains(&Head::Fr) && needs_stripes(specs, world)?);
    let batch = match key {
        PoolKey::Shared => cfg.rank_batch(),
        PoolKey::Own(head) => cfg.head_batch(head),
    };
    let sampler = match cfg.data.sampler {
        _ if !cfg.data.shuffle => SamplerKind::Sequential,
        SamplerChoice::Pk if matches!(key, PoolKey::Shared | PoolKey::Own(Head::Fr)) => {
            SamplerKind::Balanced { p: cfg.data.pk[0], k: cfg.data.pk[1] }
        }
        _ => SamplerKind::Uniform,
    };
    Ok(Layout { world, batch, stripe, sampler, seed: pool_seed(cfg.run.seed, key) })
}

/// Datasets without a task prefix serve every head of the run, wherever they are read.
fn view_options(cfg: &TrainConfig, rank: usize, world: usize, stripe: bool) -> ViewOptions {
    ViewOptions { rank, world, stripe, heads: cfg.heads(), gender_classes: cfg.heads.gender_classes }
}

/// The loader where `pos` left the pool: in the layout it was saved in, exactly there; in
/// another, the rest of its epoch re-dealt, with as many steps as the smallest rank's share.
fn resumed(
    comm: &dyn Comm,
    cfg: &TrainConfig,
    saved: &Saved,
    (key, heads, specs): (PoolKey, &[Head], &[SetSpec]),
    view: &Arc<RankView>,
    now: &Layout,
    pos: &PoolPosition,
) -> Result<(Loader, Option<EarlierParts>)> {
    let was = match &pos.layout {
        Some(layout) => layout.clone(),
        None => layout(saved.config, key, heads, specs, saved.world)?,
    };
    let mut open = |rank, world, stripe| RankView::open(specs, &view_options(cfg, rank, world, stripe));
    let context =
        || format!("rank {}: resuming the {key} data's epoch {} on {} ranks", view.rank, pos.epoch, now.world);
    let rest = match redeal::resume(pos, &was, now, view, &mut open).with_context(context)? {
        Resume::At(start) => return Ok((loader(comm, cfg, view, now, start, None)?, None)),
        Resume::Rest(rest) => rest,
    };
    let mut steps = [(rest.remaining.len() / now.batch) as f64];
    comm.all_reduce_f64(&mut steps, ReduceOp::Min)?;
    let steps = steps[0] as u64;
    if steps <= rest.batch {
        let next = SamplerPosition { epoch: rest.epoch + 1, batch: 0 };
        return Ok((loader(comm, cfg, view, now, next, None)?, None));
    }
    let part = (rest.epoch, rest.earlier.len(), view.rank);
    let records = redeal::rest_plan(view.labels(), now, part, &rest.remaining, steps).with_context(context)?;
    let tail = RestEpoch { epoch: rest.epoch, records, steps, slot_base: rest.slot_base() };
    let start = SamplerPosition { epoch: rest.epoch, batch: rest.batch };
    Ok((loader(comm, cfg, view, now, start, Some(tail))?, Some((rest.epoch, rest.earlier))))
}

/// All ranks run the same steps per epoch of a pool: the smallest rank's share sets it.
fn loader(
    comm: &dyn Comm,
    cfg: &TrainConfig,
    view: &Arc<RankView>,
    layout: &Layout,
    start: SamplerPosition,
    rest: Option<RestEpoch>,
) -> Result<Loader> {
    let mut steps = [(view.records.len() / layout.batch).max(1) as f64];
    comm.all_reduce_f64(&mut steps, ReduceOp::Min)?;
    let lc = LoaderConfig {
        size: cfg.model.size,
        batch_size: layout.batch,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        seed: layout.seed,
        sampler: layout.sampler,
        augment: cfg.data.augment,
        steps_per_epoch: Some(steps[0] as u64),
    };
    let Some(rest) = rest else { return Loader::train(Arc::clone(view), lc, start) };
    let sampler = Sampler::new(lc.sampler, view.labels(), lc.batch_size, lc.seed, view.rank, lc.steps_per_epoch)?;
    Loader::with_sampler(Arc::clone(view), lc, sampler.with_rest(rest)?, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state.json` keeps the names it always had, so older checkpoints resume.
    #[test]
    fn pool_keys_are_written_as_before_and_read_back() {
        let positions: BTreeMap<PoolKey, u32> = [(PoolKey::Shared, 1), (PoolKey::Own(Head::Gender), 2)].into();
        let json = serde_json::to_string(&positions).unwrap();
        assert_eq!(json, r#"{"all":1,"Gender":2}"#);
        assert_eq!(serde_json::from_str::<BTreeMap<PoolKey, u32>>(&json).unwrap(), positions);
        let err = serde_json::from_str::<BTreeMap<PoolKey, u32>>(r#"{"gender":1}"#).unwrap_err();
        assert!(err.to_string().contains("not a data pool"), "{err}");
    }
}
