//! Batches from a rank's view: a planner thread turns sampler positions into jobs, decode
//! workers build whole batches, and `next_batch` hands them out in order through a bounded
//! prefetch queue. Every random choice (order, flip, replacement of a corrupt record) is a
//! function of (seed, epoch, slot), so thread timing never changes a batch. Images stay u8
//! and unflipped here; a batch carries each image's flip flag (see `batch`).

use super::batch::{Batch, BufferRing};
use super::partition::RankView;
use super::sampler::{Sampler, SamplerKind, SamplerPosition};
use crate::codec::Decoder;
use crate::rng::{mix, Rng};
use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Random-access read hints for training loaders (no readahead, each batch's records
/// prefetched) unless `TRAINER_READ_HINTS=0`, for storage where the kernel's readahead wins.
fn read_hints_enabled() -> bool {
    std::env::var_os("TRAINER_READ_HINTS").is_none_or(|v| v != "0")
}

/// Replacement draws per slot before a batch fails (only if nearly everything is corrupt).
const MAX_REPLACEMENTS: usize = 64;
const FLIP_SALT: u64 = 0xF11F_F11F;
const REPLACE_SALT: u64 = 0x5EE1_AC3D;

pub struct LoaderConfig {
    pub size: usize,
    pub batch_size: usize,
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    pub seed: u64,
    pub sampler: SamplerKind,
    /// Random horizontal flip.
    pub augment: bool,
    /// All ranks agree: trim/pad every epoch to this.
    pub steps_per_epoch: Option<u64>,
}

impl LoaderConfig {
    /// Uniform sampling with flips, one worker per core, two batches ahead per worker.
    pub fn new(size: usize, batch_size: usize) -> LoaderConfig {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoaderConfig {
            size,
            batch_size,
            workers,
            prefetch: 2 * workers,
            seed: 0,
            sampler: SamplerKind::Uniform,
            augment: true,
            steps_per_epoch: None,
        }
    }
}

struct Job {
    seq: u64,
    epoch: u64,
    /// Index of the batch's first slot within its epoch.
    first_slot: u64,
    records: Vec<u32>,
}

#[derive(Clone)]
struct Shared {
    view: Arc<RankView>,
    size: usize,
    seed: u64,
    augment: bool,
    /// Sequential passes drop corrupt records instead of replacing them.
    replace: bool,
    by_label: Arc<HashMap<i32, Vec<u32>>>,
    /// Ask the kernel for a batch's records before decoding them (random access only).
    prefetch: bool,
    stop: Arc<AtomicBool>,
    /// Image buffers handed back by `Loader::recycle`, reused to skip allocation and zeroing.
    ring: BufferRing,
}

pub struct Loader {
    results: Option<Receiver<(u64, Result<Batch>)>>,
    pending: BTreeMap<u64, Result<Batch>>,
    next_seq: u64,
    pos: SamplerPosition,
    sampler: Option<Sampler>,
    steps: u64,
    skipped: u64,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ring: BufferRing,
}

impl Loader {
    /// Infinite, deterministic from (seed, epoch, rank), starting at `start`.
    pub fn train(view: Arc<RankView>, cfg: LoaderConfig, start: SamplerPosition) -> Result<Loader> {
        let sampler =
            Sampler::new(cfg.sampler, view.labels(), cfg.batch_size, cfg.seed, view.rank, cfg.steps_per_epoch)?;
        Loader::with_sampler(view, cfg, sampler, start)
    }

    /// As `train`, with the caller's sampler (one that ends an epoch begun in another layout).
    pub fn with_sampler(
        view: Arc<RankView>,
        cfg: LoaderConfig,
        sampler: Sampler,
        start: SamplerPosition,
    ) -> Result<Loader> {
        let steps_now = sampler.steps_in(start.epoch);
        if start.batch >= steps_now {
            bail!("resume position batch {} is past the epoch's {steps_now} steps", start.batch);
        }
        let hints = read_hints_enabled();
        if hints {
            view.dataset.shards.iter().for_each(|s| s.advise_random_access());
        }
        let mut shared = Shared::new(view, cfg.size, cfg.seed, cfg.augment, true);
        shared.prefetch = hints;
        let plan = sampler.clone();
        let planner = move |tx: Sender<Job>, stop: Arc<AtomicBool>| plan_train(&plan, start, tx, &stop);
        let steps = sampler.steps_per_epoch();
        Loader::spawn(shared, cfg.workers, cfg.prefetch, planner, start, Some(sampler), steps)
    }

    /// One ordered pass, no augmentation, last batch partial; corrupt records are dropped.
    pub fn sequential(view: Arc<RankView>, size: usize, batch_size: usize, workers: usize) -> Result<Loader> {
        if batch_size == 0 {
            bail!("batch size must be > 0");
        }
        let n = view.len();
        let steps = n.div_ceil(batch_size) as u64;
        let shared = Shared::new(view, size, 0, false, false);
        let planner = move |tx: Sender<Job>, stop: Arc<AtomicBool>| plan_sequential(n, batch_size, tx, &stop);
        Loader::spawn(shared, workers, 2 * workers.max(1), planner, SamplerPosition::START, None, steps)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        shared: Shared,
        workers: usize,
        prefetch: usize,
        planner: impl FnOnce(Sender<Job>, Arc<AtomicBool>) + Send + 'static,
        start: SamplerPosition,
        sampler: Option<Sampler>,
        steps: u64,
    ) -> Result<Loader> {
        let workers = workers.max(1);
        let (job_tx, job_rx) = bounded::<Job>(prefetch.max(1));
        let (res_tx, res_rx) = bounded(prefetch.max(1) + workers);
        let (stop, ring) = (shared.stop.clone(), shared.ring.clone());
        let mut threads = Vec::with_capacity(workers + 1);
        let planner_stop = stop.clone();
        threads.push(named("loader-plan", move || planner(job_tx, planner_stop))?);
        for w in 0..workers {
            let (rx, tx, sh) = (job_rx.clone(), res_tx.clone(), shared.clone());
            threads.push(named(&format!("loader-{w}"), move || work(sh, rx, tx))?);
        }
        Ok(Loader {
            results: Some(res_rx),
            pending: BTreeMap::new(),
            next_seq: 0,
            pos: start,
            sampler,
            steps,
            skipped: 0,
            stop,
            threads,
            ring,
        })
    }

    /// The next batch in order; `None` only at the end of a sequential pass.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.sampler.is_none() && self.next_seq >= self.steps {
            return Ok(None);
        }
        let rx = self.results.as_ref().ok_or_else(|| anyhow!("loader is shut down"))?;
        while !self.pending.contains_key(&self.next_seq) {
            let (seq, batch) =
                rx.recv().map_err(|_| anyhow!("loader workers stopped before batch {}", self.next_seq))?;
            self.pending.insert(seq, batch);
        }
        let batch = self.pending.remove(&self.next_seq).expect("checked above")?;
        self.next_seq += 1;
        self.skipped += batch.skipped as u64;
        self.pos = match &self.sampler {
            Some(s) => s.advance(self.pos),
            None => SamplerPosition { epoch: 0, batch: self.pos.batch + 1 },
        };
        Ok(Some(batch))
    }

    /// Position of the batch the next `next_batch()` returns (save it to resume exactly).
    pub fn position(&self) -> SamplerPosition {
        self.pos
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.steps
    }

    /// Hands a used `Batch::images` back for reuse (optional; saves an allocation per batch).
    pub fn recycle(&self, images: Vec<u8>) {
        self.ring.give(images);
    }

    /// Image buffers the workers allocated (or grew) so far: it stops growing once batches
    /// come back through `recycle`.
    pub fn buffers_allocated(&self) -> u64 {
        self.ring.allocated()
    }

    /// Corrupt records met so far by batches already returned.
    pub fn skipped_total(&self) -> u64 {
        self.skipped
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.results = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_string()).spawn(f).map_err(|e| anyhow!("spawning {name}: {e}"))
}

