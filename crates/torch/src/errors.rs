//! libtorch's errors carry a C++ backtrace (`Exception raised from ...` and a `frame #N`
//! line per frame): useful to us, noise to a user. Messages are printed without it; the
//! whole text goes to the rank log of a training run (or the debug log elsewhere).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The rank log of the run this process trains, once it is open.
static RANK_LOG: OnceLock<PathBuf> = OnceLock::new();

pub fn set_rank_log(path: PathBuf) {
    let _ = RANK_LOG.set(path);
}

/// `text` without the lines of a C++ backtrace.
pub fn strip_backtrace(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("Exception raised from ") || l.starts_with("frame #"))
        })
        .collect();
    kept.join("\n").trim_end().to_string()
}

/// A tch error as a user reads it.
pub fn cut(e: tch::TchError) -> anyhow::Error {
    let full = e.to_string();
    let short = strip_backtrace(&full);
    if short != full {
        keep(&full);
    }
    anyhow::anyhow!(short)
}

/// The final error of a command, backtrace cut; types the caller matches on (usage errors) are kept.
pub fn shorten(e: anyhow::Error) -> anyhow::Error {
    let full = format!("{e:#}");
    let short = strip_backtrace(&full);
    if short == full {
        return e;
    }
    keep(&full);
    anyhow::anyhow!(short)
}

fn keep(full: &str) {
    use std::io::Write;
    tracing::debug!("{full}");
    if let Some(path) = RANK_LOG.get() {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(
                f,
                "{:.3} error (full text): {full}",
                std::time::UNIX_EPOCH.elapsed().map_or(0.0, |d| d.as_secs_f64())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backtrace_lines_go_and_the_message_stays() {
        let text = "shape '[2, 3]' is invalid for input of size 5\nException raised from foo at x.cpp:1 (most recent call first):\nframe #0: c10::Error::Error() + 0x1\nframe #1: bar + 0x2\n";
        assert_eq!(super::strip_backtrace(text), "shape '[2, 3]' is invalid for input of size 5");
    }
}
