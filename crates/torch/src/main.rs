//! `trainer-torch`: the libtorch half of `trainer` — `train`, `eval`, `embed`, `export`,
//! `bench train`, `bench allreduce` and `bench head`. Users run `trainer`, which hands these
//! commands over by `exec`.

use clap::FromArgMatches;
use std::process::ExitCode;
use trainer_data::term;
use trainer_torch::cli::{Bench, Cli, Command};
use trainer_torch::trained::arcface_torch;
use trainer_torch::{bench, train, trained};

/// Parses arguments (translating the seed's single-dash flags), sets up logging, runs.
fn main() -> ExitCode {
    let args = train::seed_flags::translate(std::env::args_os().collect());
    let matches = trainer_torch::cli::command()
        .try_get_matches_from(args)
        .unwrap_or_else(|e| trainer_torch::cli::hints::with_hints(e).exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if trainer_data::bounds::parse_only() {
        return ExitCode::SUCCESS;
    }
    trainer_torch::dist::failure::install_panic_hook();
    // Progress lines come from rank 0; the others only warn, unless `train --verbose`.
    let verbose = matches.subcommand_matches("train").is_some_and(|m| m.get_flag("verbose"));
    let quiet = trainer_torch::dist::env_rank().is_some_and(|r| r != 0) && !verbose;
    term::init_tracing_at(if quiet { "warn" } else { "info" });
    let result = match cli.command {
        Command::Train(a) => train::run(*a, matches.subcommand_matches("train").unwrap_or(&matches)),
        Command::Eval(a) => trained::eval::run(a),
        Command::Embed(a) => trained::embed::run(a),
        Command::Export(a) => trained::export::run(a),
        Command::Import(a) => arcface_torch::run_import(a),
        Command::Bench(Bench::Train(a)) => bench::train::run(a),
        Command::Bench(Bench::Allreduce(a)) => bench::allreduce::run(a),
        Command::Bench(Bench::Head(a)) => bench::head::run(a),
    };
    term::finish(result.map_err(trainer_torch::errors::shorten))
}
