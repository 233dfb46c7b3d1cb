//! The commands that run the engine: `serve` (routes, admin API, schedules, reloads), `run`
//! (one cron connector once, for Kubernetes CronJobs) and `probe` (the image's health check).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::args::{AdminArgs, DirArgs, LogFormat, OtlpArgs, RunOutput, ServeArgs};
use super::definitions::{load_and_validate, model_of, usage};
use crate::config::diagnostic::{self, Format};

/// `engine serve`: loads the definitions and serves them until a shutdown signal.
pub(super) fn serve(args: ServeArgs) -> ExitCode {
    let ServeArgs {
        paths,
        listen,
        log_format,
        log,
        public_url,
        request_timeout,
        max_body,
        dirs,
        run_schedules,
        shutdown_grace,
        shutdown_delay,
        header_read_timeout,
        max_connections,
        shared_cache,
        otlp: OtlpArgs {
            otlp_endpoint,
            otlp_queue,
        },
        push_queue,
        push_queue_limit,
        push_queue_claim_after,
        admin,
    } = args;
    let filter = match tracing_subscriber::EnvFilter::try_new(&log) {
        Ok(f) => f,
        Err(e) => return usage(&format!("--log `{log}`: {e}")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A line written while a request is served carries its trace id (`log_trace`).
    use crate::runtime::log_trace::WithTraceId;
    match log_format {
        LogFormat::Json => builder
            .json()
            .map_event_format(|f| WithTraceId::new(f, true))
            .init(),
        LogFormat::Text => builder
            .map_event_format(|f| WithTraceId::new(f, false))
            .init(),
    }
    let parse = |flag: &str, v: &str| {
        crate::config::validate::parse_duration(v)
            .ok_or_else(|| format!("{flag} `{v}` is not a duration of at most 100 years"))
    };
    let durations = [
        ("--request-timeout", &request_timeout),
        ("--shutdown-grace", &shutdown_grace),
        ("--shutdown-delay", &shutdown_delay),
        ("--header-read-timeout", &header_read_timeout),
        ("--push-queue-claim-after", &push_queue_claim_after),
    ]
    .map(|(flag, v)| parse(flag, v));
    let [timeout, grace, delay, header_read, claim_after] = match durations {
        [Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)] => [a, b, c, d, e],
        [Err(e), ..]
        | [_, Err(e), ..]
        | [_, _, Err(e), ..]
        | [_, _, _, Err(e), _]
        | [.., Err(e)] => return usage(&e),
    };
    let admin = match admin_access(admin) {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    let Some(body) = crate::config::validate::parse_size(&max_body) else {
        return usage(&format!("--max-body `{max_body}` is not a size"));
    };
    if max_connections == 0 {
        return usage("--max-connections must be at least 1");
    }
    if let Some(e) = otlp_endpoint
        .as_deref()
        .map(crate::runtime::otlp::traces_url)
        .and_then(Result::err)
    {
        return usage(&format!("--otlp-endpoint: {e}"));
    }
    let shared = match shared_cache
        .as_deref()
        .map(crate::runtime::shared_cache::SharedTier::new)
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return usage(&format!("--shared-cache: {e}")),
    };
    if push_queue_limit == 0 {
        return usage("--push-queue-limit must be at least 1");
    }
    let push_queue = match push_queue
        .as_deref()
        .map(|url| crate::runtime::push::StreamBackend::new(url, push_queue_limit, claim_after))
        .transpose()
    {
        Ok(q) => q,
        Err(e) => return usage(&format!("--push-queue: {e}")),
    };
    let limits = crate::runtime::engine::Limits {
        timeout,
        body: body as usize,
        public_url,
        header_read_timeout: header_read,
        connections: max_connections,
        admin,
        shared: shared.clone(),
        push_queue: push_queue.clone(),
        ..Default::default()
    };
    let stop = crate::http::server::Stop { grace, delay };
    let dirs = dirs.dirs();
    if let Err(e) = crate::runtime::readiness::probe_writable(&dirs.state) {
        return usage(&format!(
            "the state directory {} cannot be used: {e}",
            dirs.state.display()
        ));
    }
    // Taken before the files are read: a change made while they are read is reloaded.
    let served = crate::http::server::definitions_digest(&paths);
    let outcome = match load_and_validate(&paths, false, false, None) {
        Ok(o) => o,
        Err(e) => return usage(&e.to_string()),
    };
    let text = served_diagnostics(&outcome.diagnostics, &paths);
    let Some(model) = outcome.model else {
        eprint!("{text}");
        eprintln!("error: the definitions are invalid; not starting");
        return ExitCode::from(1);
    };
    if !outcome.diagnostics.is_empty() {
        eprint!("{text}");
    }
    let engine =
        match crate::runtime::engine::Engine::new(std::sync::Arc::new(model), limits, &dirs) {
            Ok(e) => e,
            Err(e) => return usage(&e.to_string()),
        };
    let loader_paths = paths.clone();
    let load: crate::http::server::Loader = std::sync::Arc::new(move || {
        let outcome =
            load_and_validate(&loader_paths, false, false, None).map_err(|e| e.to_string())?;
        let text = served_diagnostics(&outcome.diagnostics, &loader_paths);
        outcome.model.ok_or(text)
    });
    let reload = crate::http::server::Reload {
        paths,
        load,
        dirs,
        poll: std::time::Duration::from_millis(500),
        served,
    };
    // On one core (a CPU limit of one, or pinned to one), tokio's current-thread scheduler:
    // the multi-threaded one would run one worker there anyway, paying for hand-offs between
    // threads that cannot run at once. Blocking work still goes to the blocking pool.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => return usage(&format!("runtime: {e}")),
    };
    let served = runtime.block_on(async {
        let _file_size = file_size_limit_as_error();
        if let Some(tier) = &shared {
            tier.start();
        }
        if let Some(endpoint) = &otlp_endpoint
            && let Err(e) = crate::runtime::otlp::start(endpoint, otlp_queue)
        {
            tracing::error!("--otlp-endpoint: {e}; no spans are exported");
        }
        if let Some(queue) = &push_queue {
            queue.check_durability().await;
        }
        let listener = crate::http::server::bind(&listen).await?;
        let served = crate::http::server::serve(
            engine,
            listener,
            stop,
            run_schedules,
            Some(reload),
            crate::http::server::shutdown_signal(),
        )
        .await;
        // The spans of the last requests and runs, before the process ends.
        crate::runtime::otlp::flush(crate::runtime::otlp::FLUSH_DEADLINE).await;
        served
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => usage(&e.to_string()),
    }
}

/// The diagnostics of the definitions `serve` reads, as its log (and `GET /reload`) shows them:
/// each with its file, line, column, YAML path, message and hint, but without the quoted
/// source line (a line may hold a credential written in the definition, such as a push
/// endpoint's token) and with each file named from the definition path given, not from the
/// root of the file system (`/etc/engine/connectors.d/a.yaml` is `connectors.d/a.yaml`).
fn served_diagnostics(diagnostics: &[diagnostic::Diagnostic], paths: &[PathBuf]) -> String {
    let shown: Vec<diagnostic::Diagnostic> = diagnostics
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.file = shown_path(&d.file, paths);
            d
        })
        .collect();
    diagnostic::render(&shown, Format::Human, &|_: &Path| None)
}

