//! The seed project's single-dash flags (`-train_sets a b`, `-lr_f 0.1`, `-is_s_t False`),
//! rewritten to this tool's `--kebab-case` names before clap sees them, so old launch
//! scripts keep working.

use std::ffi::{OsStr, OsString};

/// Seed flag → conventional flag. `-is_s_t` is handled apart: it takes a boolean.
const RENAMES: &[(&str, &str)] = &[
    ("-train_sets", "--train-sets"),
    ("-valid_sets", "--valid-sets"),
    ("-img_w", "--size"),
    ("-lr_f", "--lr-fr"),
    ("-lr_g", "--lr-gender"),
    ("-lr_a", "--lr-age"),
    ("-w_s", "--wd-backbone"),
    ("-w_f", "--wd-fr"),
    ("-w_g", "--wd-gender"),
    ("-w_a", "--wd-age"),
    ("-fr_dim", "--emb-dim"),
    ("-s", "--plateau-steps"),
    ("-model", "--init"),
];

/// Rewrites `args` (argv including the program name). Only exact seed spellings change:
/// `-s` alone is the plateau threshold, `-h` stays help.
pub fn translate(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "-is_s_t" {
            // The seed's "is the shared backbone trainable": False means freeze it.
            let value = it.next_if(|v| is_bool(v));
            let trainable = value.as_ref().and_then(|v| v.to_str()).map(parse_bool).unwrap_or(true);
            if !trainable {
                out.push("--freeze-backbone".into());
            }
            continue;
        }
        match RENAMES.iter().find(|(seed, _)| *seed == s) {
            Some((_, new)) => out.push((*new).into()),
            None => out.push(arg),
        }
    }
    out
}

fn is_bool(v: &OsStr) -> bool {
    matches!(v.to_str().map(str::to_ascii_lowercase).as_deref(), Some("true" | "false" | "1" | "0"))
}

fn parse_bool(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(args: &[&str]) -> Vec<String> {
        translate(args.iter().map(OsString::from).collect()).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn seed_flags_become_conventional() {
        let got =
            tr(&["trainer", "train", "FR", "-train_sets", "a", "b", "-valid_sets", "c", "-img_w", "224", "-s", "500"]);
        assert_eq!(
            got,
            [
                "trainer",
                "train",
                "FR",
                "--train-sets",
                "a",
                "b",
                "--valid-sets",
                "c",
                "--size",
                "224",
                "--plateau-steps",
                "500"
            ]
        );
    }

    #[test]
    fn is_s_t_false_freezes_and_true_is_dropped() {
        assert_eq!(tr(&["t", "-is_s_t", "False", "-lr_g", "0.01"]), ["t", "--freeze-backbone", "--lr-gender", "0.01"]);
        assert_eq!(tr(&["t", "-is_s_t", "True"]), ["t"]);
    }

    #[test]
    fn other_arguments_pass_through() {
        assert_eq!(tr(&["t", "--lr", "0.1", "-h", "x-s"]), ["t", "--lr", "0.1", "-h", "x-s"]);
    }
}
