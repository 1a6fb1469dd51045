//! Typed configuration: `media-server.toml`, overridden key by key from the environment.
//!
//! Every key `[section] key` can be overridden by `MEDIA_SERVER_{SECTION}_{KEY}` in upper case,
//! e.g. `MEDIA_SERVER_HTTP_LISTEN=127.0.0.1:9000` or `MEDIA_SERVER_HLS_PART_TARGET_MS=300`.
//! [`Config::load`] reads the file, applies the overrides, deserialises and validates; every
//! failure is one [`ConfigError`] whose message names the key and the problem, so `main` can
//! print one line and exit with code 2. The rest of the server only ever sees a valid `Config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MEDIA_SERVER_";

/// A configuration problem, always naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key has the wrong type or is unknown.
    #[error("config: {0}")]
    Parse(String),
    /// An environment override could not be applied.
    #[error("config: environment variable {var}: {problem}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A key has a value of the right type that is out of range.
    #[error("config: {key}: {problem}")]
    Invalid {
        /// `section.key`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Process-wide settings.
    pub server: ServerConfig,
    /// The HTTP listener (API, HLS).
    pub http: HttpConfig,
    /// The RTMP listener (publish and play).
    pub rtmp: RtmpConfig,
    /// LL-HLS packaging.
    pub hls: HlsConfig,
    /// Authentication bootstrap and play tokens.
    pub auth: AuthConfig,
    /// Control API limits and CORS.
    pub api: ApiConfig,
    /// Webhook delivery.
    pub webhooks: WebhooksConfig,
    /// WebSocket JPEG cameras.
    pub camera: CameraConfig,
    /// WHIP ingest and WHEP playback.
    pub webrtc: WebRtcConfig,
    /// Audio transcoding between AAC and Opus.
    pub transcode: TranscodeConfig,
    /// Recording to fragmented MP4.
    pub recording: RecordingConfig,
    /// Pushing live streams to other RTMP(S) servers.
    pub restream: RestreamConfig,
    /// Health scores, history and `/metrics`.
    pub stats: StatsConfig,
    /// The player, embed and console pages.
    pub web: WebConfig,
    /// Connection caps' exemptions and where the server may connect to.
    pub security: SecurityConfig,
    /// Publish and play authorised by the platform: an HTTP callback and JWTs.
    pub external_auth: ExternalAuthConfig,
    /// Where durable state lives: the embedded SQLite file (default) or PostgreSQL.
    pub store: StoreConfig,
    /// Many nodes as one service (PostgreSQL + Redis); off by default.
    pub cluster: ClusterConfig,
}

/// `[store]`: the embedded SQLite database in `server.data_dir` unless `url` names a
/// PostgreSQL database (what cluster mode needs: every node shares it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Empty for SQLite (the default); `postgres://user@host:5432/db` for PostgreSQL.
    pub url: String,
    /// Connections to PostgreSQL this node keeps open.
    pub pool_size: u32,
    /// Deadline to connect to PostgreSQL, in milliseconds.
    pub connect_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 4,
            connect_timeout_ms: 5_000,
        }
    }
}

impl StoreConfig {
    /// Whether the store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
}

/// `[cluster]`: many nodes behind one load balancer, sharing PostgreSQL (`[store] url`) for
/// durable state and Redis for leases, viewer counts, limits and messages between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Run as one node of a cluster.
    pub enabled: bool,
    /// This node's name (letters, digits, `.`, `_`, `-`); empty: the host name.
    pub node_id: String,
    /// How the other nodes reach this one (`http://10.0.0.5:8080`).
    pub advertise_url: String,
    /// `redis://host:6379/0` (or `rediss://`).
    pub redis_url: String,
    /// Prefix of every Redis key, so that clusters can share one Redis.
    pub redis_prefix: String,
    /// Shared by every node, at least 32 characters: authenticates node-to-node traffic.
    pub secret: String,
    /// A live stream's owner lease: it expires this long after its last renewal.
    pub lease_ttl_ms: u64,
    /// How often the owner renews its leases.
    pub lease_renew_ms: u64,
    /// A relay from the owner stays open this long after the last local viewer left.
    pub relay_linger_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            advertise_url: String::new(),
            redis_url: String::new(),
            redis_prefix: "ms".into(),
            secret: String::new(),
            lease_ttl_ms: 10_000,
            lease_renew_ms: 3_000,
            relay_linger_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// `node_id`, or the host name when it is empty.
    pub fn node_name(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    }
}

/// Why a cluster setting is unusable: `(key, problem)`, or `None` when it is fine.
fn cluster_problem(store: &StoreConfig, c: &ClusterConfig) -> Option<(&'static str, String)> {
    if !store.url.is_empty() {
        let ok =
            store.is_postgres() && url::Url::parse(&store.url).is_ok_and(|u| u.host().is_some());
        if !ok {
            return Some((
                "store.url",
                "empty (SQLite) or a postgres://user@host:5432/database URL".into(),
            ));
        }
    }
    if !(1..=64).contains(&store.pool_size) {
        return Some(("store.pool_size", "must be between 1 and 64".into()));
    }
    if !(100..=60_000).contains(&store.connect_timeout_ms) {
        return Some((
            "store.connect_timeout_ms",
            "must be between 100 and 60000".into(),
        ));
    }
    if !c.node_id.is_empty()
        && (c.node_id.len() > 64
            || !c
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return Some((
            "cluster.node_id",
            "at most 64 letters, digits, '.', '_' or '-'".into(),
        ));
    }
    if !c.enabled {
        return None;
    }
    if !store.is_postgres() {
        return Some((
            "cluster.enabled",
            "needs [store] url = \"postgres://…\": the nodes share one PostgreSQL database".into(),
        ));
    }
    let redis_ok = url::Url::parse(&c.redis_url)
        .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some());
    if !redis_ok {
        return Some((
            "cluster.redis_url",
            "cluster mode needs a redis://host:6379 (or rediss://) URL".into(),
        ));
    }
    let advertise_ok =
        url::Url::parse(&c.advertise_url).is_ok_and(|u| u.scheme() == "http" && u.host().is_some());
    if !advertise_ok {
        return Some((
            "cluster.advertise_url",
            "cluster mode needs the http:// URL the other nodes reach this one at".into(),
        ));
    }
    if c.secret.chars().count() < 32 {
        return Some((
            "cluster.secret",
            "cluster mode needs a secret of at least 32 characters, the same on every node".into(),
        ));
    }
    if c.redis_prefix.is_empty() || c.redis_prefix.contains(char::is_whitespace) {
        return Some((
            "cluster.redis_prefix",
            "must be non-empty, without spaces".into(),
        ));
    }
    if !(1_000..=120_000).contains(&c.lease_ttl_ms) {
        return Some((
            "cluster.lease_ttl_ms",
            "must be between 1000 and 120000".into(),
        ));
    }
    if c.lease_renew_ms == 0 || c.lease_renew_ms * 2 > c.lease_ttl_ms {
        return Some((
            "cluster.lease_renew_ms",
            "must be greater than 0 and at most half of cluster.lease_ttl_ms".into(),
        ));
    }
    None
}

