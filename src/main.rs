//! The `cluster` binary: resolve the configuration, start tracing, dispatch. Everything else
//! lives in the library. Errors end here as one line, `cluster: <message>`.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use cluster::config::{self, Invocation, Logging, ServerConfig};
use cluster::{agent, check_config, server};

/// Exit code for a failed run (configuration errors use [`config::USAGE_EXIT_CODE`]).
const FAILURE: u8 = 1;

/// The version line: `CLUSTER_GIT_SHA` may be set at build time.
const VERSION: &str = concat!("cluster version v", env!("CARGO_PKG_VERSION"));

fn main() -> ExitCode {
    let resolved = match config::resolve_process() {
        Ok(resolved) => resolved,
        Err(config::ConfigError::Cli(err)) => {
            // clap formats usage errors (and --help) itself.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(FAILURE));
        }
        Err(err) => {
            eprintln!("cluster: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    if let Invocation::Shim(command) = resolved.invocation {
        // The shim logs to its container's directory, never to the agent's stderr, and must
        // stay single-threaded: no async runtime here.
        return agent::runtime::container::shim::main(command, resolved.logging.filter.as_deref());
    }
    init_tracing(&resolved.logging);
    let result = match resolved.invocation {
        Invocation::Server(config) => run_server(config),
        Invocation::Agent(config) => agent::run(&config).map_err(anyhow::Error::from),
        Invocation::Version => {
            let sha = option_env!("CLUSTER_GIT_SHA").unwrap_or("unknown");
            println!("{VERSION} ({sha})");
            Ok(())
        }
        Invocation::Images(config) => run_images(&config),
        Invocation::Shim(_) => Err(anyhow::anyhow!("the shim is dispatched before tracing")),
        Invocation::CheckConfig(config) => {
            let checks = check_config::check_host(&config.root, config.search_path.as_deref());
            for check in &checks {
                println!("{check}");
            }
            if check_config::all_required_present(&checks) {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "this host is missing what cluster needs (see above)"
                ))
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cluster: {err:#}");
            ExitCode::from(FAILURE)
        }
    }
}

/// Logs to stderr (coloured only on a terminal). `RUST_LOG` wins when set and valid; otherwise
/// info, or debug with `--debug`.
fn init_tracing(logging: &Logging) {
    // sled's own debug output is page-cache internals, noise even when debugging cluster.
    let default = if logging.debug {
        "debug,sled=info"
    } else {
        "info"
    };
    let mut invalid = None;
    let filter = match &logging.filter {
        Some(directives) => EnvFilter::try_new(directives).unwrap_or_else(|err| {
            invalid = Some(err.to_string());
            EnvFilter::new(default)
        }),
        None => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(err) = invalid {
        warn!(error = %err, "ignoring invalid RUST_LOG");
    }
}

/// Runs the server on a multi-threaded runtime until SIGINT or SIGTERM.
fn run_server(config: ServerConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let result = server::run(config, shutdown.clone()).await;
        signals.abort();
        result.map_err(anyhow::Error::from)
    })?;
    info!("server stopped");
    Ok(())
}

/// Runs one `cluster images` command.
fn run_images(config: &config::ImagesConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    runtime.block_on(agent::runtime::image::command::run(
        config, &mut out, &mut err,
    ))?;
    Ok(())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one ends the process at once.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(err), _) | (_, Err(err)) => {
            warn!(error = %err, "cannot listen for signals; stop the server with SIGKILL");
            return;
        }
    };
    let mut first = true;
    loop {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        if first {
            info!(signal = name, "shutdown requested");
            shutdown.cancel();
            first = false;
        } else {
            warn!(
                signal = name,
                "second signal, exiting without a clean shutdown"
            );
            std::process::exit(i32::from(FAILURE));
        }
    }
}
