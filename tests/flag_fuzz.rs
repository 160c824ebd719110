//! Every value-taking flag of every data command of the real `trainer` binary, found
//! from `--help`, given 0, -1, nan, inf, 1e30 and an empty value on top of a command line
//! that works: never a panic or a signal; a refusal is exit status 2 naming the flag; a
//! numeric value is accepted only where it means something. (The libtorch commands' flags
//! are walked in-process by trainer-torch's `cli::fuzz`; their known panics are run here.)

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

const VALUES: [&str; 6] = ["0", "-1", "nan", "inf", "1e30", ""];
/// Commands that run in trainer-torch.
const TORCH: [&str; 8] =
    ["train", "eval", "embed", "export", "import arcface-torch", "bench train", "bench allreduce", "bench head"];
/// Flags that take names or paths: any text is a name there.
const TEXT: [&str; 7] = ["--out", "--name", "--list", "--train-sets", "--write-losses", "--features", "--save-scores"];
/// (command, flag, value) accepted because the value means something.
const MEANINGFUL: &[(&str, &str, &str)] = &[
    ("inspect", "--head", "0"),
    ("verify", "--max-errors", "0"),
    ("pack", "--seed", "0"),
    ("synth", "--seed", "0"),
    ("bench data", "--seed", "0"),
    ("bench data", "--rank", "0"),
    ("plateau", "--quantile", "0"),
];

fn help(path: &[&str]) -> String {
    let mut args: Vec<&str> = path.to_vec();
    args.push("--help");
    text(&run_ok(&args))
}

/// Names listed under "Commands:" (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    let Some(block) = help.split("Commands:\n").nth(1) else { return Vec::new() };
    let names = block.lines().take_while(|l| l.starts_with("  ")).filter(|l| !l[2..].starts_with(' '));
    names.filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").map(String::from).collect()
}

/// `--flag` of every option line that takes a value (`--flag <VALUE>`).
fn value_flags(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter_map(|l| l.strip_prefix("-").map(|_| l))
        .filter_map(|l| {
            let flag = l.split([',', ' ']).find(|w| w.starts_with("--"))?;
            l.split_once(flag)?.1.trim_start().starts_with('<').then(|| flag.to_string())
        })
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    ijb: String,
    features: String,
    ds: String,
    img: String,
    list: String,
    losses: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ds = s(&packed_synth(dir.path(), "fz", 2, 3, 1, 1)).to_string();
    let img = dir.path().join("fz-img");
    let losses = dir.path().join("loss.txt");
    std::fs::write(&losses, "3 2.5 2 1.8 1.7 1.65 1.6 1.6").unwrap();
    let (ijb, features) = ijb_meta(dir.path());
    Fixture {
        ijb,
        features,
        ds,
        list: s(&img.join("list.tsv")).to_string(),
        img: s(&img).to_string(),
        losses: s(&losses).to_string(),
        dir,
    }
}

/// An IJB-C meta folder of 4 images in 3 templates and 3 pairs (loose_crop/ is not read
/// by `bench ijb`), and 2-d float32 features for its images: (folder, features .npy).
fn ijb_meta(dir: &Path) -> (String, String) {
    let meta = dir.join("ijb/meta");
    std::fs::create_dir_all(&meta).unwrap();
    let names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"];
    let landmarks: String = names.iter().map(|n| format!("{n} 38 51 73 51 56 71 41 92 70 92 0.9\n")).collect();
    std::fs::write(meta.join("ijbc_name_5pts_score.txt"), landmarks).unwrap();
    let tid_mid: String =
        names.iter().zip([(1, 1), (2, 2), (3, 3), (3, 4)]).map(|(n, (t, m))| format!("{n} {t} {m}\n")).collect();
    std::fs::write(meta.join("ijbc_face_tid_mid.txt"), tid_mid).unwrap();
    std::fs::write(meta.join("ijbc_template_pair_label.txt"), "1 2 1\n1 3 0\n2 3 0\n").unwrap();
    // numpy's .npy v1.0: magic, header length, a dict padded to 64 bytes, little-endian f32s.
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    for v in [1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9] {
        npy.extend(v.to_le_bytes());
    }
    let features = dir.join("ijb/features.npy");
    std::fs::write(&features, npy).unwrap();
    (s(&dir.join("ijb")).to_string(), s(&features).to_string())
}

