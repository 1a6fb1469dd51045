//! Cluster mode (issue 17): nodes on one PostgreSQL database and one Redis (a fresh database
//! and key prefix per test) take any publisher, serve any viewer, and act as one service
//! through the API; a recording made on one node is served and deleted by another (object
//! storage on moto). Real PostgreSQL, Redis, ffmpeg/ffprobe; nodes are in-process servers.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::services::{redis_cleanup, redis_prefix, redis_url, Cuttable, TestDb};
use common::*;
use tokio::io::AsyncReadExt;

const SECRET: &str = "cluster-test-secret-0123456789abcdef";

async fn node(db: &TestDb, prefix: &str, name: &str, redis: Option<&str>) -> TestServer {
    node_with(db, prefix, name, redis, |_| {}).await
}

/// A node of the test's cluster (short leases and linger), with `edit` applied last.
async fn node_with(
    db: &TestDb,
    prefix: &str,
    name: &str,
    redis: Option<&str>,
    edit: impl FnOnce(&mut media_server::Config),
) -> TestServer {
    node_at(&db.url, prefix, name, redis, edit).await
}

/// [`node_with`] on the PostgreSQL at `db_url`.
async fn node_at(
    db_url: &str,
    prefix: &str,
    name: &str,
    redis: Option<&str>,
    edit: impl FnOnce(&mut media_server::Config),
) -> TestServer {
    let (url, prefix) = (db_url.to_owned(), prefix.to_owned());
    let redis = redis.map_or_else(redis_url, str::to_owned);
    start_with(&format!("cluster-{name}"), move |c| {
        c.store.url = url;
        c.cluster.enabled = true;
        c.cluster.node_id = name.to_owned();
        c.cluster.redis_url = redis;
        c.cluster.redis_prefix = prefix;
        c.cluster.secret = SECRET.to_owned();
        c.cluster.advertise_url = "http://127.0.0.1:0".to_owned();
        c.cluster.lease_ttl_ms = 3000;
        c.cluster.lease_renew_ms = 1000;
        c.cluster.relay_linger_ms = 2000;
        edit(c);
    })
    .await
}

