//! Wires everything together: config → store → hub → HLS registry → HTTP and RTMP listeners,
//! plus the first-start bootstrap and graceful shutdown. The only module that knows all parts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::egress::hls::{self, HlsRegistry};
use crate::egress::PlaybackGate;
use crate::error::HttpError;
use crate::events::EventBus;
use crate::hub::{Hub, HubEvent};
use crate::net::rtmp::{self, RtmpContext};
use crate::play_token::{PlaySigner, PlayTokenError};
use crate::store::{Privacy, Store, StoreError, StreamState};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Cluster mode is configured and Redis cannot be reached.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Object storage for recordings is configured but unusable.
    #[error("{0}")]
    Storage(String),
    /// The RTMPS certificate or key cannot be used.
    #[error("{0}")]
    Tls(String),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// What the first start created (shown once).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The admin API token.
    pub admin_token: String,
    /// Id of the `demo` stream.
    pub demo_stream_id: String,
    /// Its stream key.
    pub demo_stream_key: String,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Where HTTP listens (resolved, so port 0 works).
    pub http_addr: SocketAddr,
    /// Where RTMP listens.
    pub rtmp_addr: SocketAddr,
    /// Where RTMPS listens, when `rtmp.tls_listen` is set.
    pub rtmps_addr: Option<SocketAddr>,
    /// Set on the first start only.
    pub bootstrap: Option<Bootstrap>,
    /// The database handle.
    pub store: Store,
    /// The live streams.
    pub hub: Hub,
    /// WHIP/WHEP sessions.
    pub webrtc: Arc<crate::net::webrtc::WebRtc>,
    /// Recorders.
    pub recorders: Arc<crate::egress::record::Recorders>,
    /// Restream pushers.
    pub restreamer: Arc<crate::egress::restream::Restreamer>,
    /// This node in the cluster (cluster mode only).
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
    config: Arc<Config>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts every part of the server; returns once the listeners are bound.
