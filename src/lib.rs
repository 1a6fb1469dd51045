//! `media-server`: a native media server. Broadcasters push RTMP; viewers pull LL-HLS or RTMP;
//! an embedded HTTP API reports and manages streams.
//!
//! Map of the modules (arrows point down only: upper layers use lower ones):
//!
//! - [`app`]: wires everything; [`start`] runs the whole server in-process.
//! - [`api`]: axum routes of the control API (`/api/v1`) and `/healthz`.
//! - [`net`]: protocol servers that own sockets (RTMP: publish and play on one port).
//! - [`ingest`]: publishers → hub ([`ingest::rtmp`]: FLV tags → frames).
//! - [`egress`]: hub → viewers ([`egress::hls`]: LL-HLS segmenter and HTTP;
//!   [`egress::rtmp_play`]: frames → FLV tags).
//! - [`hub`]: registry of live streams, GOP cache, bounded lossy fan-out, ingest stats.
//! - [`proto`]: sans-IO protocols and containers (RTMP chunks/AMF0/session, FLV, fMP4,
//!   playlists).
//! - [`media`]: [`media::Frame`], tracks, H.264 and AAC configurations.
//! - [`web`]: the player, embed and console pages (HTML/CSS/JS embedded in the binary).
//! - [`webhooks`]: signed, retried delivery of [`events`] to subscribers.
//! - [`store`]: SQLite on its own thread; [`config`]: typed configuration;
//!   [`error`]: the HTTP error shape; [`play_token`]: signed play tokens.

// The one exception: zerocopy maps memfds for sendfile (documented there).
#![deny(unsafe_code)]

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod egress;
pub mod error;
pub mod events;
pub mod extauth;
pub mod hub;
pub mod ingest;
pub mod media;
pub mod net;
pub mod outbound;
pub mod play_token;
pub mod proto;
pub mod redact;
pub mod shutdown;
pub mod store;
pub mod web;
pub mod webhooks;
pub mod zerocopy;

pub use app::{start, Bootstrap, Server, StartError};
pub use config::Config;
