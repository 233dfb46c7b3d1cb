//! The command line: `validate`, `schema` and `map`, their flags, output and exit codes
//! (0 valid or done, 1 invalid or failed, 2 unusable invocation).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::diagnostic::{self, Format, Severity};
use crate::fhir::{BundleKind, bundle};
use crate::fhir_schema::FhirSchema;
use crate::load;
use crate::secrets::ProcessEnvironment;
use crate::validate::{self, Options, Outcome};

/// Largest input `engine map` reads.
const MAX_INPUT: u64 = 256 << 20;

/// FOSPS connector engine: YAML connector definitions turned into FHIR routes, webhooks and
/// schedules.
#[derive(Debug, Parser)]
#[command(name = "engine", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: load the definitions and serve their routes, the admin API and
    /// operations endpoints. Refuses to start on invalid definitions.
    Serve {
        /// Files and directories of definitions.
        #[arg(default_value = "connectors.d")]
        paths: Vec<PathBuf>,
        /// Address to listen on.
        #[arg(long, env = "ENGINE_LISTEN", default_value = "0.0.0.0:8080")]
        listen: String,
        /// Log format.
        #[arg(long, env = "ENGINE_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Log filter (`info`, `debug`, `engine=debug,warn`).
        #[arg(long, env = "ENGINE_LOG", default_value = "info")]
        log: String,
        /// Public base URL used in links (e.g. `https://fosps.example/connector/api`); by
        /// default the `Host` header.
        #[arg(long, env = "ENGINE_PUBLIC_URL")]
        public_url: Option<String>,
        /// Longest time a request may take before it is answered 504.
        #[arg(long, env = "ENGINE_REQUEST_TIMEOUT", default_value = "60s")]
        request_timeout: String,
        /// Largest request body.
        #[arg(long, env = "ENGINE_MAX_BODY", default_value = "10MiB")]
        max_body: String,
        #[command(flatten)]
        dirs: DirArgs,
        /// Run the cron schedules in this process (off when Kubernetes CronJobs run them).
        #[arg(long, env = "ENGINE_RUN_SCHEDULES", default_value_t = true, action = clap::ArgAction::Set)]
        run_schedules: bool,
        /// Time given to requests in flight when a shutdown signal arrives.
        #[arg(long, env = "ENGINE_SHUTDOWN_GRACE", default_value = "10s")]
        shutdown_grace: String,
    },
    /// Run one cron connector once and exit: non-zero on any failure (for Kubernetes
    /// CronJobs).
    Run {
        /// Name of the cron connector.
        name: String,
        /// Definitions to load.
        #[arg(long = "definitions", short = 'd', default_value = "connectors.d")]
        definitions: Vec<PathBuf>,
        /// Read and map, and print the FHIR that would be written, writing nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        dirs: DirArgs,
    },
    /// Check definitions without network: schema, meaning, expressions, templates, cron,
    /// references, routes, and the definitions' own tests. Exit 0 valid, 1 invalid, 2
    /// unusable invocation.
    Validate {
        /// Files and directories of definitions.
        #[arg(default_value = "connectors.d")]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
        /// Unresolvable `${env:...}` / `${file:...}` are warnings (CI runs without secrets).
        #[arg(long)]
        allow_unresolved: bool,
        /// Skip the definitions' `tests:`.
        #[arg(long)]
        no_tests: bool,
        /// Check the FHIR produced by tests against this FHIR R4 JSON Schema file.
        #[arg(long, value_name = "FILE")]
        fhir_schema: Option<PathBuf>,
    },
    /// Check that an engine answers: GET an `http://` URL, exit 0 on a 2xx answer (the
    /// image's health check, which has no curl).
    Probe {
        /// URL to get.
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Generate the per-connector Kubernetes and Istio manifests (ConfigMap of the
    /// definitions, VirtualService routes, AuthorizationPolicy, CronJobs).
    Manifests {
        /// Files and directories of definitions.
        #[arg(default_value = "connectors.d")]
        paths: Vec<PathBuf>,
        /// Directory the files are written to.
        #[arg(long, default_value = "deploy/base")]
        out: PathBuf,
        /// Only compare with the files in `--out`; exit 1 when they differ.
        #[arg(long)]
        check: bool,
        /// Public path prefix on the gateway.
        #[arg(long, default_value = "/connector/api/")]
        prefix: String,
        /// Image of the CronJobs.
        #[arg(long, default_value = "gravitatehealth/fosps-connector-engine:latest")]
        image: String,
    },
    /// Print the OpenAPI document of the configured routes.
    Openapi {
        /// Files and directories of definitions.
        #[arg(default_value = "connectors.d")]
        paths: Vec<PathBuf>,
        /// Public path prefix the routes are reached under (e.g. `/connector/api`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print the JSON Schema (2020-12) of the definition format, or its Markdown reference.
    Schema {
        /// `json` (the schema) or `markdown` (the format reference).
        #[arg(long, value_enum, default_value = "json")]
        format: SchemaFormat,
    },
    /// Apply one connector's mapping to a sample input and print the FHIR.
    Map {
        /// Name of the connector.
        #[arg(long)]
        connector: String,
        /// Input JSON file (a source answer or a push payload); `-` reads standard input.
        #[arg(long)]
        input: PathBuf,
        /// Definitions to load.
        #[arg(long = "definitions", short = 'd', default_value = "connectors.d")]
        definitions: Vec<PathBuf>,
        /// Caller parameters of a pull search, as NAME=VALUE.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print a Bundle of this type instead of a list of resources.
        #[arg(long, value_enum)]
        bundle: Option<BundleArg>,
        /// Check the output against this FHIR R4 JSON Schema file.
        #[arg(long, value_name = "FILE")]
        fhir_schema: Option<PathBuf>,
    },
}

/// Where local state and the embedded NDJSON sink live.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// Local state: watermarks, push queues and dead letters.
    #[arg(long, env = "ENGINE_STATE_DIR", default_value = ".engine-state")]
    pub state_dir: PathBuf,
    /// Directory of the embedded NDJSON sink (default: `ndjson` in the state directory).
    #[arg(long, env = "ENGINE_SINK_DIR")]
    pub sink_dir: Option<PathBuf>,
}

impl DirArgs {
    fn dirs(&self) -> crate::http::Dirs {
        crate::http::Dirs {
            state: self.state_dir.clone(),
            sink: self
                .sink_dir
                .clone()
                .unwrap_or_else(|| self.state_dir.join("ndjson")),
        }
    }
}

/// Log formats of `engine serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output of `engine schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFormat {
    Json,
    Markdown,
}

