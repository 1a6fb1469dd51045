//! Runs the whole server in-process, as the integration tests do: loopback listeners on
//! ephemeral ports, a temporary data directory, and the first-start banner printed.
//!
//! `cargo run --example embed`, then publish with the printed ffmpeg command; Ctrl-C stops.

use media_server::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut config = Config::default();
    config.server.data_dir = std::env::temp_dir().join("media-server-embed");
    config.http.listen = "127.0.0.1:0".parse()?;
    config.rtmp.listen = "127.0.0.1:0".parse()?;
    let server = media_server::start(config).await?;
    // Public URLs in the banner are the configured ones; the real ports are these:
    println!("HTTP on {}, RTMP on {}", server.http_addr, server.rtmp_addr);
    if let Some(text) = server.welcome_text() {
        println!("{text}");
    }
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