fn plan_train(sampler: &Sampler, start: SamplerPosition, tx: Sender<Job>, stop: &AtomicBool) {
    let b = sampler.batch_size();
    let mut pos = start;
    let mut epoch_plan: Option<(u64, Vec<u32>)> = None;
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if epoch_plan.as_ref().is_none_or(|(e, _)| *e != pos.epoch) {
            epoch_plan = Some((pos.epoch, sampler.epoch(pos.epoch)));
        }
        let plan = &epoch_plan.as_ref().expect("set above").1;
        let first = pos.batch as usize * b;
        let first_slot = sampler.slot_base(pos.epoch) + first as u64;
        let job = Job { seq, epoch: pos.epoch, first_slot, records: plan[first..first + b].to_vec() };
        if tx.send(job).is_err() {
            return;
        }
        pos = sampler.advance(pos);
    }
}

fn plan_sequential(n: usize, batch_size: usize, tx: Sender<Job>, stop: &AtomicBool) {
    for (seq, first) in (0..n).step_by(batch_size).enumerate() {
        let records = (first as u32..(first + batch_size).min(n) as u32).collect();
        if stop.load(Ordering::Relaxed)
            || tx.send(Job { seq: seq as u64, epoch: 0, first_slot: first as u64, records }).is_err()
        {
            return;
        }
    }
}

