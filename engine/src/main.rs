//! The `engine` binary: parses the command line and runs one command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = engine::cli::Cli::parse();
    engine::cli::run(cli)
}
