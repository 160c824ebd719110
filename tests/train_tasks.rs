//! Gender, Age and Multi on the seed's kind of data: per-task datasets, classes from the
//! `label` column when a set has no gender/age, no silent no-op, per-task validation,
//! plateau rules and resume, and `--init` across tasks.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `trainer synth` images and their list table: (relative path, identity, gender, age).
fn synth(
    dir: &Path,
    name: &str,
    identities: u32,
    per: u32,
    seed: u32,
    gender_folders: bool,
) -> (PathBuf, Vec<(String, u32, i32, i32)>) {
    let img = dir.join(name);
    let (ids, per, seed) = (identities.to_string(), per.to_string(), seed.to_string());
    let mut args =
        vec!["synth", "--out", s(&img), "--identities", &ids, "--per-identity", &per, "--size", "32", "--seed", &seed];
    if gender_folders {
        args.push("--gender");
    }
    run_ok(&args);
    let list = std::fs::read_to_string(img.join("list.tsv")).unwrap();
    let rows = list
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap())
        })
        .collect();
    (img, rows)
}

/// The seed's format: `NAME.bin` + a headerless 4-column `NAME.idx` with CRLF line ends,
/// label = `class(row)`.
fn seed_pair(
    dir: &Path,
    name: &str,
    img: &Path,
    rows: &[(String, u32, i32, i32)],
    class: impl Fn(&(String, u32, i32, i32)) -> u32,
) -> PathBuf {
    let (mut bin, mut idx) = (Vec::new(), String::new());
    for row in rows {
        let bytes = std::fs::read(img.join(&row.0)).unwrap();
        let start = bin.len();
        bin.extend_from_slice(&bytes);
        idx.push_str(&format!("{}\t{}\t{start}\t{}\r\n", row.0, class(row), bin.len()));
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.bin")), bin).unwrap();
    std::fs::write(dir.join(format!("{name}.idx")), idx).unwrap();
    dir.join(name)
}

fn pack_folders(img: &Path, out: &Path, name: &str, shards: &str) -> PathBuf {
    run_ok(&["pack", s(img), "--name", name, "--shards", shards, "--out", s(out)]);
    out.join(name)
}

/// This file's tiny run, its training sets still to give: seed 3, small gender and age heads.
fn tiny<'a>(task: &'a str, out: &'a Path, run: &'a str) -> Vec<&'a str> {
    let tiny = tiny_train(task, out, run).set("--seed", "3").set("--gender-hidden", "32");
    tiny.set("--age-hidden", "32,32").set("--log-every", "1").args()
}

fn valid_event(run: &Path) -> Value {
    log_lines(run).into_iter().rfind(|e| e["event"] == "valid").expect("a validation event")
}

#[test]
fn seed_style_gender_and_age_bins_train_from_their_label_column() {
    let dir = tempfile::tempdir().unwrap();
    let (img, rows) = synth(dir.path(), "img", 12, 6, 1, false);
    let bins = dir.path().join("bins");
    let gender = seed_pair(&bins, "gender_train", &img, &rows, |r| r.2 as u32);
    // Buckets up to 9: above the last of 7 they clip to it, as the seed's did.
    let age = seed_pair(&bins, "age_train", &img, &rows, |r| (r.3 as u32 + r.1) % 10);
    let out = dir.path().join("Model");
    for (task, set, run) in [("Gender", &gender, "g"), ("Age", &age, "a")] {
        let mut a = tiny(task, &out, run);
        a.extend(["--train-sets", s(set), "--valid-sets", s(set), "--max-steps", "20", "--valid-every", "20"]);
        run_ok(&a);
        let run = out.join(run);
        let l = losses(&run, task);
        assert_eq!(l.len(), 20);
        assert!(l[0] > 0.05, "{task}: the loss at step 1 is {} (every target masked?)", l[0]);
        let start = &log_lines(&run)[0];
        assert_eq!(start["datasets"][0]["sets"][0]["targets"][0]["column"], "label", "{start}");
        assert!(valid_event(&run)[format!("valid_{}_acc", task.to_lowercase())].as_f64().is_some());
    }
}