fn work(shared: Shared, jobs: Receiver<Job>, results: Sender<(u64, Result<Batch>)>) {
    let mut decoder = Decoder::new();
    while let Ok(job) = jobs.recv() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let seq = job.seq;
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.build(&job, &mut decoder)))
            .unwrap_or_else(|_| Err(anyhow!("decode worker panicked on batch {seq}")));
        if results.send((seq, built)).is_err() {
            return;
        }
    }
}

impl Shared {
    fn new(view: Arc<RankView>, size: usize, seed: u64, augment: bool, replace: bool) -> Shared {
        let mut by_label: HashMap<i32, Vec<u32>> = HashMap::new();
        if replace {
            for (i, &l) in view.labels().iter().enumerate() {
                by_label.entry(l).or_default().push(i as u32);
            }
        }
        Shared {
            view,
            size,
            seed,
            augment,
            replace,
            by_label: Arc::new(by_label),
            prefetch: false,
            stop: Arc::new(AtomicBool::new(false)),
            ring: BufferRing::new(8),
        }
    }

    fn build(&self, job: &Job, decoder: &mut Decoder) -> Result<Batch> {
        let slot_len = 3 * self.size * self.size;
        let images = self.ring.take(job.records.len() * slot_len);
        let mut b = Batch {
            images,
            flips: Vec::with_capacity(job.records.len()),
            labels: Vec::new(),
            genders: Vec::new(),
            ages: Vec::new(),
            n: 0,
            size: self.size,
            skipped: 0,
            records: Vec::new(),
            bytes: 0,
        };
        if self.prefetch {
            // The whole batch's reads go out at once, instead of one page fault at a time.
            job.records.iter().for_each(|&r| self.view.prefetch(r as usize));
        }
        for (i, &first_choice) in job.records.iter().enumerate() {
            let slot = job.first_slot + i as u64;
            let flip = self.augment && Rng::derive(self.seed ^ FLIP_SALT, job.epoch, slot).next_u64() & 1 == 1;
            let out = &mut b.images[b.n * slot_len..(b.n + 1) * slot_len];
            let mut rec = first_choice;
            let mut attempt = 0;
            let decoded = loop {
                match self
                    .view
                    .bytes(rec as usize)
                    .and_then(|bytes| decoder.decode_into(bytes, self.size, out).map(|_| bytes.len()))
                {
                    Ok(len) => break Some(len),
                    Err(e) => {
                        b.skipped += 1;
                        let what = self.view.describe_record(rec as usize);
                        if !self.replace {
                            tracing::warn!("skipping corrupt {what}: {e:#}");
                            break None;
                        }
                        tracing::warn!(
                            "skipping corrupt {what} (rank {}): {e:#}; replaced by another sample",
                            self.view.rank
                        );
                        attempt += 1;
                        if attempt > MAX_REPLACEMENTS {
                            bail!("rank {}: {MAX_REPLACEMENTS} replacements for slot {slot} of epoch {} were all corrupt; last: {what}", self.view.rank, job.epoch);
                        }
                        rec = self.replacement(rec, job.epoch, slot, attempt);
                    }
                }
            };
            if let Some(len) = decoded {
                b.flips.push(flip);
                self.push_labels(&mut b, rec, len);
            }
        }
        b.images.truncate(b.n * slot_len);
        Ok(b)
    }

