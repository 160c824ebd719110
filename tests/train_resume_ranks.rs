//! A run resumed on another number of ranks goes on with the records its epoch has not taken:
//! stopped and resumed 1 → 2 → 3 → 1 ranks within one epoch, it takes every record exactly
//! once (seen through `TRAINER_TRACE_RECORDS`), with Partial FC on whole shards and in a
//! Multi run whose tasks have datasets of their own (split into record stripes on more
//! ranks); the epoch after is the one an uninterrupted run draws.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// (shard file, index): a record, whatever rank read it.
type Record = (String, u64);

/// Per pool, every traced batch: (epoch, batch, records).
type Trace = BTreeMap<String, Vec<(u64, u64, Vec<Record>)>>;

/// Every traced batch of every rank, per pool: (epoch, batch, records), in file order.
fn traced(dir: &Path) -> Trace {
    let mut out = Trace::new();
    let mut files: Vec<_> = std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    files.sort();
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", file.display()));
            let records = v["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap()))
                .collect();
            let entry = (v["epoch"].as_u64().unwrap(), v["batch"].as_u64().unwrap(), records);
            out.entry(v["pool"].as_str().unwrap().to_string()).or_default().push(entry);
        }
    }
    out
}

/// The records `pool` took in `epoch`, over all ranks and resumes.
fn epoch_records(trace: &Trace, pool: &str, epoch: u64) -> Vec<Record> {
    let batches = trace.get(pool).unwrap_or_else(|| panic!("no {pool} batches traced: {:?}", trace.keys()));
    batches.iter().filter(|b| b.0 == epoch).flat_map(|b| b.2.clone()).collect()
}

/// Each of the set's `n` records once: `n` taken, none twice, all from the set's shards.
fn assert_each_once(taken: &[Record], n: usize, set: &str, what: &str) {
    let distinct: BTreeSet<&Record> = taken.iter().collect();
    let mut twice: Vec<&Record> = taken.iter().filter(|r| taken.iter().filter(|x| x == r).count() > 1).collect();
    twice.dedup();
    assert!(twice.is_empty(), "{what}: records taken twice: {twice:?}");
    assert_eq!((taken.len(), distinct.len()), (n, n), "{what}: not every record once");
    assert!(taken.iter().all(|r| r.0.starts_with(set)), "{what}: a record from another set");
}

/// The run goes on under `ranks` ranks (a resume when `first` is None) to `steps`.
fn stage(mpi: &Mpi, ranks: usize, first: Option<&[&str]>, run: &Path, steps: &str, trace: &Path) {
    let resume = ["train", "--resume", s(run)];
    let mut args: Vec<&str> = first.unwrap_or(&resume).to_vec();
    args.extend(["--max-steps", steps]);
    let res = mpi.job(ranks).args(&args).env("TRAINER_TRACE_RECORDS", trace).output().unwrap();
    assert!(res.status.success(), "{ranks} rank(s) to step {steps}: {}", text(&res));
}

/// 96 records in 6 shards, 4 per rank per step: 2 steps on 1 rank, 2 on 2, 2 on 3 take 48;
/// the 48 left are 12 steps on 1 rank, and steps 19–20 begin the next epoch.
#[test]
fn mpi_partial_fc_resumed_on_1_2_3_1_ranks_takes_each_record_once_per_epoch() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 12, 8, 6, 1);
    let out = dir.path().join("Model");
    let tiny = |run| {
        tiny_train("FR", &out, run)
            .set("--train-sets", s(&train))
            .set("--batch-size", "4")
            .set("--save-every", "2")
            .set_all("--partial-fc", &[])
            .args()
    };
    let (first, straight) = (tiny("r"), tiny("straight"));
    let (run, trace) = (out.join("r"), dir.path().join("trace"));
    stage(&mpi, 1, Some(&first), &run, "2", &trace);
    for (ranks, steps) in [(2, "4"), (3, "6"), (1, "20")] {
        stage(&mpi, ranks, None, &run, steps, &trace);
    }
    let resumed = traced(&trace);
    assert_each_once(&epoch_records(&resumed, "all", 0), 96, "train-", "epoch 0 over 1, 2, 3, 1 ranks");
    let state = std::fs::read_to_string(run.join("checkpoints/step-000000020/state.json")).unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    let pos = &state["state"]["positions"]["all"];
    assert_eq!((&pos["epoch"], &pos["batch"], &pos["layout"]["world"]), (&1.into(), &2.into(), &1.into()), "{pos}");

    let straight_trace = dir.path().join("straight-trace");
    stage(&mpi, 1, Some(&straight), &out.join("straight"), "26", &straight_trace);
    let straight = traced(&straight_trace);
    assert_each_once(&epoch_records(&straight, "all", 0), 96, "train-", "an uninterrupted epoch");
    let next = |t: &Trace| -> Vec<(u64, Vec<Record>)> {
        t["all"].iter().filter(|b| b.0 == 1 && b.1 < 2).map(|b| (b.1, b.2.clone())).collect()
    };
    assert_eq!(next(&resumed).len(), 2);
    assert_eq!(next(&resumed), next(&straight), "the epoch after the re-dealt one is not the usual one");
}

/// Multi with a dataset per task, 4 records per task per rank per step, one step on each of
/// 1, 2 and 3 ranks, then one rank: FR (96 records, 6 shards) ends its epoch at step 21,
/// Gender (48, 2 shards: stripes on 3 ranks) and Age (48, 1 shard: stripes on 2 and 3) at
/// step 9, and run a whole second epoch by step 21.
#[test]
fn mpi_multi_with_task_datasets_resumed_on_1_2_3_1_ranks_takes_each_record_once_per_epoch() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fr = packed_synth(dir.path(), "fr", 12, 8, 6, 1);
    let gender = packed_synth(dir.path(), "gender", 12, 4, 2, 2);
    let age = packed_synth(dir.path(), "age", 12, 4, 1, 3);
    let sets = [format!("fr={}", s(&fr)), format!("gender={}", s(&gender)), format!("age={}", s(&age))];
    let out = dir.path().join("Model");
    let first = tiny_train("Multi", &out, "m")
        .set_all("--train-sets", &[&sets[0], &sets[1], &sets[2]])
        .set("--batch-size", "4")
        .set("--save-every", "1")
        .set("--gender-hidden", "32")
        .set("--age-hidden", "32,32")
        .args();
    let (run, trace) = (out.join("m"), dir.path().join("trace"));
    stage(&mpi, 1, Some(&first), &run, "1", &trace);
    for (ranks, steps) in [(2, "2"), (3, "3"), (1, "22")] {
        stage(&mpi, ranks, None, &run, steps, &trace);
    }
    let t = traced(&trace);
    assert_each_once(&epoch_records(&t, "FR", 0), 96, "fr-", "FR's epoch 0 over 1, 2, 3, 1 ranks");
    for (pool, set) in [("Gender", "gender-"), ("Age", "age-")] {
        assert_each_once(&epoch_records(&t, pool, 0), 48, set, &format!("{pool}'s epoch 0 over 1, 2, 3, 1 ranks"));
        assert_each_once(&epoch_records(&t, pool, 1), 48, set, &format!("{pool}'s epoch 1 on 1 rank"));
    }
}