pub async fn start(config: Config) -> Result<Server, StartError> {
    let config = Arc::new(config);
    restrict_files(
        &config.server.data_dir,
        config.server.umask_bits().unwrap_or(0o077),
    );
    let store = Store::open_config(&config).await?;
    let node_name = config.cluster.node_name();
    // In a cluster the other nodes' live streams are theirs to end.
    let stale = store
        .end_stale_live_streams(config.cluster.enabled.then_some(node_name.as_str()))
        .await?;
    if stale > 0 {
        tracing::info!(
            count = stale,
            "marked streams left live by an unclean stop as ended"
        );
    }
    let remasked = store.remask_restreams().await?;
    if remasked > 0 {
        tracing::info!(count = remasked, "restream URLs re-masked");
    }
    let bootstrap = bootstrap(&store, &config).await?;
    // In a cluster every node verifies the tokens any node minted: the key comes from the
    // shared cluster secret (no first-start race between nodes over a stored key).
    let signer = if config.cluster.enabled {
        PlaySigner::new(&crate::store::cluster_derived_key(
            &config.cluster.secret,
            "play-token",
        ))
    } else {
        PlaySigner::new(&play_token_key(&store).await?)
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Validated with the configuration.
    let exempt = crate::net::limits::parse_nets(&config.security.connection_limit_exempt)
        .unwrap_or_default();
    let http_per_ip = crate::net::limits::PerIpLimiter::new(
        config.http.max_connections_per_ip as usize,
        exempt.clone(),
    );
    let rtmp_per_ip = crate::net::limits::PerIpLimiter::new(
        config.rtmp.max_connections_per_ip as usize,
        exempt.clone(),
    );
    let outbound = Arc::new(crate::outbound::OutboundPolicy::for_config(&config));
    let http = bind(config.http.listen).await?;
    let rtmp_listener = bind(config.rtmp.listen).await?;
    let http_addr = http.local_addr().map_err(|source| StartError::Bind {
        addr: config.http.listen,
        source,
    })?;
    let rtmp_addr = rtmp_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.rtmp.listen,
            source,
        })?;
    // RTMPS: the certificate is checked before anything listens, so a wrong file fails the
    // start with one line.
    let rtmps = match config.rtmp.tls_addr() {
        Some(addr) => {
            let cert = crate::net::tls::ReloadingCert::load(
                &config.rtmp.tls_cert,
                &config.rtmp.tls_key,
                "rtmp.tls_cert",
            )
            .map_err(StartError::Tls)?;
            let tls_config = cert.server_config().map_err(StartError::Tls)?;
            let listener = bind(addr).await?;
            let bound = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            Some((
                listener,
                bound,
                cert,
                tokio_rustls::TlsAcceptor::from(tls_config),
            ))
        }
        None => None,
    };
    let rtmps_addr = rtmps.as_ref().map(|r| r.1);
    let hub = Hub::default();
    let cluster = if config.cluster.enabled {
        // An advertised port 0 is the port HTTP was bound to (tests, ephemeral ports).
        let mut cluster_config = config.cluster.clone();
        if let Ok(mut url) = url::Url::parse(&cluster_config.advertise_url) {
            if url.port() == Some(0) && url.set_port(Some(http_addr.port())).is_ok() {
                cluster_config.advertise_url = url.to_string();
            }
        }
        let node = crate::cluster::ClusterNode::join(
            &cluster_config,
            store.clone(),
            hub.clone(),
            shutdown_rx.clone(),
        )
        .await?;
        tracing::info!(node = %node.id(), "joined the cluster");
        Some(node)
    } else {
        None
    };
    let (events, events_rx) = EventBus::new();
    let external = crate::extauth::ExternalAuth::new(&config.external_auth);
    let gate = Arc::new(StoreGate {
        store: store.clone(),
        signer: signer.clone(),
        external: external.clone(),
        cache: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let storage =
        crate::egress::storage::ObjectStorage::from_config(&config.recording.storage, |var| {
            std::env::var(var).ok()
        })
        .map_err(StartError::Storage)?;
    let recorders = crate::egress::record::Recorders::new(
        store.clone(),
        config.recording.clone(),
        &config.server.data_dir,
        events.clone(),
        (node_name.clone(), config.cluster.enabled),
        storage,
    );
    let recovered = recorders.recover().await;
    if recovered > 0 {
        tracing::info!(
            count = recovered,
            "recordings left open by an unclean stop were recovered"
        );
    }
    let transcoders = crate::egress::transcode::AudioTranscoders::new(
        config.transcode.audio,
        config.transcode.quality(),
    );
    let restreamer = crate::egress::restream::Restreamer::new(
        transcoders.clone(),
        store.clone(),
        config.restream.clone(),
        events.clone(),
        hub.clone(),
        outbound.clone(),
        shutdown_rx.clone(),
    );
    let hls = HlsRegistry::new(
        config.hls.clone(),
        shutdown_rx.clone(),
        hub.clone(),
        gate.clone(),
        (config.transcode.audio && config.transcode.hls_aac).then(|| config.transcode.quality()),
    );
    let mut tasks = vec![
        wire_hub(
            &hub,
            &store,
            (&hls, &recorders, &restreamer),
            &events,
            &node_name,
            shutdown_rx.clone(),
        ),
        recorders.spawn_retention(shutdown_rx.clone()),
        spawn_stats_monitor(
            hub.clone(),
            hls.clone(),
            events.clone(),
            config.stats.health_interval_ms,
            shutdown_rx.clone(),
        ),
        crate::webhooks::spawn(
            store.clone(),
            events_rx,
            config.webhooks.clone(),
            outbound.clone(),
            node_name.clone(),
            shutdown_rx.clone(),
        ),
    ];
    if let Some(node) = &cluster {
        node.set_hls(hls.clone());
        node.set_outputs(recorders.clone(), restreamer.clone());
        tasks.extend(node.spawn(events.clone()));
    }

    // With WebRTC off the media port is a loopback one nobody is told about.
    let mut webrtc_config = config.webrtc.clone();
    if !webrtc_config.enabled {
        webrtc_config.udp_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        webrtc_config.tcp_listen.clear();
    }
    let webrtc_udp = webrtc_config.udp_listen;
    let webrtc =
        crate::net::webrtc::WebRtc::start(webrtc_config, exempt.clone(), shutdown_rx.clone())
            .await
            .map_err(|source| StartError::Bind {
                addr: webrtc_udp,
                source,
            })?;
    let api_state = ApiState::new(
        config.clone(),
        store.clone(),
        hub.clone(),
        events.clone(),
        signer,
    )
    .with_recorders(recorders.clone())
    .with_restreamer(restreamer.clone())
    .with_hls(hls.clone())
    .with_cluster(cluster.clone());
    let webrtc_routes = if config.webrtc.enabled {
        crate::net::webrtc_http::router(crate::net::webrtc_http::WebRtcContext {
            webrtc: webrtc.clone(),
            store: store.clone(),
            hub: hub.clone(),
            gate: gate.clone(),
            shutdown: shutdown_rx.clone(),
            cors_origins: config.api.cors_allowed_origins.clone(),
            external: external.clone(),
            transcoders: transcoders.clone(),
        })
    } else {
        Router::new()
    };
    // Players on other origins (hls.js, <img>) need CORS on the media routes too.
    let cors = api::cors(&config.api.cors_allowed_origins);
    let media_limit = crate::api::rate_limit::MediaLimit {
        limiter: Arc::new(crate::api::rate_limit::RateLimiter::default()),
        per_minute: config.api.media_rate_limit_per_ip,
        exempt: Arc::new(exempt.clone()),
    };
    let limited = |r: Router| {
        r.layer(axum::middleware::from_fn_with_state(
            media_limit.clone(),
            crate::api::rate_limit::media_middleware,
        ))
    };
    // HLS sits outside the request timeout: every wait in it has its own deadline (blocking
    // reloads, the first segment), and a timer per request is a real cost on the hot path of
    // thousands of viewers each fetching a playlist and a part five times a second.
    let hls_routes = match cors.clone() {
        Some(cors) => hls::http::router(hls.clone()).layer(cors),
        None => hls::http::router(hls.clone()),
    };
    let hls_routes = limited(hls_routes);
    let webrtc_routes = limited(webrtc_routes);
    let media_routes = Router::new()
        .merge(crate::egress::mjpeg::router(
            crate::egress::mjpeg::MjpegContext {
                hub: hub.clone(),
                gate: gate.clone(),
            },
        ))
        .merge(crate::egress::vod::router(crate::egress::vod::VodContext {
            store: store.clone(),
            recorders: recorders.clone(),
            gate: gate.clone(),
        }));
    let media_routes = match cors {
        Some(cors) => media_routes.layer(cors),
        None => media_routes,
    };
    let media_routes = limited(media_routes);
    let router = Router::new()
        .merge(media_routes)
        .merge(crate::ingest::camera::router(crate::ingest::camera::CameraContext {
            config: config.camera.clone(),
            store: store.clone(),
            hub: hub.clone(),
            shutdown: shutdown_rx.clone(),
            keyframe_interval_ms: config.hls.segment_target_ms,
        }))
        .merge(api::router(api_state))
        .merge(match &cluster {
            Some(node) => crate::cluster::relay::router(node.clone(), hub.clone()),
            None => Router::new(),
        })
        .merge(webrtc_routes)
        .merge(crate::web::router(crate::web::WebContext {
            config: config.clone(),
            store: store.clone(),
            hub: hub.clone(),
            gate: gate.clone(),
        }))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.http.request_timeout_ms),
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
            }),
        )
        // HLS is the hot path (every viewer several requests a second): no span per request
        // (its handlers log what matters themselves).
        .merge(hls_routes);
    let fast_hls: Arc<dyn crate::net::http::FastRoute> = Arc::new(hls::http::FastHls::new(
        hls.clone(),
        media_limit.clone(),
        &config.api.cors_allowed_origins,
    ));
    tasks.push(tokio::spawn(crate::net::http::serve(
        http,
        router,
        Some(fast_hls),
        crate::net::http::HttpLimits {
            max_connections: config.http.max_connections as usize,
            header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.http.idle_timeout_ms),
            per_ip: http_per_ip.clone(),
        },
        shutdown_rx.clone(),
    )));
    let ctx = RtmpContext {
        config: config.rtmp.clone(),
        hub: hub.clone(),
        store: store.clone(),
        gate,
        per_ip: rtmp_per_ip,
        external: external.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(
            config.rtmp.max_connections as usize,
        )),
    };
    if let Some((listener, bound, cert, acceptor)) = rtmps {
        cert.watch(shutdown_rx.clone());
        tracing::info!(rtmps_addr = %bound, "rtmps listening");
        tasks.push(tokio::spawn(rtmp::serve_tls(
            listener,
            ctx.clone(),
            acceptor,
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(rtmp::serve(rtmp_listener, ctx, shutdown_rx)));
    tracing::info!(%http_addr, %rtmp_addr, "media-server listening");
    Ok(Server {
        http_addr,
        rtmp_addr,
        rtmps_addr,
        bootstrap,
        store,
        hub,
        webrtc,
        recorders,
        restreamer,
        cluster,
        config,
        shutdown,
        tasks,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Hub lifecycle → HLS segmenters (started synchronously, so no frame is missed) and stored
/// stream state (through one ordered queue, so live/ended never swap).
fn wire_hub(
    hub: &Hub,
    store: &Store,
    (hls, recorders, restreamer): (
        &Arc<HlsRegistry>,
        &Arc<crate::egress::record::Recorders>,
        &Arc<crate::egress::restream::Restreamer>,
    ),
    events: &EventBus,
    node: &str,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    type Update = (String, StreamState, &'static str, u64);
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let hls = hls.clone();
    let events = events.clone();
    let recorders = recorders.clone();
    let restreamer = restreamer.clone();
    let record_store = store.clone();
    hub.on_event(move |event| {
        let (stream, state, kind) = match event {
            // A relay of a stream owned by another node: its viewers here get HLS; the owner
            // stores its state, records, restreams and sends the webhooks.
            HubEvent::Published(s) if s.is_relay() => {
                hls.on_published(s);
                return;
            }
            HubEvent::Unpublished(s) if s.is_relay() => return,
            HubEvent::Published(s) => {
                hls.on_published(s);
                // Streams with `record` set are recorded whenever they go live. The recorder's
                // subscription is taken now, before the setting is read: a publisher that is
                // done before the lookup returns (the GOP cache goes with the stream) is still
                // recorded whole. Not recorded: the subscription is dropped.
                let (recorders, store, live) = (recorders.clone(), record_store.clone(), s.clone());
                let sub = s.subscribe_internal();
                tokio::spawn(async move {
                    if let Ok(Some(row)) = store.get_stream(&live.id).await {
                        if row.record {
                            recorders.start_with(live, sub);
                        }
                    }
                });
                // Restream destinations follow the stream.
                restreamer.on_published(s.clone());
                (s, StreamState::Live, "stream.started")
            }
            HubEvent::Unpublished(s) => {
                restreamer.on_unpublished(&s.id);
                (s, StreamState::Ended, "stream.ended")
            }
        };
        events.publish(
            kind,
            serde_json::json!({ "stream": { "id": stream.id, "protocol": stream.protocol } }),
        );
        if tx
            .try_send((stream.id.clone(), state, stream.protocol, stream.epoch()))
            .is_err()
        {
            tracing::error!(stream = %stream.id, "state update queue full; state not stored");
        }
    });
    let store = store.clone();
    let node = node.to_owned();
    tokio::spawn(async move {
        loop {
            let update = tokio::select! {
                u = rx.recv() => u,
                _ = crate::shutdown::requested(&mut shutdown) => {
                    // Publishers end as their connections close; give their final state
                    // updates a moment to arrive, then store what is queued.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    rx.close();
                    while let Some((id, state, protocol, epoch)) = rx.recv().await {
                        store_state(&store, &id, state, protocol, (&node, epoch)).await;
                    }
                    return;
                }
            };
            let Some((id, state, protocol, epoch)) = update else {
                return;
            };
            store_state(&store, &id, state, protocol, (&node, epoch)).await;
        }
    })
}

/// Once a second: samples traffic (1 s / 10 s rates), expires HLS sessions, evaluates every
/// live stream's health; every `health_interval_ms` the score goes into the stream's history
/// and through its alarm, whose transitions become `health.degraded` / `health.recovered`.
fn spawn_stats_monitor(
    hub: Hub,
    hls: Arc<HlsRegistry>,
    events: EventBus,
    health_interval_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = (health_interval_ms / 1000).max(1);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
            n += 1;
            let now = std::time::Instant::now();
            hub.sample_traffic(now);
            hls.sessions.expire(now);
            for live in hub.live_streams() {
                let (health, transition) =
                    live.tick(now, std::time::SystemTime::now(), n % every == 0);
                let (Some(t), Some(h)) = (transition, health) else {
                    continue;
                };
                // A relayed stream's health is its owner's to report.
                if live.is_relay() {
                    continue;
                }
                let kind = match t {
                    crate::hub::health::Transition::Degraded => "health.degraded",
                    crate::hub::health::Transition::Recovered => "health.recovered",
                };
                tracing::warn!(stream = %live.id, score = h.score, grade = h.grade,
                    worst = h.components.first().map_or("", |c| c.name), "{kind}");
                events.publish(
                    kind,
                    serde_json::json!({
                        "stream": { "id": live.id, "protocol": live.protocol },
                        "health": { "score": h.score, "grade": h.grade, "components": h.components },
                    }),
                );
            }
        }
    })
}

async fn store_state(
    store: &Store,
    id: &str,
    state: StreamState,
    protocol: &str,
    owner: (&str, u64),
) {
    match store
        .set_stream_state(id, state, Some(protocol), Some(owner))
        .await
    {
        Ok(true) => {}
        // Fenced: another node claimed the stream since (a newer epoch is stored).
        Ok(false) => tracing::warn!(stream = %id, epoch = owner.1,
            "stream state not stored: another node owns the stream now"),
        Err(err) => tracing::error!(stream = %id, %err, "cannot store stream state"),
    }
}

/// On an empty database: the admin token (configured or generated) and a `demo` stream.
async fn bootstrap(store: &Store, config: &Config) -> Result<Option<Bootstrap>, StoreError> {
    if store.setting("bootstrapped").await?.is_some() {
        return Ok(None);
    }
    let (_, admin_token) = store
        .create_token("admin", &["*"], config.auth.admin_token.clone())
        .await?;
    let (demo, key) = store
        .create_stream(crate::store::NewStream::named(
            "live",
            "demo",
            "Demo stream",
        ))
        .await?;
    store
        .set_setting("bootstrapped", &crate::store::now_rfc3339())
        .await?;
    Ok(Some(Bootstrap {
        admin_token,
        demo_stream_id: demo.id,
        demo_stream_key: key,
    }))
}

/// Sets the process umask (everything written from now on: database, keys, recordings) and
/// tightens what already exists under `data_dir` (never loosens it): with the default `077`,
/// the directory 0700 and its files 0600.
fn restrict_files(data_dir: &std::path::Path, mask: u32) {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    fn tighten(path: &std::path::Path, mask: u32, depth: u32) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.file_type().is_symlink() {
            return;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let tight = mode & !mask;
        if tight != mode {
            if let Err(err) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight))
            {
                tracing::warn!(%err, path = %path.display(), "cannot tighten file mode");
            }
        }
        if meta.is_dir() && depth < 2 {
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries.flatten() {
                    tighten(&e.path(), mask, depth + 1);
                }
            }
        }
    }
    tighten(data_dir, mask, 0);
}