    /// Another record of the same identity when there is one (keeps P×K batches), else any.
    fn replacement(&self, rec: u32, epoch: u64, slot: u64, attempt: usize) -> u32 {
        let mut r = Rng::derive(self.seed ^ REPLACE_SALT ^ mix(attempt as u64), epoch, slot);
        let same = &self.by_label[&self.view.labels()[rec as usize]];
        if same.len() > 1 && attempt <= MAX_REPLACEMENTS / 2 {
            same[r.below(same.len())]
        } else {
            r.below(self.view.len()) as u32
        }
    }

    fn push_labels(&self, b: &mut Batch, rec: u32, len: usize) {
        let i = rec as usize;
        let v = &self.view;
        let [fr, gender, age] = &v.targets;
        b.labels.push(fr[i] as i64);
        b.genders.push(gender[i] as i64);
        b.ages.push(age[i] as i64);
        b.records.push(rec);
        b.bytes += len;
        b.n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testdata::{faces, write_shards, Rec};
    use std::collections::{BTreeSet, HashMap};

    const S: usize = 16;

    fn view_of(recs: &[Rec], shards: usize) -> (tempfile::TempDir, Arc<RankView>) {
        let dir = tempfile::tempdir().unwrap();
        let spec = write_shards(dir.path(), "d", shards, recs);
        let spec = crate::targets::SetSpec { head: None, path: spec, column: None };
        let view = RankView::open(&[spec], &crate::pipeline::ViewOptions::whole(&crate::targets::Head::ALL)).unwrap();
        (dir, Arc::new(view))
    }

    fn cfg(batch: usize, workers: usize, sampler: SamplerKind) -> LoaderConfig {
        LoaderConfig {
            size: S,
            batch_size: batch,
            workers,
            prefetch: 3,
            seed: 42,
            sampler,
            augment: true,
            steps_per_epoch: None,
        }
    }

    fn take(l: &mut Loader, n: usize) -> Vec<Batch> {
        (0..n).map(|_| l.next_batch().unwrap().expect("train loaders never end")).collect()
    }

    fn same(a: &[Batch], b: &[Batch]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!((&x.records, &x.labels, &x.flips), (&y.records, &y.labels, &y.flips));
            assert!(x.images == y.images, "images differ");
        }
    }

    #[test]
    fn batches_are_nchw_in_range_with_stored_labels() {
        let (_d, v) = view_of(&faces(9, 3, 24), 2);
        let mut l = Loader::train(v.clone(), cfg(5, 2, SamplerKind::Uniform), SamplerPosition::START).unwrap();
        for b in take(&mut l, 6) {
            assert_eq!((b.n, b.size, b.images.len(), b.flips.len()), (5, S, 5 * 3 * S * S, 5));
            assert!(b.images.iter().any(|&x| x != b.images[0]));
            for (i, &r) in b.records.iter().enumerate() {
                let [fr, gender, age] = &v.targets;
                assert_eq!(
                    (b.labels[i], b.genders[i], b.ages[i]),
                    (fr[r as usize] as i64, gender[r as usize] as i64, age[r as usize] as i64)
                );
                assert!(b.ages[i] >= 0, "faces() gives every record an age");
            }
        }
    }