/// `[external_auth]`: next to stream keys and play tokens, a platform may authorise publish
/// and play itself, with an HTTP callback and/or JWTs signed by keys from a JWKS URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalAuthConfig {
    /// URL POSTed `{action, protocol, app, name, stream_id, client_ip, credential}` when a
    /// publisher's key or a viewer's token is not one of ours; a 2xx answer (without
    /// `"allow": false`) allows it. Empty: off.
    pub callback_url: String,
    /// Time the callback has to answer, in milliseconds (no answer: refused).
    pub callback_timeout_ms: u64,
    /// How long an answer is reused for the same request, in seconds.
    pub callback_cache_secs: u64,
    /// URL of a JSON Web Key Set; JWTs signed by its keys are accepted as publish keys and
    /// play tokens. Empty: off.
    pub jwks_url: String,
    /// Required `iss` of a JWT (empty: not checked).
    pub jwt_issuer: String,
    /// Required `aud` of a JWT (empty: not checked).
    pub jwt_audience: String,
    /// Claim naming the stream: its id (`str_…`), `app/name`, or `*`.
    pub jwt_stream_claim: String,
    /// Claim listing the allowed actions (`publish`, `play`; a string or a list).
    pub jwt_actions_claim: String,
    /// How long fetched keys are used before the set is fetched again, in seconds (an
    /// unknown `kid` fetches at once, at most every 10 s).
    pub jwks_refresh_secs: u64,
}

impl Default for ExternalAuthConfig {
    fn default() -> Self {
        Self {
            callback_url: String::new(),
            callback_timeout_ms: 2000,
            callback_cache_secs: 5,
            jwks_url: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_stream_claim: "stream".into(),
            jwt_actions_claim: "actions".into(),
            jwks_refresh_secs: 300,
        }
    }
}

/// `[security]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Clients (addresses or CIDRs) never held to the per-client connection caps: loopback by
    /// default; add a reverse proxy in front of the server.
    pub connection_limit_exempt: Vec<String>,
    /// Addresses or CIDRs that webhooks and restreams may reach although the default policy
    /// refuses them (loopback, private, link-local, ULA, multicast, the server's own
    /// listeners), e.g. `["192.168.1.20/32"]` for a LAN restream target.
    pub outbound_allow: Vec<String>,
    /// Addresses, CIDRs or host names webhooks and restreams may never reach, on top of the
    /// default policy.
    pub outbound_deny: Vec<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            connection_limit_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            outbound_allow: Vec::new(),
            outbound_deny: Vec::new(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory holding the SQLite database (and, later, recordings).
    pub data_dir: PathBuf,
    /// Milliseconds to wait for tasks to finish on shutdown.
    pub shutdown_timeout_ms: u64,
    /// File mode mask (octal) for everything the server writes: the default `077` keeps the
    /// data directory 0700 and the database, keys and recordings 0600. Existing files are
    /// tightened to it at start.
    pub umask: String,
}

impl ServerConfig {
    /// `umask` as bits (`None` if it is not octal up to 0777).
    pub fn umask_bits(&self) -> Option<u32> {
        u32::from_str_radix(self.umask.trim(), 8)
            .ok()
            .filter(|m| *m <= 0o777)
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Base URL printed in play URLs (no trailing slash).
    pub public_url: String,
    /// Per-request timeout for non-blocking requests, in milliseconds.
    pub request_timeout_ms: u64,
    /// HTTP connections at once; more are closed on accept.
    pub max_connections: u32,
    /// A client must send a request's headers within this time, in milliseconds (slow-drip
    /// "slowloris" connections are cut). Also the deadline for a connection's first bytes.
    pub header_read_timeout_ms: u64,
    /// A connection (HTTP/1 keep-alive or HTTP/2) that moves no byte for this long is
    /// closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// HTTP connections at once from one client (an IPv4 address or an IPv6 /64); 0: no
    /// cap. Clients in `security.connection_limit_exempt` are not capped.
    pub max_connections_per_ip: u32,
}

/// `[rtmp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// Address the RTMP server binds.
    pub listen: SocketAddr,
    /// Base URL printed for publishers (no trailing slash).
    pub public_url: String,
    /// Connections accepted at once; more are closed on accept.
    pub max_connections: u32,
    /// Largest RTMP message accepted (bytes); a larger declared length closes the connection.
    pub max_message_bytes: u32,
    /// Time allowed for the handshake and the connect/publish commands, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Chunk size the server announces for what it sends.
    pub out_chunk_size: u32,
    /// RTMP connections at once from one client (IPv4 address or IPv6 /64); 0: no cap.
    pub max_connections_per_ip: u32,
    /// Of `max_connections`, this many are kept for publishers: a player is refused when
    /// fewer are free, so viewers can never starve ingest.
    pub reserved_publisher_slots: u32,
    /// Address of the RTMPS (RTMP over TLS) listener, e.g. `0.0.0.0:1936`; empty: off. It
    /// shares `max_connections`, the per-client cap and the handshake timeout (which covers
    /// the TLS handshake) with the plain listener.
    pub tls_listen: String,
    /// PEM certificate chain for RTMPS (reloaded on SIGHUP and when the file changes).
    pub tls_cert: String,
    /// PEM private key for RTMPS.
    pub tls_key: String,
    /// Base URL printed for RTMPS publishers (no trailing slash); empty: `public_url`'s host
    /// with the `tls_listen` port.
    pub tls_public_url: String,
}

