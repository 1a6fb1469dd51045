//! `GET /metrics`: Prometheus text exposition format (version 0.0.4). Server totals,
//! per-stream series labelled `stream_id`, `app`, `protocol` (the ingest protocol), restream
//! destinations, recordings and the usual `process_*` metrics from `/proc/self`. Counters end
//! in `_total`, sizes are in bytes, times in seconds. Needs a token with `stats:read` unless
//! `stats.metrics_public` is set.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{ApiState, Auth};
use crate::error::HttpError;

/// One metric family being written: HELP and TYPE once, then samples.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics.
pub async fn get(auth: Result<Auth, HttpError>, State(state): State<ApiState>) -> Response {
    if !state.config.stats.metrics_public {
        if let Err(e) = auth.and_then(|a| a.require("stats:read")) {
            return e.into_response();
        }
    }
    let mut o = Out {
        text: String::with_capacity(8192),
    };
    let version = env!("CARGO_PKG_VERSION");
    o.family(
        "media_server_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    o.sample("media_server_build_info", &[("version", version)], 1.0);
    o.single(
        "media_server_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        state.started.elapsed().as_secs_f64(),
    );
    let (bytes_in, bytes_out) = state.hub.traffic_totals();
    o.single(
        "media_server_received_bytes_total",
        "counter",
        "Media payload bytes received from publishers.",
        bytes_in as f64,
    );
    o.single(
        "media_server_sent_bytes_total",
        "counter",
        "Bytes sent to viewers and outputs.",
        bytes_out as f64,
    );
    if let Some(r) = state.restreamer.as_ref() {
        o.single(
            "media_server_audio_transcoders",
            "gauge",
            "Audio transcoders running (one per stream and direction while someone needs it).",
            r.transcoders().running() as f64,
        );
    }
    let live = state.hub.live_streams();
    let mut by_protocol = std::collections::BTreeMap::<&str, u64>::new();
    for s in &live {
        *by_protocol.entry(s.protocol).or_default() += 1;
    }
    o.family(
        "media_server_publishers",
        "gauge",
        "Live publishers by ingest protocol.",
    );
    for p in ["rtmp", "whip", "camera"] {
        let n = by_protocol.get(p).copied().unwrap_or(0);
        o.sample("media_server_publishers", &[("protocol", p)], n as f64);
    }
    // Per stream: the app comes from the store (one query for all live streams).
    let mut rows = Vec::with_capacity(live.len());
    for s in &live {
        let app = match state.store.get_stream(&s.id).await {
            Ok(Some(r)) => r.app,
            _ => String::new(),
        };
        rows.push((s.clone(), s.snapshot(), app));
    }
    type Get = fn(&crate::hub::StreamSnapshot) -> f64;
    let per_stream: [(&str, &str, &str, Get); 6] = [
        (
            "media_server_stream_received_bytes_total",
            "counter",
            "Media payload bytes received for the stream in this session.",
            |s| s.bytes_in as f64,
        ),
        (
            "media_server_stream_sent_bytes_total",
            "counter",
            "Bytes sent for the stream in this session (HLS, RTMP, WHEP, MJPEG, restream).",
            |s| s.bytes_out as f64,
        ),
        (
            "media_server_stream_received_frames_total",
            "counter",
            "Frames received for the stream in this session.",
            |s| s.frames_in as f64,
        ),
        (
            "media_server_stream_dropped_frames_total",
            "counter",
            "Frames dropped for slow subscribers in this session.",
            |s| s.dropped_frames as f64,
        ),
        (
            "media_server_stream_viewers",
            "gauge",
            "Viewers now, all protocols.",
            |s| s.viewers as f64,
        ),
        (
            "media_server_stream_health_score",
            "gauge",
            "Health score 0-100 (absent in the first seconds).",
            |s| s.health.as_ref().map_or(f64::NAN, |h| f64::from(h.score)),
        ),
    ];
    for (name, kind, help, f) in per_stream {
        o.family(name, kind, help);
        for (s, snap, app) in &rows {
            let v = f(snap);
            if v.is_nan() {
                continue;
            }
            o.sample(
                name,
                &[("stream_id", &s.id), ("app", app), ("protocol", s.protocol)],
                v,
            );
        }
    }
    o.family(
        "media_server_stream_viewers_by_protocol",
        "gauge",
        "Viewers now by playback protocol (hls sessions, rtmp, whep, mjpeg).",
    );
    for (s, snap, app) in &rows {
        for (p, n) in &snap.viewers_by_protocol {
            o.sample(
                "media_server_stream_viewers_by_protocol",
                &[
                    ("stream_id", &s.id),
                    ("app", app),
                    ("protocol", s.protocol),
                    ("viewer_protocol", p),
                ],
                *n as f64,
            );
        }
    }
    if let Some(hls) = &state.hls {
        o.family(
            "media_server_hls_requests_total",
            "counter",
            "HLS requests that reached this server, by what they asked for (behind a cache: \
             the requests the cache could not answer).",
        );
        for (kind, n) in hls.request_counts() {
            o.sample(
                "media_server_hls_requests_total",
                &[("kind", kind.name())],
                n as f64,
            );
        }
        o.family(
            "media_server_hls_sendfile_bytes_total",
            "counter",
            "HLS part and segment bytes sent with sendfile from memfd regions (zero-copy).",
        );
        o.sample(
            "media_server_hls_sendfile_bytes_total",
            &[],
            crate::zerocopy::sent_bytes() as f64,
        );
    }
    if let Some(r) = &state.restreamer {
        let all = r.all();
        o.family(
            "media_server_restream_state",
            "gauge",
            "1 for the current state of each restream destination.",
        );
        let states = [
            "idle", "starting", "active", "retrying", "failed", "stopped",
        ];
        for (id, stream, st) in &all {
            for name in states {
                let v = if st.state.as_str() == name { 1.0 } else { 0.0 };
                o.sample(
                    "media_server_restream_state",
                    &[("stream_id", stream), ("restream_id", id), ("state", name)],
                    v,
                );
            }
        }
        o.family(
            "media_server_restream_sent_bytes_total",
            "counter",
            "Bytes sent to each restream destination in its stream's current session.",
        );
        for (id, stream, st) in &all {
            o.sample(
                "media_server_restream_sent_bytes_total",
                &[("stream_id", stream), ("restream_id", id)],
                st.bytes_out as f64,
            );
        }
    }
    if let Some(r) = &state.recorders {
        o.single(
            "media_server_recordings_active",
            "gauge",
            "Recordings being written now.",
            r.active_count() as f64,
        );
        o.single(
            "media_server_recording_written_bytes_total",
            "counter",
            "Bytes written to recording files since the server started.",
            r.bytes_written() as f64,
        );
    }
    o.single(
        "media_server_tokio_tasks",
        "gauge",
        "Tasks alive in the async runtime (flat over time when nothing leaks).",
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as f64,
    );
    process_metrics(&mut o);
    let mut resp = o.text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `process_*` metrics as the Prometheus client libraries name them.
fn process_metrics(o: &mut Out) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // Kernel clock ticks are 100 Hz on Linux.
    if let (Some(user), Some(system)) = (num(11), num(12)) {
        o.single(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (user + system) / 100.0,
        );
    }
    if let Some(vsize) = num(20) {
        o.single(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        );
    }
    if let Some(rss_pages) = num(21) {
        o.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_pages * 4096.0,
        );
    }
    if let (Some(start_ticks), Some(boot)) = (num(19), boot_time()) {
        o.single(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + start_ticks / 100.0,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        o.single(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            dir.count() as f64,
        );
    }
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut o = Out {
            text: String::new(),
        };
        o.family("m", "gauge", "h");
        o.sample("m", &[("a", "x\"y\\z\nw")], 1.5);
        assert_eq!(
            o.text,
            "# HELP m h\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\nw\"} 1.5\n"
        );
    }
}
