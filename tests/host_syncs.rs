//! `host_syncs`: every device→host read in the code a training step runs goes through
//! `host_sync` (so it is counted), and the progress lines report a steady count.

mod common;
use common::*;
use std::path::Path;

/// Reads that make the host wait for the device, as they are spelled in tch.
const READS: [&str; 5] = ["double_value(", "int64_value(", ">::try_from(", "to_device(Device::Cpu)", "copy_data("];

/// `file:line: text` of each read in `text` outside its unit tests.
fn reads_in(name: &str, text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//") && READS.iter().any(|r| l.contains(r)))
        .map(|(i, l)| format!("{name}:{}: {}", i + 1, l.trim()))
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.to_string_lossy().ends_with("_test.rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_read_in_the_step_goes_through_host_sync() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/torch/src");
    let mut files = Vec::new();
    for part in ["train", "model", "optim", "dist"] {
        sources(&src.join(part), &mut files);
    }
    files.push(src.join("optim.rs"));
    assert!(files.len() > 30, "found only {} source files under {}", files.len(), src.display());
    let bypass: Vec<String> = files
        .iter()
        .flat_map(|f| {
            reads_in(&f.strip_prefix(&src).unwrap().display().to_string(), &std::fs::read_to_string(f).unwrap())
        })
        .collect();
    assert!(
        bypass.is_empty(),
        "device→host reads that bypass host_sync (use crate::host_sync):\n{}",
        bypass.join("\n")
    );
}

#[test]
fn the_scan_finds_a_read_outside_unit_tests_only() {
    let text = "fn f(t: &Tensor) -> f64 {\n    t.double_value(&[])\n}\n#[cfg(test)]\nmod tests { fn g() { t.int64_value(&[]); } }";
    assert_eq!(reads_in("x.rs", text), vec!["x.rs:2: t.double_value(&[])".to_string()]);
}

/// Also under `--amp` (fp16's loss scaling runs on the CPU): its finite check, skip and
/// scale update stay on the device, and its state comes back in the same one read. And
/// with `--clip-grad-norm`, whose norm and coefficient stay on the device.
#[test]
fn one_process_reads_the_device_once_per_log_interval() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 6, 4, 1, 1);
    let out = dir.path().join("Model");
    for (run, flag) in [("syncs", None), ("amp", Some(("--amp", "fp16"))), ("clip", Some(("--clip-grad-norm", "0.5")))]
    {
        let amp = run == "amp";
        let args = tiny_train("FR", &out, run).set("--train-sets", s(&train)).set("--max-steps", "20");
        let args = match flag {
            Some((f, v)) => args.set(f, v),
            None => args,
        };
        run_ok(&args.args());
        let log = log_lines(&out.join(run));
        let counts: Vec<u64> = log.iter().filter_map(|e| e.get("host_syncs").and_then(|v| v.as_u64())).collect();
        assert_eq!(counts.len(), 4, "{run}: one count per progress line (every 5 of 20 steps): {counts:?}");
        // The first interval holds start-up; the rest are the steps alone: one read of the
        // interval's losses (issue 22's goal: at most one per log interval).
        let steady = &counts[1..];
        assert!(steady.iter().all(|&c| c == 1), "{run}: {counts:?}");
        let scale = log.iter().filter_map(|e| e.get("loss_scale")).count();
        assert_eq!(scale, if amp { 4 } else { 0 }, "{run}: the loss scale on each progress line");
    }
}

/// With two ranks the interval's numbers travel in one all-gather on the device and come
/// back in the one read; every rank judges the plateau rule itself, so no decision is
/// broadcast: still one per log interval, with Partial FC and with `--amp` too.
#[test]
fn two_ranks_under_mpi_read_once_per_log_interval() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 6, 4, 2, 1);
    let out = dir.path().join("Model");
    let runs: [(&str, &[&str]); 3] = [
        ("fr", &[]),
        ("pfc", &["--partial-fc", "--sample-rate", "0.5"]),
        ("pfc-amp", &["--partial-fc", "--sample-rate", "0.5", "--amp", "fp16"]),
    ];
    for (run, extra) in runs {
        let args = tiny_train("FR", &out, run).set("--train-sets", s(&train)).set("--max-steps", "20");
        let status = mpi.job(2).args(args.args()).args(extra).status().expect("spawn mpirun");
        assert!(status.success(), "{run}: {status}");
        let counts: Vec<u64> =
            log_lines(&out.join(run)).iter().filter_map(|e| e.get("host_syncs").and_then(|v| v.as_u64())).collect();
        assert_eq!(counts.len(), 4, "{run}: {counts:?}");
        assert!(counts[1..].iter().all(|&c| c == 1), "{run}: {counts:?}");
    }
}