impl RtmpConfig {
    /// The RTMPS listen address, when configured (validated by [`Config::validate`]).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listen.parse().ok()
    }

    /// The base RTMPS URL publishers are told (`rtmps://host:port`), when RTMPS is on.
    pub fn rtmps_url(&self) -> Option<String> {
        let addr = self.tls_addr()?;
        if !self.tls_public_url.is_empty() {
            return Some(self.tls_public_url.clone());
        }
        let host = url::Url::parse(&self.public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "localhost".into());
        Some(format!("rtmps://{host}:{}", addr.port()))
    }
}

/// `[hls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// Target duration of a partial segment, in milliseconds.
    pub part_target_ms: u32,
    /// Target duration of a segment, in milliseconds (segments are cut on keyframes).
    pub segment_target_ms: u32,
    /// Segments kept in the live playlist.
    pub window_segments: u32,
    /// After the publisher leaves, how long a reconnect with the same key continues the same
    /// playlist (with `EXT-X-DISCONTINUITY`) before it is ended with `EXT-X-ENDLIST`.
    pub grace_period_ms: u64,
    /// An HLS viewer (session) unseen for this long stops counting, in milliseconds.
    pub session_timeout_ms: u64,
    /// Serve HLS for a cache or CDN in front: no per-viewer data in any URL, `Cache-Control`
    /// that lets a shared cache collapse requests, HLS viewers counted from player beacons.
    pub cdn: bool,
    /// Package a live stream as HLS only from its first HLS request (primed from the GOP
    /// cache); `false` packages every stream from the moment it goes live.
    pub on_demand: bool,
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// When set, the first start uses this admin token instead of generating one.
    pub admin_token: Option<String>,
    /// Default lifetime of a play token for a private stream, in seconds.
    pub play_token_ttl_secs: u64,
    /// Longest lifetime a play token may be minted with, in seconds.
    pub play_token_max_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            play_token_ttl_secs: 3600,
            play_token_max_ttl_secs: 86_400,
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Requests per minute per API token.
    pub rate_limit_per_token: u32,
    /// Requests per minute per client IP for requests without a valid token.
    pub rate_limit_per_ip: u32,
    /// Largest accepted request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (`*` for any); empty disables CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// Streams one application (`app`) may hold; more are refused with 409.
    pub max_streams_per_app: u32,
    /// Webhooks the server holds; more are refused with 409.
    pub max_webhooks: u32,
    /// Requests per minute per client on the media routes (HLS, MJPEG, VOD, WHIP/WHEP):
    /// generous (an LL-HLS viewer makes ~600, and viewers behind one NAT share it); 0: no
    /// limit. Clients in `security.connection_limit_exempt` (a cache in front) are not
    /// limited.
    pub media_rate_limit_per_ip: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_token: 1000,
            rate_limit_per_ip: 60,
            max_body_bytes: 64 * 1024,
            cors_allowed_origins: vec!["*".into()],
            max_streams_per_app: 10_000,
            max_webhooks: 100,
            media_rate_limit_per_ip: 12_000,
        }
    }
}

/// `[camera]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// Largest JPEG accepted, in bytes; a larger message closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Invalid frames in a row that close the socket (1007).
    pub max_invalid_frames: u32,
    /// A camera silent for this long is disconnected, in milliseconds.
    pub idle_timeout_ms: u64,
    /// WebSocket ping interval, in milliseconds.
    pub ping_interval_ms: u64,
    /// Also encode H.264 from the JPEGs, so the camera plays as HLS and can be recorded.
    pub transcode: bool,
    /// Target bitrate of that H.264, in kbit/s.
    pub h264_bitrate_kbps: u32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_invalid_frames: 5,
            idle_timeout_ms: 10_000,
            ping_interval_ms: 5_000,
            transcode: true,
            h264_bitrate_kbps: 1500,
        }
    }
}

/// `[transcode]`: audio that crosses protocols. AAC (RTMP, cameras) becomes Opus for WebRTC
/// viewers and Opus (WHIP, Enhanced RTMP) becomes AAC for legacy RTMP destinations, once per
/// stream and only while someone needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscodeConfig {
    /// Transcode audio at all (pure-Rust codecs, always compiled in).
    pub audio: bool,
    /// Opus bitrate for stereo in kbit/s (mono gets two thirds).
    pub opus_bitrate_kbps: u32,
    /// AAC-LC bitrate for stereo in kbit/s (mono gets half).
    pub aac_bitrate_kbps: u32,
    /// Package Opus sources (WHIP, Enhanced RTMP) for HLS as AAC, which Safari, AVPlayer
    /// and every other HLS player take (Opus in fMP4 plays in Chromium and Firefox only).
    pub hls_aac: bool,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self {
            audio: true,
            opus_bitrate_kbps: 96,
            aac_bitrate_kbps: 128,
            hls_aac: true,
        }
    }
}

