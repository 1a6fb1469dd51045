//! Router-level tests of the control API (`oneshot`, no socket): every endpoint, status code
//! and scope rule, the error shape, rate limits, pagination under concurrent creation, and
//! the OpenAPI document matching the routes.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use media_server::api::{router, ApiState};
use media_server::config::Config;
use media_server::events::{Event, EventBus};
use media_server::hub::Hub;
use media_server::play_token::PlaySigner;
use media_server::store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    router: Router,
    store: Store,
    admin: String,
    events: tokio::sync::mpsc::Receiver<Event>,
    _db: Option<common::services::TestDb>,
}

async fn api_with(edit: impl FnOnce(&mut Config)) -> Api {
    let dir = common::temp_dir("routes");
    let mut config = Config::default();
    config.server.data_dir = dir;
    let db = common::test_store_is_postgres().then(|| common::services::TestDb::create("routes"));
    if let Some(db) = &db {
        config.store.url = db.url.clone();
    }
    let store = Store::open_config(&config).await.unwrap();
    let (_, admin) = store.create_token("admin", &["*"], None).await.unwrap();
    edit(&mut config);
    let (events, rx) = EventBus::new();
    let state = ApiState::new(
        Arc::new(config),
        store.clone(),
        Hub::default(),
        events,
        PlaySigner::new(b"test-key"),
    );
    Api {
        router: router(state),
        store,
        admin,
        events: rx,
        _db: db,
    }
}

