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
use crate::hub::{Hub, HubEvent};
use crate::net::rtmp::{self, RtmpContext};
use crate::store::{Store, StoreError, StreamState};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
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
    /// Set on the first start only.
    pub bootstrap: Option<Bootstrap>,
    /// The database handle.
    pub store: Store,
    /// The live streams.
    pub hub: Hub,
    config: Arc<Config>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts every part of the server; returns once the listeners are bound.
pub async fn start(config: Config) -> Result<Server, StartError> {
    let config = Arc::new(config);
    let store = Store::open(&config.server.data_dir).await?;
    let stale = store.end_stale_live_streams().await?;
    if stale > 0 {
        tracing::info!(
            count = stale,
            "marked streams left live by an unclean stop as ended"
        );
    }
    let bootstrap = bootstrap(&store, &config).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let hub = Hub::default();
    let hls = HlsRegistry::new(config.hls.clone(), shutdown_rx.clone());
    let mut tasks = Vec::new();
    tasks.push(wire_hub(&hub, &store, &hls, shutdown_rx.clone()));

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

    let router = Router::new()
        .merge(hls::http::router(hls.clone()))
        .merge(api::router(ApiState {
            config: config.clone(),
            store: store.clone(),
            hub: hub.clone(),
        }))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.http.request_timeout_ms),
        ))
        .layer(TraceLayer::new_for_http());
    let mut http_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let result = axum::serve(http, router)
            .with_graceful_shutdown(async move {
                crate::shutdown::requested(&mut http_shutdown).await;
            })
            .await;
        if let Err(err) = result {
            tracing::error!(%err, "http server failed");
        }
    }));
    let ctx = RtmpContext {
        config: config.rtmp.clone(),
        hub: hub.clone(),
        store: store.clone(),
    };
    tasks.push(tokio::spawn(rtmp::serve(rtmp_listener, ctx, shutdown_rx)));
    tracing::info!(%http_addr, %rtmp_addr, "media-server listening");
    Ok(Server {
        http_addr,
        rtmp_addr,
        bootstrap,
        store,
        hub,
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
    hls: &Arc<HlsRegistry>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<(String, StreamState)>(1024);
    let hls = hls.clone();
    hub.on_event(move |event| {
        let (stream, state) = match event {
            HubEvent::Published(s) => {
                hls.start(&s.id, s.subscribe());
                (s, StreamState::Live)
            }
            HubEvent::Unpublished(s) => (s, StreamState::Ended),
        };
        if tx.try_send((stream.id.clone(), state)).is_err() {
            tracing::error!(stream = %stream.id, "state update queue full; state not stored");
        }
    });
    let store = store.clone();
    tokio::spawn(async move {
        loop {
            let update = tokio::select! {
                u = rx.recv() => u,
                _ = crate::shutdown::requested(&mut shutdown) => {
                    // Publishers end as their connections close; give their final state
                    // updates a moment to arrive, then store what is queued.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    rx.close();
                    while let Some((id, state)) = rx.recv().await {
                        store_state(&store, &id, state).await;
                    }
                    return;
                }
            };
            let Some((id, state)) = update else { return };
            store_state(&store, &id, state).await;
        }
    })
}

async fn store_state(store: &Store, id: &str, state: StreamState) {
    if let Err(err) = store.set_stream_state(id, state).await {
        tracing::error!(stream = %id, %err, "cannot store stream state");
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
    let (demo, key) = store.create_stream("live", "demo", "Demo stream").await?;
    store
        .set_setting("bootstrapped", &crate::store::now_rfc3339())
        .await?;
    Ok(Some(Bootstrap {
        admin_token,
        demo_stream_id: demo.id,
        demo_stream_key: key,
    }))
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
        let wait_all = async {
            for t in self.tasks {
                let _ = t.await;
            }
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