impl TranscodeConfig {
    /// The codec settings these name.
    pub fn quality(&self) -> crate::media::audio::AudioQuality {
        crate::media::audio::AudioQuality {
            opus_bitrate: self.opus_bitrate_kbps * 1000,
            aac_bitrate: self.aac_bitrate_kbps * 1000,
        }
    }
}

/// `[webrtc]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// Serve `/whip` and `/whep`.
    pub enabled: bool,
    /// The one UDP socket every WHIP and WHEP session shares (ICE-lite). A wildcard address
    /// announces a host candidate per non-loopback interface address (the loopback one when
    /// there is no other); a concrete address announces just that one.
    pub udp_listen: std::net::SocketAddr,
    /// ICE-TCP (RFC 6544, passive) for clients whose networks block UDP: the TCP address to
    /// listen on, e.g. `0.0.0.0:8189`; empty = off.
    pub tcp_listen: String,
    /// Public addresses announced besides the interface ones (1:1 NAT, e.g. a cloud VM's
    /// public IP).
    pub public_ips: Vec<String>,
    /// STUN servers (`stun:host:port`) asked at startup for the public address of the UDP
    /// port, which is then announced too (a server behind NAT that does not know its public
    /// IP); empty = none.
    pub ice_servers: Vec<String>,
    /// A peer not connected within this many milliseconds is closed.
    pub connect_timeout_ms: u64,
    /// A connected peer whose ICE is lost (no STUN for this long) is closed, in milliseconds.
    pub disconnect_timeout_ms: u64,
    /// WHIP and WHEP sessions at once; more get 503.
    pub max_sessions: usize,
    /// Of `max_sessions`, this many are kept for WHIP publishers: a WHEP offer is refused
    /// (503) when fewer are free, so viewers can never lock out ingest.
    pub reserved_whip_sessions: usize,
    /// WHEP sessions at once from one client (IPv4 address or IPv6 /64; clients in
    /// `security.connection_limit_exempt` are not held to it); more get 429.
    pub max_whep_sessions_per_ip: usize,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_listen: std::net::SocketAddr::from(([0, 0, 0, 0], 8189)),
            tcp_listen: String::new(),
            public_ips: Vec::new(),
            ice_servers: Vec::new(),
            connect_timeout_ms: 8_000,
            disconnect_timeout_ms: 5_000,
            max_sessions: 500,
            reserved_whip_sessions: 50,
            max_whep_sessions_per_ip: 20,
        }
    }
}

/// `[recording]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Duration of one fragment (flushed to disk as a whole), in milliseconds.
    pub fragment_ms: u64,
    /// `fsync` every fragment, so a power cut loses at most the open one.
    pub fsync: bool,
    /// A recording longer than this is split into consecutive files (seconds).
    pub max_duration_secs: u64,
    /// Below this much free disk space (MiB) recordings stop with `disk_full`.
    pub min_free_mb: u64,
    /// Finished recordings older than this are deleted (hours; 0 keeps them).
    pub delete_after_hours: u64,
    /// Where finished recordings go (`[recording.storage]`).
    pub storage: StorageConfig,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            fragment_ms: 1000,
            fsync: true,
            max_duration_secs: 3600,
            min_free_mb: 1024,
            delete_after_hours: 0,
            storage: StorageConfig::default(),
        }
    }
}

/// `[recording.storage]`: recordings stay on local disk (`local`), or are uploaded to an
/// S3-compatible object store (`s3`) while they are written and served from there.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `local` or `s3`.
    pub kind: String,
    /// The S3 endpoint (`https://s3.example.com`, `http://127.0.0.1:9000`); empty: AWS, by
    /// region.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// Object keys start with this (`recordings/`).
    pub prefix: String,
    /// `{endpoint}/{bucket}/{key}` (true, what most S3-compatible servers want) or
    /// virtual-hosted `{bucket}.{endpoint}/{key}`.
    pub path_style: bool,
    /// Access key; empty: `AWS_ACCESS_KEY_ID` from the environment.
    pub access_key_id: String,
    /// Secret key; empty: `AWS_SECRET_ACCESS_KEY` from the environment. Never logged or shown.
    pub secret_access_key: String,
    /// Multipart part size in MiB: at most this much media is lost with a node that dies
    /// mid-recording (S3 needs ≥ 5 for every part but the last).
    pub part_size_mb: u64,
    /// How long a presigned download URL is valid (seconds).
    pub presign_ttl_secs: u64,
    /// Keep the local file after a verified upload.
    pub keep_local: bool,
    /// `redirect` (302 to a presigned URL) or `proxy` (this node streams it from the store).
    pub download: String,
    /// Failed attempts (refusals, not outages) before an upload is given up as `failed`.
    pub upload_attempts: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            kind: "local".into(),
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            prefix: "recordings/".into(),
            path_style: true,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            part_size_mb: 8,
            presign_ttl_secs: 3600,
            keep_local: false,
            download: "redirect".into(),
            upload_attempts: 5,
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field(
                "access_key_id",
                &if self.access_key_id.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field(
                "secret_access_key",
                &if self.secret_access_key.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("part_size_mb", &self.part_size_mb)
            .field("presign_ttl_secs", &self.presign_ttl_secs)
            .field("keep_local", &self.keep_local)
            .field("download", &self.download)
            .field("upload_attempts", &self.upload_attempts)
            .finish()
    }
}

impl StorageConfig {
    /// Whether recordings go to an object store.
    pub fn is_s3(&self) -> bool {
        self.kind == "s3"
    }

