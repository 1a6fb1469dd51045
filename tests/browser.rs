//! A real browser: headless Chromium (Debian's `chromium`, required under CI) loads a page
//! with `<img src="/mjpeg/…">` while a camera streams; two screenshots a second apart are not
//! blank and differ (the picture moves).

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Takes a screenshot of `page` with a fresh profile; returns the decoded RGBA pixels.
fn screenshot(dir: &std::path::Path, page: &std::path::Path, name: &str) -> Vec<u8> {
    let png_path = dir.join(format!("{name}.png"));
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=640,480",
            "--timeout=2000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join(format!("profile-{name}")).display()
        ))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        png_path.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

fn distinct_colours(pixels: &[u8]) -> usize {
    let mut set = std::collections::HashSet::new();
    for px in pixels.chunks(4) {
        set.insert((px[0] / 8, px[1] / 8, px[2] / 8));
    }
    set.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_camera_in_an_img_tag() {
    if !require_program("chromium") {
        return;
    }
    let ts = start_server("browser").await;
    let (id, key) = ts.create_stream("cam").await;
    let mut request = format!("ws://{}/ingest/ws", ts.server.http_addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let camera = tokio::spawn(async move {
        for n in 0..120u64 {
            let jpeg = frames::jpeg(n, 640, 480, 70);
            if ws.send(Message::Binary(jpeg.into())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = ws.close(None).await;
    });
    wait_for_200(&ts.http(&format!("/mjpeg/{id}/frame.jpg")), 10).await;
    let page = ts.dir.join("page.html");
    std::fs::write(
        &page,
        format!(
            "<html><body style=\"margin:0;background:#000\"><img src=\"{}\" width=\"640\" height=\"480\"></body></html>",
            ts.http(&format!("/mjpeg/{id}"))
        ),
    )
    .unwrap();
    let dir = ts.dir.clone();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = screenshot(&dir, &page, "first");
        std::thread::sleep(Duration::from_millis(1000));
        let b = screenshot(&dir, &page, "second");
        (a, b)
    })
    .await
    .unwrap();
    assert!(distinct_colours(&a) > 50, "the first screenshot is blank");
    assert!(distinct_colours(&b) > 50, "the second screenshot is blank");
    assert!(a != b, "the picture changes between captures");
    camera.abort();
    ts.server.shutdown().await;
}