/// The server's play-token signing key: 32 random bytes created on the first start, kept in
/// the settings table sealed with the secret box (like restream keys), so tokens survive a
/// restart and a copy of the database alone cannot mint them. A key stored in clear by an
/// older version is sealed and the clear copy removed.
async fn play_token_key(store: &Store) -> Result<Vec<u8>, StoreError> {
    if let Some(hex_key) = store.sealed_setting("play_token_key_sealed").await? {
        if let Ok(key) = hex::decode(hex_key) {
            return Ok(key);
        }
    }
    let key = match store.setting("play_token_key").await? {
        Some(old) if hex::decode(&old).is_ok() => old,
        _ => crate::store::random_id("", 32),
    };
    store
        .set_sealed_setting("play_token_key_sealed", &key)
        .await?;
    store.delete_setting("play_token_key").await?;
    Ok(hex::decode(key).unwrap_or_default())
}

/// Private streams need a valid play token of the stream's current generation; privacy and
/// generation are cached for two seconds so a viewer fetching parts does not cost a database
/// query each time (a revoke takes effect within that time).
struct StoreGate {
    store: Store,
    signer: PlaySigner,
    /// Asked when a private stream's viewer has no token of ours.
    external: Option<Arc<crate::extauth::ExternalAuth>>,
    cache: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Gated)>>,
}