async fn api() -> Api {
    api_with(|_| {}).await
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn admin(&self, method: Method, uri: &str, body: Option<Value>) -> Resp {
        let token = self.admin.clone();
        self.call(method, uri, Some(&token), body).await
    }

    async fn token_with(&self, scopes: &[&str]) -> String {
        self.store.create_token("t", scopes, None).await.unwrap().1
    }
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(r.body["error"]["status"], status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn create_get_patch_delete_a_stream() {
    let mut api = api().await;
    let r = api
        .admin(
            Method::POST,
            "/api/v1/streams",
            Some(json!({"title": "Morning show", "category": "talk", "privacy": "private", "record": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let key = r.body["stream_key"].as_str().unwrap();
    assert!(id.starts_with("str_") && key.starts_with("sk_"));
    for field in ["rtmp_url", "whip_url", "ws_url", "hls_url"] {
        assert!(
            r.body[field].as_str().is_some_and(|u| u.contains("://")),
            "{field}"
        );
    }
    assert_eq!(r.body["state"], "idle");
    assert_eq!(r.body["privacy"], "private");
    assert_eq!(r.body["viewer_count"], 0);
    assert_eq!(r.body["peak_viewer_count"], 0);
    assert_eq!(r.body["live"]["is_recording"], false);
    let created = api.events.try_recv().unwrap();
    assert_eq!(created.kind, "stream.created");

    let r = api
        .admin(Method::GET, &format!("/api/v1/streams/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.get("stream_key").is_none(),
        "the key is shown once only"
    );
    assert!(!r.body.to_string().contains(key));

    let r = api
        .admin(
            Method::PATCH,
            &format!("/api/v1/streams/{id}"),
            Some(json!({"title": "Evening show", "category": null, "scheduled_at": "2999-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["title"], "Evening show");
    assert_eq!(r.body["category"], Value::Null);
    assert_eq!(r.body["state"], "scheduled");

    let r = api
        .admin(Method::POST, &format!("/api/v1/streams/{id}/key"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let new_key = r.body["stream_key"].as_str().unwrap();
    assert_ne!(new_key, key);
    assert!(api
        .store
        .find_stream_by_key("live", key)
        .await
        .unwrap()
        .is_none());
    assert!(api
        .store
        .find_stream_by_key("live", new_key)
        .await
        .unwrap()
        .is_some());

    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/streams/{id}/play-token"),
            Some(json!({"ttl_seconds": 60})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["hls_url"].as_str().unwrap().contains("?token="));
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/streams/{id}/play-token"),
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "an empty body takes the default lifetime"
    );
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/streams/{id}/play-token"),
            Some(json!({"ttl_seconds": 0})),
        )
        .await;
    assert_error(&r, 422, "validation_failed");

    let r = api
        .admin(Method::POST, &format!("/api/v1/streams/{id}/stop"), None)
        .await;
    assert_error(&r, 409, "conflict");
    let r = api
        .admin(Method::DELETE, &format!("/api/v1/streams/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .admin(Method::GET, &format!("/api/v1/streams/{id}"), None)
        .await;
    assert_error(&r, 404, "not_found");
    let r = api
        .admin(Method::DELETE, &format!("/api/v1/streams/{id}"), None)
        .await;
    assert_error(&r, 404, "not_found");
    for path in ["stop", "key", "play-token"] {
        let r = api
            .admin(Method::POST, &format!("/api/v1/streams/{id}/{path}"), None)
            .await;
        assert_error(&r, 404, "not_found");
    }
}

#[tokio::test]
async fn invalid_bodies_get_400_413_415_422_naming_fields() {
    let api = api_with(|c| c.api.max_body_bytes = 3000).await;
    let r = api
        .admin(
            Method::POST,
            "/api/v1/streams",
            Some(json!({"title": "x".repeat(121), "description": "d".repeat(2001), "category": "Bad Slug", "scheduled_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_error(&r, 422, "validation_failed");
    let fields: Vec<&str> = r.body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec!["title", "description", "category", "scheduled_at"]
    );
    let r = api
        .admin(
            Method::POST,
            "/api/v1/streams",
            Some(json!({"description": "no title"})),
        )
        .await;
    assert_error(&r, 422, "validation_failed");
    assert_eq!(r.body["error"]["details"][0]["field"], "title");
    let r = api
        .admin(
            Method::POST,
            "/api/v1/streams",
            Some(json!({"title": "t", "privacy": "secret"})),
        )
        .await;
    assert_error(&r, 422, "validation_failed");
    let r = api
        .admin(
            Method::POST,
            "/api/v1/streams",
            Some(json!({"title": "t", "colour": "red"})),
        )
        .await;
    assert_error(&r, 422, "validation_failed");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("colour"));

    let malformed = Request::post("/api/v1/streams")
        .header("authorization", format!("Bearer {}", api.admin))
        .header("content-type", "application/json")
        .body(Body::from("{\"title\": "))
        .unwrap();
    assert_error(&api.send(malformed).await, 400, "bad_request");
    let no_type = Request::post("/api/v1/streams")
        .header("authorization", format!("Bearer {}", api.admin))
        .body(Body::from("{\"title\": \"t\"}"))
        .unwrap();
    assert_error(&api.send(no_type).await, 415, "unsupported_media_type");
    let big = Request::post("/api/v1/streams")
        .header("authorization", format!("Bearer {}", api.admin))
        .header("content-type", "application/json")
        .body(Body::from(format!(
            "{{\"title\": \"{}\"}}",
            "x".repeat(4096)
        )))
        .unwrap();
    assert_error(&api.send(big).await, 413, "payload_too_large");
    let r = api
        .admin(Method::GET, "/api/v1/streams?limit=0", None)
        .await;
    assert_error(&r, 422, "validation_failed");
    let r = api
        .admin(Method::GET, "/api/v1/streams?limit=abc", None)
        .await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.body);
    let r = api
        .admin(Method::GET, "/api/v1/streams?status=sleeping", None)
        .await;
    assert_error(&r, 422, "validation_failed");
    let r = api
        .admin(Method::GET, "/api/v1/streams?cursor=nope", None)
        .await;
    assert_error(&r, 400, "bad_request");
    let r = api.admin(Method::GET, "/api/v1/nowhere", None).await;
    assert_error(&r, 404, "not_found");
    let r = api
        .admin(Method::PUT, "/api/v1/streams", Some(json!({})))
        .await;
    assert_error(&r, 405, "method_not_allowed");
}

#[tokio::test]
async fn scopes_and_authentication() {
    let api = api().await;
    let r = api.call(Method::GET, "/api/v1/streams", None, None).await;
    assert_error(&r, 401, "unauthorized");
    let r = api
        .call(Method::GET, "/api/v1/streams", Some("ms_bogus"), None)
        .await;
    assert_error(&r, 401, "unauthorized");
    let reader = api.token_with(&["streams:read"]).await;
    let r = api
        .call(Method::GET, "/api/v1/streams", Some(&reader), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let forbidden: [(Method, &str, Option<Value>); 9] = [
        (Method::POST, "/api/v1/streams", Some(json!({"title": "t"}))),
        (Method::PATCH, "/api/v1/streams/str_x", Some(json!({}))),
        (Method::DELETE, "/api/v1/streams/str_x", None),
        (Method::POST, "/api/v1/streams/str_x/stop", None),
        (Method::POST, "/api/v1/streams/str_x/key", None),
        (Method::GET, "/api/v1/tokens", None),
        (Method::GET, "/api/v1/webhooks", None),
        (Method::GET, "/api/v1/stats", None),
        (Method::GET, "/api/v1/nodes", None),
    ];
    for (m, uri, body) in forbidden {
        let r = api.call(m.clone(), uri, Some(&reader), body).await;
        assert_error(&r, 403, "forbidden");
    }
    // A single server lists itself as the one node.
    let r = api.admin(Method::GET, "/api/v1/nodes", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["cluster"], false, "{}", r.body);
    let nodes = r.body["data"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{}", r.body);
    assert_eq!(nodes[0]["this_node"], true);
    assert!(nodes[0]["version"].is_string() && nodes[0]["streams"].is_u64());
    // tokens:admin manages tokens; secrets are shown once and stored hashed.
    let r = api
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "ci", "scopes": ["stats:read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (tid, secret) = (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    );
    let r = api
        .call(Method::GET, "/api/v1/stats", Some(&secret), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["uptime_seconds"].is_u64());
    assert_eq!(r.body["live_streams"], 0);
    assert!(r.body["cluster"].is_null(), "a single server: {}", r.body);
    let r = api.admin(Method::GET, "/api/v1/tokens", None).await;
    let listed = r.body["data"].as_array().unwrap();
    assert!(listed
        .iter()
        .any(|t| t["id"] == tid && t["last_used_at"].is_string()));
    assert!(!r.body.to_string().contains(&secret));
    let r = api
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "x", "scopes": ["root"]})),
        )
        .await;
    assert_error(&r, 422, "validation_failed");
    let r = api
        .admin(Method::DELETE, &format!("/api/v1/tokens/{tid}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .call(Method::GET, "/api/v1/stats", Some(&secret), None)
        .await;
    assert_error(&r, 401, "unauthorized");
    let r = api
        .admin(Method::DELETE, &format!("/api/v1/tokens/{tid}"), None)
        .await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test]
async fn rate_limits_per_token_and_per_ip_with_headers() {
    let api = api_with(|c| {
        c.api.rate_limit_per_token = 5;
        c.api.rate_limit_per_ip = 3;
    })
    .await;
    for i in 0..5u32 {
        let r = api.admin(Method::GET, "/api/v1/streams", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-ratelimit-limit"], "5");
        assert_eq!(
            r.headers["x-ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
        assert!(
            r.headers["x-ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 1_700_000_000
        );
        assert!(r.headers.contains_key("x-request-id"));
    }
    let r = api.admin(Method::GET, "/api/v1/streams", None).await;
    assert_error(&r, 429, "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    // Unauthenticated callers are counted per IP, and errors carry the headers too.
    for _ in 0..3 {
        let r = api.call(Method::GET, "/api/v1/streams", None, None).await;
        assert_error(&r, 401, "unauthorized");
        assert_eq!(r.headers["x-ratelimit-limit"], "3");
    }
    let r = api.call(Method::GET, "/api/v1/streams", None, None).await;
    assert_error(&r, 429, "rate_limited");
}

#[tokio::test]
async fn webhooks_crud_masks_the_secret() {
    let api = api().await;
    let r = api
        .admin(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": "https://hook-user:pw-4c3b2a@hooks.example.com/hook?sig=s3cr3t", "events": ["stream.started", "stream.ended"], "secret": "0123456789abcdef-secret"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["secret"], "0123456789abcdef-secret");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = api
        .admin(Method::GET, &format!("/api/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(r.body["secret_hint"], "…cret");
    assert!(!r.body.to_string().contains("0123456789abcdef"));
    // User info and query values of the URL are masked in every view.
    assert_eq!(r.body["url"], "https://***@hooks.example.com/hook?sig=***");
    assert!(!r.body.to_string().contains("pw-4c3b2a") && !r.body.to_string().contains("s3cr3t"));
    let r = api.admin(Method::GET, "/api/v1/webhooks", None).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    let r = api
        .admin(
            Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["data"], json!([]));
    for bad in [
        json!({"url": "ftp://x", "events": ["stream.started"]}),
        json!({"url": "http://x", "events": []}),
        json!({"url": "http://x", "events": ["stream.exploded"]}),
        json!({"url": "http://x", "events": ["*"], "secret": "short"}),
    ] {
        let r = api.admin(Method::POST, "/api/v1/webhooks", Some(bad)).await;
        assert_error(&r, 422, "validation_failed");
    }
    let r = api
        .admin(Method::DELETE, &format!("/api/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .admin(Method::GET, &format!("/api/v1/webhooks/{id}"), None)
        .await;
    assert_error(&r, 404, "not_found");
    let r = api
        .admin(
            Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries"),
            None,
        )
        .await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test]
async fn filters_select_streams() {
    let api = api().await;
    for (title, category) in [("a", "music"), ("b", "music"), ("c", "talk")] {
        api.admin(
            Method::POST,
            "/api/v1/streams",
            Some(json!({"title": title, "category": category})),
        )
        .await;
    }
    api.admin(
        Method::POST,
        "/api/v1/streams",
        Some(json!({"title": "later", "scheduled_at": "2999-01-01T00:00:00Z", "app": "events"})),
    )
    .await;
    let count = |r: Resp| r.body["data"].as_array().unwrap().len();
    assert_eq!(
        count(
            api.admin(Method::GET, "/api/v1/streams?category=music", None)
                .await
        ),
        2
    );
    assert_eq!(
        count(
            api.admin(Method::GET, "/api/v1/streams?status=scheduled", None)
                .await
        ),
        1
    );
    assert_eq!(
        count(
            api.admin(Method::GET, "/api/v1/streams?status=idle", None)
                .await
        ),
        3
    );
    assert_eq!(
        count(
            api.admin(Method::GET, "/api/v1/streams?app=events", None)
                .await
        ),
        1
    );
    assert_eq!(
        count(
            api.admin(Method::GET, "/api/v1/streams?status=live", None)
                .await
        ),
        0
    );
    assert_eq!(
        count(
            api.admin(Method::GET, "/api/v1/streams?protocol=rtmp", None)
                .await
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_lists_every_stream_once_while_streams_are_created() {
    let api = Arc::new(api().await);
    for i in 0..250 {
        let r = api
            .admin(
                Method::POST,
                "/api/v1/streams",
                Some(json!({"title": format!("s{i}")})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let mut seen: Vec<String> = vec![];
    let mut cursor: Option<String> = None;
    let mut extra = 0;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/streams?limit=37&cursor={c}"),
            None => "/api/v1/streams?limit=37".to_owned(),
        };
        let r = api.admin(Method::GET, &uri, None).await;
        assert_eq!(r.status, StatusCode::OK);
        let page = r.body["data"].as_array().unwrap();
        assert!(page.len() <= 37);
        seen.extend(page.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        // Someone creates a stream between pages.
        if extra < 3 {
            api.admin(
                Method::POST,
                "/api/v1/streams",
                Some(json!({"title": format!("late{extra}")})),
            )
            .await;
            extra += 1;
        }
        if !r.body["pagination"]["has_more"].as_bool().unwrap() {
            break;
        }
        cursor = r.body["pagination"]["next_cursor"]
            .as_str()
            .map(str::to_owned);
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no stream twice");
    assert_eq!(
        seen.len(),
        253,
        "the 250 and the three created during the listing"
    );
    // Stable order: the first 250 in creation order.
    let all = api
        .store
        .list_streams(300, None, Default::default())
        .await
        .unwrap();
    let ordered: Vec<String> = all.rows.into_iter().map(|r| r.id).collect();
    assert_eq!(seen, ordered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_parallel_creates_give_distinct_ids_and_keys() {
    let api = Arc::new(api().await);
    let mut tasks = vec![];
    for i in 0..100 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let r = api
                .admin(
                    Method::POST,
                    "/api/v1/streams",
                    Some(json!({"title": format!("p{i}")})),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            (
                r.body["id"].as_str().unwrap().to_owned(),
                r.body["stream_key"].as_str().unwrap().to_owned(),
            )
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        let (id, key) = t.await.unwrap();
        ids.insert(id);
        keys.insert(key);
    }
    assert_eq!((ids.len(), keys.len()), (100, 100));
}

/// Every route the router serves is in the OpenAPI document, and every documented
/// operation is served (never 404/405 from the router itself).
#[tokio::test]
async fn openapi_documents_every_route() {
    let api = api().await;
    let r = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected = vec![
        "GET /api/v1/streams",
        "POST /api/v1/streams",
        "GET /api/v1/streams/{id}",
        "PATCH /api/v1/streams/{id}",
        "DELETE /api/v1/streams/{id}",
        "POST /api/v1/streams/{id}/stop",
        "POST /api/v1/streams/{id}/key",
        "POST /api/v1/streams/{id}/play-token",
        "GET /api/v1/tokens",
        "POST /api/v1/tokens",
        "DELETE /api/v1/tokens/{id}",
        "GET /api/v1/webhooks",
        "POST /api/v1/webhooks",
        "GET /api/v1/webhooks/{id}",
        "DELETE /api/v1/webhooks/{id}",
        "GET /api/v1/webhooks/{id}/deliveries",
        "GET /api/v1/stats",
        "GET /api/v1/nodes",
        "GET /api/v1/recordings",
        "GET /api/v1/recordings/{id}",
        "DELETE /api/v1/recordings/{id}",
        "GET /api/v1/recordings/{id}/download",
        "POST /api/v1/streams/{id}/recording/start",
        "POST /api/v1/streams/{id}/recording/stop",
        "GET /api/v1/streams/{id}/health",
        "GET /api/v1/streams/{id}/viewers",
        "GET /api/v1/streams/{id}/restreams",
        "POST /api/v1/streams/{id}/restreams",
        "GET /api/v1/streams/{id}/restreams/{rid}",
        "PATCH /api/v1/streams/{id}/restreams/{rid}",
        "DELETE /api/v1/streams/{id}/restreams/{rid}",
        "POST /api/v1/streams/{id}/play-tokens/revoke",
    ];
    expected.sort();
    assert_eq!(documented, expected);
    for op in &documented {
        let (method, path) = op.split_once(' ').unwrap();
        let uri = path.replace("{id}", "none").replace("{rid}", "none");
        let r = api
            .admin(
                method.parse().unwrap(),
                &uri,
                (method == "POST" || method == "PATCH").then(|| json!({})),
            )
            .await;
        let code = r.body["error"]["code"].as_str().unwrap_or("");
        assert!(
            r.status != StatusCode::METHOD_NOT_ALLOWED
                && !(r.status == StatusCode::NOT_FOUND
                    && code == "not_found"
                    && r.body["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("no route")),
            "{op} is documented but not served: {} {}",
            r.status,
            r.body
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn cors_follows_the_configuration() {
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/v1/streams")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let any = api().await;
    let r = any.send(preflight("https://dashboard.example")).await;
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let listed = api_with(|c| c.api.cors_allowed_origins = vec!["https://ok.example".into()]).await;
    let r = listed.send(preflight("https://ok.example")).await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://ok.example"
    );
    let r = listed.send(preflight("https://evil.example")).await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let none = api_with(|c| c.api.cors_allowed_origins = vec![]).await;
    let r = none.send(preflight("https://dashboard.example")).await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}
