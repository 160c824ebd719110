//! What both binaries do at the terminal's edge: logging set-up, exit status, stdout that
//! tolerates a closed pipe, and progress bars that appear only on a terminal.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// Logs to stderr; `RUST_LOG` overrides the default `info` level. Colour only when stderr
/// is a terminal and `NO_COLOR` is unset, so redirected logs hold no escape codes.
pub fn init_tracing() {
    init_tracing_at("info")
}

/// As `init_tracing`, with another default level (`warn` for the ranks other than 0).
pub fn init_tracing_at(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .try_init();
}

/// Marks an error as the user's settings being wrong (a recipe value, a flag combination):
/// the command exits with status 2, as clap does for a bad flag.
#[derive(Debug)]
pub struct BadSettings;

impl std::fmt::Display for BadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid settings")
    }
}

/// Exit status of a `BadSettings` error (clap's for a usage error).
pub const USAGE_EXIT: u8 = 2;

/// The exit status for a command's result, printing the error chain on failure.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<BadSettings>().is_some() {
                ExitCode::from(USAGE_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Writes to stdout; a reader that went away (`trainer inspect DS | head -1`) is not an error.
pub fn print(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

/// A bar drawn on stderr when it is a terminal, hidden otherwise (logs, CI, pipes).
pub fn progress_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