#[test]
fn a_label_column_of_identities_is_no_gender_and_unlabelled_validation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (img, rows) = synth(dir.path(), "img", 64, 2, 1, false);
    let ids = seed_pair(&dir.path().join("bins"), "ids", &img, &rows, |r| r.1);
    let out = dir.path().join("Model");
    let mut a = tiny("Gender", &out, "ids");
    a.extend(["--train-sets", s(&ids), "--max-steps", "5"]);
    let res = trainer().args(&a).output().unwrap();
    let msg = text(&res);
    assert!(
        !res.status.success() && msg.contains("ids") && msg.contains("`label` column") && msg.contains("2 classes"),
        "{msg}"
    );
    assert!(
        !out.join("ids/loss_debug/Gender_loss.txt").exists() || losses(&out.join("ids"), "Gender").is_empty(),
        "no step ran"
    );

    let packed = packed_synth(dir.path(), "faces", 8, 4, 1, 1);
    let seed_valid = seed_pair(&dir.path().join("bins"), "nogender", &img, &rows, |r| r.1);
    let mut v = tiny("Gender", &out, "v");
    let valid = format!("gender={}@gender", seed_valid.display());
    v.extend(["--train-sets", s(&packed), "--valid-sets", &valid, "--max-steps", "5"]);
    let res = trainer().args(&v).output().unwrap();
    let msg = text(&res);
    assert!(
        !res.status.success() && msg.contains("no labelled sample for Gender") && msg.contains("nogender"),
        "{msg}"
    );
}

#[test]
fn init_from_another_identity_count_loads_the_backbone_and_lists_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let fr = packed_synth(dir.path(), "fr", 12, 4, 1, 1);
    let fr_other = packed_synth(dir.path(), "fr2", 9, 4, 1, 2);
    let out = dir.path().join("Model");
    let mut a = tiny("FR", &out, "fr");
    a.extend(["--train-sets", s(&fr), "--max-steps", "3"]);
    run_ok(&a);
    let ckpt = out.join("fr/checkpoints/step-000000003");
    let mut g = tiny("Gender", &out, "g");
    g.extend(["--train-sets", s(&fr), "--max-steps", "2", "--init", s(&ckpt)]);
    let msg = text(&run_ok(&g));
    assert!(msg.contains("skipped") && msg.contains("arcface.weight (not in this model)"), "{msg}");
    let mut m = tiny("FR", &out, "fr9");
    m.extend(["--train-sets", s(&fr_other), "--max-steps", "2", "--init", s(&ckpt)]);
    let msg = text(&run_ok(&m));
    assert!(msg.contains("arcface.weight (shape [12, 32], this model [9, 32])"), "{msg}");
}

/// Per-task pools: in `--alternate` mode a step draws only from the stepped task's data,
/// and each task's plateau rule sees only its own losses.
#[test]
fn alternate_steps_read_their_own_task_and_decay_on_their_own_losses() {
    let dir = tempfile::tempdir().unwrap();
    let (fr, gender, age) = three_sets(dir.path());
    let out = dir.path().join("Model");
    let sets =
        [format!("fr={}", fr.display()), format!("gender={}", gender.display()), format!("age={}", age.display())];
    let mut a = tiny("Multi", &out, "alt");
    a.extend([
        "--alternate",
        "--train-sets",
        &sets[0],
        &sets[1],
        &sets[2],
        "--max-steps",
        "270",
        "--save-every",
        "30",
        "--keep-checkpoints",
        "20",
    ]);
    a.extend(["--plateau-steps", "30", "--min-lr", "1e-30", "--lr", "0.02"]);
    run_ok(&a);
    let run = out.join("alt");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/step-000000030/state.json")).unwrap())
            .unwrap();
    for pool in ["FR", "Gender", "Age"] {
        let p = &state["state"]["positions"][pool];
        let steps_per_epoch =
            [("FR", 96 / 16), ("Gender", 96 / 16), ("Age", 96 / 16)].iter().find(|x| x.0 == pool).unwrap().1;
        let batches = p["epoch"].as_u64().unwrap() * steps_per_epoch + p["batch"].as_u64().unwrap();
        assert_eq!(batches, 10, "{pool}: 30 alternating steps take 10 batches from each task ({state})");
    }
    let log = log_lines(&run);
    let end = log.iter().find(|e| e["event"] == "end").unwrap();
    assert_eq!(end["step"], 270, "no premature stop on the minimum lr: {end}");
    let decays: Vec<&Value> = log.iter().filter(|e| e["event"] == "decay").collect();
    assert!(decays.iter().any(|d| d["head"] != "FR"), "a flat Gender or Age loss decays its head: {decays:?}");
    for decay in decays {
        let head = decay["head"].as_str().unwrap();
        let step = decay["step"].as_u64().unwrap();
        let own: Vec<f64> = losses(&run, head);
        let seen = own.len() * step as usize / 270; // each head trains on every third step
        let window = &own[seen.saturating_sub(30)..seen];
        let count = trainer_data::plateau::count_steps_without_decrease(window, 0.51);
        assert!(
            count >= 20,
            "{head} decayed at step {step} while its own last {} losses were still falling (count {count})",
            window.len()
        );
    }
}

