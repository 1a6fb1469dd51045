//! The `media-server` command: reads the config, starts the server, waits for SIGINT or
//! SIGTERM and shuts down cleanly. Exit codes: 0 clean stop, 1 runtime failure, 2 bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use media_server::Config;

/// A native media server: RTMP in; LL-HLS and RTMP out; an HTTP API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Path of the configuration file. Every key can also be set by an environment variable
    /// MEDIA_SERVER_{SECTION}_{KEY}, e.g. MEDIA_SERVER_HTTP_LISTEN=127.0.0.1:9000.
    #[arg(short, long, default_value = "media-server.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("media-server: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(err) => {
            eprintln!("media-server: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    // Handlers first: a SIGTERM that arrives while the server is starting (its ports already
    // answer) must still mean a clean stop, not the default kill.
    let stop = stop_signal();
    let server = match media_server::start(config).await {
        Ok(s) => s,
        Err(err) => {
            eprintln!("media-server: {err}");
            return ExitCode::from(1);
        }
    };
    if let Some(text) = server.welcome_text() {
        println!("{text}");
    }
    stop.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Registers the SIGINT/SIGTERM handlers now; the returned future resolves on either.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    let ctrl_c = tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
