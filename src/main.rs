//! `trainer`: the command-line shell over the library; every command lives in its module.

fn main() -> std::process::ExitCode {
    trainer::cli::main()
}