/// The seed's design under `mpirun -n 2`: three datasets, one backbone; the Age set is a
/// single-shard legacy pair (striped over the ranks). Killed and resumed, the run ends
/// bit-identical to one that never stopped.
#[test]
fn mpi_multi_on_two_ranks_with_three_datasets_resumes_exactly() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (fr, gender, age) = three_sets(dir.path());
    let out = dir.path().join("Model");
    let sets =
        [format!("fr={}", fr.display()), format!("gender={}", gender.display()), format!("age={}", age.display())];
    let run = |id: &str, steps: &str, extra: &[&str]| {
        let mut a = tiny("Multi", &out, id);
        a.extend(["--train-sets", &sets[0], &sets[1], &sets[2], "--valid-sets", &sets[0], &sets[1], &sets[2]]);
        a.extend([
            "--max-steps",
            steps,
            "--save-every",
            "6",
            "--valid-every",
            "12",
            "--valid-pairs",
            "100",
            "--collective-timeout",
            "10",
        ]);
        a.extend(extra);
        let mut cmd = mpi.job(2);
        cmd.args(&a);
        cmd
    };
    let straight = run("straight", "24", &[]).output().unwrap();
    assert!(straight.status.success(), "{}", text(&straight));
    let mut child = run("killed", "100000", &[]).spawn().unwrap();
    wait_for(&out.join("killed/checkpoints/step-000000012/state.json"));
    kill_rank(&out.join("killed"), 1);
    let _ = child.wait();
    wait_for_ranks_to_exit(&out.join("killed"), 2);
    let resumed =
        { mpi.job(2).args(["train", "--resume", s(&out.join("killed")), "--max-steps", "24"]).output().unwrap() };
    assert!(resumed.status.success(), "{}", text(&resumed));
    for task in ["FR", "Gender", "Age"] {
        let (a, b) = (losses(&out.join("straight"), task), losses(&out.join("killed"), task));
        assert_eq!(a.len(), 24, "{task}");
        assert!(a.iter().all(|&l| l > 0.0), "{task}: a zero loss means every target was masked: {a:?}");
        assert_eq!(a, b, "{task}: resumed losses differ");
    }
    let step =
        log_lines(&out.join("straight")).into_iter().find(|e| e.get("images_per_s").is_some()).expect("a step line");
    for key in ["epoch", "epoch_FR", "epoch_Gender", "epoch_Age"] {
        assert!(step[key].as_u64().is_some(), "no {key} in {step}");
    }
    assert_eq!(step["epoch"], step["epoch_FR"], "the run's epoch is the lead task's: {step}");
    let v = valid_event(&out.join("killed"));
    for key in ["valid_fr_verif_acc", "valid_gender_acc", "valid_age_acc", "valid_age_mae"] {
        assert!(v[key].as_f64().is_some(), "no {key} in {v}");
    }
    let wa = safetensors(&out.join("straight/checkpoints/step-000000024/model.safetensors"));
    let wb = safetensors(&out.join("killed/checkpoints/step-000000024/model.safetensors"));
    assert!(wa == wb, "resumed weights differ from the uninterrupted run");
}

/// FR: packed identities (2 shards); Gender: class folders (label = gender, 2 shards);
/// Age: a seed-format legacy pair (label = age bucket, one shard).
fn three_sets(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let fr = packed_synth(dir, "fr", 12, 8, 2, 1);
    let (gimg, _) = synth(dir, "gimg", 24, 4, 2, true);
    let gender = pack_folders(&gimg, &dir.join("shards"), "gender", "2");
    let (aimg, rows) = synth(dir, "aimg", 24, 4, 3, false);
    let age = seed_pair(&dir.join("bins"), "age_train", &aimg, &rows, |r| r.3 as u32);
    (fr, gender, age)
}

