//! Watching a run: `trainer train --tensorboard` (event files read back by our CRC-checking
//! reader and by TensorBoard's own loaders), `trainer plot` on a real run, and the
//! binary's independence from system font libraries.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use trainer_data::watch::tensorboard::{read_events, tag_of, Event, EventWriter};

/// (step, wall_time, value) per tag, values as the f32 TensorBoard stores.
type Curves = BTreeMap<String, Vec<(i64, f64, f64)>>;

fn base<'a>(train: &'a Path, out: &'a Path, run: &'a str) -> Vec<&'a str> {
    let tiny = tiny_train("FR", out, run).set("--train-sets", s(train)).set("--batch-size", "32").set("--seed", "3");
    // A flat loss (lr 1e-12) with an 8-step plateau window: decays every 8 steps.
    let tiny = tiny.set("--save-every", "10").set("--lr", "1e-12").set("--plateau-steps", "8");
    tiny.set("--min-lr", "1e-40").args()
}

/// Training and validation sets, and where runs go.
fn data(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (packed_synth(dir, "train", 24, 16, 2, 1), packed_synth(dir, "valid", 8, 10, 1, 2), dir.join("Model"))
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// What TensorBoard should show: log.txt's numbers (the one history the run kept), under
/// the documented tags.
fn curves_of_log(run: &Path) -> Curves {
    let mut curves = Curves::new();
    for line in log_lines(run) {
        let (step, time) = (line["step"].as_i64().unwrap(), line["time"].as_f64().unwrap());
        let mut add = |tag: String, v: f64| curves.entry(tag).or_default().push((step, time, f64::from(v as f32)));
        match line["event"].as_str() {
            None => {
                for (k, v) in line.as_object().unwrap().iter().filter(|(k, _)| *k != "step" && *k != "time") {
                    if let Some(v) = v.as_f64().filter(|v| v.is_finite()) {
                        add(tag_of(k), v);
                    }
                }
            }
            Some("valid") => {
                for (k, v) in line.as_object().unwrap().iter().filter(|(k, _)| k.starts_with("valid_")) {
                    add(format!("valid/{}", &k["valid_".len()..]), v.as_f64().unwrap());
                }
            }
            Some("decay") => {
                add(format!("events/decay/{}", line["head"].as_str().unwrap()), line["lr"].as_f64().unwrap())
            }
            Some("rollback") => add("events/rollback".into(), line["to_step"].as_f64().unwrap()),
            Some(_) => {}
        }
    }
    curves
}

/// Our reading of TensorBoard's Python loader: points in file order, a restart marker at
/// step s forgetting every point at s or later.
fn view_with_restarts(events: &[Event]) -> Curves {
    let mut curves = Curves::new();
    for ev in events {
        if ev.restart {
            curves.values_mut().for_each(|points| points.retain(|p| p.0 < ev.step));
        }
        for sc in &ev.scalars {
            curves.entry(sc.tag.clone()).or_default().push((ev.step, ev.wall_time, f64::from(sc.value)));
        }
    }
    curves.retain(|_, points| !points.is_empty());
    curves
}

/// TensorBoard's loaders (benches/read_tensorboard.py): `python` (EventAccumulator) or
/// `rust` (the data server `tensorboard --logdir` runs by default).
fn load_with_tensorboard(python: &Path, loader: &str, dir: &Path) -> (Option<f64>, Curves) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/read_tensorboard.py");
    let out = Command::new(python).arg(&script).args(["--loader", loader]).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{} --loader {loader} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut curves: Curves = json["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, points)| {
            let points = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap(), p[2].as_f64().unwrap()))
                .collect();
            (tag.clone(), points)
        })
        .collect();
    curves.retain(|_, points: &mut Vec<_>| !points.is_empty());
    (json["file_version"].as_f64(), curves)
}

