//! The `keygate` command: `serve`, `check-config`, and `token …` (see `cli.rs`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use keygate::config::{Config, DEFAULT_CONFIG_PATH};
use keygate::{Gateway, Listeners, ReloadHandle, Workers};

/// mimalloc instead of glibc's malloc: fewer instructions per allocation on the request
/// path, and memory freed after a burst goes back to the system instead of staying in
/// per-thread arenas (issue 13; figures in docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An authenticating reverse-proxy gateway.
#[derive(Parser)]
#[command(name = "keygate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate the configuration and print the module table.
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Manage API tokens through the admin API.
    Token(Box<cli::TokenArgs>),
    /// GET the admin listener's /healthz; exit 0 when it answers 200 (for container
    /// health checks, where no curl is installed).
    Healthcheck {
        /// Configuration file (for the admin address and whether it uses TLS).
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_format } => serve(&config, log_format),
        Command::CheckConfig { config } => check_config(&config),
        Command::Token(args) => cli::run(*args).map_err(anyhow::Error::from),
        Command::Healthcheck { config, timeout } => healthcheck(&config, timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, |k| std::env::var(k).ok())?)
}

/// Lines buffered for the log writer thread before new ones are dropped.
const LOG_BUFFER_LINES: usize = 128 * 1024;

/// Logging to stdout through a writer thread, so a request never waits on a write(2)
/// to a slow pipe; the guard flushes what is buffered when dropped at exit.
/// A `KEYGATE_LOG` that does not parse stops start-up (silently logging at the
/// default level would hide the very lines the operator asked for).
fn init_logging(format: LogFormat) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let filter = match std::env::var("KEYGATE_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::builder()
            .parse(&v)
            .with_context(|| {
                format!(
                    "KEYGATE_LOG={}: not a log filter (e.g. info, warn, keygate=debug)",
                    keygate::error::shown(&v)
                )
            })?,
        _ => tracing_subscriber::EnvFilter::new("info"),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .finish(std::io::stdout());
    // Colour only on a terminal: logs piped to files or `docker logs` stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(guard)
}

/// Threads for blocking calls (every embedded-store call, reload preparation). The
/// store has one writer at a time, so calls beyond a few wait for it either way; with
/// tokio's default of 512, 8 clients creating tokens at once grew the process to ~380
/// threads and 1.6 GB of RSS (each thread's stack and allocator heap). Queued calls wait
/// in tokio's queue instead. No blocking call waits for another, so a full pool cannot
/// deadlock.
const BLOCKING_THREADS: usize = 16;
/// Threads for blocking calls of each proxy worker's runtime (with `workers` ≥ 2; the
/// admin API's calls run on the main runtime's [`BLOCKING_THREADS`]). A worker's only
/// blocking calls are store reads on a cache miss (after a reload changed the module
/// list, say): a few per worker keep the process's total near 16 + 2 per core instead
/// of 16 per core.
const WORKER_BLOCKING_THREADS: usize = 2;

fn serve(path: &std::path::Path, format: LogFormat) -> anyhow::Result<()> {
    let _log_guard = init_logging(format)?;
    let config = load(path)?;
    // This thread's runtime serves the admin listener, accepts the proxy's connections
    // and runs the background tasks. One worker: it also serves the proxy's
    // connections. More: each worker thread has its own runtime and serves the
    // connections handed to it (thread per core, see keygate::Workers), with no work
    // stealing and no wake-ups across threads on the request path. Each runtime gives
    // freed memory back to the system after a burst (see collect_when_idle).
    let rt = tokio::runtime::Builder::new_current_thread()
        .on_thread_park(collect_when_idle)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let workers = Workers::for_config(config.proxy.workers, |b| {
        b.on_thread_park(collect_when_idle)
            .max_blocking_threads(WORKER_BLOCKING_THREADS);
    })
    .context("cannot start the worker threads")?;
    rt.block_on(async move {
        // Installed before anything slow: SIGHUP's default action ends the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        let listeners = Listeners::bind(&config).await.with_context(|| {
            format!(
                "cannot bind {} / {}",
                config.proxy.listen, config.admin.listen
            )
        })?;
        // "listening" only once the store is open: before that nothing is served, and
        // a store that fails to open must not follow a line saying all is well.
        let gateway = Gateway::start(config).await?;
        tracing::info!(
            proxy = %listeners.proxy.local_addr()?,
            admin = %listeners.admin.local_addr()?,
            config = %path.display(),
            "keygate listening"
        );
        tokio::spawn(reload_on_hangup(hangups, gateway.reload_handle()));
        gateway.run(listeners, workers, shutdown_signal()).await;
        anyhow::Ok(())
    })
}

/// Returns a worker's freed memory to the system when it goes idle (issue 14 item 5).
/// mimalloc gives back a page only once every block in it is free, and a block freed
/// by another thread (a request's buffers are often freed on another worker than the
/// one that allocated them) is only counted as free when the owning thread next
/// allocates from that page or collects. After a burst the workers go quiet, so without
/// this most of the burst's memory stayed: 199 MB 30 s after a burst that peaked at
/// 454 MB, against 38 MB with it (31 MB idle; scripts/rss-burst.sh, docs/performance.md).
/// At most once a second per worker, when it parks (goes idle); keygate's own timers
/// (statistics flush, upstream pool reaper) keep waking workers after a burst, so each
/// collects within seconds of it.
fn collect_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: mi_collect has no preconditions: it frees what this thread's heap no
        // longer uses (`false`: without forcing purges of memory still being reused).
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
}

/// Re-reads the configuration on every SIGHUP (the reload logs its own outcome).
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, reload: ReloadHandle) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let _ = reload.reload().await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    println!("{}: OK", path.display());
    println!(
        "proxy {}  admin {}  store {}",
        config.proxy.listen,
        config.admin.listen,
        match &config.store.backend {
            keygate::config::Backend::Embedded { path } => format!("embedded {}", path.display()),
            keygate::config::Backend::Redis { .. } => "redis".to_string(),
        }
    );
    let w_name = config
        .modules
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let w_up = config
        .modules
        .iter()
        .map(|m| upstream_text(m).len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!(
        "{:<w_name$}  {:<w_up$}  {:>8}  PREFIXES",
        "MODULE", "UPSTREAM", "TIMEOUT"
    );
    for m in &config.modules {
        println!(
            "{:<w_name$}  {:<w_up$}  {:>8}  {}",
            m.name,
            upstream_text(m),
            format!("{}s", m.timeout.as_secs_f64()),
            m.prefixes.join(", ")
        );
    }
    Ok(())
}

fn upstream_text(m: &keygate::config::Module) -> String {
    format!(
        "{}://{}",
        if m.upstream.https { "https" } else { "http" },
        m.upstream.authority
    )
}

/// One `GET /healthz` on the admin listener (TLS when `[admin] tls` is set).
fn healthcheck(path: &std::path::Path, timeout: u64) -> anyhow::Result<()> {
    let config = load(path)?;
    cli::healthcheck(&config, std::time::Duration::from_secs(timeout))?;
    Ok(())
}