/// SIGKILL to rank `rank` of a running job (its pid is in its rank log).
fn kill_rank(run: &Path, rank: usize) {
    let pid = rank_pid(run, rank).expect("a pid in the rank log");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
}

/// Class folders the way the seed's gender sets are laid out (`0_male/`, `1_female/`), with a
/// class cue a small network can learn: a bar lying down (0) or standing up (1), at a random
/// place and colour, over noise.
fn bars(dir: &Path, per_class: u32, seed: u64) -> PathBuf {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |n: u32| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % n as u64) as u32
    };
    for (class, folder) in ["0_male", "1_female"].into_iter().enumerate() {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        for i in 0..per_class {
            let mut img =
                image::RgbImage::from_fn(32, 32, |_, _| image::Rgb([next(96) as u8, next(96) as u8, next(96) as u8]));
            let (long, wide, at, along) = (14 + next(12), 3 + next(3), next(24), next(6));
            let colour = image::Rgb([130 + next(126) as u8, 130 + next(126) as u8, 130 + next(126) as u8]);
            for a in along..(along + long).min(32) {
                for b in at..(at + wide).min(32) {
                    let (x, y) = if class == 0 { (a, b) } else { (b, a) };
                    img.put_pixel(x, y, colour);
                }
            }
            img.save(dir.join(folder).join(format!("{i:04}.png"))).unwrap();
        }
    }
    dir.to_path_buf()
}

#[test]
fn gender_learns_from_a_class_folder_pack() {
    let dir = tempfile::tempdir().unwrap();
    let train = pack_folders(&bars(&dir.path().join("train-img"), 160, 1), &dir.path().join("shards"), "g", "2");
    let valid = pack_folders(&bars(&dir.path().join("valid-img"), 50, 2), &dir.path().join("shards"), "gv", "1");
    let shown = text(&run_ok(&["inspect", s(&train)]));
    assert!(shown.contains("Gender  label  320 of 320 known, classes 0..=1  (as gender=DIR/NAME; shared with other tasks: gender none known)"), "{shown}");
    let out = dir.path().join("Model");
    let mut a = tiny("Gender", &out, "bars");
    a.extend(["--train-sets", s(&train), "--valid-sets", s(&valid), "--max-steps", "150", "--valid-every", "150"]);
    run_ok(&a);
    let run = out.join("bars");
    let l = losses(&run, "Gender");
    assert!(l[0] > 0.3, "the loss at step 1 is {} (every target masked?)", l[0]);
    let acc = valid_event(&run)["valid_gender_acc"].as_f64().expect("valid_gender_acc");
    assert!(acc >= 0.9, "held-out accuracy {acc} after 150 steps on a learnable two-class set");
}

/// Multi with a dataset per task: the Gender and Age heads learn their own sets while FR trains on
/// identities through the same backbone.
#[test]
fn multi_learns_gender_and_age_from_their_own_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    let fr = packed_synth(dir.path(), "fr", 12, 8, 1, 1);
    let gender = pack_folders(&bars(&dir.path().join("train-img"), 160, 1), &shards, "g", "2");
    let valid = pack_folders(&bars(&dir.path().join("valid-img"), 50, 2), &shards, "gv", "1");
    let out = dir.path().join("Model");
    // Age reads the same folders as buckets 0 and 1.
    let train =
        [format!("fr={}", fr.display()), format!("gender={}", gender.display()), format!("age={}", gender.display())];
    let valid = [format!("gender={}", valid.display()), format!("age={}", valid.display())];
    let mut a = tiny("Multi", &out, "m");
    a.extend([
        "--train-sets",
        &train[0],
        &train[1],
        &train[2],
        "--valid-sets",
        &valid[0],
        &valid[1],
        "--max-steps",
        "150",
        "--valid-every",
        "150",
    ]);
    run_ok(&a);
    let v = valid_event(&out.join("m"));
    for key in ["valid_gender_acc", "valid_age_acc"] {
        let acc = v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"));
        assert!(acc >= 0.9, "held-out {key} {acc} in Multi after 150 steps");
    }
}