/// A run with decays, a NaN rollback, validation and a resume, written with
/// --tensorboard: every record's CRCs check, the scalars are log.txt's numbers under the
/// documented tags, a resume adds a file and leaves the old one alone, and TensorBoard's
/// own loaders show exactly log.txt's history (the retried steps, not the abandoned ones).
#[test]
fn tensorboard_scalars_mirror_the_log_through_rollback_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid, out) = data(dir.path());
    let mut args = base(&train, &out, "tb");
    // NaN at step 18: back to the checkpoint of step 10, so the line of step 15 is logged twice.
    args.extend([
        "--tensorboard",
        "--max-steps",
        "30",
        "--inject-nan-at",
        "18",
        "--valid-sets",
        s(&valid),
        "--valid-every",
        "20",
        "--valid-pairs",
        "200",
    ]);
    run_ok(&args);
    let run = out.join("tb");
    let tb = run.join("tensorboard");
    let first = event_files(&tb);
    assert_eq!(first.len(), 1, "{first:?}");
    let first_bytes = std::fs::read(&first[0]).unwrap();
    run_ok(&["train", "--resume", s(&run), "--max-steps", "40"]);
    let files = event_files(&tb);
    assert_eq!(files.len(), 2, "a resume adds an event file: {files:?}");
    assert_eq!(files[0], first[0], "the resumed run's file sorts after the first");
    assert_eq!(std::fs::read(&files[0]).unwrap(), first_bytes, "the resume rewrote the first file");

    let mut events = vec![];
    for f in &files {
        let evs = read_events(f).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(evs[0].file_version.as_deref(), Some("brain.Event:2"), "{}", f.display());
        events.extend(evs);
    }
    let log = curves_of_log(&run);
    for tag in [
        "loss",
        "loss/FR",
        "lr",
        "lr/backbone",
        "lr/fr",
        "lr/arcface",
        "speed/images_per_s",
        "speed/data_wait_frac",
        "plateau/steps_without_decrease",
        "plateau/steps_without_decrease_robust",
        "plateau/steps_without_decrease/FR",
        "plateau/steps_without_decrease_robust/FR",
        "run/epoch",
        "comm/allreduce_bytes",
        "comm/allgather_bytes",
        "comm/head_bytes_per_rank",
        "valid/fr_verif_acc",
        "valid/fr_gap",
        "events/decay/FR",
        "events/rollback",
    ] {
        assert!(log.contains_key(tag), "no {tag} in {:?}", log.keys());
    }
    assert_eq!(view_with_restarts(&events), log, "the event files, restarts applied, differ from log.txt");

    // What TensorBoard cannot unwrite: step 15 was logged, abandoned, and logged again
    // with a later wall time; a restart marker at step 11 (the first step retried) lies
    // between them, and a resume marker at 31.
    let loss_15: Vec<f64> = events
        .iter()
        .filter(|e| e.step == 15 && e.scalars.iter().any(|s| s.tag == "loss"))
        .map(|e| e.wall_time)
        .collect();
    assert_eq!(loss_15.len(), 2, "step 15 logged before and after the rollback");
    let restarts: Vec<i64> = events.iter().filter(|e| e.restart).map(|e| e.step).collect();
    assert_eq!(restarts, [11, 31]);
    assert_eq!(log["loss"].iter().find(|p| p.0 == 15).unwrap().1, loss_15[1], "log.txt keeps the retried step");

    let Some(python) = ref_python("tensorboard") else { return };
    let (version, python_view) = load_with_tensorboard(&python, "python", &tb);
    assert_eq!(version, Some(2.0));
    assert_eq!(python_view, log, "TensorBoard's EventAccumulator shows another history than log.txt");
    let (_, rust_view) = load_with_tensorboard(&python, "rust", &tb);
    assert_eq!(rust_view, log, "TensorBoard's data server shows another history than log.txt");
}

/// Two writers (a first process and a resumed one) over 100 steps: TensorBoard returns
/// every scalar bit for bit (f32 values, f64 wall times, i64 steps).
#[test]
fn tensorboard_reads_every_scalar_we_write() {
    let Some(python) = ref_python("tensorboard") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Curves::new();
    let mut note = |tag: &str, step: i64, t: f64, v: f64| {
        expected.entry(tag.to_string()).or_default().push((step, t, f64::from(v as f32)))
    };
    let mut first = EventWriter::create(dir.path()).unwrap();
    for step in 0..60 {
        let (t, loss, lr) = (1.7e9 + step as f64 * 0.5, 30.0 / (1.0 + step as f64), if step < 40 { 0.1 } else { 0.01 });
        first.scalar_at("loss", step, loss, t).unwrap();
        first.scalar_at("lr/backbone", step, lr, t).unwrap();
        note("loss", step, t, loss);
        note("lr/backbone", step, t, lr);
    }
    drop(first);
    let mut resumed = EventWriter::create(dir.path()).unwrap();
    for step in 60..100 {
        let t = 1.7e9 + 100.0 + step as f64;
        let values = [("loss", -1.0 / step as f64), ("valid/verif_acc", 0.5 + step as f64 / 1000.0)];
        resumed.scalars_at(step, &values, t).unwrap();
        for (tag, v) in values {
            note(tag, step, t, v);
        }
    }
    resumed.flush().unwrap();
    for loader in ["python", "rust"] {
        let (version, curves) = load_with_tensorboard(&python, loader, dir.path());
        if loader == "python" {
            assert_eq!(version, Some(2.0), "TensorBoard parses \"brain.Event:2\" as version 2");
        }
        assert_eq!(curves, expected, "{loader} loader");
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

/// `trainer plot` on a real run with decays, a rollback and validation: a PNG of the
/// requested size, an SVG with every panel, and errors that name what is missing.
#[test]
fn plot_draws_a_real_run_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid, out) = data(dir.path());
    let mut args = base(&train, &out, "curves");
    args.extend([
        "--max-steps",
        "40",
        "--inject-nan-at",
        "18",
        "--valid-sets",
        s(&valid),
        "--valid-every",
        "10",
        "--valid-pairs",
        "200",
    ]);
    run_ok(&args);
    let run = out.join("curves");
    let log = log_lines(&run);
    assert!(
        log.iter().any(|e| e["event"] == "decay") && log.iter().any(|e| e["event"] == "valid"),
        "the run needs decays and validation"
    );

    let png = dir.path().join("curves.png");
    let printed = run_ok(&["plot", s(&run), "--out", s(&png), "--width", "900", "--height", "700"]);
    assert_eq!(png_size(&png), (900, 700));
    assert!(text(&printed).contains("curves.png"), "{}", text(&printed));
    let svg = dir.path().join("curves.svg");
    run_ok(&["plot", s(&run), s(&run), "--out", s(&svg)]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    for title in [
        "loss (light: raw, dark: smoothed)",
        "learning rate (log scale)",
        "images/s",
        "valid_fr_verif_acc",
        "valid_fr_gap",
        "lr decay",
        "rollback",
    ] {
        assert!(svg.contains(&format!(">\n{title}\n<")), "{title:?} missing from the SVG");
    }

    let empty = dir.path().join("not-a-run");
    std::fs::create_dir(&empty).unwrap();
    let bad = trainer().args(["plot", s(&empty), "--out", s(&dir.path().join("x.png"))]).output().unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("no log.txt") && text(&bad).contains("not-a-run"), "{}", text(&bad));
    assert!(!dir.path().join("x.png").exists());
}

