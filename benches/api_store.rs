//! API latency on SQLite vs PostgreSQL (issue 17): `GET /api/v1/streams/{id}` against an
//! in-process server whose store is the embedded SQLite file or a fresh PostgreSQL database
//! on this machine, one keep-alive client sending requests one after another (p50/p95/p99),
//! then 16 clients at once (requests per second). A write, `PATCH /api/v1/streams/{id}`,
//! the same way.
//!
//! Run: `cargo bench --bench api_store` (numbers: BENCHMARKS.md). Env: `REQUESTS` (5000).
//! Under `cargo test` it makes a smoke run of 50 requests per case.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

async fn measure(label: &str, ts: &common::TestServer, id: &str, requests: usize) {
    let client = reqwest::Client::new();
    let url = ts.http(&format!("/api/v1/streams/{id}"));
    let get = || client.get(&url).bearer_auth(common::ADMIN_TOKEN).send();
    let patch = |n: usize| {
        client
            .patch(&url)
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&serde_json::json!({"title": format!("t{n}")}))
            .send()
    };
    for _ in 0..20 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    let mut reads = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        reads.push(t.elapsed());
    }
    let mut writes = Vec::with_capacity(requests / 5);
    for n in 0..requests / 5 {
        let t = Instant::now();
        let r = patch(n).await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        writes.push(t.elapsed());
    }
    reads.sort();
    writes.sort();
    let start = Instant::now();
    let per_client = requests / 16;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..per_client {
                    let r = client
                        .get(&url)
                        .bearer_auth(common::ADMIN_TOKEN)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rps = (per_client * 16) as f64 / start.elapsed().as_secs_f64();
    println!(
        "| {label} | {:.0} / {:.0} / {:.0} µs | {:.0} / {:.0} µs | {rps:.0} req/s |",
        percentile(&reads, 0.5),
        percentile(&reads, 0.95),
        percentile(&reads, 0.99),
        percentile(&writes, 0.5),
        percentile(&writes, 0.95),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let requests: usize = if bench {
        std::env::var("REQUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000)
    } else {
        50
    };
    println!("| store | GET /api/v1/streams/{{id}} p50 / p95 / p99 | PATCH p50 / p95 | GET, 16 clients |");
    println!("|---|---|---|---|");
    let sqlite = common::start_with("bench-sqlite", unlimited).await;
    let (id, _) = sqlite.create_stream("bench").await;
    measure("SQLite (embedded)", &sqlite, &id, requests).await;
    sqlite.server.shutdown().await;
    let db = common::services::TestDb::create("bench");
    let url = db.url.clone();
    let pg = common::start_with("bench-pg", move |c| {
        unlimited(c);
        c.store.url = url;
    })
    .await;
    let (id, _) = pg.create_stream("bench").await;
    measure("PostgreSQL 15 (loopback)", &pg, &id, requests).await;
    pg.server.shutdown().await;
}

/// No API rate limit (the bench is one client sending as fast as it can).
fn unlimited(c: &mut media_server::config::Config) {
    c.api.rate_limit_per_token = 100_000_000;
    c.api.rate_limit_per_ip = 100_000_000;
}
