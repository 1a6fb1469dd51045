//! WHEP playback: `POST /whep/{stream_id}` with a recvonly SDP offer → `201 Created` with the
//! answer; the peer then receives the stream's video (H.264 from RTMP, WHIP or the camera
//! encoder; VP9 and AV1 from Enhanced RTMP) and its Opus audio, starting at the GOP cache's
//! keyframe. AAC audio (RTMP, cameras) is transcoded to Opus once per stream while any WebRTC
//! viewer needs it ([`crate::egress::transcode`]); with `[transcode] audio = false` such a
//! stream plays video-only over WHEP, which the stream's detail says.
//!
//! Private streams need a play token (`?token=` or `Authorization: Bearer`). Every WHEP peer
//! holds a hub subscription, so it is counted as a viewer while connected; a slow peer drops
//! to the next keyframe like any subscriber.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use str0m::bwe::{Bitrate, BweKind};
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::Event as StrEvent;

use crate::egress::transcode::{next_frame, AudioTranscoders};
use crate::error::HttpError;
use crate::hub::{Event, LiveStream};
use crate::media::audio::{Direction, OPUS_RATE};
use crate::media::{CodecConfig, Frame, Track, Tracks};
use crate::net::webrtc::{Driver, SessionKind, WebVideo};
use crate::net::webrtc_http::{bearer, created_response, require_sdp, sdp_error, WebRtcContext};
use crate::proto::rtp::avcc_to_annexb;
use crate::proto::sdp;

/// Least time between two keyframe requests one viewer passes on to the publisher.
const KEYFRAME_ASK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a WHEP request waits for a just-started stream to announce its tracks.
const TRACKS_WAIT: Duration = Duration::from_secs(5);

/// `?token=`.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// What WebRTC can carry of a stream's tracks.
#[derive(Debug, Clone, PartialEq)]
pub struct Playable {
    /// The video track browsers decode over WebRTC: H.264, VP9 or AV1.
    pub video: Option<Track>,
    /// The Opus track (the stream's own, or the one transcoded from its AAC).
    pub audio: Option<Track>,
    /// The audio is Opus transcoded from the stream's AAC.
    pub audio_transcoded: bool,
    /// Why something is left out (AAC audio), for the API.
    pub note: Option<String>,
}

impl Playable {
    /// What of `tracks` a WHEP viewer gets; `b_frames` when the video has been seen to
    /// reorder frames (browsers' WebRTC decoders assume it does not); `transcoded` is the Opus
    /// track AAC becomes when audio transcoding is on.
    pub fn of(tracks: &Tracks, b_frames: bool, transcoded: Option<Track>) -> Playable {
        let video = tracks
            .list
            .iter()
            .find(|t| web_video(&t.codec).is_some())
            .cloned();
        let mut audio = tracks
            .list
            .iter()
            .find(|t| matches!(t.codec, CodecConfig::Opus(_)))
            .cloned();
        let audio_transcoded = audio.is_none() && transcoded.is_some();
        if audio_transcoded {
            audio = transcoded;
        }
        let mut notes = Vec::new();
        if audio.is_none()
            && tracks
                .list
                .iter()
                .any(|t| matches!(t.codec, CodecConfig::Aac(_)))
        {
            notes.push(
                "AAC audio is not transcoded to Opus ([transcode] audio = false): WebRTC (WHEP) \
                 plays video only",
            );
        }
        if tracks
            .list
            .iter()
            .any(|t| matches!(t.codec, CodecConfig::Hevc(_)))
        {
            notes.push(
                "HEVC is not played over WebRTC (browsers decode it there only with some \
                 hardware): WHEP plays audio only; use HLS, or publish H.264, VP9 or AV1",
            );
        }
        let h264 = video
            .as_ref()
            .is_some_and(|v| matches!(v.codec, CodecConfig::H264(_)));
        if b_frames && h264 {
            notes.push(
                "the video has B-frames, which browsers' WebRTC decoders do not support: \
                 publish with B-frames off (x264 -bf 0, OBS profile baseline) for WHEP",
            );
        }
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        Playable {
            video,
            audio,
            audio_transcoded,
            note,
        }
    }
}