/// `trainer eval` draws a bar per validation set on a terminal (here a pseudo-terminal
/// from util-linux's `script`) and writes nothing extra when stderr is redirected.
#[test]
fn eval_draws_a_bar_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid, out) = data(dir.path());
    let mut args = base(&train, &out, "eval");
    args.extend(["--max-steps", "5", "--valid-sets", s(&valid), "--valid-pairs", "200"]);
    run_ok(&args);
    let eval = format!("{} eval {} --device cpu --pairs 200", env!("CARGO_BIN_EXE_trainer"), s(&out.join("eval")));
    let redirected = trainer().args(eval.split(' ').skip(1)).output().unwrap();
    assert!(redirected.status.success() && text(&redirected).contains("valid_fr_verif_acc"), "{}", text(&redirected));
    assert!(!text(&redirected).contains("images"), "a bar was written to a pipe: {}", text(&redirected));
    let on_tty = match Command::new("script").args(["-qec", &eval, "/dev/null"]).env("RUST_LOG", "warn").output() {
        Ok(o) if o.status.success() => Some(text(&o)),
        other => missing(&format!("util-linux's `script` gives no pseudo-terminal: {other:?}")),
    };
    let Some(on_tty) = on_tty else { return };
    assert!(on_tty.contains("valid [") && on_tty.contains("/80 images"), "no bar on a terminal: {on_tty}");
}

/// Plot text comes from the font compiled in: the binary must not need fontconfig or
/// freetype, which bare CI machines and clusters may lack.
#[cfg(target_os = "linux")]
#[test]
fn trainer_links_no_system_font_library() {
    let out = Command::new("ldd").arg(env!("CARGO_BIN_EXE_trainer")).output().expect("ldd (Debian's libc-bin) runs");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(libs.contains("libc.so"), "ldd output looks wrong: {libs}");
    for lib in ["fontconfig", "freetype", "expat"] {
        assert!(!libs.contains(lib), "{lib} is linked:\n{libs}");
    }
}

/// `trainer plot` on a log validated on a packed set and four pair sets (the keys training
/// writes): one panel per metric holding every set, named in the legend, and no panel for
/// the 10-fold standard deviations (12 panels and no legend before).
#[test]
fn plot_puts_every_set_of_a_metric_in_one_panel_with_a_legend() {
    let dir = tempfile::tempdir().unwrap();
    let sets = ["lfw", "cfp_fp", "agedb_30", "calfw"];
    let mut log = String::from("{\"step\":10,\"loss\":20.0,\"lr\":0.1,\"images_per_s\":500,\"time\":1.0}\n");
    for (step, acc) in [(10, 0.7), (20, 0.8)] {
        let mut ev = serde_json::json!({"event": "valid", "step": step, "time": 2.0, "valid_fr_verif_acc": acc, "valid_fr_gap": 1.0});
        for (i, set) in sets.iter().enumerate() {
            ev[format!("valid_{set}_verif_acc")] = serde_json::json!(acc - 0.01 * i as f64);
            ev[format!("valid_{set}_verif_std")] = serde_json::json!(0.02);
            ev[format!("valid_{set}_gap")] = serde_json::json!(1.5);
        }
        log.push_str(&format!("{ev}\n"));
    }
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("log.txt"), log).unwrap();
    let svg_path = dir.path().join("c.svg");
    run_ok(&["plot", s(&run), "--out", s(&svg_path)]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let texts: Vec<&str> =
        svg.split("<text").skip(1).filter_map(|t| Some(t.split('>').nth(1)?.split('<').next()?.trim())).collect();
    let titled = |t: &str| texts.iter().filter(|x| **x == t).count();
    assert_eq!((titled("valid_fr_verif_acc"), titled("valid_fr_gap")), (1, 1), "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("verif_std") || t.starts_with("valid_lfw")), "{texts:?}");
    for set in sets.iter().chain(&["first set"]) {
        assert_eq!(titled(set), 2, "{set} in the legends of the two panels: {texts:?}");
    }
}
