//! A stand-in for an ESP32-CAM: connects to `ws://HOST:8080/ingest/ws` with a stream key and
//! sends one JPEG per binary WebSocket message at a fixed rate — exactly what the device
//! firmware does (see README, "Cameras"). The frames show a counter and a moving bar.
//!
//! ```sh
//! cargo run --example esp32_cam -- --key sk_… --fps 10 --size 640x480
//! ```

mod frames;

use std::time::Duration;

use clap::Parser;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "Send generated JPEG frames to media-server like an ESP32 camera")]
struct Args {
    /// The server's camera endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ingest/ws")]
    url: String,
    /// The stream key (sent as `Authorization: Bearer`).
    #[arg(long)]
    key: String,
    /// Frames per second.
    #[arg(long, default_value_t = 10)]
    fps: u32,
    /// Picture size, WIDTHxHEIGHT.
    #[arg(long, default_value = "640x480")]
    size: String,
    /// JPEG quality 1-100.
    #[arg(long, default_value_t = 70)]
    quality: u8,
    /// Stop after this many frames (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    frames: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (w, h) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
        .ok_or("--size must look like 640x480")?;
    let mut request = args.url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", args.key).parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    println!("connected; sending {w}x{h} at {} fps", args.fps);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.fps.max(1))));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let jpeg = frames::jpeg(n, w, h, args.quality);
        ws.send(Message::Binary(jpeg.into())).await?;
        n += 1;
        if n % u64::from(args.fps.max(1) * 5) == 0 {
            println!("{n} frames sent");
        }
        if args.frames > 0 && n >= args.frames {
            break;
        }
    }
    ws.close(None).await?;
    println!("done: {n} frames");
    Ok(())
}