    #[test]
    fn output_does_not_depend_on_worker_count() {
        let (_d, v) = view_of(&faces(6, 4, 20), 1);
        let one =
            take(&mut Loader::train(v.clone(), cfg(4, 1, SamplerKind::Uniform), SamplerPosition::START).unwrap(), 9);
        let three = take(&mut Loader::train(v, cfg(4, 3, SamplerKind::Uniform), SamplerPosition::START).unwrap(), 9);
        same(&one, &three);
    }

    #[test]
    fn recycled_dirty_buffers_do_not_leak_into_batches() {
        let (_d, v) = view_of(&faces(4, 3, 24), 1);
        let fresh =
            take(&mut Loader::train(v.clone(), cfg(3, 1, SamplerKind::Uniform), SamplerPosition::START).unwrap(), 8);
        let mut l = Loader::train(v, cfg(3, 1, SamplerKind::Uniform), SamplerPosition::START).unwrap();
        let mut reused = Vec::new();
        for _ in 0..8 {
            let b = l.next_batch().unwrap().unwrap();
            l.recycle(vec![9; b.images.len() + 17]);
            reused.push(b);
        }
        same(&fresh, &reused);
    }

    /// The ring: with batches handed back, buffers are allocated while the queue fills
    /// (prefetch 3 + 1 worker + 1 being built, at most 6 with the consumer's), then reused.
    #[test]
    fn recycled_buffers_are_reused_so_the_steady_state_allocates_nothing() {
        let (_d, v) = view_of(&faces(4, 3, 24), 1);
        let mut l = Loader::train(v, cfg(3, 1, SamplerKind::Uniform), SamplerPosition::START).unwrap();
        let mut seen = BTreeSet::new();
        let mut reused = 0;
        for _ in 0..60 {
            let b = l.next_batch().unwrap().unwrap();
            reused += usize::from(!seen.insert(b.images.as_ptr() as usize));
            l.recycle(b.images);
        }
        assert!(l.buffers_allocated() <= 6, "{} buffers for 60 batches", l.buffers_allocated());
        assert!(seen.len() <= 6 && reused >= 54, "{} distinct buffers, {reused} reuses", seen.len());
    }

    #[test]
    fn resuming_from_a_saved_position_replays_exactly() {
        let (_d, v) = view_of(&faces(7, 3, 16), 1);
        let kind = SamplerKind::Balanced { p: 3, k: 2 };
        let mut l = Loader::train(v.clone(), cfg(6, 2, kind), SamplerPosition::START).unwrap();
        assert_eq!(l.steps_per_epoch(), 4);
        let head = take(&mut l, 5);
        let saved = l.position();
        assert_eq!(saved, SamplerPosition { epoch: 1, batch: 1 });
        let tail = take(&mut l, 6);
        drop(l);
        let mut resumed = Loader::train(v, cfg(6, 1, kind), saved).unwrap();
        same(&tail, &take(&mut resumed, 6));
        assert_ne!(head[1].records, tail[0].records);
    }

    #[test]
    fn balanced_batches_hold_p_identities_times_k() {
        let (_d, v) = view_of(&faces(8, 3, 16), 2);
        let mut l = Loader::train(v, cfg(8, 2, SamplerKind::Balanced { p: 4, k: 2 }), SamplerPosition::START).unwrap();
        for b in take(&mut l, 5) {
            let mut counts: HashMap<i64, usize> = HashMap::new();
            b.labels.iter().for_each(|&l| *counts.entry(l).or_default() += 1);
            assert_eq!(counts.len(), 4);
            assert!(counts.values().all(|&c| c == 2));
        }
    }