/// `file` (of the definitions read from `paths`) named from the given path that holds it:
/// from its last component when it is absolute, so that no local directory shows.
fn shown_path(file: &Path, paths: &[PathBuf]) -> PathBuf {
    if !file.is_absolute() {
        return file.to_path_buf();
    }
    paths
        .iter()
        .filter(|p| p.is_absolute())
        .find_map(|p| {
            let base = if p.as_path() == file {
                p.parent()?
            } else {
                p.parent().unwrap_or(p)
            };
            file.strip_prefix(base).ok().map(Path::to_path_buf)
        })
        .or_else(|| file.file_name().map(PathBuf::from))
        .unwrap_or_default()
}

/// `SIGXFSZ` (25 on Linux, the BSDs and macOS), sent when a write passes the process's file
/// size limit (`ulimit -f`, systemd's `LimitFSIZE`).
const SIGXFSZ: i32 = 25;

/// Catches `SIGXFSZ` for as long as the result is kept (tokio's handler stays installed
/// after it), so that a write past the file size limit fails with `EFBIG`, as a full disk
/// fails with `ENOSPC`: the queue answers 503 and a run fails, where the signal's default
/// action killed the whole engine mid-write. Must be called within the runtime.
fn file_size_limit_as_error() -> Option<tokio::signal::unix::Signal> {
    let kind = tokio::signal::unix::SignalKind::from_raw(SIGXFSZ);
    match tokio::signal::unix::signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot catch SIGXFSZ ({e}): a write past `ulimit -f` ends the engine");
            None
        }
    }
}

