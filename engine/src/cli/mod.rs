//! The command line: every command (`serve`, `run`, `validate`, `check`, `map`, `schema`,
//! `openapi`, `manifests`, `probe`, `dead-letters`), its output and its exit code (0 valid or done, 1 invalid or failed, 2
//! unusable invocation). The only place that prints.
//!
//! `args.rs` holds the commands' flags; `definitions.rs` loads definitions for a command;
//! `serve.rs` runs the engine (`serve`, `run`, `probe`); `progress.rs` shows a run's progress;
//! `check.rs` checks definitions offline (`validate`, `map`); `connectivity.rs` calls one
//! connector's source and sink once (`check`); `dead_letters.rs` works with a running
//! engine's dead letters through its admin API; `generate.rs` prints what is generated from
//! them; `output.rs` writes to standard output, a closed pipe ending it quietly.

use std::process::ExitCode;

mod args;
mod check;
mod connectivity;
mod dead_letters;
mod definitions;
mod generate;
mod output;
mod progress;
mod serve;

pub use args::{BundleArg, Cli, Command, DirArgs, LogFormat, RunOutput, SchemaFormat, ServeArgs};
pub use check::read_input;
pub use definitions::load_and_validate;
pub use generate::schema_text;

/// Runs a command and gives its exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::serve(*args),
        Command::Run {
            name,
            definitions,
            dry_run,
            output,
            dirs,
            otlp,
        } => serve::run_once(name, definitions, dry_run, output, dirs, otlp),
        Command::Validate {
            paths,
            format,
            deny_warnings,
            allow_unresolved,
            no_tests,
            fhir_schema,
        } => check::validate(
            paths,
            format,
            deny_warnings,
            allow_unresolved,
            no_tests,
            fhir_schema,
        ),
        Command::Check {
            name,
            definitions,
            params,
            output,
        } => connectivity::check(name, definitions, params, output),
        Command::Manifests {
            paths,
            out,
            check,
            prefix,
            image,
        } => generate::manifests(paths, out, check, prefix, image),
        Command::DeadLetters {
            name,
            action,
            url,
            output,
        } => dead_letters::dead_letters(name, action, url, output),
        Command::Probe { url } => match serve::probe(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Openapi { paths, prefix } => generate::openapi(paths, prefix),
        Command::Schema { format } => {
            output::stdout(&schema_text(format));
            ExitCode::SUCCESS
        }
        Command::Map {
            connector,
            input,
            definitions,
            target,
            bundle: as_bundle,
            fhir_schema,
            check,
        } => check::map(
            connector,
            input,
            definitions,
            target,
            as_bundle,
            fhir_schema,
            check,
        ),
    }
}
