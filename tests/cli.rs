//! The `media-server` binary: a bad config is one line and exit code 2; SIGTERM stops it
//! cleanly with exit code 0; the first start prints the admin token and the URLs once.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_media-server");

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("media-server.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn bad_config_is_one_line_and_exit_code_2() {
    let dir = common::temp_dir("cli-bad");
    for (body, env, needle) in [
        ("[hls]\nwindow_segments = 0\n", None, "hls.window_segments"),
        (
            "[rtmp]\nmax_connections = \"lots\"\n",
            None,
            "max_connections",
        ),
        ("[http]\nlisten = \"nope\"\n", None, "listen"),
        ("[nonsense]\n", None, "nonsense"),
        (
            "",
            Some(("MEDIA_SERVER_HLS_PART_TARGET_MS", "fast")),
            "MEDIA_SERVER_HLS_PART_TARGET_MS",
        ),
    ] {
        let path = write_config(&dir, body);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&path);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(needle), "{needle} in {stderr}");
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `GET /healthz` on 127.0.0.1:`port` answers 200.
fn healthz_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

#[test]
fn first_start_prints_the_welcome_once_and_sigterm_exits_cleanly() {
    let dir = common::temp_dir("cli-run");
    let (http, rtmp) = (common::free_port(), common::free_port());
    let config = write_config(
        &dir,
        &format!(
            "[server]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[webrtc]\nudp_listen = \"127.0.0.1:0\"\n[rtmp]\nlisten = \"127.0.0.1:{rtmp}\"\n",
            dir.join("data").display()
        ),
    );
    for run in 0..2 {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env(
                "MEDIA_SERVER_AUTH_ADMIN_TOKEN",
                "cli-admin-token-0123456789",
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("stderr-{run}.log"))).unwrap())
            .spawn()
            .unwrap();
        // Wait until the server answers its health check (a TCP connect alone could reach
        // another process; a server that exits early shows its log).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !healthz_ok(http) {
            if let Some(exit) = child.try_wait().unwrap() {
                panic!(
                    "the server exited ({exit}) before answering; its log: {}",
                    std::fs::read_to_string(dir.join(format!("stderr-{run}.log")))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert_eq!(
            exit.code(),
            Some(0),
            "clean exit on SIGTERM ({exit}); its log: {}",
            std::fs::read_to_string(dir.join(format!("stderr-{run}.log"))).unwrap_or_default()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let stdout: Vec<String> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .collect();
        let text = stdout.join("\n");
        if run == 0 {
            assert!(text.contains("cli-admin-token-0123456789"), "{text}");
            assert!(text.contains("ffmpeg -re"), "{text}");
            assert!(text.contains("/hls/str_"), "{text}");
            assert!(text.contains("Stream Key: sk_"), "{text}");
        } else {
            assert!(
                !text.contains("cli-admin-token"),
                "printed once only: {text}"
            );
        }
    }
}