/// A command line of `command` that works: positionals, then (flag, value) pairs.
fn baseline(command: &str, f: &Fixture, fresh: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let out = s(&fresh.join("out")).to_string();
    let pairs = |p: &[(&str, &str)]| p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    match command {
        "pack" => (vec![f.img.clone()], pairs(&[("--list", &f.list), ("--name", "fz"), ("--out", &out)])),
        "inspect" | "verify" => (vec![f.ds.clone()], Vec::new()),
        "unpack" => (vec![f.ds.clone()], pairs(&[("--out", &out)])),
        "synth" => {
            (Vec::new(), pairs(&[("--out", &out), ("--identities", "2"), ("--per-identity", "1"), ("--size", "16")]))
        }
        "plateau" => (vec![f.losses.clone()], Vec::new()),
        "plot" => (vec![f.losses.clone()], pairs(&[("--out", &format!("{out}.png"))])),
        "bench data" => (
            Vec::new(),
            pairs(&[
                ("--train-sets", &f.ds),
                ("--batches", "1"),
                ("--reps", "1"),
                ("--size", "16"),
                ("--batch-size", "2"),
                ("--workers", "1"),
            ]),
        ),
        "bench plateau" => (Vec::new(), pairs(&[("--n", "100"), ("--runs", "1")])),
        "bench ijb" => (vec![f.ijb.clone()], pairs(&[("--features", &f.features), ("--save-scores", &out)])),
        other => panic!("no baseline for `trainer {other}`: add one"),
    }
}

/// Runs in `cwd`: a path flag given "0" or "nan" writes there, not into the repository.
fn run(cwd: &Path, command: &str, positionals: &[String], pairs: &[(String, String)]) -> Output {
    let mut c = trainer();
    c.current_dir(cwd).args(command.split(' ')).args(positionals);
    for (k, v) in pairs {
        c.arg(k).arg(v);
    }
    c.output().expect("spawn trainer")
}

#[test]
fn every_data_flag_survives_hostile_values() {
    let f = fixture();
    let mut commands = Vec::new();
    for c in subcommands(&help(&[])) {
        let subs = subcommands(&help(&[&c]));
        if subs.is_empty() {
            commands.push(c);
        } else {
            commands.extend(subs.into_iter().map(|sc| format!("{c} {sc}")));
        }
    }
    assert!(commands.iter().any(|c| c == "bench plateau"), "{commands:?}");
    let (mut problems, mut tried) = (Vec::new(), 0);
    for command in commands.iter().filter(|c| !TORCH.contains(&c.as_str())) {
        let path: Vec<&str> = command.split(' ').collect();
        for flag in value_flags(&help(&path)) {
            for value in VALUES {
                tried += 1;
                let fresh = f.dir.path().join(format!("run{tried}"));
                let (positionals, mut pairs) = baseline(command, &f, &fresh);
                pairs.retain(|(k, _)| *k != flag);
                pairs.push((flag.clone(), value.to_string()));
                std::fs::create_dir_all(&fresh).unwrap();
                let out = run(&fresh, command, &positionals, &pairs);
                let what = format!("trainer {command} {flag} {value:?}");
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                match out.status.code() {
                    None => problems.push(format!("{what}: killed by a signal")),
                    Some(2) if !err.contains(&flag) => {
                        problems.push(format!("{what}: refused without naming the flag: {err}"))
                    }
                    Some(2) => {}
                    Some(0) | Some(1)
                        if TEXT.contains(&flag.as_str())
                            || MEANINGFUL.contains(&(command.as_str(), flag.as_str(), value)) => {}
                    Some(code) => problems.push(format!("{what}: exit status {code}: {err}")),
                }
            }
        }
    }
    assert!(tried > 100, "only {tried} cases: --help parsing missed flags");
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn former_panics_of_the_libtorch_commands_are_usage_errors() {
    for (args, flag) in [
        (&["train", "--train-sets", "x/y", "--sampler", "pk", "--pk", "0x5"][..], "--pk"),
        (&["train", "--train-sets", "x/y", "--collective-timeout", "-1"], "--collective-timeout"),
        (&["bench", "allreduce", "--iters", "0"], "--iters"),
    ] {
        let out = trainer().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn a_recipe_value_out_of_bounds_is_a_usage_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.toml");
    std::fs::write(&recipe, "train_sets = ['x/y']\nbatch_size = 0\n").unwrap();
    let out = trainer().args(["train", "--config", s(&recipe)]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml") && err.contains("batch_size = 0"), "{err}");
}
