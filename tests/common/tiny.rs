//! The flags of a tiny training run (arch `tiny`, 32-pixel images, one thread and one
//! loader worker), which the training tests start from and adjust.

use std::path::Path;

/// `trainer train TASK` and its flags, each flag given once: [`TinyTrain::set`] replaces a
/// value the run already has, so no flag is passed twice.
#[derive(Clone)]
pub struct TinyTrain<'a> {
    task: &'a str,
    flags: Vec<(&'a str, Vec<&'a str>)>,
}

/// `trainer train TASK --arch tiny --size 32 --batch-size 16 --out OUT --run-id RUN
/// --threads 1 --workers 1 --emb-dim 32 --arc-s 16 --arc-m 0.2 --log-every 5`; the
/// training sets are the caller's (`.set("--train-sets", ..)`).
pub fn tiny_train<'a>(task: &'a str, out: &'a Path, run: &'a str) -> TinyTrain<'a> {
    let out = out.to_str().expect("utf-8 temp path");
    let flags = [
        ("--arch", "tiny"),
        ("--size", "32"),
        ("--batch-size", "16"),
        ("--out", out),
        ("--run-id", run),
        ("--threads", "1"),
        ("--workers", "1"),
        ("--emb-dim", "32"),
        ("--arc-s", "16"),
        ("--arc-m", "0.2"),
        ("--log-every", "5"),
    ];
    TinyTrain { task, flags: flags.into_iter().map(|(f, v)| (f, vec![v])).collect() }
}

impl<'a> TinyTrain<'a> {
    /// `flag value`, replacing the flag's value when the run has it.
    pub fn set(self, flag: &'a str, value: &'a str) -> Self {
        self.set_all(flag, &[value])
    }

    /// `flag values...` (a list flag such as `--train-sets`; none for a switch).
    pub fn set_all(mut self, flag: &'a str, values: &[&'a str]) -> Self {
        match self.flags.iter_mut().find(|(f, _)| *f == flag) {
            Some((_, old)) => *old = values.to_vec(),
            None => self.flags.push((flag, values.to_vec())),
        }
        self
    }

    /// Only the run's shape (arch, size, batch, paths, threads, embedding size): the
    /// ArcFace and logging flags take the trainer's defaults.
    pub fn bare(self) -> Self {
        self.unset("--arc-s").unset("--arc-m").unset("--log-every")
    }

    /// Leaves `flag` out: the run takes the trainer's default.
    pub fn unset(mut self, flag: &str) -> Self {
        self.flags.retain(|(f, _)| *f != flag);
        self
    }

    /// The command line after `trainer`.
    pub fn args(self) -> Vec<&'a str> {
        let mut out = vec!["train", self.task];
        for (flag, values) in self.flags {
            out.push(flag);
            out.extend(values);
        }
        out
    }
}