/// The admin API's access from the flags; says at start whether it is closed or open.
fn admin_access(args: AdminArgs) -> Result<crate::runtime::admin_access::AdminAccess, String> {
    use crate::runtime::admin_access::{AdminAccess, OidcSettings, Roles, read_token_file};
    if args.admin_open {
        tracing::warn!(
            "the admin API is open to every caller (--admin-open): use it only on a machine of your own"
        );
        return Ok(AdminAccess::open());
    }
    let token = args
        .admin_token_file
        .as_deref()
        .map(read_token_file)
        .transpose()
        .map_err(|e| format!("--admin-token-file: {e}"))?;
    let oidc = match (args.oidc_issuer, args.oidc_audience) {
        (Some(issuer), Some(audience)) => Some(OidcSettings {
            jwks_url: args.oidc_jwks_url,
            ..OidcSettings::new(issuer, audience)
        }),
        _ => None,
    };
    let roles = Roles {
        operator: args.admin_role,
        reader: args.admin_read_role,
    };
    let access = AdminAccess::new(token, oidc, roles).map_err(|e| e.to_string())?;
    if access.is_closed() {
        tracing::info!(
            "the admin API is closed: give --admin-token-file or --oidc-issuer to open it to its callers"
        );
    }
    Ok(access)
}

/// `engine run`: one run of a cron connector, its progress shown on standard error; non-zero
/// on any failure.
pub(super) fn run_once(
    name: String,
    definitions: Vec<PathBuf>,
    dry_run: bool,
    output: RunOutput,
    dirs: DirArgs,
    otlp: OtlpArgs,
) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .try_init();
    let model = match model_of(load_and_validate(&definitions, false, false, None)) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let Some(connector) = model.connector(&name).cloned() else {
        return usage(&format!("no connector `{name}`"));
    };
    let dirs = dirs.dirs();
    let metrics = std::sync::Arc::new(crate::runtime::metrics::Metrics::default());
    let runner = crate::runtime::upstream::Upstreams::new(
        connector.sources.iter().cloned(),
        metrics.clone(),
    )
    .and_then(|u| {
        crate::runtime::run::Runner::new(
            connector,
            &u,
            crate::runtime::state::StateDir::new(&dirs.state),
            &dirs.sink,
            metrics,
            crate::runtime::clock::Clock::system(),
        )
    });
    let runner = match runner {
        Ok(r) => r,
        Err(e) => return usage(&e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage(&format!("runtime: {e}")),
    };
    let shown = super::progress::Shown::new(&name);
    let (report, resources) = runtime.block_on(async {
        let _file_size = file_size_limit_as_error();
        if let Some(endpoint) = &otlp.otlp_endpoint
            && let Err(e) = crate::runtime::otlp::start(endpoint, otlp.otlp_queue)
        {
            tracing::error!("--otlp-endpoint: {e}; no spans are exported");
        }
        let watched = runner.progress.watch();
        let (ran, ()) = tokio::join!(runner.run(dry_run), shown.follow(watched));
        // The run's spans, before the process ends.
        crate::runtime::otlp::flush(crate::runtime::otlp::FLUSH_DEADLINE).await;
        ran
    });
    shown.finish();
    match output {
        RunOutput::Json => {
            let mut v = serde_json::to_value(&report).unwrap_or(Value::Null);
            if dry_run {
                v["resources"] = Value::Array(resources);
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        RunOutput::Text if dry_run => println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(resources)).unwrap_or_default()
        ),
        RunOutput::Text => {}
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
    for w in &report.warnings {
        eprintln!("warning: {w}");
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

/// A plain HTTP/1.1 GET with a 5 s timeout; Ok on a 2xx status.
pub(super) fn probe(url: &str) -> Result<(), String> {
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
