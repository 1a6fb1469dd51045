//! Egress: hub subscriptions → what viewers receive. Each egress sees only the hub's
//! subscribe interface.

pub mod hls;
pub mod mjpeg;
pub mod record;
pub mod restream;
pub mod rtmp_play;
pub mod storage;
pub mod transcode;
pub mod upload;
pub mod vod;
pub mod whep;

use std::future::Future;
use std::pin::Pin;

use crate::error::HttpError;

/// Decides whether a playback request may watch a stream: private streams need a valid play
/// token (401 without one, 403 with a bad or expired one). Implemented above egress (it needs
/// the store), so egress stays independent of the API and the database.
pub trait PlaybackGate: Send + Sync + 'static {
    /// `Ok` to serve, or the error to answer.
    fn check<'a>(
        &'a self,
        stream_id: &'a str,
        token: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), HttpError>> + Send + 'a>>;

    /// As [`PlaybackGate::check`], for a viewer over `protocol` from `client` (an external
    /// authoriser is told both).
    fn check_viewer<'a>(
        &'a self,
        stream_id: &'a str,
        token: Option<&'a str>,
        _protocol: &'static str,
        _client: Option<std::net::IpAddr>,
    ) -> Pin<Box<dyn Future<Output = Result<(), HttpError>> + Send + 'a>> {
        self.check(stream_id, token)
    }

    /// `Ok` to serve a recording of `stream_id` whose stored privacy is `privacy` (the
    /// stream may be gone; a private recording then still needs a token of the stream's
    /// last generation, `generation_if_gone`).
    fn check_recording<'a>(
        &'a self,
        stream_id: &'a str,
        privacy: crate::store::Privacy,
        generation_if_gone: u64,
        token: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), HttpError>> + Send + 'a>>;
}

/// A gate that lets everyone in (tests, embedded use without private streams).
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenGate;

impl PlaybackGate for OpenGate {
    fn check<'a>(
        &'a self,
        _stream_id: &'a str,
        _token: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), HttpError>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }

    fn check_recording<'a>(
        &'a self,
        _stream_id: &'a str,
        _privacy: crate::store::Privacy,
        _generation_if_gone: u64,
        _token: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), HttpError>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
}
