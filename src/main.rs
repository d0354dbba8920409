//! The `keygate` command: `serve`, `check-config`, and `token …` (see `cli.rs`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use keygate::config::{Config, DEFAULT_CONFIG_PATH};
use keygate::{Gateway, Listeners};

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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(path: &std::path::Path, format: LogFormat) -> anyhow::Result<()> {
    init_logging(format);
    let config = load(path)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.proxy.workers {
        rt.worker_threads(n);
    }
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let listeners = Listeners::bind(&config).await.with_context(|| {
            format!(
                "cannot bind {} / {}",
                config.proxy.listen, config.admin.listen
            )
        })?;
        tracing::info!(
            proxy = %listeners.proxy.local_addr()?,
            admin = %listeners.admin.local_addr()?,
            config = %path.display(),
            "keygate listening"
        );
        let gateway = Gateway::start(config).await?;
        gateway.run(listeners, shutdown_signal()).await;
        anyhow::Ok(())
    })
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