async fn detail(ts: &TestServer, id: &str) -> serde_json::Value {
    let (status, v) = api(
        &ts.http(""),
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls a stream's detail on `ts` until `pred` holds (or panics after `secs`).
async fn detail_until(
    ts: &TestServer,
    id: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let d = detail(ts, id).await;
        if pred(&d) {
            return d;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ffprobe's codec names for a URL (video and audio streams).
fn ffprobe_codecs(url: &str) -> Result<Vec<String>, String> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "10000000"])
        .args(["-show_entries", "stream=codec_name", "-of", "csv=p=0"])
        .arg(url)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    // A multivariant playlist lists each rendition's streams as a program: distinct names.
    let mut codecs: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_end_matches(',').to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    codecs.sort();
    codecs.dedup();
    Ok(codecs)
}

/// An RTMP player that keeps reading; counts the bytes it gets.
async fn hold_player(ts: &TestServer, id: &str) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let mut socket = rtmp_player(ts.server.rtmp_addr, "live", id)
        .await
        .expect("player accepted");
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
            g.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    (task, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_published_on_one_node_plays_from_every_node_through_one_relay_each() {
    assert!(require_program("ffmpeg") && require_program("ffprobe"));
    let db = TestDb::create("cluster_play");
    let prefix = redis_prefix("play");
    let a = node(&db, &prefix, "a", None).await;
    let b = node(&db, &prefix, "b", None).await;
    let c = node(&db, &prefix, "c", None).await;
    let (id, key) = a.create_stream("clustered").await;

    // The registry lists the three nodes, seen from any of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = api(&c.http(""), reqwest::Method::GET, "/api/v1/nodes", None).await;
        assert_eq!(status, 200, "{v}");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["id"].as_str())
            .collect();
        if ids == ["a", "b", "c"] {
            assert_eq!(v["cluster"], true);
            assert!(v["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["version"].is_string()
                    && n["url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("http://127.0.0.1:"))));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A webhook registered through node b: each event reaches it once, not once per node.
    let (hook, got) = hook_receiver().await;
    let (status, v) = api(
        &b.http(""),
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(serde_json::json!({"url": hook, "events": ["stream.started", "stream.ended"]})),
    )
    .await;
    assert_eq!(status, 201, "{v}");

    // A private stream: a play token minted by node a opens it on every node.
    let (status, v) = api(
        &a.http(""),
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{id}"),
        Some(serde_json::json!({"privacy": "private"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = api(
        &a.http(""),
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/play-token"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let play = format!("{id}?token={token}");

    let mut ffmpeg = ffmpeg_publish(&a.rtmp(&format!("/live/{key}")), 40);
    // Live everywhere: node C (which has no publisher nor relay) says so, and which node.
    let d = detail_until(&c, &id, 15, "live on node a", |d| d["state"] == "live").await;
    assert_eq!(d["node"], "a", "{d}");

    // A second publisher of the same stream, on another node, is refused as on one node.
    let second = RtmpPublisher::connect(b.server.rtmp_addr, "live", &key).await;
    assert!(second.is_err(), "a second publisher on node b is refused");

    // LL-HLS from every node decodes (ffprobe, an independent client).
    for ts in [&b, &c] {
        let (status, _, _) = get(&ts.http(&format!("/hls/{id}/index.m3u8"))).await;
        assert_eq!(status, 401, "no token, no playlist");
    }
    for ts in [&a, &b, &c] {
        let url = ts.http(&format!("/hls/{id}/index.m3u8?token={token}"));
        let codecs = ffprobe_codecs(&url).unwrap_or_else(|e| panic!("ffprobe {url}: {e}"));
        assert_eq!(codecs, ["aac", "h264"], "{url}");
    }
    // The same LL-HLS on every node: segment names, media sequence, discontinuity sequence
    // and bytes (the owner packages, the others serve copies), so a viewer or a cache can
    // move between nodes.
    same_hls_everywhere(
        &[&a.http(""), &b.http(""), &c.http("")],
        &id,
        &format!("?token={token}"),
    )
    .await;
    // RTMP play from a node that is not the owner.
    let codecs = ffprobe_codecs(&b.rtmp(&format!("/live/{play}"))).expect("rtmp play on node b");
    assert_eq!(codecs, ["aac", "h264"]);

    // 20 RTMP viewers on each of b and c: the owner serves one relay per node.
    let mut players = vec![];
    for ts in [&b, &c] {
        for _ in 0..20 {
            players.push(hold_player(ts, &play).await);
        }
    }
    let d = detail_until(&a, &id, 10, "one relay per remote node", |d| {
        d["relays"] == 2 && d["viewer_count"].as_u64().unwrap_or(0) >= 40
    })
    .await;
    assert_eq!(d["node"], "a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        players
            .iter()
            .all(|(_, got)| got.load(Ordering::Relaxed) > 10_000),
        "every viewer gets media"
    );
    // The bytes sent to viewers are summed over nodes: the owner's detail counts what the
    // players on b and c got.
    let received: u64 = players
        .iter()
        .map(|(_, got)| got.load(Ordering::Relaxed))
        .sum();
    let d = detail_until(&a, &id, 5, "bytes out summed over nodes", |d| {
        d["live"]["bytes_out"].as_u64().unwrap_or(0) * 10 >= received * 8
    })
    .await;
    assert!(
        d["live"]["bandwidth"]["out_bps_10s"].as_u64().unwrap() > 0,
        "{d}"
    );
    // WHEP from a node that is not the owner (it shares the relay the RTMP viewers use).
    let (mut peer, _) =
        common::webrtc::whep_play(&c.http(&format!("/whep/{id}")), Some(&token)).await;
    peer.connected(10).await;
    let packets = common::webrtc::receive_video(&mut peer, &c.dir.join("whep.h264"), 3).await;
    assert!(packets > 30, "{packets} RTP packets over WHEP on node c");
    // The viewer count is the cluster's, whichever node answers.
    let on_c = detail_until(&c, &id, 5, "summed viewers on c", |d| {
        d["viewer_count"].as_u64().unwrap_or(0) >= 40
    })
    .await;
    assert_eq!(on_c["relays"], 0, "{on_c}");
    // Server stats carry the cluster's sums.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, st) = api(&a.http(""), reqwest::Method::GET, "/api/v1/stats", None).await;
        assert_eq!(status, 200, "{st}");
        let cl = &st["cluster"];
        if cl["nodes"] == 3 && cl["total_viewers"].as_u64().unwrap_or(0) >= 40 {
            assert_eq!(cl["live_streams"], 1, "{st}");
            assert!(cl["bytes_out_per_sec"].as_u64().unwrap() > 0, "{st}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster stats: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, nodes) = api(&b.http(""), reqwest::Method::GET, "/api/v1/nodes", None).await;
    let nb = nodes["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "b")
        .unwrap()
        .clone();
    assert_eq!(nb["relayed_streams"], 1, "{nodes}");
    assert!(nb["viewers"].as_u64().unwrap() >= 20, "{nodes}");

    // Outputs run on the owner whichever node the API call reaches: a restream added
    // through c is pushed by a (nginx-rtmp has it), and every node shows its state.
    assert!(common::nginx::require_nginx());
    let nginx = common::nginx::Nginx::start(&temp_dir("cluster-play-nginx"), None);
    let (status, v) = api(
        &c.http(""),
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/restreams"),
        Some(serde_json::json!({"platform": "custom", "url": nginx.url(), "key": "clustered", "name": "nginx", "allow_private_source": true})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let rid = v["id"].as_str().unwrap().to_owned();
    for ts in [&b, &c, &a] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (_, v) = api(
                &ts.http(""),
                reqwest::Method::GET,
                &format!("/api/v1/streams/{id}/restreams/{rid}"),
                None,
            )
            .await;
            if v["state"] == "active" && v["bytes_out"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "restream on {}: {v}",
                ts.http("")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        ffprobe_codecs(&format!("{}/clustered", nginx.url())).expect("nginx has the restream"),
        ["aac", "h264"]
    );
    // A recording started through b is made by a; stopped through c, it becomes ready.
    let (status, v) = api(
        &b.http(""),
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/recording/start"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let recordings = |status: &'static str| {
        let (http, id) = (c.http(""), id.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let (_, v) = api(
                    &http,
                    reqwest::Method::GET,
                    &format!("/api/v1/recordings?stream_id={id}"),
                    None,
                )
                .await;
                let list = v["data"].as_array().cloned().unwrap_or_default();
                if list.len() == 1 && list[0]["status"] == status {
                    return list[0].clone();
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "recording {status}: {v}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    recordings("recording").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, v) = api(
        &c.http(""),
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/recording/stop"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let rec = recordings("ready").await;
    assert!(rec["duration_seconds"].as_f64().unwrap() > 1.0, "{rec}");

    // A stop through node c reaches the publisher on node a.
    let (status, v) = api(
        &c.http(""),
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["state"], "live", "{v}");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = ffmpeg.try_wait().unwrap() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = ffmpeg.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(status.is_some(), "ffmpeg was disconnected by the stop");
    // The relays end with the stream and the viewers on b and c see the end.
    for (task, _) in players {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("viewers on other nodes see the end")
            .unwrap();
    }
    detail_until(&a, &id, 10, "no relays left", |d| d["relays"] == 0).await;
    // Relays on b and c sent nothing: one stream.started and one stream.ended in all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kinds: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["stream.started", "stream.ended"],
        "one delivery per event"
    );
    for ts in [a, b, c] {
        ts.server.shutdown().await;
    }
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_live_streams_keep_playing_new_relays_answer_503_and_all_recovers() {
    let db = TestDb::create("cluster_redis");
    let prefix = redis_prefix("outage");
    let upstream: std::net::SocketAddr = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("MS_TEST_REDIS_URL is redis://host:port");
    let redis = Cuttable::start(upstream).await;
    let via = format!("redis://{}", redis.addr);
    let a = node(&db, &prefix, "a", Some(&via)).await;
    let b = node(&db, &prefix, "b", Some(&via)).await;
    let (id, key) = a.create_stream("outage").await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(a.server.rtmp_addr, "live", &key)
        .await
        .expect("publish");
    let pusher = tokio::spawn(async move {
        for _ in 0..6 {
            publisher.send_tags(&tags, true).await;
        }
        publisher.finish().await;
    });
    detail_until(&b, &id, 10, "live", |d| d["state"] == "live").await;
    let playlist = b.http(&format!("/hls/{id}/index.m3u8"));
    wait_for_200(&playlist, 10).await;

    redis.cut();
    // The publisher keeps publishing; HLS on the owner and on the node already relaying
    // keeps being served.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        a.server.hub.get(&id).is_some(),
        "the publisher is still live on a"
    );
    let (status, _, _) = get(&playlist).await;
    assert_eq!(status, 200, "the relayed stream still plays on b");
    // A node that must ask Redis who owns a stream answers 503 in the error JSON.
    let c = {
        // A third node cannot even join without Redis: one clear error.
        let dir = temp_dir("cluster-c-fail");
        let mut cfg = test_config(&dir);
        cfg.store.url = db.url.clone();
        cfg.cluster.enabled = true;
        cfg.cluster.node_id = "c".into();
        cfg.cluster.redis_url = via.clone();
        cfg.cluster.redis_prefix = prefix.clone();
        cfg.cluster.secret = SECRET.into();
        cfg.cluster.advertise_url = "http://127.0.0.1:0".into();
        let err = media_server::app::start(cfg).await.unwrap_err().to_string();
        assert!(err.starts_with("cluster:") && !err.contains('\n'), "{err}");
        err
    };
    eprintln!("start without redis: {c}");
    // b's relay is still up; another stream, never relayed to b, answers 503 there.
    let (id2, key2) = a.create_stream("outage2").await;
    let (status, body) = api(
        &b.http(""),
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id2}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "the API reads PostgreSQL, not Redis: {body}");
    // A new publisher cannot be decided without Redis: refused, nothing crashes.
    assert!(RtmpPublisher::connect(a.server.rtmp_addr, "live", &key2)
        .await
        .is_err());
    let (status, _, body) = get(&b.http(&format!("/hls/{id2}/index.m3u8"))).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    redis.restore();
    // Back: a publisher of the second stream is accepted and plays from the other node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut second = loop {
        match RtmpPublisher::connect(a.server.rtmp_addr, "live", &key2).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish after redis returned: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let tags = read_flv(FIXTURE);
    let feeder = tokio::spawn(async move {
        second.send_tags(&tags, true).await;
        second.finish().await;
    });
    wait_for_200(&b.http(&format!("/hls/{id2}/index.m3u8")), 15).await;
    let _ = feeder.await;
    let _ = pusher.await;
    for ts in [a, b] {
        ts.server.shutdown().await;
    }
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_postgres_live_media_goes_on_on_every_node_api_writes_answer_503_and_all_recovers()
{
    let db = TestDb::create("cluster_pg");
    let prefix = redis_prefix("pgout");
    let mut url = url::Url::parse(&db.url).unwrap();
    let upstream: std::net::SocketAddr =
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
            .parse()
            .unwrap();
    let pg = Cuttable::start(upstream).await;
    url.set_port(Some(pg.addr.port())).unwrap();
    let edit = |c: &mut media_server::Config| c.store.connect_timeout_ms = 1000;
    let a = node_at(url.as_str(), &prefix, "a", None, edit).await;
    let b = node_at(url.as_str(), &prefix, "b", None, edit).await;
    let (id, key) = a.create_stream("pg-outage").await;
    // A publisher on a, paced in real time for 30 s.
    let mut publisher = RtmpPublisher::connect(a.server.rtmp_addr, "live", &key)
        .await
        .expect("publish");
    let tags = looped(&read_flv(FIXTURE), 30);
    let pusher = tokio::spawn(async move {
        let start = std::time::Instant::now();
        for t in &tags {
            tokio::time::sleep_until(
                (start + Duration::from_millis(u64::from(t.timestamp))).into(),
            )
            .await;
            if publisher.try_send_tag(t).await.is_err() {
                return;
            }
        }
        publisher.finish().await;
    });
    detail_until(&b, &id, 10, "live", |d| d["state"] == "live").await;
    // Viewers on b (a relay from a): RTMP and LL-HLS.
    let (player, got) = hold_player(&b, &id).await;
    let (_, before) = hls_media(&b.http(""), &id, "").await;

    pg.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // API writes answer 503 in the error JSON on every node.
    for ts in [&a, &b] {
        let (status, body) = api(
            &ts.http(""),
            reqwest::Method::PATCH,
            &format!("/api/v1/streams/{id}"),
            Some(serde_json::json!({"title": "during the outage"})),
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
    // Live media goes on: the publisher stays live on a, b's RTMP viewer keeps receiving and
    // b's playlist keeps growing.
    let bytes = got.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(a.server.hub.get(&id).is_some(), "still live on a");
    assert!(
        got.load(Ordering::Relaxed) > bytes + 10_000,
        "b's RTMP viewer got media while PostgreSQL was away"
    );
    let (_, during) = hls_media(&b.http(""), &id, "").await;
    let end = |p: &m3u8_rs::MediaPlaylist| p.media_sequence + p.segments.len() as u64;
    assert!(
        end(&during) > end(&before),
        "new segments on b while PostgreSQL was away: {} then {}",
        end(&before),
        end(&during)
    );
    // A publisher not authenticated before cannot be now (its key is in PostgreSQL):
    // refused, nothing crashes.
    assert!(
        RtmpPublisher::connect(b.server.rtmp_addr, "live", "sk_unknown_during_outage")
            .await
            .is_err()
    );

    pg.restore();
    // Back: writes work on every node without a restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for ts in [&a, &b] {
        loop {
            let (status, body) = api(
                &ts.http(""),
                reqwest::Method::PATCH,
                &format!("/api/v1/streams/{id}"),
                Some(serde_json::json!({"title": "after the outage"})),
            )
            .await;
            if status == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let d = detail(&b, &id).await;
    assert_eq!(d["title"], "after the outage", "{d}");
    assert_eq!(d["state"], "live", "{d}");
    // The stream ends normally, and the end is stored.
    pusher.abort();
    if let Some(live) = a.server.hub.get(&id) {
        live.stop();
    }
    detail_until(&b, &id, 15, "ended after the outage", |d| {
        d["state"] == "ended"
    })
    .await;
    player.abort();
    for ts in [a, b] {
        ts.server.shutdown().await;
    }
    redis_cleanup(&prefix).await;
}

/// A node as its own process (so that it can be killed with SIGKILL).
struct ProcNode {
    child: std::process::Child,
    http: String,
    rtmp: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

impl ProcNode {
    fn start(db: &TestDb, prefix: &str, name: &str) -> ProcNode {
        let dir = temp_dir(&format!("cluster-proc-{name}"));
        let (hp, rp) = (free_port(), free_port());
        let config = format!(
            "[server]\ndata_dir = \"{data}\"\nshutdown_timeout_ms = 2000\n\
             [http]\nlisten = \"127.0.0.1:{hp}\"\n[webrtc]\nudp_listen = \"127.0.0.1:0\"\n\
             [rtmp]\nlisten = \"127.0.0.1:{rp}\"\n\
             [auth]\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             [store]\nurl = \"{db}\"\n\
             [hls]\ngrace_period_ms = 20000\non_demand = false\n\
             [security]\noutbound_allow = [\"127.0.0.0/8\"]\n\
             [restream]\nbackoff_initial_ms = 200\n\
             [cluster]\nenabled = true\nnode_id = \"{name}\"\n\
             advertise_url = \"http://127.0.0.1:{hp}\"\nredis_url = \"{redis}\"\n\
             redis_prefix = \"{prefix}\"\nsecret = \"{SECRET}\"\n\
             lease_ttl_ms = 3000\nlease_renew_ms = 1000\nrelay_linger_ms = 5000\n",
            data = dir.join("data").display(),
            db = db.url,
            redis = redis_url(),
        );
        let path = dir.join("node.toml");
        std::fs::write(&path, config).unwrap();
        eprintln!("node {name}: log in {}", dir.join("node.log").display());
        ProcNode {
            child: Self::spawn(&dir, "node.log"),
            http: format!("http://127.0.0.1:{hp}"),
            rtmp: format!("127.0.0.1:{rp}").parse().unwrap(),
            dir,
        }
    }

    fn spawn(dir: &std::path::Path, log: &str) -> std::process::Child {
        let log = std::fs::File::create(dir.join(log)).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_media-server"))
            .arg("--config")
            .arg(dir.join("node.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("media-server starts")
    }

    /// Starts the node again (after a kill) with the same config and data directory.
    fn restart(&mut self) {
        self.child = Self::spawn(&self.dir, "node-restarted.log");
    }
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_killed_mid_stream_the_publisher_is_live_again_on_another_node_and_hls_continues()
{
    let db = TestDb::create("cluster_kill");
    let prefix = redis_prefix("kill");
    let mut a = ProcNode::start(&db, &prefix, "a");
    wait_healthy(&format!("{}/healthz", a.http)).await;
    let b = ProcNode::start(&db, &prefix, "b");
    let c = ProcNode::start(&db, &prefix, "c");
    wait_healthy(&format!("{}/healthz", b.http)).await;
    wait_healthy(&format!("{}/healthz", c.http)).await;
    let (status, v) = api(
        &a.http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({ "name": "failover", "title": "Failover", "record": true })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let key = v["stream_key"].as_str().unwrap().to_owned();
    // A restream to nginx-rtmp: pushed by whichever node owns the stream.
    assert!(common::nginx::require_nginx());
    let nginx = common::nginx::Nginx::start(&temp_dir("cluster-kill-nginx"), None);
    let (status, v) = api(
        &a.http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/restreams"),
        Some(serde_json::json!({"platform": "custom", "url": nginx.url(), "key": "failover-dest", "name": "nginx"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let rid = v["id"].as_str().unwrap().to_owned();
    let restream_state = |http: String| {
        let (id, rid) = (id.clone(), rid.clone());
        async move {
            let (_, v) = api(
                &http,
                reqwest::Method::GET,
                &format!("/api/v1/streams/{id}/restreams/{rid}"),
                None,
            )
            .await;
            v["state"].as_str().unwrap_or("").to_owned()
        }
    };

    // A second stream on node a whose publisher never comes back, and a webhook for ends.
    let (status, v) = api(
        &a.http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({ "name": "orphan", "title": "Orphan" })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let orphan = v["id"].as_str().unwrap().to_owned();
    let orphan_key = v["stream_key"].as_str().unwrap().to_owned();
    let (hook, ended_hooks) = hook_receiver().await;
    let (status, v) = api(
        &a.http,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(serde_json::json!({"url": hook, "events": ["stream.ended"]})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let mut lone = RtmpPublisher::connect(a.rtmp, "live", &orphan_key)
        .await
        .expect("second publisher on a");
    let lone_tags = looped(&read_flv(FIXTURE), 30);
    let lone_task = tokio::spawn(async move {
        let start = std::time::Instant::now();
        for t in &lone_tags {
            tokio::time::sleep_until(
                (start + Duration::from_millis(u64::from(t.timestamp))).into(),
            )
            .await;
            if lone.try_send_tag(t).await.is_err() {
                return;
            }
        }
    });

    // A publisher that goes to the next node ("through the load balancer") when its
    // connection breaks, and starts again with the sequence headers.
    let tags = looped(&read_flv(FIXTURE), 30);
    let headers: Vec<FlvTag> = tags
        .iter()
        .take_while(|t| t.timestamp == 0)
        .cloned()
        .collect();
    let targets = [a.rtmp, b.rtmp];
    let (lost_tx, mut lost_rx) = tokio::sync::mpsc::unbounded_channel::<std::time::Instant>();
    let (live_tx, mut live_rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, std::time::Instant)>();
    let publisher = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut target = 0;
        let mut next = 0;
        'connect: while next < tags.len() {
            let mut p = match RtmpPublisher::connect(targets[target], "live", &key).await {
                Ok(p) => p,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let _ = live_tx.send((target, std::time::Instant::now()));
            for h in &headers {
                if p.try_send_tag(h).await.is_err() {
                    continue 'connect;
                }
            }
            // Resume at the next keyframe (what an encoder does on a new connection).
            if next > 0 {
                while next < tags.len() && !(tags[next].kind == 9 && tags[next].body[0] >> 4 == 1) {
                    next += 1;
                }
            }
            while next < tags.len() {
                let t = &tags[next];
                let due = start + Duration::from_millis(u64::from(t.timestamp));
                tokio::time::sleep_until(due.into()).await;
                if p.try_send_tag(t).await.is_err() {
                    let _ = lost_tx.send(std::time::Instant::now());
                    target = 1;
                    continue 'connect;
                }
                next += 1;
            }
            p.finish().await;
        }
    });
    let (first, _) = live_rx.recv().await.unwrap();
    assert_eq!(first, 0, "published to node a first");
    // A viewer on node c (a relay from a).
    let playlist = format!("{}/hls/{id}/index.m3u8", c.http);
    wait_for_200(&playlist, 15).await;
    let media_url = |text: &str| -> String {
        let line = text
            .lines()
            .find(|l| !l.starts_with('#') && l.contains(".m3u8"))
            .expect("a media playlist");
        format!("{}/hls/{id}/{line}", c.http)
    };
    let (_, _, body) = get(&playlist).await;
    let media = media_url(&String::from_utf8_lossy(&body));
    // b and c serve copies of a's LL-HLS (b will take the stream over from its copy).
    let run_before = same_hls_everywhere(&[&a.http, &b.http, &c.http], &id, "").await;
    // The owner pushes the restream; nginx has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while restream_state(a.http.clone()).await != "active" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "restream active on a"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dest = format!("{}/failover-dest", nginx.url());
    assert_eq!(
        ffprobe_codecs(&dest).expect("nginx has the restream"),
        ["aac", "h264"]
    );
    let mut sequences = vec![];
    let poll = |sequences: &mut Vec<(u64, usize)>, text: &[u8]| {
        let p = parse_media_playlist(text);
        sequences.push((p.media_sequence, p.segments.len()));
    };
    for _ in 0..20 {
        let (status, _, body) = get(&media).await;
        assert_eq!(status, 200);
        poll(&mut sequences, &body);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // kill -9 of the owner.
    a.child.kill().unwrap();
    let killed = std::time::Instant::now();
    a.child.wait().unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(10), lost_rx.recv())
        .await
        .expect("the publisher notices")
        .unwrap();
    let (target, back) = tokio::time::timeout(Duration::from_secs(20), live_rx.recv())
        .await
        .expect("the publisher is live again")
        .unwrap();
    assert_eq!(target, 1, "on node b");
    eprintln!(
        "failover: publisher lost {:?} after the kill, live again on b {:?} after the kill",
        lost.duration_since(killed),
        back.duration_since(killed)
    );
    assert!(
        back.duration_since(killed) < Duration::from_secs(10),
        "lease_ttl is 3 s"
    );
    // The stream is owned by b now, seen from c's API.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, d) = api(
            &c.http,
            reqwest::Method::GET,
            &format!("/api/v1/streams/{id}"),
            None,
        )
        .await;
        if d["node"] == "b" && d["state"] == "live" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "owner b: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The viewer on c kept its playlist: the media sequence never goes back, and new
    // segments (from b, after a discontinuity) arrive.
    let before = sequences.last().unwrap().0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut saw_discontinuity = false;
    loop {
        let (status, _, body) = get(&media).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        poll(&mut sequences, &body);
        saw_discontinuity |= String::from_utf8_lossy(&body).contains("#EXT-X-DISCONTINUITY");
        if sequences.last().unwrap().0 > before + 2 && saw_discontinuity {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hls on c after the failover: {sequences:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        sequences.windows(2).all(|w| w[1].0 >= w[0].0),
        "media sequence never goes back: {sequences:?}"
    );
    // The new owner continued the playlist c copied: the same run (names), and c and b
    // serve the same segments.
    let run_after = same_hls_everywhere(&[&b.http, &c.http], &id, "").await;
    assert_eq!(run_after, run_before, "one playlist across the failover");
    // ffprobe decodes it from c.
    let codecs = ffprobe_codecs(&playlist).expect("ffprobe on c after the failover");
    assert_eq!(codecs, ["aac", "h264"]);
    // The stream whose publisher did not come back is ended by a surviving node, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, d) = api(
            &c.http,
            reqwest::Method::GET,
            &format!("/api/v1/streams/{orphan}"),
            None,
        )
        .await;
        if d["state"] == "ended" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orphan never ended: {d}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lone_task.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ends: Vec<String> = ended_hooks
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["data"]["stream"]["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        ends,
        [orphan.as_str()],
        "one stream.ended, for the orphan only"
    );
    // The restream resumed from the new owner.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while restream_state(b.http.clone()).await != "active" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "restream active again on b"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ffprobe_codecs(&dest).expect("nginx has the restream again"),
        ["aac", "h264"]
    );
    // Recording: a's recording was left open by the kill; b records the stream now.
    let recordings = |http: String| {
        let id = id.clone();
        async move {
            let (_, v) = api(
                &http,
                reqwest::Method::GET,
                &format!("/api/v1/recordings?stream_id={id}&order=started_at&dir=asc"),
                None,
            )
            .await;
            v["data"].as_array().cloned().unwrap_or_default()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (left_open, new_one) = loop {
        let list = recordings(c.http.clone()).await;
        if list.len() == 2 && list.iter().all(|r| r["status"] == "recording") {
            break (list[0]["id"].clone(), list[1]["id"].clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's recording open and b's started: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // a starts again: it recovers the recording it left open (crash-safe, as on one node),
    // and leaves b's, still being written on b's disk, alone.
    a.restart();
    wait_healthy(&format!("{}/healthz", a.http)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = recordings(c.http.clone()).await;
        let status = |rid: &serde_json::Value| {
            list.iter()
                .find(|r| &r["id"] == rid)
                .map(|r| r["status"].as_str().unwrap_or("").to_owned())
                .unwrap_or_default()
        };
        if status(&left_open) == "ready" {
            assert_eq!(
                status(&new_one),
                "recording",
                "b's recording untouched: {list:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a recovers its recording: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Long after the grace period (20 s + the 3 s lease) that copies wait when their relay
    // ends, the playlist b took over from its copy is still live on b and on c.
    tokio::time::sleep_until((back + Duration::from_secs(26)).into()).await;
    for http in [&b.http, &c.http] {
        let (_, p) = hls_media(http, &id, "").await;
        assert!(
            !p.end_list,
            "the playlist on {http} was ended under a live stream"
        );
    }
    publisher.abort();
    drop((a, b, c));
    redis_cleanup(&prefix).await;
}

/// A node's media playlist of a stream (through its multivariant playlist), parsed by
/// m3u8-rs, with the URL it was read from.
async fn hls_media(http: &str, id: &str, query: &str) -> (String, m3u8_rs::MediaPlaylist) {
    let (status, _, body) = get(&format!("{http}/hls/{id}/index.m3u8{query}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body).into_owned();
    let uri = text
        .lines()
        .find(|l| !l.starts_with('#') && l.contains(".m3u8"))
        .expect("a media playlist")
        .to_owned();
    let url = format!("{http}/hls/{id}/{uri}");
    let (status, _, body) = get(&url).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    (url, parse_media_playlist(&body))
}

/// msn → (segment file name, duration ms, discontinuity) of a media playlist.
fn hls_objects(p: &m3u8_rs::MediaPlaylist) -> std::collections::BTreeMap<u64, (String, u64, bool)> {
    p.segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.uri.split('?').next().unwrap_or("").to_owned();
            let name = name.rsplit('/').next().unwrap_or("").to_owned();
            (
                p.media_sequence + i as u64,
                (name, (s.duration * 1000.0).round() as u64, s.discontinuity),
            )
        })
        .collect()
}

/// Every node serves the same LL-HLS of `id`: the segments listed by all of them have the
/// same names, durations and discontinuities at the same msns, and the same bytes; the
/// discontinuity sequence agrees. Returns the run id (the names' prefix).
async fn same_hls_everywhere(nodes: &[&str], id: &str, query: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut lists = vec![];
        for http in nodes {
            lists.push(hls_media(http, id, query).await);
        }
        let maps: Vec<_> = lists.iter().map(|(_, p)| hls_objects(p)).collect();
        let common: Vec<u64> = maps[0]
            .keys()
            .copied()
            .filter(|m| maps.iter().all(|x| x.contains_key(m)))
            .collect();
        if common.len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no two segments listed by every node: {maps:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        for m in &common {
            let first = &maps[0][m];
            for (i, map) in maps.iter().enumerate() {
                assert_eq!(
                    &map[m], first,
                    "msn {m} on node {} vs {}",
                    nodes[i], nodes[0]
                );
            }
        }
        let ds: Vec<u64> = lists
            .iter()
            .map(|(_, p)| p.discontinuity_sequence)
            .collect();
        let same_start = lists
            .iter()
            .all(|(_, p)| p.media_sequence == lists[0].1.media_sequence);
        if same_start {
            assert!(
                ds.iter().all(|d| *d == ds[0]),
                "discontinuity sequences {ds:?}"
            );
        }
        // The newest common segment: the same bytes from every node.
        let newest = common[common.len() - 1];
        let name = &maps[0][&newest].0;
        let mut bodies = vec![];
        for (url, _) in &lists {
            let base = &url[..url.rfind('/').unwrap()];
            let (status, _, body) = get(&format!("{base}/{name}{query}")).await;
            assert_eq!(status, 200, "{base}/{name}");
            bodies.push(body);
        }
        assert!(bodies[0].len() > 1000, "a real segment");
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "segment {name} differs between nodes"
        );
        return name.split('-').next().unwrap_or("").to_owned();
    }
}

/// haproxy in front of nodes, as `examples/cluster/haproxy.cfg` (TCP for RTMP, HTTP with
/// health checks for the rest), on free loopback ports.
struct Haproxy {
    child: std::process::Child,
    http: String,
    rtmp: String,
}

impl Haproxy {
    async fn start(nodes: &[&TestServer]) -> Haproxy {
        let dir = temp_dir("cluster-haproxy");
        let (hp, rp) = (free_port(), free_port());
        let mut cfg = format!(
            "global\n  maxconn 2000\ndefaults\n  timeout connect 3s\n  timeout client 60s\n  \
             timeout server 60s\n  timeout tunnel 1h\n\
             frontend rtmp_in\n  bind 127.0.0.1:{rp}\n  mode tcp\n  default_backend rtmp_nodes\n\
             frontend http_in\n  bind 127.0.0.1:{hp}\n  mode http\n  default_backend http_nodes\n\
             backend rtmp_nodes\n  mode tcp\n  balance roundrobin\n"
        );
        for (i, n) in nodes.iter().enumerate() {
            cfg += &format!("  server n{i} {} check\n", n.server.rtmp_addr);
        }
        // By client address: each node packages its own LL-HLS (segment names differ between
        // nodes), so a player's requests stay on one node.
        // Round robin: consecutive requests of one player go to different nodes, which
        // works because every node serves the same names and bytes.
        cfg += "backend http_nodes\n  mode http\n  balance roundrobin\n  option httpchk GET /healthz\n";
        for (i, n) in nodes.iter().enumerate() {
            cfg += &format!("  server n{i} {} check\n", n.server.http_addr);
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = std::process::Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (tests/run.sh installs it)");
        let h = Haproxy {
            child,
            http: format!("http://127.0.0.1:{hp}"),
            rtmp: format!("rtmp://127.0.0.1:{rp}"),
        };
        wait_healthy(&format!("{}/healthz", h.http)).await;
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ffmpeg_publishes_through_haproxy_and_the_stream_decodes_from_every_node_and_from_haproxy()
{
    assert!(require_program("haproxy") && require_program("ffprobe"));
    let db = TestDb::create("cluster_haproxy");
    let prefix = redis_prefix("haproxy");
    let a = node(&db, &prefix, "a", None).await;
    let b = node(&db, &prefix, "b", None).await;
    let c = node(&db, &prefix, "c", None).await;
    let lb = Haproxy::start(&[&a, &b, &c]).await;
    // Created through the load balancer (whichever node answers).
    let (status, v) = api(
        &lb.http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({ "name": "lb", "title": "Through haproxy" })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let key = v["stream_key"].as_str().unwrap().to_owned();
    let mut ffmpeg = ffmpeg_publish(&format!("{}/live/{key}", lb.rtmp), 30);
    let d = detail_until(&b, &id, 15, "live", |d| d["state"] == "live").await;
    let owner = d["node"].as_str().unwrap().to_owned();
    eprintln!("haproxy sent the publisher to node {owner}");
    for url in [a.http(""), b.http(""), c.http(""), lb.http.clone()] {
        let url = format!("{url}/hls/{id}/index.m3u8");
        let codecs = ffprobe_codecs(&url).unwrap_or_else(|e| panic!("ffprobe {url}: {e}"));
        assert_eq!(codecs, ["aac", "h264"], "{url}");
    }
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    drop(lb);
    for ts in [a, b, c] {
        ts.server.shutdown().await;
    }
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_rate_limit_is_one_budget_for_the_whole_cluster() {
    let db = TestDb::create("cluster_limit");
    let prefix = redis_prefix("limit");
    let limit = |c: &mut media_server::Config| c.api.rate_limit_per_token = 10;
    let a = node_with(&db, &prefix, "a", None, limit).await;
    let b = node_with(&db, &prefix, "b", None, limit).await;
    // All 14 requests in one minute window.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 50 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    let mut statuses = vec![];
    for i in 0..14 {
        let ts = if i % 2 == 0 { &a } else { &b };
        let (status, _) = api(&ts.http(""), reqwest::Method::GET, "/api/v1/streams", None).await;
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (ok, limited),
        (10, 4),
        "10 per minute for the token on both nodes together: {statuses:?}"
    );
    for ts in [a, b] {
        ts.server.shutdown().await;
    }
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_left_undelivered_by_a_node_that_stopped_is_delivered_by_another_once() {
    let db = TestDb::create("cluster_outbox");
    let prefix = redis_prefix("outbox");
    let quick = |c: &mut media_server::Config| {
        c.webhooks.initial_backoff_ms = 300;
        c.webhooks.max_attempts = 10;
    };
    let a = node_with(&db, &prefix, "a", None, quick).await;
    let b = node_with(&db, &prefix, "b", None, quick).await;
    // The receiver is down at first: node a's attempts fail.
    let port = free_port();
    let (status, v) = api(
        &a.http(""),
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(serde_json::json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["stream.created"]})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let hook_id = v["id"].as_str().unwrap().to_owned();
    let (status, v) = api(
        &a.http(""),
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({"name": "outboxed", "title": "Outboxed"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let stream_id = v["id"].as_str().unwrap().to_owned();
    // Wait for a failed attempt, then node a goes away with the event undelivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, d) = api(
            &b.http(""),
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{hook_id}/deliveries"),
            None,
        )
        .await;
        if d["data"].as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.server.shutdown().await;
    // The receiver comes up; node b delivers the event.
    let (_, got) = hook_receiver_on(port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never delivered by node b"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = got.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "delivered once: {events:?}");
    assert_eq!(events[0]["type"], "stream.created");
    assert_eq!(
        events[0]["data"]["stream"]["id"],
        stream_id.as_str(),
        "{events:?}"
    );
    b.server.shutdown().await;
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_made_on_one_node_is_listed_played_downloaded_and_deleted_on_another() {
    use common::s3::{Moto, ACCESS_KEY, SECRET_KEY};
    if !require_program("ffmpeg") {
        return;
    }
    let Some(moto) = Moto::start(&[]).await else {
        return;
    };
    moto.create_bucket("recs").await;
    let storage = media_server::config::StorageConfig {
        kind: "s3".into(),
        endpoint: moto.endpoint(),
        bucket: "recs".into(),
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        part_size_mb: 1,
        ..Default::default()
    };
    let db = TestDb::create("cluster_s3");
    let prefix = redis_prefix("s3");
    let s = storage.clone();
    let a = node_with(&db, &prefix, "a", None, move |c| c.recording.storage = s).await;
    let b = node_with(&db, &prefix, "b", None, move |c| {
        c.recording.storage = storage
    })
    .await;
    let (status, v) = api(
        &a.http(""),
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({ "name": "vod", "title": "VOD", "record": true })),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let key = v["stream_key"].as_str().unwrap().to_owned();
    // Recorded on a (the publisher's node), uploaded by a.
    let mut ffmpeg = ffmpeg_publish(&a.rtmp(&format!("/live/{key}")), 5);
    let _ = ffmpeg.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let rec = loop {
        let recs = recordings_of(&b.http(""), &id).await;
        if let Some(r) = recs.first().filter(|r| r["status"] == "ready") {
            break r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready, seen from b: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rec["storage"], "s3", "{rec}");
    let rec_id = rec["id"].as_str().unwrap().to_owned();
    let spool = a.dir.join(format!("data/recordings/{rec_id}.mp4"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while spool.exists() {
        assert!(std::time::Instant::now() < deadline, "a kept its spool");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // b has no file: its VOD comes from the stored index and presigned URLs, and decodes.
    let vod = b.http(&format!("/vod/{rec_id}/index.m3u8"));
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-http_persistent",
            "0",
            "-i",
            &vod,
            "-map",
            "0",
            "-f",
            "null",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(b.http(&format!("/api/v1/recordings/{rec_id}/download")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    // b deletes it: the object goes with it.
    let (status, _) = api(
        &b.http(""),
        reqwest::Method::DELETE,
        &format!("/api/v1/recordings/{rec_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(moto.keys("recs", "recordings/").await.is_empty());
    for ts in [a, b] {
        ts.server.shutdown().await;
    }
    redis_cleanup(&prefix).await;
}