    /// Why the settings are unusable: `(key, problem)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        match self.kind.as_str() {
            "local" => return None,
            "s3" => {}
            _ => {
                return Some((
                    "recording.storage.kind",
                    "must be \"local\" or \"s3\"".into(),
                ))
            }
        }
        if self.bucket.is_empty() {
            return Some((
                "recording.storage.bucket",
                "s3 storage needs a bucket".into(),
            ));
        }
        let endpoint_ok = self.endpoint.is_empty()
            || self.endpoint.starts_with("http://")
            || self.endpoint.starts_with("https://");
        if !endpoint_ok {
            return Some((
                "recording.storage.endpoint",
                "must be an http:// or https:// URL (or empty for AWS)".into(),
            ));
        }
        let prefix_ok = self
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
            && !self.prefix.starts_with('/')
            && !self.prefix.contains("//");
        if !prefix_ok {
            return Some((
                "recording.storage.prefix",
                "letters, digits, . _ - and / only, not starting with / and without //".into(),
            ));
        }
        if !(1..=5120).contains(&self.part_size_mb) {
            return Some((
                "recording.storage.part_size_mb",
                "must be between 1 and 5120".into(),
            ));
        }
        if !(1..=604_800).contains(&self.presign_ttl_secs) {
            return Some((
                "recording.storage.presign_ttl_secs",
                "must be between 1 and 604800 (7 days)".into(),
            ));
        }
        if !matches!(self.download.as_str(), "redirect" | "proxy") {
            return Some((
                "recording.storage.download",
                "must be \"redirect\" or \"proxy\"".into(),
            ));
        }
        if self.upload_attempts == 0 {
            return Some((
                "recording.storage.upload_attempts",
                "must be at least 1".into(),
            ));
        }
        None
    }
}

/// `[stats]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// How often a stream's health score is kept for its history and checked for the
    /// `health.degraded` / `health.recovered` webhooks, in milliseconds.
    pub health_interval_ms: u64,
    /// Serve `/metrics` without a token (otherwise a token with `stats:read` is needed).
    pub metrics_public: bool,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            health_interval_ms: 5000,
            metrics_public: false,
        }
    }
}

/// `[web]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve `/play/{id}`, `/embed/{id}` and the console at `/console`.
    pub enabled: bool,
    /// hls.js script for browsers without native HLS ("" = off: nothing is fetched from
    /// anywhere but this server). Its origin is added to the pages' Content-Security-Policy.
    pub hlsjs_url: String,
    /// Origins allowed to put `/embed/{id}` in an iframe (CSP `frame-ancestors`); `*` = any.
    pub embed_origins: Vec<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hlsjs_url: String::new(),
            embed_origins: vec!["*".into()],
        }
    }
}

/// `[restream]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestreamConfig {
    /// Destinations one stream may have.
    pub max_per_stream: u32,
    /// Consecutive failed connection attempts before a destination goes `failed` (0: retry
    /// for as long as the stream is live). A connection that reached `active` resets the count.
    pub max_attempts: u32,
    /// Wait before the first retry (doubling up to `backoff_max_ms`, with jitter), in ms.
    pub backoff_initial_ms: u64,
    /// Longest wait between retries, in ms.
    pub backoff_max_ms: u64,
    /// TCP connect + TLS + RTMP handshake + publish must complete within this, in ms.
    pub connect_timeout_ms: u64,
    /// A destination that accepts no bytes for this long is reconnected, in ms.
    pub write_timeout_ms: u64,
    /// Extra PEM CA certificates trusted for `rtmps://` (besides the system and webpki roots).
    pub ca_file: String,
    /// Chunk size announced to destinations.
    pub out_chunk_size: u32,
    /// Kernel send buffer per destination (KiB). Bounds how much media waits in the kernel
    /// before a slow destination is noticed; enough for 20 Mbit/s at 100 ms RTT.
    pub send_buffer_kb: u32,
}

impl Default for RestreamConfig {
    fn default() -> Self {
        Self {
            max_per_stream: 10,
            max_attempts: 10,
            backoff_initial_ms: 1000,
            backoff_max_ms: 30_000,
            connect_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            ca_file: String::new(),
            out_chunk_size: 4096,
            send_buffer_kb: 256,
        }
    }
}

/// `[webhooks]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Attempts per event and webhook, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt (doubling after each failure), in milliseconds.
    pub initial_backoff_ms: u64,
    /// Timeout of one delivery attempt, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff_ms: 1000,
            timeout_ms: 5000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            shutdown_timeout_ms: 5000,
            umask: "077".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: "http://localhost:8080".into(),
            request_timeout_ms: 30_000,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections_per_ip: 256,
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            public_url: "rtmp://localhost:1935".into(),
            max_connections: 1000,
            max_message_bytes: 8 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            out_chunk_size: 4096,
            max_connections_per_ip: 256,
            reserved_publisher_slots: 50,
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_public_url: String::new(),
        }
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_target_ms: 200,
            segment_target_ms: 2000,
            window_segments: 6,
            grace_period_ms: 10_000,
            session_timeout_ms: 30_000,
            cdn: false,
            on_demand: true,
        }
    }
}