    #[test]
    fn flips_vary_and_can_be_turned_off() {
        let (_d, v) = view_of(&faces(1, 1, 16), 1);
        let mut c = cfg(1, 1, SamplerKind::Uniform);
        let flipped = take(&mut Loader::train(v.clone(), c, SamplerPosition::START).unwrap(), 16);
        assert!(flipped.iter().all(|b| b.images == flipped[0].images), "images leave the loader unflipped");
        let floats = |b: &Batch| b.images_f32();
        assert!(flipped.iter().any(|b| floats(b) != floats(&flipped[0])), "some of 16 samples must differ by a flip");
        assert!(flipped.iter().any(|b| b.flips == [true]) && flipped.iter().any(|b| b.flips == [false]));
        c = cfg(1, 1, SamplerKind::Uniform);
        c.augment = false;
        let plain = take(&mut Loader::train(v, c, SamplerPosition::START).unwrap(), 4);
        assert!(plain.iter().all(|b| b.images == plain[0].images && b.flips == [false]));
    }

    fn with_corrupt(recs: &mut [Rec], which: &[usize]) {
        for &i in which {
            recs[i].3 = b"\xFF\xD8 this is not really a jpeg".to_vec();
        }
    }

    #[test]
    fn corrupt_records_are_replaced_and_counted() {
        let mut recs = faces(4, 3, 16);
        with_corrupt(&mut recs, &[1, 7]);
        let (_d, v) = view_of(&recs, 1);
        let mut l =
            Loader::train(v.clone(), cfg(4, 2, SamplerKind::Balanced { p: 2, k: 2 }), SamplerPosition::START).unwrap();
        let batches = take(&mut l, 12);
        assert!(batches.iter().all(|b| b.n == 4));
        let bad: BTreeSet<u32> = [1, 7].into();
        assert!(batches.iter().all(|b| b.records.iter().all(|r| !bad.contains(r))));
        let skipped: usize = batches.iter().map(|b| b.skipped).sum();
        assert!(skipped >= 2, "12 batches of 4 from 12 records must meet the corrupt ones");
        assert_eq!(l.skipped_total(), skipped as u64);
        // Replacement keeps the identity, so P×K holds.
        for b in &batches {
            let ids: BTreeSet<i64> = b.labels.iter().copied().collect();
            assert_eq!(ids.len(), 2);
        }
    }

    #[test]
    fn sequential_is_one_ordered_pass_dropping_corrupt_records() {
        let mut recs = faces(5, 2, 16);
        with_corrupt(&mut recs, &[3]);
        let (_d, v) = view_of(&recs, 1);
        let mut l = Loader::sequential(v, S, 4, 2).unwrap();
        assert_eq!(l.steps_per_epoch(), 3);
        let mut seen = Vec::new();
        let mut ns = Vec::new();
        while let Some(b) = l.next_batch().unwrap() {
            seen.extend(b.records.iter().copied());
            ns.push(b.n);
            assert_eq!(b.images.len(), b.n * 3 * S * S);
        }
        assert_eq!(ns, vec![3, 4, 2]);
        assert_eq!(seen, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(l.skipped_total(), 1);
        assert!(l.next_batch().unwrap().is_none());
    }

    #[test]
    fn all_corrupt_is_an_error_not_a_hang() {
        let mut recs = faces(2, 2, 16);
        with_corrupt(&mut recs, &[0, 1, 2, 3]);
        let (_d, v) = view_of(&recs, 1);
        let mut l = Loader::train(v, cfg(2, 1, SamplerKind::Uniform), SamplerPosition::START).unwrap();
        let err = format!("{:#}", l.next_batch().unwrap_err());
        assert!(err.contains("all corrupt"), "{err}");
    }

    #[test]
    fn steps_per_epoch_override_is_honoured() {
        let (_d, v) = view_of(&faces(3, 3, 16), 1);
        let mut c = cfg(2, 1, SamplerKind::Uniform);
        c.steps_per_epoch = Some(2);
        let mut l = Loader::train(v, c, SamplerPosition::START).unwrap();
        take(&mut l, 3);
        assert_eq!(l.position(), SamplerPosition { epoch: 1, batch: 1 });
    }
}