/// The WebRTC codec a track's video goes out as, if browsers take it over WebRTC.
fn web_video(codec: &CodecConfig) -> Option<WebVideo> {
    match codec {
        CodecConfig::H264(_) => Some(WebVideo::H264),
        CodecConfig::Vp9(c) if c.profile == 0 => Some(WebVideo::Vp9),
        CodecConfig::Av1(c) if c.profile == 0 => Some(WebVideo::Av1),
        _ => None,
    }
}

/// The WebRTC codec of the stream's first playable video track.
fn first_web_video(tracks: &Tracks) -> Option<WebVideo> {
    tracks.list.iter().find_map(|t| web_video(&t.codec))
}

/// `POST /whep/{stream_id}`.
pub async fn play(
    State(ctx): State<WebRtcContext>,
    axum::extract::ConnectInfo(peer_addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Path(stream_id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    require_sdp(&headers)?;
    let token = q.token.or_else(|| bearer(&headers));
    ctx.gate
        .check_viewer(&stream_id, token.as_deref(), "whep", Some(peer_addr.ip()))
        .await?;
    let offer = sdp::parse_offer(&body).map_err(sdp_error)?;
    ctx.hub
        .ensure_live(&stream_id)
        .await
        .map_err(HttpError::from_hub)?;
    let stream = ctx
        .hub
        .get(&stream_id)
        .ok_or_else(|| HttpError::not_found("the stream is not live"))?;
    let tracks = wait_for_tracks(&stream).await?;
    let transcoded = ctx.transcoders.output_track(&tracks, Direction::AacToOpus);
    let playable = Playable::of(&tracks, stream.snapshot().has_b_frames, transcoded);
    if playable.video.is_none() && playable.audio.is_none() {
        return Err(HttpError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "unsupported_codec",
            "the stream has no track WebRTC can carry (H.264, VP9 or AV1 video, Opus audio)",
        ));
    }
    let video = playable
        .video
        .as_ref()
        .and_then(|t| web_video(&t.codec))
        .unwrap_or(WebVideo::H264);
    if playable.video.is_some() {
        let (offered, name) = match video {
            WebVideo::H264 => (offer.has_video(), "H.264 (packetization-mode=1)"),
            WebVideo::Vp9 => (
                offer.has_video_codec(sdp::OfferedCodec::is_vp9_profile0),
                "VP9 (profile 0)",
            ),
            WebVideo::Av1 => (offer.has_video_codec(sdp::OfferedCodec::is_av1), "AV1"),
        };
        if !offered {
            return Err(sdp_error(sdp::SdpError::UnsupportedCodec(format!(
                "the stream's video is {name} but the offer has no such video section"
            ))));
        }
    }
    let offer_text = String::from_utf8_lossy(&body).into_owned();
    let accepted = ctx.webrtc.accept(
        crate::net::webrtc::PeerFor::Viewer(peer_addr.ip(), video),
        SessionKind::Whep,
        &stream_id,
        None,
        &offer_text,
        ctx.shutdown.clone(),
    )?;
    let session = accepted.session.clone();
    tracing::info!(stream = %stream_id, session = %session.id, "whep: viewer joined");
    let transcoders = playable.audio_transcoded.then(|| ctx.transcoders.clone());
    let audio = playable.audio.is_some() && offer.has_audio();
    tokio::spawn(run(accepted.driver, stream, audio, transcoders));
    Ok(created_response(&session, "whep", accepted.answer))
}

async fn wait_for_tracks(stream: &LiveStream) -> Result<Arc<Tracks>, HttpError> {
    let deadline = tokio::time::Instant::now() + TRACKS_WAIT;
    loop {
        if let Some(t) = stream.tracks() {
            return Ok(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HttpError::unavailable(
                "the stream is live but has not sent media yet; retry",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where a track's frames go: the negotiated m-line, payload type and clock, and the RTP
/// time of the frame that started it.
struct Outgoing {
    mid: Mid,
    pt: Pt,
    clock: Frequency,
    first_pts: Option<(i64, u32)>,
}

impl Outgoing {
    fn new(driver: &mut Driver, mid: Mid, clock: Frequency) -> Option<Outgoing> {
        let pt = driver.rtc().writer(mid)?.payload_params().next()?.pt();
        Some(Outgoing {
            mid,
            pt,
            clock,
            first_pts: None,
        })
    }

    /// RTP time of a frame: its pts on the codec clock, counted from the track's first
    /// frame (str0m adds the random offset RTP wants).
    fn media_time(&mut self, pts: i64, timescale: u32) -> MediaTime {
        let (first, _) = *self.first_pts.get_or_insert((pts, timescale));
        let clock = i128::from(self.clock.get());
        let ticks = (i128::from(pts - first) * clock) / i128::from(timescale.max(1));
        // A frame before the first (B-frame reordering, audio ahead of video) stays positive.
        MediaTime::new((ticks + 10 * clock).max(0) as u64, self.clock)
    }
}

/// Writes one frame to the engine (one mutation); false if the engine refused it for good.
fn write(driver: &mut Driver, out: &mut Outgoing, frame: &Frame, timescale: u32, data: Bytes) {
    let time = out.media_time(frame.pts, timescale);
    // The wallclock str0m puts in sender reports (which browsers sync audio and video by)
    // is when the frame is written, as the `webrtc` crate did: the mapping then follows the
    // send times of both tracks. A pts-based mapping (pts plus one offset per session) was
    // tried and made Chromium's audio drift later by ~50 ms a second for transcoded AAC, a
    // cause not found yet. str0m needs it not in the future, and it keeps a track's frames
    // in the order they are written (B-frames stay in decode order).
    let wallclock = Instant::now();
    let Some(writer) = driver.rtc().writer(out.mid) else {
        return;
    };
    // A sample made for this viewer (Annex B) moves into the engine without a copy.
    if let Err(err) = writer.write(out.pt, wallclock, time, Vec::from(data)) {
        tracing::debug!(%err, "whep: frame not sent");
    }
}

/// The sample a video frame goes out as: Annex B H.264 (parameter sets before a keyframe),
/// a VP9 frame as it is, an AV1 temporal unit for RTP.
fn video_sample(codec: &CodecConfig, frame: &Frame) -> Option<Bytes> {
    match codec {
        CodecConfig::H264(avc) => {
            let prefix: Vec<Bytes> = if frame.keyframe {
                avc.sps.iter().chain(avc.pps.iter()).cloned().collect()
            } else {
                Vec::new()
            };
            Some(avcc_to_annexb(&frame.data, avc.nal_length_size, &prefix))
        }
        CodecConfig::Vp9(_) => Some(frame.data.clone()),
        CodecConfig::Av1(c) => Some(av1_sample(c, frame)),
        _ => None,
    }
}

async fn run(
    mut driver: Driver,
    stream: Arc<LiveStream>,
    wants_audio: bool,
    transcoders: Option<Arc<AudioTranscoders>>,
) {
    let mut events = Vec::new();
    let mut mids: Vec<(Mid, MediaKind)> = Vec::new();
    let mut video: Option<Outgoing> = None;
    let mut audio: Option<Outgoing> = None;
    let mut sub = None;
    let mut feed = None;
    let mut tracks: Option<Arc<Tracks>> = None;
    let mut waiting_for_keyframe = true;
    let mut last_keyframe_ask: Option<Instant> = None;
    let mut congestion = Congestion::default();
    let mut connected = false;
    let mut desired: Option<Bitrate> = None;
    let reason = loop {
        if let Err(reason) = driver.drain(&mut events) {
            break reason;
        }
        for event in events.drain(..) {
            match event {
                StrEvent::MediaAdded(m) => mids.push((m.mid, m.kind)),
                StrEvent::Connected => connected = true,
                StrEvent::EgressBitrateEstimate(
                    BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. },
                ) => {
                    if congestion.on_estimate(estimate.as_u64(), Instant::now()) {
                        waiting_for_keyframe = true;
                    }
                    // Lets the estimator probe up to what the stream needs (after the
                    // events: one mutation, then a drain).
                    let stream_bps = congestion.stream_bps();
                    if stream_bps > 0 {
                        desired = Some(Bitrate::bps(stream_bps * 11 / 10));
                    }
                }
                // The viewer lost video: the publisher is asked for a keyframe (at most once a
                // second per viewer); until one comes the viewer keeps decoding what it gets,
                // as browsers conceal.
                StrEvent::KeyframeRequest(_)
                    if last_keyframe_ask.is_none_or(|t| t.elapsed() >= KEYFRAME_ASK_INTERVAL) =>
                {
                    stream.request_keyframe();
                    last_keyframe_ask = Some(Instant::now());
                }
                _ => {}
            }
        }
        if let Some(bitrate) = desired.take() {
            driver.rtc().bwe().set_desired_bitrate(bitrate);
            continue;
        }
        if connected && sub.is_none() && !mids.is_empty() {
            // Media starts once ICE and DTLS are up (str0m reports the m-lines after that),
            // from the GOP cache's keyframe; AAC audio arrives as Opus from the stream's
            // shared transcoder, subscribed to at the same moment.
            for (mid, kind) in mids.clone() {
                if kind == MediaKind::Video && video.is_none() {
                    video = Outgoing::new(&mut driver, mid, Frequency::NINETY_KHZ);
                } else if kind == MediaKind::Audio && audio.is_none() && wants_audio {
                    audio = Outgoing::new(&mut driver, mid, Frequency::FORTY_EIGHT_KHZ);
                }
            }
            sub = Some(stream.subscribe("whep"));
            feed = match (&transcoders, &audio) {
                (Some(t), Some(_)) => t.feed(&stream, Direction::AacToOpus),
                _ => None,
            };
        }
        tokio::select! {
            wake = driver.wait() => if let Err(reason) = driver.handle(wake) {
                break reason;
            },
            opus = next_frame(&mut feed) => {
                if let (Some(frame), Some(a)) = (opus, audio.as_mut()) {
                    stream.add_bytes_out(frame.data.len() as u64);
                    let data = frame.data.clone();
                    write(&mut driver, a, &frame, OPUS_RATE, data);
                }
            }
            event = recv(&mut sub) => {
                let Some(event) = event else {
                    break "the stream ended";
                };
                match event {
                    Event::Tracks(t) => {
                        // The answer named one video codec; a publisher that switches codecs
                        // mid-stream cannot continue on it: the viewer reconnects and
                        // negotiates anew.
                        let before = tracks.as_ref().and_then(|t| first_web_video(t));
                        let after = first_web_video(&t);
                        if video.is_some() && tracks.is_some() && before != after {
                            break "the stream changed its video codec";
                        }
                        tracks = Some(t);
                        waiting_for_keyframe = true;
                    }
                    Event::Frame(frame) => {
                        let Some(t) = tracks.as_ref().and_then(|t| t.get(frame.track)) else {
                            continue;
                        };
                        let timescale = t.timescale;
                        if web_video(&t.codec).is_some() {
                            let Some(v) = video.as_mut() else { continue };
                            congestion.on_video(frame.data.len(), Instant::now());
                            if (waiting_for_keyframe || congestion.keyframes_only()) && !frame.keyframe {
                                continue;
                            }
                            waiting_for_keyframe = false;
                            let Some(sample) = video_sample(&t.codec, &frame) else { continue };
                            stream.add_bytes_out(frame.data.len() as u64);
                            write(&mut driver, v, &frame, timescale, sample);
                        } else if matches!(t.codec, CodecConfig::Opus(_)) {
                            let Some(a) = audio.as_mut() else { continue };
                            stream.add_bytes_out(frame.data.len() as u64);
                            let data = frame.data.clone();
                            write(&mut driver, a, &frame, timescale, data);
                        }
                    }
                }
            }
        }
    };
    driver.finish(reason);
}

/// How long the estimator gets to find the viewer's bandwidth before it is acted on.
const SETTLE: Duration = Duration::from_secs(5);
/// How far back the stream's video bitrate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Per-viewer congestion response. The viewer's engine estimates its bandwidth from TWCC
/// feedback; when the estimate falls below 80 % of the stream's video bitrate, the viewer
/// gets keyframes only (a picture every GOP and full audio) instead of a send queue that
/// grows by seconds; above 120 % it gets every frame again from the next keyframe. With the
/// ABR issue's renditions this is where a viewer would switch down instead.
#[derive(Debug, Default)]
pub struct Congestion {
    offered: std::collections::VecDeque<(Instant, usize)>,
    offered_bytes: usize,
    estimate_bps: Option<u64>,
    keyframes_only: bool,
    first: Option<Instant>,
    /// Times the viewer was switched to keyframes only.
    pub downgrades: u64,
}

impl Congestion {
    /// Counts a video frame of the stream (sent or not) at `now`.
    pub fn on_video(&mut self, bytes: usize, now: Instant) {
        self.first.get_or_insert(now);
        self.offered.push_back((now, bytes));
        self.offered_bytes += bytes;
        while let Some(&(t, b)) = self.offered.front() {
            if now.duration_since(t) <= RATE_WINDOW {
                break;
            }
            self.offered.pop_front();
            self.offered_bytes -= b;
        }
    }

    /// The stream's video bitrate over the window, in bit/s.
    pub fn stream_bps(&self) -> u64 {
        let secs = RATE_WINDOW.as_secs_f64();
        (self.offered_bytes as f64 * 8.0 / secs) as u64
    }

    /// A new bandwidth estimate for the viewer; returns true when the viewer should resume
    /// every frame (from the next keyframe).
    pub fn on_estimate(&mut self, bps: u64, now: Instant) -> bool {
        self.estimate_bps = Some(bps);
        let stream = self.stream_bps();
        // Too little data to judge (the estimator's first seconds, an audio-only moment).
        let settled = self
            .first
            .is_some_and(|t| now.saturating_duration_since(t) >= SETTLE);
        if !settled || self.offered.len() < 10 || stream == 0 {
            return false;
        }
        if !self.keyframes_only && bps.saturating_mul(10) < stream.saturating_mul(8) {
            self.keyframes_only = true;
            self.downgrades += 1;
            tracing::info!(
                estimate_bps = bps,
                stream_bps = stream,
                "whep: viewer congested; keyframes only"
            );
            false
        } else if self.keyframes_only && bps.saturating_mul(10) > stream.saturating_mul(12) {
            self.keyframes_only = false;
            tracing::info!(
                estimate_bps = bps,
                stream_bps = stream,
                "whep: viewer recovered; every frame"
            );
            true
        } else {
            false
        }
    }

    /// Whether only keyframes go to the viewer now.
    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only
    }
}

/// The next hub event once subscribed; pending before.
async fn recv(sub: &mut Option<crate::hub::Subscription>) -> Option<Event> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// An AV1 temporal unit for RTP: temporal delimiters dropped (the RTP payload format says
/// so), and a keyframe without a sequence header gets the one from the `av1C` record.
fn av1_sample(config: &crate::media::av1::Av1Config, frame: &Frame) -> Bytes {
    let data = crate::media::av1::strip_temporal_delimiters(&frame.data);
    if frame.keyframe && crate::media::av1::find_sequence_header(&data).is_none() {
        let obus = config.config_obus();
        if !obus.is_empty() {
            return Bytes::from([obus, &data[..]].concat());
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::converted_track;
    use crate::media::test_support::av_tracks;

    #[test]
    fn a_congested_viewer_gets_keyframes_only_until_it_recovers() {
        let t0 = Instant::now();
        let mut c = Congestion::default();
        // 30 fps of 2,500-byte frames: 600 kbit/s, for 6 s.
        for i in 0..180 {
            c.on_video(2_500, t0 + Duration::from_millis(i * 33));
        }
        let stream = c.stream_bps();
        assert!((550_000..=650_000).contains(&stream), "{stream}");
        // The estimator's first seconds are not acted on.
        assert!(!c.on_estimate(100_000, t0 + Duration::from_secs(1)));
        assert!(!c.keyframes_only());
        let now = t0 + Duration::from_secs(6);
        assert!(!c.on_estimate(1_000_000, now));
        assert!(!c.keyframes_only());
        assert!(!c.on_estimate(400_000, now));
        assert!(c.keyframes_only() && c.downgrades == 1);
        // Between the two thresholds nothing changes.
        assert!(!c.on_estimate(650_000, now));
        assert!(c.keyframes_only());
        assert!(
            c.on_estimate(800_000, now),
            "recovered: resume from the next keyframe"
        );
        assert!(!c.keyframes_only());
    }

    #[test]
    fn aac_plays_as_transcoded_opus_or_says_why_not() {
        let tracks = av_tracks();
        let opus = converted_track(&tracks, Direction::AacToOpus);
        let on = Playable::of(&tracks, false, opus);
        let audio = on.audio.expect("the AAC plays as Opus");
        assert!(matches!(audio.codec, CodecConfig::Opus(_)));
        assert_eq!(audio.timescale, OPUS_RATE);
        assert!(on.audio_transcoded && on.note.is_none(), "{:?}", on.note);
        let off = Playable::of(&tracks, false, None);
        assert!(off.audio.is_none() && !off.audio_transcoded);
        assert!(off
            .note
            .is_some_and(|n| n.contains("AAC audio is not transcoded")));
    }
}
