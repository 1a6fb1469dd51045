//! Cluster mode, PostgreSQL (issue 17): the schema is migrated once however many nodes
//! start together on an empty database, a database from a newer binary and an unreachable
//! server are refused with one clear line, and the pool reconnects. Real PostgreSQL (a
//! fresh database per test, see `common::services`).

mod common;

use common::services::{pg_query, TestDb};
use media_server::config::StoreConfig;
use media_server::store::pg::{PgPool, PG_MIGRATIONS};

fn store_config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        ..StoreConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_starting_together_migrate_an_empty_database_once() {
    let db = TestDb::create("migrate3");
    let cfg = store_config(&db.url);
    let (a, b, c) = tokio::join!(PgPool::open(&cfg), PgPool::open(&cfg), PgPool::open(&cfg));
    for (node, r) in [("a", &a), ("b", &b), ("c", &c)] {
        assert!(r.is_ok(), "node {node}: {:?}", r.as_ref().err());
    }
    let versions = pg_query(
        &db.url,
        "SELECT version FROM schema_migrations ORDER BY version",
    );
    let want: Vec<String> = (1..=PG_MIGRATIONS.len()).map(|v| v.to_string()).collect();
    assert_eq!(versions, want, "each migration recorded exactly once");
    let tables = pg_query(
        &db.url,
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    );
    for t in [
        "recordings",
        "restreams",
        "settings",
        "streams",
        "tokens",
        "webhook_deliveries",
        "webhooks",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing: {tables:?}");
    }
    // A fourth start finds nothing to do, and every pool answers queries.
    let d = PgPool::open(&cfg).await.unwrap();
    assert_eq!(
        pg_query(&db.url, "SELECT count(*) FROM schema_migrations"),
        vec![PG_MIGRATIONS.len().to_string()]
    );
    for pool in [a.unwrap(), b.unwrap(), c.unwrap(), d] {
        let one: i32 = pool
            .call(|c| Ok(c.query_one("SELECT 1", &[])?.get(0)))
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_binary_is_refused() {
    let db = TestDb::create("newer");
    let cfg = store_config(&db.url);
    PgPool::open(&cfg).await.unwrap();
    pg_query(
        &db.url,
        "INSERT INTO schema_migrations (version) VALUES (999) RETURNING version",
    );
    let err = PgPool::open(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("newer") && err.contains("999"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[tokio::test]
async fn an_unreachable_postgres_is_one_clear_error_and_a_pool_recovers() {
    // Nothing listens on port 1 of loopback.
    let cfg = StoreConfig {
        url: "postgres://root@127.0.0.1:1/test".into(),
        connect_timeout_ms: 500,
        ..StoreConfig::default()
    };
    let err = PgPool::open(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    // A pool whose connection is cut (the server restarts, a proxy drops it) reconnects:
    // the query that finds the connection dead fails, the next one succeeds.
    let db = TestDb::create("recover");
    let one_connection = StoreConfig {
        pool_size: 1,
        ..store_config(&db.url)
    };
    let pool = PgPool::open(&one_connection).await.unwrap();
    let pid: i32 = pool
        .call(|c| Ok(c.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
        .await
        .unwrap();
    pg_query(
        &db.url,
        &format!("SELECT pg_terminate_backend({pid})::text"),
    );
    let mut answers = vec![];
    for _ in 0..4 {
        answers.push(
            pool.call(|c| Ok(c.query_one("SELECT 1", &[])?.get::<_, i32>(0)))
                .await
                .is_ok(),
        );
    }
    assert!(answers[1..].iter().all(|ok| *ok), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_keeps_streams_keys_and_settings_across_a_restart() {
    let db = TestDb::create("restart");
    let dir = common::temp_dir("pg-restart");
    let mut cfg = common::test_config(&dir);
    cfg.store.url = db.url.clone();
    let server = media_server::app::start(cfg.clone()).await.unwrap();
    let (row, key) = server
        .store
        .create_stream(media_server::store::NewStream::named(
            "live",
            "pg",
            "On PostgreSQL",
        ))
        .await
        .unwrap();
    server.shutdown().await;
    // The rows are in PostgreSQL, not in a file of the data directory.
    assert_eq!(
        pg_query(
            &db.url,
            &format!("SELECT title FROM streams WHERE id = '{}'", row.id)
        ),
        vec!["On PostgreSQL".to_owned()]
    );
    assert!(!dir.join("data/media-server.db").exists());
    let server = media_server::app::start(cfg).await.unwrap();
    let found = server.store.find_stream_by_key("live", &key).await.unwrap();
    assert_eq!(found.map(|r| r.id), Some(row.id));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_turns_api_calls_into_503_while_live_media_goes_on() {
    use common::services::Cuttable;
    let db = TestDb::create("outage");
    let mut url = url::Url::parse(&db.url).unwrap();
    let upstream: std::net::SocketAddr =
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
            .parse()
            .unwrap();
    let proxy = Cuttable::start(upstream).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let ts = common::start_with("pg-outage", |c| {
        c.store.url = url.to_string();
        c.store.connect_timeout_ms = 1000;
    })
    .await;
    let http = ts.http("");
    let (id, key) = ts.create_stream("outage").await;
    let tags = common::read_flv(common::FIXTURE);
    let mut publisher = common::RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    publisher.send_tags(&tags, false).await;
    let playlist = ts.http(&format!("/hls/{id}/media.m3u8"));
    common::wait_for_200(&format!("{playlist}?_HLS_msn=0"), 10).await;
    // PostgreSQL goes away.
    proxy.cut();
    let (status, body) = common::api(
        &http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({"title": "during", "name": "during", "app": "live"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // The publisher, authenticated before, keeps publishing; viewers keep getting media.
    let before = common::parse_media_playlist(
        &common::wait_for_200(&format!("{playlist}?_HLS_msn=0"), 5).await,
    );
    let later: Vec<_> = tags
        .iter()
        .map(|t| common::FlvTag {
            timestamp: t.timestamp + 20_000,
            ..t.clone()
        })
        .collect();
    publisher.send_tags(&later, false).await;
    let next = before.media_sequence + before.segments.len() as u64;
    let after = common::parse_media_playlist(
        &common::wait_for_200(&format!("{playlist}?_HLS_msn={next}"), 10).await,
    );
    assert!(
        after.segments.len() + after.media_sequence as usize
            > before.segments.len() + before.media_sequence as usize,
        "no new segment while PostgreSQL was away"
    );
    // PostgreSQL comes back: writes work again without a restart.
    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, body) = common::api(
            &http,
            reqwest::Method::POST,
            "/api/v1/streams",
            Some(serde_json::json!({"title": "after", "name": "after", "app": "live"})),
        )
        .await;
        if status == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    publisher.finish().await;
}