/// What the gate knows of a stream.
#[derive(Debug, Clone)]
struct Gated {
    privacy: Privacy,
    generation: u64,
    exists: bool,
    /// App and name, for an external authoriser (shared: cloned on every media request).
    names: Arc<(String, String)>,
}

/// How long a playback check waits for the database before falling back to what it knew.
const GATE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

impl StoreGate {
    async fn lookup(&self, stream_id: &str) -> Result<Gated, HttpError> {
        let now = std::time::Instant::now();
        if let Some((at, g)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream_id)
        {
            if now.duration_since(*at) < Duration::from_secs(2) {
                return Ok(g.clone());
            }
        }
        let looked_up = tokio::time::timeout(GATE_LOOKUP_TIMEOUT, self.store.get_stream(stream_id));
        let row = match looked_up.await {
            Ok(Ok(row)) => row,
            failed => {
                // The database is away (or slow): what was known of the stream still holds
                // for another cache period, so its viewers keep watching without waiting on
                // it at every request; a stream never looked up is refused.
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((at, g)) = cache.get_mut(stream_id) {
                    *at = now;
                    return Ok(g.clone());
                }
                return Err(match failed {
                    Ok(Err(e)) => HttpError::internal("reading stream privacy", e),
                    _ => {
                        let mut e = HttpError::unavailable(
                            "the database is not answering; retry in a moment",
                        );
                        e.retry_after = Some(1);
                        e
                    }
                });
            }
        };
        let gated = match row {
            Some(r) => Gated {
                privacy: r.privacy,
                generation: r.token_generation,
                exists: true,
                names: Arc::new((r.app, r.name)),
            },
            // No such stream: nothing live to protect (live routes answer 404 later).
            None => Gated {
                privacy: Privacy::Public,
                generation: 0,
                exists: false,
                names: Arc::default(),
            },
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(stream_id.to_owned(), (now, gated.clone()));
        Ok(gated)
    }

    fn verify(
        &self,
        stream_id: &str,
        generation: u64,
        token: Option<&str>,
    ) -> Result<(), HttpError> {
        let token = token.ok_or_else(|| {
            HttpError::unauthorized("this stream is private: add ?token= from the play-token API")
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.signer
            .verify_generation(token, stream_id, generation, now)
            .map_err(|e| match e {
                PlayTokenError::Expired => HttpError::forbidden("play token expired"),
                PlayTokenError::Invalid => HttpError::forbidden("invalid play token"),
            })
    }
}

impl PlaybackGate for StoreGate {
    fn check<'a>(
        &'a self,
        stream_id: &'a str,
        token: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send + 'a>>
    {
        self.check_viewer(stream_id, token, "http", None)
    }

    fn check_viewer<'a>(
        &'a self,
        stream_id: &'a str,
        token: Option<&'a str>,
        protocol: &'static str,
        client: Option<std::net::IpAddr>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send + 'a>>
    {
        Box::pin(async move {
            let g = self.lookup(stream_id).await?;
            if g.privacy == Privacy::Public {
                return Ok(());
            }
            let ours = self.verify(stream_id, g.generation, token);
            match (&self.external, token) {
                (Some(ext), Some(credential)) if ours.is_err() => {
                    let req = crate::extauth::AuthRequest {
                        action: crate::extauth::Action::Play.as_str(),
                        protocol,
                        app: &g.names.0,
                        name: &g.names.1,
                        stream_id,
                        client_ip: client,
                        credential,
                    };
                    if ext.allows(&req).await {
                        Ok(())
                    } else {
                        ours
                    }
                }
                _ => ours,
            }
        })
    }

    fn check_recording<'a>(
        &'a self,
        stream_id: &'a str,
        privacy: Privacy,
        generation_if_gone: u64,
        token: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send + 'a>>
    {
        Box::pin(async move {
            let g = self.lookup(stream_id).await?;
            // The recording's own privacy decides (kept in step with its stream, and kept
            // when the stream is deleted): fail closed.
            if privacy == Privacy::Public && (!g.exists || g.privacy == Privacy::Public) {
                return Ok(());
            }
            let generation = if g.exists {
                g.generation
            } else {
                generation_if_gone
            };
            self.verify(stream_id, generation, token)
        })
    }
}

impl Server {
    /// The first-start banner: admin token, publish and play instructions. Printed once.
    pub fn welcome_text(&self) -> Option<String> {
        let b = self.bootstrap.as_ref()?;
        let rtmp = &self.config.rtmp.public_url;
        let http = &self.config.http.public_url;
        Some(format!(
            "\n=== media-server: first start ===\n\
             Admin API token (shown once, store it now):\n  {token}\n\n\
             Publish the demo stream with ffmpeg:\n  \
             ffmpeg -re -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \
             -c:v libx264 -preset veryfast -g 60 -c:a aac -f flv {rtmp}/live/{key}\n\
             or with OBS: Settings → Stream → Custom\n  Server:     {rtmp}/live\n  Stream Key: {key}\n\n\
             Watch it:\n  {http}/hls/{id}/index.m3u8   (ffplay, VLC, Safari, hls.js)\n  \
             ffplay {rtmp}/live/{id}\n\n\
             The API:\n  curl -H 'Authorization: Bearer {token}' {http}/api/v1/streams/{id}\n",
            token = b.admin_token,
            key = b.demo_stream_key,
            id = b.demo_stream_id,
        ))
    }

    /// Stops accepting, ends every playlist, waits for tasks (bounded by the configured
    /// shutdown timeout) and checkpoints the database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let limit = Duration::from_millis(self.config.server.shutdown_timeout_ms);
        let recorders = self.recorders.clone();
        let wait_all = async {
            for t in self.tasks {
                let _ = t.await;
            }
            // Recordings are finalised (ready) rather than left for crash recovery.
            recorders.stop_all();
            recorders.idle().await;
        };
        if tokio::time::timeout(limit, wait_all).await.is_err() {
            tracing::warn!("shutdown timeout: some connections were cut");
        }
        if let Err(err) = self.store.flush().await {
            tracing::warn!(%err, "database checkpoint on shutdown failed");
        }
        tracing::info!("media-server stopped");
    }
}
