//! `trainer plateau` against the C++ dlib (`dlib.count_steps_without_decrease` and its
//! robust form, from the `dlib-bin` wheel in `$TRAINER_REF_PYTHON`), and its handling of
//! non-finite values in a loss file.

mod common;
use common::{output, ref_python};
use std::path::Path;
use std::process::Command;
use trainer_data::rng::Rng;

/// Random walks, noisy decays with spikes and ties, plus hand-made series whose robust
/// quantile index (n-1)·0.9 ends in exactly .5 (n = 6, 16, 26): dlib's `std::round`
/// rounds it up where Python's `round` would round to even.
fn series() -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = vec![
        vec![4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 9.0],
        vec![5.0, 4.0, 3.0, 2.0, 9.0, 8.0],
        (0..16).map(|i| if i % 5 == 4 { 7.0 } else { 3.0 - 0.1 * i as f64 }).collect(),
        (0..26).map(|i| [1.0, 1.0, 0.5, 2.0][i % 4]).collect(),
        vec![0.0; 30],
        vec![1.0, 2.0],
    ];
    let mut rng = Rng::new(77);
    for k in 0..12 {
        let n = 20 + 97 * k;
        let knee = n / (2 + k % 3);
        let noise = [0.01, 0.2, 1.0][k % 3];
        let mut walk = 3.0;
        out.push(
            (0..n)
                .map(|i| {
                    walk += if k % 4 == 3 { rng.unit() - 0.5 } else { 0.0 };
                    let trend = if i < knee { 3.0 - 2.0 * i as f64 / knee as f64 } else { 1.0 };
                    let spike = if rng.unit() < 0.05 { 3.0 } else { 0.0 };
                    walk + trend + noise * (rng.unit() - 0.5) + spike
                })
                .collect(),
        );
    }
    out
}

#[test]
fn counts_match_the_cpp_dlib_on_random_and_hand_made_series() {
    let Some(python) = ref_python("dlib") else { return };
    let dir = tempfile::tempdir().unwrap();
    let all = series();
    let mut files = Vec::new();
    let mut json = Vec::new();
    for (i, s) in all.iter().enumerate() {
        // {:e} prints the shortest text that reads back to the same f64.
        let text: Vec<String> = s.iter().map(|v| format!("{v:e}")).collect();
        let path = dir.path().join(format!("s{i}.txt"));
        std::fs::write(&path, text.join(",")).unwrap();
        files.push(path.to_str().unwrap().to_string());
        json.push(format!("[{}]", text.join(",")));
    }
    let script = "import dlib, json, sys\nfor s in json.load(sys.stdin):\n    print(f'steps_without_decrease={dlib.count_steps_without_decrease(s, 0.51)} robust={dlib.count_steps_without_decrease_robust(s, 0.51, 0.1)}')\n";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("[{}]", json.join(",")).as_bytes()).unwrap();
    let theirs = child.wait_with_output().unwrap();
    assert!(theirs.status.success());
    let theirs: Vec<String> = String::from_utf8_lossy(&theirs.stdout).lines().map(String::from).collect();
    let out = output(&[&["plateau"][..], &files.iter().map(String::as_str).collect::<Vec<_>>()].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("steps_")).map(String::from).collect();
    assert_eq!(ours.len(), all.len());
    let mut informative = 0;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "series {i} ({} values)", all[i].len());
        informative += usize::from(!a.contains("=0 ") && !a.ends_with("=0"));
    }
    assert!(informative >= 8, "too few series with non-zero counts: {informative}");
}

#[test]
fn non_finite_losses_are_left_out_and_counted_never_read_as_improving() {
    let dir = tempfile::tempdir().unwrap();
    let rising: Vec<String> = (0..40).map(|i| format!("{:.6}", 1.0 + 0.01 * i as f64)).collect();
    let clean = dir.path().join("clean.txt");
    std::fs::write(&clean, rising.join(",") + ",").unwrap();
    let nan = dir.path().join("nan.txt");
    std::fs::write(&nan, rising.join(",") + ",NaN,").unwrap();
    let run = |p: &Path| String::from_utf8_lossy(&output(&["plateau", p.to_str().unwrap()]).stdout).to_string();
    let (a, b) = (run(&clean), run(&nan));
    assert!(a.starts_with("steps_without_decrease=40 "), "a rising series has no decrease: {a}");
    assert_eq!(a.lines().next(), b.lines().next(), "the trailing NaN changes no count");
    assert!(b.contains("skipped_non_finite=1 (first: token 41, \"NaN\""), "{b}");

    let big = dir.path().join("big.txt");
    std::fs::write(&big, "1,2,1e400,3").unwrap();
    let out = output(&["plateau", big.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("big.txt") && err.contains("token 3") && err.contains("1e400"),
        "{err}"
    );
}