/// Bundle types `engine map --bundle` assembles.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BundleArg {
    Collection,
    Transaction,
    Batch,
    Searchset,
}

/// Runs a command and gives its exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            paths,
            listen,
            log_format,
            log,
            public_url,
            request_timeout,
            max_body,
            shutdown_grace,
            dirs,
            run_schedules,
        } => {
            let filter = match tracing_subscriber::EnvFilter::try_new(&log) {
                Ok(f) => f,
                Err(e) => return usage(&format!("--log `{log}`: {e}")),
            };
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(std::io::stderr);
            match log_format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
            let parse = |flag: &str, v: &str| {
                crate::validate::parse_duration(v)
                    .ok_or_else(|| format!("{flag} `{v}` is not a duration"))
            };
            let limits = match (
                parse("--request-timeout", &request_timeout),
                crate::validate::parse_size(&max_body),
                parse("--shutdown-grace", &shutdown_grace),
            ) {
                (Ok(timeout), Some(body), Ok(grace)) => (
                    crate::http::Limits {
                        timeout,
                        body: body as usize,
                        public_url,
                        ..Default::default()
                    },
                    grace,
                ),
                (Err(e), _, _) | (_, _, Err(e)) => return usage(&e),
                (_, None, _) => return usage(&format!("--max-body `{max_body}` is not a size")),
            };
            let outcome = match load_and_validate(&paths, false, false, None) {
                Ok(o) => o,
                Err(e) => return usage(&e.to_string()),
            };
            let text = diagnostic::render(&outcome.diagnostics, Format::Human, &|p: &Path| {
                outcome.texts.get(p).cloned()
            });
            let Some(model) = outcome.model else {
                eprint!("{text}");
                eprintln!("error: the definitions are invalid; not starting");
                return ExitCode::from(1);
            };
            if !outcome.diagnostics.is_empty() {
                eprint!("{text}");
            }
            let engine = match crate::http::Engine::new(
                std::sync::Arc::new(model),
                limits.0,
                &dirs.dirs(),
            ) {
                Ok(e) => e,
                Err(e) => return usage(&e),
            };
            let loader_paths = paths.clone();
            let load: crate::serve::Loader = std::sync::Arc::new(move || {
                let outcome = load_and_validate(&loader_paths, false, false, None)
                    .map_err(|e| e.to_string())?;
                let text = diagnostic::render(&outcome.diagnostics, Format::Human, &|p: &Path| {
                    outcome.texts.get(p).cloned()
                });
                outcome.model.ok_or(text)
            });
            let reload = crate::serve::Reload {
                paths,
                load,
                dirs: dirs.dirs(),
                poll: std::time::Duration::from_millis(500),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return usage(&format!("runtime: {e}")),
            };
            match runtime.block_on(crate::serve::serve(
                engine,
                &listen,
                limits.1,
                run_schedules,
                Some(reload),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => usage(&e),
            }
        }
        Command::Run {
            name,
            definitions,
            dry_run,
            dirs,
        } => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("warn")
                .with_writer(std::io::stderr)
                .try_init();
            let outcome = match load_and_validate(&definitions, false, false, None) {
                Ok(o) => o,
                Err(e) => return usage(&e.to_string()),
            };
            let Some(model) = outcome.model else {
                let text = diagnostic::render(&outcome.diagnostics, Format::Human, &|p: &Path| {
                    outcome.texts.get(p).cloned()
                });
                eprint!("{text}");
                return ExitCode::from(1);
            };
            let Some(connector) = model.connector(&name).cloned() else {
                return usage(&format!("no connector `{name}`"));
            };
            let dirs = dirs.dirs();
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
            let runner =
                crate::upstream::Upstreams::new(connector.sources.iter().cloned(), metrics.clone())
                    .and_then(|u| {
                        crate::run::Runner::new(
                            connector,
                            &u,
                            crate::state::StateDir::new(&dirs.state),
                            &dirs.sink,
                            metrics,
                        )
                    });
            let runner = match runner {
                Ok(r) => r,
                Err(e) => return usage(&e),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return usage(&format!("runtime: {e}")),
            };
            let (report, resources) = runtime.block_on(runner.run(dry_run));
            if dry_run {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&Value::Array(resources)).unwrap_or_default()
                );
            }
            eprintln!(
                "{}: read {} records, wrote {} resources ({} unchanged), {} source calls, {} sink calls, {} failures",
                report.connector,
                report.records_read,
                report.resources_written,
                report.resources_unchanged,
                report.source_calls,
                report.sink_calls,
                report.failures.len()
            );
            for s in &report.skipped {
                let times = if s.count > 1 {
                    format!(" ({}×)", s.count)
                } else {
                    String::new()
                };
                eprintln!("left out: {}{times}: {}", s.subject, s.reason);
            }
            for f in &report.failures {
                eprintln!("error: {} {}: {}", f.stage, f.subject, f.message);
                if let Some(o) = &f.outcome {
                    eprintln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
                }
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Validate {
            paths,
            format,
            deny_warnings,
            allow_unresolved,
            no_tests,
            fhir_schema,
        } => {
            let schema = match fhir_schema.as_deref().map(FhirSchema::load).transpose() {
                Ok(s) => s,
                Err(e) => return usage(&e),
            };
            let outcome =
                match load_and_validate(&paths, allow_unresolved, !no_tests, schema.as_ref()) {
                    Ok(o) => o,
                    Err(e) => return usage(&e.to_string()),
                };
            let text = diagnostic::render(&outcome.diagnostics, format, &|p: &Path| {
                outcome.texts.get(p).cloned()
            });
            let failed = outcome.has_errors()
                || (deny_warnings
                    && outcome
                        .diagnostics
                        .iter()
                        .any(|d| d.severity == Severity::Warning));
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            if format == Format::Human
                && !failed
                && let Some(m) = &outcome.model
            {
                let tests: usize = m.connectors.iter().map(|c| c.tests.len()).sum();
                let _ = writeln!(
                    out,
                    "valid: {} connectors, {} sources, {} sinks in {} files; {} definition tests passed",
                    m.connectors.len(),
                    m.sources.len(),
                    m.sinks.len(),
                    outcome.texts.len(),
                    if no_tests { 0 } else { tests }
                );
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Manifests {
            paths,
            out,
            check,
            prefix,
            image,
        } => {
            let (files, read_errors) = match load::read_all(&paths) {
                Ok(x) => x,
                Err(e) => return usage(&e.to_string()),
            };
            let opts = Options {
                allow_unresolved: true,
                run_tests: false,
                fhir_schema: None,
                env: &ProcessEnvironment,
            };
            let outcome = validate::validate(&files, read_errors, &opts);
            let Some(model) = outcome.model else {
                let text = diagnostic::render(&outcome.diagnostics, Format::Human, &|p: &Path| {
                    outcome.texts.get(p).cloned()
                });
                eprint!("{text}");
                return ExitCode::from(1);
            };
            let opts = crate::manifests::Options {
                prefix,
                image,
                ..Default::default()
            };
            let generated = crate::manifests::generate(&model, &files, &opts);
            let mut stale = Vec::new();
            for (name, text) in &generated {
                let path = out.join(name);
                if check {
                    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                        stale.push(path.display().to_string());
                    }
                } else if let Err(e) =
                    std::fs::create_dir_all(&out).and_then(|()| std::fs::write(&path, text))
                {
                    return usage(&format!("{}: {e}", path.display()));
                }
            }
            if stale.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("stale (run `engine manifests`): {}", stale.join(", "));
                ExitCode::from(1)
            }
        }
        Command::Probe { url } => match probe(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Openapi { paths, prefix } => {
            let outcome = match load_and_validate(&paths, true, false, None) {
                Ok(o) => o,
                Err(e) => return usage(&e.to_string()),
            };
            let Some(model) = outcome.model else {
                let text = diagnostic::render(&outcome.diagnostics, Format::Human, &|p: &Path| {
                    outcome.texts.get(p).cloned()
                });
                eprint!("{text}");
                return ExitCode::from(1);
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::openapi::document(&model, &prefix))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Schema { format } => {
            print!("{}", schema_text(format));
            ExitCode::SUCCESS
        }
        Command::Map {
            connector,
            input,
            definitions,
            params,
            bundle: as_bundle,
            fhir_schema,
        } => {
            let schema = match fhir_schema.as_deref().map(FhirSchema::load).transpose() {
                Ok(s) => s,
                Err(e) => return usage(&e),
            };
            let outcome = match load_and_validate(&definitions, true, false, None) {
                Ok(o) => o,
                Err(e) => return usage(&e.to_string()),
            };
            let Some(model) = &outcome.model else {
                let text = diagnostic::render(&outcome.diagnostics, Format::Human, &|p: &Path| {
                    outcome.texts.get(p).cloned()
                });
                eprint!("{text}");
                return ExitCode::from(1);
            };
            let Some(c) = model.connector(&connector) else {
                let names: Vec<&str> = model.connectors.iter().map(|c| c.name.as_str()).collect();
                let hint = diagnostic::did_you_mean(&connector, names.iter().copied())
                    .unwrap_or_else(|| format!("connectors: {}", names.join(", ")));
                return usage(&format!("no connector `{connector}` ({hint})"));
            };
            let document = match read_input(&input) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            let mut param_values = serde_json::Map::new();
            for p in &params {
                let Some((k, v)) = p.split_once('=') else {
                    return usage(&format!("`{p}` is not NAME=VALUE"));
                };
                param_values.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            match c.map_document(&document, &Value::Object(param_values)) {
                Ok(resources) => {
                    let mut invalid = false;
                    if let Some(schema) = &schema {
                        for (i, r) in resources.iter().enumerate() {
                            for problem in schema.check(r) {
                                eprintln!("error: resource {i} is not valid FHIR R4: {problem}");
                                invalid = true;
                            }
                        }
                    }
                    let out = match as_bundle {
                        None => Value::Array(resources),
                        Some(kind) => bundle(
                            match kind {
                                BundleArg::Collection => BundleKind::Collection,
                                BundleArg::Transaction => BundleKind::Transaction,
                                BundleArg::Batch => BundleKind::Batch,
                                BundleArg::Searchset => BundleKind::Searchset,
                            },
                            resources,
                            None,
                        ),
                    };
                    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                    if invalid {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("error: mapping failed: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// Reads and validates definitions with the process environment.
pub fn load_and_validate(
    paths: &[PathBuf],
    allow_unresolved: bool,
    run_tests: bool,
    fhir_schema: Option<&FhirSchema>,
) -> Result<Outcome, load::UnusablePath> {
    let (files, read_errors) = load::read_all(paths)?;
    let opts = Options {
        allow_unresolved,
        run_tests,
        fhir_schema,
        env: &ProcessEnvironment,
    };
    Ok(validate::validate(&files, read_errors, &opts))
}

/// Reads a JSON input of bounded size; the error says why it is unusable.
pub fn read_input(path: &Path) -> Result<Value, String> {
    let mut bytes = Vec::new();
    let name = path.display();
    let read = if path == Path::new("-") {
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), MAX_INPUT + 1),
            &mut bytes,
        )
    } else {
        std::fs::File::open(path).and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_INPUT + 1), &mut bytes)
        })
    };
    read.map_err(|e| format!("{name}: {}", load::io_reason(&e)))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(format!("{name}: larger than {} MiB", MAX_INPUT >> 20));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not JSON: {e}"))
}

/// What `engine schema` prints (also the committed `schemas/` and `docs/reference.md`).
pub fn schema_text(format: SchemaFormat) -> String {
    let schema = crate::schema::generate();
    match format {
        SchemaFormat::Json => serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n",
        SchemaFormat::Markdown => crate::reference::markdown(&schema),
    }
}

/// A plain HTTP/1.1 GET with a 5 s timeout; Ok on a 2xx status.
fn probe(url: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let u = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if u.scheme() != "http" {
        return Err("only http:// URLs".into());
    }
    let host = u.host_str().ok_or("no host")?;
    let port = u.port_or_known_default().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let timeout = std::time::Duration::from_secs(5);
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{url}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    };
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| format!("{url}: {e}"))?;
    let status = std::str::from_utf8(&head[9..12]).unwrap_or("000");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}
