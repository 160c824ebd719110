//! `trainer plateau` end to end, and its agreement with the Python reference
//! (benches/seed_plateau.py) on random and hand-made loss series.

mod common;
use common::{output, torch_python};
use std::path::{Path, PathBuf};
use std::process::Command;
use trainer_data::rng::Rng;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn first_line(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string()
}

#[test]
fn prints_both_counts_for_a_hand_worked_series() {
    let dir = tempfile::tempdir().unwrap();
    // Worked in running_gradient's unit tests: a final spike fools the plain count (8)
    // but not the robust one (4). Mixed separators as loss_debug files come.
    let f = write(dir.path(), "loss.txt", "4,3, 2\n1,0,0\t0,9,\n");
    let out = output(&["plateau", f.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(first_line(&out), "steps_without_decrease=8 robust=4");
    assert!(stdout.contains("losses=8"), "{stdout}");

    // dlib shrinks only when both counts reach the threshold over the last T losses.
    let out = output(&["plateau", f.to_str().unwrap(), "--threshold", "4"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("shrink=yes"));
    let out = output(&["plateau", f.to_str().unwrap(), "--threshold", "8"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("shrink=no"));
}

#[test]
fn bad_token_names_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "bad.txt", "0.5,0.4,\n0.3,oops,0.2");
    let out = output(&["plateau", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.txt") && err.contains("token 4") && err.contains("oops"), "{err}");

    let out = output(&["plateau", dir.path().join("missing.txt").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt"));

    let out = output(&["plateau", f.to_str().unwrap(), "--p", "0.4"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--p"));
}

fn count_lines(stdout: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stdout);
    text.lines().filter(|l| l.starts_with("steps_without_decrease=")).map(str::to_string).collect()
}

/// Series where the counts are neither trivially 0 nor the full length.
fn test_series() -> Vec<(String, Vec<f64>)> {
    let mut out = vec![
        ("spike".into(), vec![4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 9.0]),
        ("zeros".into(), vec![0.0; 40]),
        ("ties".into(), (0..60).map(|i| [1.0, 1.0, 0.5][i % 3]).collect()),
        ("short".into(), vec![1.0, 2.0]),
    ];
    let mut rng = Rng::new(2024);
    for k in 0..8 {
        let n = 300 + 150 * k;
        let knee = n / (2 + k % 3);
        let noise = [0.02, 0.1, 0.5][k % 3];
        let s = (0..n)
            .map(|i| {
                let trend = if i < knee { 3.0 - 2.0 * i as f64 / knee as f64 } else { 1.0 };
                let spike = if rng.unit() < 0.03 { 2.0 } else { 0.0 };
                trend + noise * (rng.unit() - 0.5) + spike
            })
            .collect();
        out.push((format!("noisy{k}"), s));
    }
    let mut walk = 5.0;
    out.push((
        "walk".into(),
        (0..1000)
            .map(|_| {
                walk += rng.unit() - 0.5;
                walk
            })
            .collect(),
    ));
    out
}

#[test]
fn agrees_with_python_reference() {
    let Some(python) = torch_python("sys") else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/seed_plateau.py");
    let dir = tempfile::tempdir().unwrap();
    let series = test_series();
    let files: Vec<String> = series
        .iter()
        .map(|(name, s)| {
            let text = s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
            write(dir.path(), &format!("{name}.txt"), &text).to_str().unwrap().to_string()
        })
        .collect();
    let mut nontrivial = 0;
    for (p, q) in [("0.51", "0.1"), ("0.6", "0.25")] {
        let mut args = vec!["plateau", "--p", p, "--quantile", q];
        args.extend(files.iter().map(String::as_str));
        let out = output(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ours = count_lines(&out.stdout);
        for imp in ["exact", "seed"] {
            let py = Command::new(&python)
                .arg(&script)
                .args(["count", "--p", p, "--quantile", q, "--impl", imp])
                .args(&files)
                .output()
                .expect("run python");
            assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
            let theirs = count_lines(&py.stdout);
            assert_eq!(theirs.len(), series.len());
            for (i, (name, _)) in series.iter().enumerate() {
                assert_eq!(ours[i], theirs[i], "{name} p={p} q={q} impl={imp}");
            }
        }
        for (line, (_, s)) in ours.iter().zip(&series) {
            if !line.contains("=0 ") && !line.ends_with(&format!("robust={}", s.len())) {
                nontrivial += 1;
            }
        }
    }
    assert!(nontrivial >= 8, "too few informative series: {nontrivial}");
}

#[test]
fn bench_writes_a_loss_file_trainer_plateau_reads() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bench_losses.txt");
    let out = output(&["bench", "plateau", "--n", "500", "--runs", "1", "--write-losses", f.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && stdout.contains("rust_check n=500"), "{stdout}");
    let out = output(&["plateau", f.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("losses=500"));
}
