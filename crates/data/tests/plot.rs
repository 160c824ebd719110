//! `plot_runs` end to end: synthetic runs (decays, a rollback, validation) rendered to PNG
//! and SVG, and the errors a user can meet. (`tests/watch.rs` runs `trainer plot` on a real
//! run and checks that the binary links no system font library.)

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use support::{write_run, Synth};
use trainer_data::watch::plot::plot_runs;

fn two_runs(dir: &Path) -> Vec<PathBuf> {
    vec![
        write_run(dir, "fr-resnet50", &Synth { steps: 3000, every: 20, multi: false, seed: 1 }),
        write_run(dir, "multi-resnet18", &Synth { steps: 2000, every: 20, multi: true, seed: 2 }),
    ]
}

fn error(runs: &[PathBuf], out: &Path) -> String {
    format!("{:#}", plot_runs(runs, out, 800, 600).unwrap_err())
}

#[test]
fn png_has_the_requested_size_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("curves.png");
    plot_runs(&two_runs(dir.path()), &out, 1200, 900).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!((info.width, info.height), (1200, 900));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let colours: HashSet<&[u8]> = rgb[..info.buffer_size()].chunks(3).collect();
    assert!(colours.len() > 50, "{} colours: curves, text and light raw lines expected", colours.len());
    // Both run colours (Tableau blue and orange) appear at full strength.
    assert!(colours.contains(&[31u8, 119, 180][..]) && colours.contains(&[255u8, 127, 14][..]));
    assert!(!dir.path().join("curves.png.partial").exists());
}

#[test]
fn svg_has_every_panel_and_mark_legend() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("curves.SVG");
    plot_runs(&two_runs(dir.path()), &out, 1000, 800).unwrap();
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(r#"width="1000" height="800""#));
    for text in [
        "loss (light: raw, dark: smoothed)",
        "learning rate (log scale)",
        "images/s",
        "valid_fr_verif_acc",
        "valid_fr_gap",
    ] {
        assert!(svg.contains(&format!(">\n{text}\n<")), "panel title {text:?} missing");
    }
    assert!(!svg.contains(">\nvalid_lfw_verif_acc\n<"), "a pair set joins the FR panel");
    // Two runs: the sets of a panel are told apart by dash, named in its legend.
    for text in [
        "fr-resnet50",
        "multi-resnet18 loss_Gender",
        "multi-resnet18 lr_gender",
        "lr decay",
        "rollback",
        "first set",
        "lfw",
    ] {
        assert!(svg.contains(&format!(">\n{text}\n<")), "legend entry {text:?} missing");
    }
    assert!(!svg.contains("multi-resnet18 lr_backbone"), "a group whose rate is the main one is drawn once");
}

#[test]
fn runs_with_the_same_directory_name_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let synth = Synth { steps: 200, every: 20, multi: false, seed: 1 };
    let runs = [write_run(&dir.path().join("a"), "run", &synth), write_run(&dir.path().join("b"), "run", &synth)];
    let out = dir.path().join("c.svg");
    plot_runs(&runs, &out, 800, 600).unwrap();
    let svg = std::fs::read_to_string(&out).unwrap();
    for run in &runs {
        let name = run.display().to_string();
        assert!(svg.contains(&format!(">\n{name}\n<")), "legend lacks {name}");
    }
}

#[test]
fn a_directory_without_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty_run = dir.path().join("not-a-run");
    std::fs::create_dir(&empty_run).unwrap();
    let err = error(std::slice::from_ref(&empty_run), &dir.path().join("c.png"));
    assert!(err.contains(&empty_run.display().to_string()) && err.contains("no log.txt"), "{err}");
    let missing = dir.path().join("missing");
    let err = error(std::slice::from_ref(&missing), &dir.path().join("c.png"));
    assert!(err.contains(&missing.display().to_string()) && err.contains("no such run"), "{err}");
    assert!(!dir.path().join("c.png").exists());
}

#[test]
fn an_empty_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("log.txt"), "").unwrap();
    let err = error(std::slice::from_ref(&run), &dir.path().join("c.png"));
    assert!(err.contains(&run.join("log.txt").display().to_string()) && err.contains("empty log"), "{err}");
}

#[test]
fn a_malformed_line_is_named_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_run(dir.path(), "good", &Synth { steps: 200, every: 20, multi: false, seed: 1 });
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("log.txt"),
        "{\"step\":20,\"loss\":3.0}\n\n{\"step\":40,\"loss\":2.0,}\n{\"step\":60,\"loss\":1.0}\n",
    )
    .unwrap();
    let err = error(&[good, bad.clone()], &dir.path().join("c.png"));
    assert!(err.contains(&format!("{}: line 3: malformed JSON", bad.join("log.txt").display())), "{err}");
}

#[test]
fn a_log_file_can_be_named_directly_and_unknown_keys_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run-7.log");
    let lines = [
        r#"{"step":20,"loss":3.0,"lr":0.1,"images_per_s":10,"lr_heads":null,"nested":{"a":[1]},"time":1}"#,
        r#"{"event":"valid","step":20,"valid_acc":0.5,"valid_text":"n/a","time":2}"#,
        r#"{"event":"something_new","step":30,"time":3}"#,
        r#"{"step":40,"loss":2.0,"lr":0.1,"images_per_s":12,"time":4}"#,
    ];
    std::fs::write(&log, lines.join("\n")).unwrap();
    let out = dir.path().join("c.svg");
    plot_runs(&[log], &out, 640, 480).unwrap();
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(
        svg.contains(&format!(">\n{}\n<", dir.path().canonicalize().unwrap().file_name().unwrap().to_string_lossy()))
    );
    assert!(svg.contains(">\nvalid_acc\n<") && !svg.contains("valid_text"));
}

#[test]
fn bad_outputs_and_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runs = vec![write_run(dir.path(), "r", &Synth { steps: 100, every: 20, multi: false, seed: 1 })];
    let out = dir.path().join("no-such-dir/c.png");
    let err = error(&runs, &out);
    assert!(err.contains("no-such-dir/c.png"), "{err}");
    let err = format!("{:#}", plot_runs(&runs, &dir.path().join("c.png"), 10, 10).unwrap_err());
    assert!(err.contains("10x10"), "{err}");
    assert!(plot_runs(&[], &dir.path().join("c.png"), 800, 600).is_err());
}