impl Config {
    /// Reads `path`, applies `MEDIA_SERVER_*` overrides from the process environment and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_and_env(&text, std::env::vars())
    }

    /// Parses `text`, applies the overrides in `env` (name, value) and validates.
    pub fn from_toml_and_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(one_line(&e.to_string())))?;
        apply_env(&mut table, env)?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(one_line(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_owned(),
            })
        };
        if self.server.data_dir.as_os_str().is_empty() {
            return invalid("server.data_dir", "must not be empty");
        }
        if self.server.umask_bits().is_none() {
            return invalid("server.umask", "an octal mask such as \"077\" or \"027\"");
        }
        if self.rtmp.max_connections == 0 {
            return invalid("rtmp.max_connections", "must be at least 1");
        }
        if self.rtmp.reserved_publisher_slots >= self.rtmp.max_connections {
            return invalid(
                "rtmp.reserved_publisher_slots",
                "must be below rtmp.max_connections",
            );
        }
        if self.auth.play_token_max_ttl_secs == 0 {
            return invalid("auth.play_token_max_ttl_secs", "must be at least 1");
        }
        if self.http.idle_timeout_ms < 1000 {
            return invalid("http.idle_timeout_ms", "must be at least 1000");
        }
        if let Err(e) = crate::net::limits::parse_nets(&self.security.connection_limit_exempt) {
            return invalid("security.connection_limit_exempt", &e);
        }
        for (key, url) in [
            (
                "external_auth.callback_url",
                &self.external_auth.callback_url,
            ),
            ("external_auth.jwks_url", &self.external_auth.jwks_url),
        ] {
            let ok = url.is_empty()
                || url::Url::parse(url).is_ok_and(|u| u.scheme() == "http" && u.host().is_some());
            if !ok {
                return invalid(key, "an http:// or https:// URL, or empty");
            }
        }
        if let Some((key, problem)) = cluster_problem(&self.store, &self.cluster) {
            return invalid(key, &problem);
        }
        if let Err(e) = crate::outbound::OutboundPolicy::from_config(&self.security) {
            return invalid("security.outbound_allow/outbound_deny", &e);
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.rtmp.max_message_bytes) {
            return invalid(
                "rtmp.max_message_bytes",
                "must be between 1024 and 16777216",
            );
        }
        if !(128..=0xFF_FFFF).contains(&self.rtmp.out_chunk_size) {
            return invalid("rtmp.out_chunk_size", "must be between 128 and 16777215");
        }
        if !self.rtmp.tls_listen.is_empty() {
            if self.rtmp.tls_addr().is_none() {
                return invalid(
                    "rtmp.tls_listen",
                    "must be empty or an address such as 0.0.0.0:1936",
                );
            }
            if self.rtmp.tls_cert.is_empty() || self.rtmp.tls_key.is_empty() {
                return invalid(
                    "rtmp.tls_cert",
                    "rtmp.tls_listen needs rtmp.tls_cert and rtmp.tls_key (PEM files)",
                );
            }
            let url = &self.rtmp.tls_public_url;
            if !url.is_empty() && (!url.starts_with("rtmps://") || url.ends_with('/')) {
                return invalid(
                    "rtmp.tls_public_url",
                    "must be empty or an rtmps:// URL without a trailing slash",
                );
            }
        }
        if self.rtmp.handshake_timeout_ms == 0 || self.rtmp.idle_timeout_ms == 0 {
            return invalid("rtmp.*_timeout_ms", "timeouts must be greater than 0");
        }
        if !(50..=5000).contains(&self.hls.part_target_ms) {
            return invalid("hls.part_target_ms", "must be between 50 and 5000");
        }
        if self.hls.segment_target_ms < self.hls.part_target_ms
            || self.hls.segment_target_ms > 60_000
        {
            return invalid(
                "hls.segment_target_ms",
                "must be at least hls.part_target_ms and at most 60000",
            );
        }
        if !(2..=100).contains(&self.hls.window_segments) {
            return invalid("hls.window_segments", "must be between 2 and 100");
        }
        for (key, url) in [
            ("http.public_url", &self.http.public_url),
            ("rtmp.public_url", &self.rtmp.public_url),
        ] {
            if url.ends_with('/') || !url.contains("://") {
                return invalid(key, "must be an absolute URL without a trailing slash");
            }
        }
        let hlsjs = &self.web.hlsjs_url;
        if !hlsjs.is_empty()
            && (!(hlsjs.starts_with("https://")
                || hlsjs.starts_with("http://")
                || hlsjs.starts_with('/'))
                || hlsjs.contains(|c: char| {
                    c.is_whitespace() || matches!(c, ';' | '"' | '\'' | '<' | '>')
                }))
        {
            return invalid(
                "web.hlsjs_url",
                "must be empty, a path on this server or an http(s) URL",
            );
        }
        if self.web.embed_origins.iter().any(|o| {
            o.is_empty()
                || o.contains(|c: char| c.is_whitespace() || matches!(c, ';' | ',' | '"' | '\''))
        }) {
            return invalid(
                "web.embed_origins",
                "each must be * or an origin such as https://example.com",
            );
        }
        if self.auth.play_token_ttl_secs == 0 {
            return invalid("auth.play_token_ttl_secs", "must be at least 1");
        }
        if self.api.rate_limit_per_token == 0 || self.api.rate_limit_per_ip == 0 {
            return invalid(
                "api.rate_limit_*",
                "rate limits must be at least 1 per minute",
            );
        }
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes", "must be at least 1024");
        }
        if self.webhooks.max_attempts == 0 || self.webhooks.timeout_ms == 0 {
            return invalid(
                "webhooks.max_attempts",
                "attempts and timeout must be greater than 0",
            );
        }
        if self.camera.max_frame_bytes < 1024 || self.camera.max_frame_bytes > 64 * 1024 * 1024 {
            return invalid(
                "camera.max_frame_bytes",
                "must be between 1024 and 67108864",
            );
        }
        if self.camera.max_invalid_frames == 0
            || self.camera.idle_timeout_ms == 0
            || self.camera.ping_interval_ms == 0
        {
            return invalid(
                "camera.max_invalid_frames",
                "limits and intervals must be greater than 0",
            );
        }
        if !(16..=256).contains(&self.transcode.opus_bitrate_kbps) {
            return invalid("transcode.opus_bitrate_kbps", "must be between 16 and 256");
        }
        if !(32..=320).contains(&self.transcode.aac_bitrate_kbps) {
            return invalid("transcode.aac_bitrate_kbps", "must be between 32 and 320");
        }
        if !(50..=50_000).contains(&self.camera.h264_bitrate_kbps) {
            return invalid("camera.h264_bitrate_kbps", "must be between 50 and 50000");
        }
        let w = &self.webrtc;
        if !w.tcp_listen.is_empty() && w.tcp_listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "webrtc.tcp_listen",
                &format!("{:?} is not an address like 0.0.0.0:8189", w.tcp_listen),
            );
        }
        if let Some(bad) = w.ice_servers.iter().find(|u| !u.starts_with("stun:")) {
            return invalid(
                "webrtc.ice_servers",
                &format!(
                    "{bad:?} must start with stun: (the server is ICE-lite: it needs no TURN; \
                     clients bring their own)"
                ),
            );
        }
        if let Some(bad) = w
            .public_ips
            .iter()
            .find(|ip| ip.parse::<std::net::IpAddr>().is_err())
        {
            return invalid(
                "webrtc.public_ips",
                &format!("{bad:?} is not an IP address"),
            );
        }
        if w.connect_timeout_ms == 0 || w.disconnect_timeout_ms == 0 || w.max_sessions == 0 {
            return invalid(
                "webrtc.connect_timeout_ms",
                "timeouts and max_sessions must be greater than 0",
            );
        }
        if w.reserved_whip_sessions >= w.max_sessions {
            return invalid(
                "webrtc.reserved_whip_sessions",
                "must be below webrtc.max_sessions",
            );
        }
        if !(100..=10_000).contains(&self.recording.fragment_ms) {
            return invalid("recording.fragment_ms", "must be between 100 and 10000");
        }
        if let Some((key, problem)) = self.recording.storage.problem() {
            return Err(ConfigError::Invalid { key, problem });
        }
        if self.recording.max_duration_secs == 0 {
            return invalid("recording.max_duration_secs", "must be at least 1");
        }
        if self.http.max_connections == 0 || self.http.header_read_timeout_ms == 0 {
            return invalid(
                "http.max_connections",
                "max_connections and header_read_timeout_ms must be greater than 0",
            );
        }
        if !(1000..=60_000).contains(&self.stats.health_interval_ms) {
            return invalid("stats.health_interval_ms", "must be between 1000 and 60000");
        }
        if self.hls.session_timeout_ms < 1000 {
            return invalid("hls.session_timeout_ms", "must be at least 1000");
        }
        let r = &self.restream;
        if r.max_per_stream == 0
            || r.backoff_initial_ms == 0
            || r.backoff_max_ms < r.backoff_initial_ms
            || r.connect_timeout_ms == 0
            || r.write_timeout_ms == 0
        {
            return invalid(
                "restream.backoff_initial_ms",
                "max_per_stream, backoff and timeouts must be greater than 0 \
                 (backoff_max_ms >= backoff_initial_ms)",
            );
        }
        if !(16..=65_536).contains(&r.send_buffer_kb) {
            return invalid("restream.send_buffer_kb", "must be between 16 and 65536");
        }
        if !(128..=65_536).contains(&r.out_chunk_size) {
            return invalid("restream.out_chunk_size", "must be between 128 and 65536");
        }
        if !r.ca_file.is_empty() && !std::path::Path::new(&r.ca_file).is_file() {
            return invalid("restream.ca_file", "no such file");
        }
        if let Some(token) = &self.auth.admin_token {
            if token.len() < 16 {
                return invalid("auth.admin_token", "must be at least 16 characters");
            }
        }
        Ok(())
    }
}

