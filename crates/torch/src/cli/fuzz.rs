//! Every value-taking flag of every `trainer-torch` command, given 0, -1, nan, inf, 1e30
//! and an empty value: never a panic; a refusal is a usage error (exit status 2) naming
//! the flag; a numeric flag accepts such a value only where it means something.
//! (`tests/flag_fuzz.rs` does the same through the real `trainer` binary.)

use clap::builder::ValueParser;
use clap::{Arg, Command, FromArgMatches};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::train::TrainArgs;

const VALUES: [&str; 6] = ["0", "-1", "nan", "inf", "1e30", ""];

/// Numeric flags for which the value is meaningful (seed 0, no weight decay...).
const MEANINGFUL: &[(&str, &str)] = &[
    ("seed", "0"),
    ("mb", "0"),
    ("warmup", "0"),
    ("min-lr", "0"),
    ("momentum", "0"),
    ("wd-backbone", "0"),
    ("wd-fr", "0"),
    ("wd-gender", "0"),
    ("wd-age", "0"),
    ("max-rollbacks", "0"),
    // MagFace without its feature-norm regulariser.
    ("magface-lambda", "0"),
    ("fr-dropout", "0"),
    ("gender-dropout", "0"),
    ("age-dropout", "0"),
    ("arc-m", "0"),
    // cos(m1·θ + m2) − m3: ArcFace has m3 = 0, CosFace m2 = 0; no warm-up is the default.
    ("m2", "0"),
    ("m3", "0"),
    ("warmup-steps", "0"),
    // A loss scale up to f32's largest is representable (tests force overflow with 1e38).
    ("amp-init-scale", "1e30"),
    // Test-only fault injection: rank 0 is a rank.
    ("die-rank", "0"),
    ("hang-rank", "0"),
];

/// Leaf commands with their path, e.g. ["bench", "allreduce"].
fn leaves(cmd: &Command, path: Vec<String>, out: &mut Vec<(Vec<String>, Command)>) {
    if cmd.get_subcommands().next().is_none() {
        out.push((path.clone(), cmd.clone()));
    }
    for sub in cmd.get_subcommands() {
        let mut p = path.clone();
        p.push(sub.get_name().to_string());
        leaves(sub, p, out);
    }
}

fn is_numeric(arg: &Arg) -> bool {
    let id = arg.get_value_parser().type_id();
    let numeric = [
        ValueParser::from(clap::value_parser!(usize)).type_id(),
        ValueParser::from(clap::value_parser!(u64)).type_id(),
        ValueParser::from(clap::value_parser!(u32)).type_id(),
        ValueParser::from(clap::value_parser!(u8)).type_id(),
        ValueParser::from(clap::value_parser!(i64)).type_id(),
        ValueParser::from(clap::value_parser!(f64)).type_id(),
        clap::builder::ValueParser::new(|_: &str| Ok::<[usize; 2], String>([0, 0])).type_id(),
        clap::builder::ValueParser::new(|_: &str| Ok::<[f64; 3], String>([0.0; 3])).type_id(),
    ];
    numeric.contains(&id)
}

enum Outcome {
    Accepted,
    Refused(String),
}

/// Parses as `trainer-torch` does; for `train` also resolves the settings (recipe rules).
fn outcome(path: &[String], long: &str, value: &str) -> Result<Outcome, String> {
    let mut argv: Vec<String> = vec!["trainer".into()];
    argv.extend(path.iter().cloned());
    if path == ["train"] && long != "train-sets" {
        argv.extend(["--train-sets".into(), "data/set".into()]);
    }
    argv.extend([format!("--{long}"), value.to_string()]);
    let matches = match super::command().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) if e.exit_code() == 2 => return Ok(Outcome::Refused(e.to_string())),
        Err(e) => return Err(format!("{argv:?}: exit code {} ({e})", e.exit_code())),
    };
    if path != ["train"] {
        return Ok(Outcome::Accepted);
    }
    let sub = matches.subcommand_matches("train").ok_or("no train matches")?;
    let args = TrainArgs::from_arg_matches(sub).map_err(|e: clap::Error| e.to_string())?;
    match args.resolve(sub) {
        Ok(_) => Ok(Outcome::Accepted),
        Err(e) if e.downcast_ref::<trainer_data::term::BadSettings>().is_some() => {
            Ok(Outcome::Refused(format!("{e:#}")))
        }
        Err(e) => Err(format!("{argv:?}: not a usage error: {e:#}")),
    }
}

#[test]
fn every_flag_of_every_command_survives_hostile_values() {
    let mut commands = Vec::new();
    leaves(&super::command(), Vec::new(), &mut commands);
    let (mut problems, mut tried) = (Vec::new(), 0);
    for (path, cmd) in &commands {
        for arg in cmd.get_arguments().filter(|a| a.get_action().takes_values()) {
            let Some(long) = arg.get_long() else { continue };
            for value in VALUES {
                tried += 1;
                let result = catch_unwind(AssertUnwindSafe(|| outcome(path, long, value)));
                let what = format!("{} --{long} {value:?}", path.join(" "));
                match result {
                    Err(_) => problems.push(format!("{what}: panicked")),
                    Ok(Err(e)) => problems.push(format!("{what}: {e}")),
                    Ok(Ok(Outcome::Refused(msg))) => {
                        let key = long.replace('-', "_");
                        if !(msg.contains(&format!("--{long}")) || msg.contains(&key)) {
                            problems.push(format!("{what}: refused without naming the flag: {msg}"));
                        }
                    }
                    Ok(Ok(Outcome::Accepted)) => {
                        if is_numeric(arg) && !MEANINGFUL.contains(&(long, value)) {
                            problems.push(format!("{what}: accepted"));
                        }
                    }
                }
            }
        }
    }
    assert!(tried > 300, "only {tried} cases: the command tree walk missed flags");
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_known_panics_are_usage_errors() {
    for (path, long, value) in [
        (&["train"][..], "pk", "0x5"),
        (&["train"], "collective-timeout", "-1"),
        (&["bench", "allreduce"], "iters", "0"),
    ] {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        match outcome(&path, long, value) {
            Ok(Outcome::Refused(msg)) => assert!(msg.contains(&format!("--{long}")), "{msg}"),
            _ => panic!("--{long} {value} was not refused"),
        }
    }
}