/// Applies `MEDIA_SERVER_{SECTION}_{KEY}` variables to the parsed table. The type of each key
/// is taken from the defaults, so `MEDIA_SERVER_RTMP_MAX_CONNECTIONS=abc` is reported as a bad
/// integer rather than as a confusing type error later.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default())
        .map_err(|e| ConfigError::Parse(one_line(&e.to_string())))?;
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let env_err = |problem: String| ConfigError::Env {
            var: var.clone(),
            problem,
        };
        let (section, key) = [
            "server",
            "http",
            "rtmp",
            "hls",
            "auth",
            "api",
            "webhooks",
            "camera",
            "transcode",
            "webrtc",
            "recording_storage",
            "recording",
            "restream",
            "stats",
            "web",
            "security",
            "external_auth",
        ]
        .iter()
        .find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .map(|k| (*s, k.to_owned()))
        })
        .ok_or_else(|| env_err("does not name a config section".into()))?;
        // `[recording.storage]` is a table inside `[recording]`.
        let path: &[&str] = match section {
            "recording_storage" => &["recording", "storage"],
            _ => std::slice::from_ref(&section),
        };
        let default = path
            .iter()
            .try_fold(&defaults, |t, name| t.get(*name).and_then(|v| v.as_table()))
            .and_then(|s| s.get(&key));
        let value = match default {
            Some(toml::Value::Integer(_)) => raw
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| env_err(format!("{raw:?} is not an integer")))?,
            Some(toml::Value::Boolean(_)) => raw
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| env_err(format!("{raw:?} is not true or false")))?,
            // Lists are comma-separated: MEDIA_SERVER_API_CORS_ALLOWED_ORIGINS=a,b
            Some(toml::Value::Array(_)) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| toml::Value::String(v.to_owned()))
                    .collect(),
            ),
            Some(_) => toml::Value::String(raw.clone()),
            None if section == "auth" && key == "admin_token" => toml::Value::String(raw.clone()),
            None => return Err(env_err(format!("unknown key {section}.{key}"))),
        };
        let mut section_table = &mut *table;
        for name in path {
            let entry = section_table
                .entry(*name)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            section_table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(env_err(format!(
                        "[{}] in the file is not a table",
                        path.join(".")
                    )))
                }
            };
        }
        section_table.insert(key, value);
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../media-server.toml");
        let c = Config::from_toml_and_env(text, vec![]).unwrap();
        assert_eq!(c.hls.part_target_ms, 200);
        assert_eq!(c.rtmp.listen.port(), 1935);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml_and_env("", vec![]).unwrap();
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.hls.segment_target_ms, 2000);
        assert!(c.auth.admin_token.is_none());
    }

    #[test]
    fn recording_storage_reads_from_the_file_and_the_environment_and_is_checked() {
        let c = Config::from_toml_and_env(
            "[recording]\nfsync = false\n[recording.storage]\nkind = \"s3\"\nbucket = \"b\"\n",
            env(&[
                ("MEDIA_SERVER_RECORDING_STORAGE_PART_SIZE_MB", "16"),
                (
                    "MEDIA_SERVER_RECORDING_STORAGE_ENDPOINT",
                    "http://127.0.0.1:9000",
                ),
                ("MEDIA_SERVER_RECORDING_MAX_DURATION_SECS", "60"),
            ]),
        )
        .unwrap();
        let st = &c.recording.storage;
        assert!(st.is_s3() && st.bucket == "b" && st.part_size_mb == 16);
        assert_eq!(st.endpoint, "http://127.0.0.1:9000");
        assert!(!c.recording.fsync && c.recording.max_duration_secs == 60);
        assert!(
            Config::from_toml_and_env("", env(&[]))
                .unwrap()
                .recording
                .storage
                .kind
                == "local"
        );
        for (toml, key) in [
            ("kind = \"ftp\"", "recording.storage.kind"),
            ("kind = \"s3\"", "recording.storage.bucket"),
            (
                "kind = \"s3\"\nbucket = \"b\"\npart_size_mb = 0",
                "recording.storage.part_size_mb",
            ),
            (
                "kind = \"s3\"\nbucket = \"b\"\nprefix = \"/x\"",
                "recording.storage.prefix",
            ),
            (
                "kind = \"s3\"\nbucket = \"b\"\nendpoint = \"ftp://x\"",
                "recording.storage.endpoint",
            ),
            (
                "kind = \"s3\"\nbucket = \"b\"\ndownload = \"x\"",
                "recording.storage.download",
            ),
        ] {
            let err =
                Config::from_toml_and_env(&format!("[recording.storage]\n{toml}\n"), env(&[]))
                    .and_then(|c| c.validate().map(|_| c))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let mut c = Config::default();
        c.recording.storage.secret_access_key = "do-not-print-me".into();
        assert!(!format!("{c:?}").contains("do-not-print-me"));
    }

    #[test]
    fn env_overrides_keys_with_their_types() {
        let c = Config::from_toml_and_env(
            "[http]\nlisten = \"0.0.0.0:1\"\n",
            env(&[
                ("MEDIA_SERVER_HTTP_LISTEN", "127.0.0.1:9000"),
                ("MEDIA_SERVER_HLS_PART_TARGET_MS", "300"),
                ("MEDIA_SERVER_AUTH_ADMIN_TOKEN", "0123456789abcdef0123"),
                (
                    "MEDIA_SERVER_API_CORS_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.hls.part_target_ms, 300);
        assert_eq!(c.auth.admin_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(
            c.api.cors_allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml_and_env("[rtmp]\nmax_connections = \"many\"\n", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connections"), "{e}");
        assert!(!e.contains('\n'));
        let e = Config::from_toml_and_env("[hls]\nwindow_segments = 1\n", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hls.window_segments"), "{e}");
        let e = Config::from_toml_and_env("[hls]\nbogus = 1\n", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::from_toml_and_env("", env(&[("MEDIA_SERVER_RTMP_MAX_CONNECTIONS", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MEDIA_SERVER_RTMP_MAX_CONNECTIONS"), "{e}");
        let e = Config::from_toml_and_env("", env(&[("MEDIA_SERVER_HTTP_NOPE", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key http.nope"), "{e}");
    }

    #[test]
    fn cluster_mode_needs_postgres_redis_an_address_and_a_secret() {
        let full = "[store]\nurl = \"postgres://root@127.0.0.1:5432/test\"\n\
                    [cluster]\nenabled = true\nnode_id = \"a-1\"\n\
                    advertise_url = \"http://127.0.0.1:8080\"\n\
                    redis_url = \"redis://127.0.0.1:6379\"\n\
                    secret = \"0123456789abcdef0123456789abcdef\"\n";
        let c = Config::from_toml_and_env(full, vec![]).unwrap();
        assert!(c.store.is_postgres() && c.cluster.enabled);
        assert_eq!(c.cluster.node_name(), "a-1");
        // Each missing piece is one line naming its key.
        for (drop, key) in [
            (
                "url = \"postgres://root@127.0.0.1:5432/test\"\n",
                "cluster.enabled",
            ),
            (
                "redis_url = \"redis://127.0.0.1:6379\"\n",
                "cluster.redis_url",
            ),
            (
                "advertise_url = \"http://127.0.0.1:8080\"\n",
                "cluster.advertise_url",
            ),
            (
                "secret = \"0123456789abcdef0123456789abcdef\"\n",
                "cluster.secret",
            ),
        ] {
            let e = Config::from_toml_and_env(&full.replace(drop, ""), vec![])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && !e.contains('\n'), "{drop}: {e}");
        }
        let e = Config::from_toml_and_env("[store]\nurl = \"mysql://x/y\"\n", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.url"), "{e}");
        let e = Config::from_toml_and_env("[cluster]\nnode_id = \"a b\"\n", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.node_id"), "{e}");
        // PostgreSQL alone (no cluster) is fine, and the embedded default needs nothing.
        let c = Config::from_toml_and_env(
            "[store]\nurl = \"postgresql://root@localhost/test\"\n",
            vec![],
        )
        .unwrap();
        assert!(c.store.is_postgres() && !c.cluster.enabled);
        let c = Config::from_toml_and_env("", vec![]).unwrap();
        assert!(!c.store.is_postgres() && !c.cluster.enabled);
        assert!(!c.cluster.node_name().is_empty(), "the host name");
    }
}
