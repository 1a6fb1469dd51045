//! WHIP ingest (RFC 9725): `POST /whip/{app}/{name}` with `Authorization: Bearer {stream_key}`
//! and an SDP offer → `201 Created` with the answer; the peer's H.264 and Opus RTP become hub
//! frames, so a WHIP stream gets HLS, recording, restream and stats like any RTMP stream.
//!
//! [`WhipMedia`] is the sans-IO core: RTP packets (and their arrival time) in, tracks and
//! frames out. H.264 goes through our depacketizer ([`crate::proto::rtp`]) into AVCC access
//! units; SPS/PPS become the track's `avcC` (re-announced if they change). A damaged access
//! unit (lost packet) is dropped together with everything up to the next IDR, and a PLI asks
//! the publisher for that IDR. Both tracks are placed on one timeline by the arrival time of
//! their first packet; after that RTP timestamps rule (no drift from network jitter).
//! Without a jitter buffer, reordered or retransmitted packets count as loss.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::Ssrc;
use str0m::Event;

use crate::error::HttpError;
use crate::hub::{HubError, Publisher, TransportStats};
use crate::media::h264::AvcConfig;
use crate::media::opus::OpusConfig;
use crate::media::{annexb, CodecConfig, Frame, Track, TrackId, Tracks};
use crate::net::webrtc::{Driver, SessionKind};
use crate::net::webrtc_http::{bearer, created_response, require_sdp, sdp_error, WebRtcContext};
use crate::proto::rtp::{H264Depacketizer, ReceiveStats, TimestampUnwrapper};
use crate::proto::sdp;

/// Hub track id of WHIP video.
pub const VIDEO_TRACK: TrackId = TrackId(0);
/// Hub track id of WHIP audio.
pub const AUDIO_TRACK: TrackId = TrackId(1);
/// Least time between two keyframe requests.
const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// What [`WhipMedia`] produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Announce (or re-announce) the tracks.
    Tracks(Arc<Tracks>),
    /// A frame for the hub.
    Frame(Frame),
}

#[derive(Debug, Default)]
struct Timeline {
    unwrap: TimestampUnwrapper,
    offset: Option<i64>,
    stats: ReceiveStats,
}

impl Timeline {
    /// Unwrapped timestamp shifted so the first packet sits at its arrival time.
    fn place(&mut self, seq: u16, ts: u32, arrival_ticks: i64) -> i64 {
        let t = self.unwrap.unwrap(ts);
        let offset = *self.offset.get_or_insert(arrival_ticks - t);
        self.stats.record(seq, t, arrival_ticks);
        t + offset
    }
}

/// The sans-IO WHIP media path of one session.
#[derive(Debug)]
pub struct WhipMedia {
    start: Instant,
    expect_video: bool,
    expect_audio: bool,
    depacketizer: H264Depacketizer,
    video: Timeline,
    audio: Timeline,
    avc: Option<AvcConfig>,
    announced: Option<Arc<Tracks>>,
    need_keyframe: bool,
    /// The HLS segmenter wants a keyframe (a segment is due): ask until an IDR arrives.
    keyframe_wanted: bool,
    stats: TransportStats,
    units: Vec<crate::proto::rtp::AccessUnit>,
}

impl WhipMedia {
    /// For an offer that sends video and/or audio; `start` anchors the timeline.
    pub fn new(expect_video: bool, expect_audio: bool, start: Instant) -> Self {
        WhipMedia {
            start,
            expect_video,
            expect_audio,
            depacketizer: H264Depacketizer::new(),
            video: Timeline::default(),
            audio: Timeline::default(),
            avc: None,
            announced: None,
            need_keyframe: expect_video,
            keyframe_wanted: false,
            stats: TransportStats::default(),
            units: Vec::new(),
        }
    }

    /// Whether a keyframe should be asked for (PLI): the next useful video frame is an IDR we
    /// have not got, or a keyframe was asked for (a segment is due) and none came yet.
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe || (self.keyframe_wanted && self.expect_video)
    }

    /// A keyframe is wanted (the HLS segment reached its target): asked for until one comes.
    pub fn want_keyframe(&mut self) {
        self.keyframe_wanted = true;
    }

    /// Counts a keyframe request sent.
    pub fn keyframe_requested(&mut self) {
        self.stats.keyframe_requests += 1;
    }

    /// Current statistics.
    pub fn stats(&self) -> TransportStats {
        let mut s = self.stats.clone();
        s.packets_received = self.video.stats.received() + self.audio.stats.received();
        s.packets_lost = self.video.stats.lost() + self.audio.stats.lost();
        s.jitter_ms = if self.expect_video {
            self.video.stats.jitter() / 90.0
        } else {
            self.audio.stats.jitter() / 48.0
        };
        s.jitter_ms = (s.jitter_ms * 100.0).round() / 100.0;
        s
    }

    fn ticks(&self, at: Instant, rate: i64) -> i64 {
        let d = at.saturating_duration_since(self.start);
        (d.as_micros() as i64).saturating_mul(rate) / 1_000_000
    }

    /// One H.264 RTP packet.
    pub fn on_video(
        &mut self,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &Bytes,
        at: Instant,
        out: &mut Vec<Output>,
    ) {
        let arrival = self.ticks(at, 90_000);
        let _ = self.video.place(seq, ts, arrival);
        let mut units = std::mem::take(&mut self.units);
        if self
            .depacketizer
            .push(seq, ts, marker, payload, &mut units)
            .is_err()
        {
            self.stats.malformed_packets += 1;
        }
        for au in units.drain(..) {
            // Same unwrap state as the packet (its timestamp was just seen).
            let Some(offset) = self.video.offset else {
                continue;
            };
            let dts = self.video.unwrap.unwrap(au.rtp_timestamp) + offset;
            self.on_access_unit(au, dts, out);
        }
        self.units = units;
    }

    fn on_access_unit(
        &mut self,
        au: crate::proto::rtp::AccessUnit,
        dts: i64,
        out: &mut Vec<Output>,
    ) {
        if !au.complete {
            self.stats.damaged_frames += 1;
            self.need_keyframe = true;
            return;
        }
        let nals: Vec<&[u8]> = au.nals.iter().map(|n| &n[..]).collect();
        let sps = nals.iter().find(|n| annexb::nal_type(n) == annexb::NAL_SPS);
        let pps = nals.iter().find(|n| annexb::nal_type(n) == annexb::NAL_PPS);
        if let (Some(sps), Some(pps)) = (sps, pps) {
            let same = self.avc.as_ref().is_some_and(|c| {
                c.sps.first().is_some_and(|s| &s[..] == *sps)
                    && c.pps.first().is_some_and(|p| &p[..] == *pps)
            });
            if !same {
                match annexb::avcc_record(sps, pps).map(AvcConfig::parse) {
                    Some(Ok(avc)) => {
                        self.avc = Some(avc);
                        self.announce(out);
                    }
                    _ => {
                        tracing::warn!("whip: unusable SPS/PPS");
                        self.stats.malformed_packets += 1;
                    }
                }
            }
        }
        let (sample, idr) = annexb::to_avcc_sample(&nals);
        if sample.is_empty() {
            return;
        }
        if self.avc.is_none() || (self.need_keyframe && !idr) {
            self.stats.damaged_frames += u64::from(self.avc.is_some());
            self.need_keyframe = true;
            return;
        }
        self.need_keyframe = false;
        if idr {
            self.keyframe_wanted = false;
        }
        if self.announced.is_none() {
            return;
        }
        out.push(Output::Frame(Frame {
            track: VIDEO_TRACK,
            pts: dts,
            dts,
            keyframe: idr,
            data: sample,
        }));
    }

    /// One Opus RTP packet.
    pub fn on_audio(
        &mut self,
        seq: u16,
        ts: u32,
        payload: &Bytes,
        at: Instant,
        out: &mut Vec<Output>,
    ) {
        let arrival = self.ticks(at, 48_000);
        let dts = self.audio.place(seq, ts, arrival);
        if crate::media::opus::packet_samples(payload).is_none() {
            self.stats.malformed_packets += 1;
            return;
        }
        if self.announced.is_none() && !self.expect_video {
            self.announce(out);
        }
        if self.announced.is_none() {
            return;
        }
        out.push(Output::Frame(Frame {
            track: AUDIO_TRACK,
            pts: dts,
            dts,
            keyframe: true,
            data: payload.clone(),
        }));
    }

    fn announce(&mut self, out: &mut Vec<Output>) {
        let mut list = Vec::new();
        if let Some(avc) = &self.avc {
            list.push(Track {
                id: VIDEO_TRACK,
                timescale: 90_000,
                codec: CodecConfig::H264(avc.clone()),
            });
        } else if self.expect_video {
            return;
        }
        if self.expect_audio {
            list.push(Track {
                id: AUDIO_TRACK,
                timescale: 48_000,
                codec: CodecConfig::Opus(OpusConfig::webrtc()),
            });
        }
        let tracks = Tracks::shared(list);
        self.announced = Some(tracks.clone());
        out.push(Output::Tracks(tracks));
    }
}

/// `POST /whip/{app}/{name}`.
pub async fn publish(
    State(ctx): State<WebRtcContext>,
    axum::extract::ConnectInfo(peer_addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    require_sdp(&headers)?;
    let key = bearer(&headers).ok_or_else(|| {
        HttpError::unauthorized("a stream key is required: Authorization: Bearer {stream_key}")
    })?;
    let mut found = ctx
        .store
        .find_stream_by_key(&app, &key)
        .await
        .map_err(|e| HttpError::internal("checking a WHIP key", e))?
        .filter(|s| s.name == name);
    if let (None, Some(ext)) = (&found, &ctx.external) {
        // Not a key of ours: the platform may allow it (a JWT or its own credential).
        let row = ctx
            .store
            .find_stream_by_name(&app, &name)
            .await
            .map_err(|e| HttpError::internal("finding a stream", e))?;
        if let Some(row) = row {
            let req = crate::extauth::AuthRequest {
                action: crate::extauth::Action::Publish.as_str(),
                protocol: "whip",
                app: &app,
                name: &name,
                stream_id: &row.id,
                client_ip: Some(peer_addr.ip()),
                credential: &key,
            };
            if ext.allows(&req).await {
                found = Some(row);
            }
        }
    }
    let stream = found.ok_or_else(|| {
        tracing::warn!(%app, "whip: publish refused: unknown stream key");
        HttpError::unauthorized(format!("unknown stream key for {app}/{name}"))
    })?;
    let offer = sdp::parse_offer(&body).map_err(sdp_error)?;
    offer.check_publishable().map_err(sdp_error)?;
    if ctx.hub.published(&stream.id).is_some() {
        return Err(HttpError::conflict("the stream already has a publisher"));
    }
    let offer_text = String::from_utf8_lossy(&body).into_owned();
    // FIR (RFC 5104) besides PLI when the publisher offered `ccm fir`.
    let fir = offer_text.contains(" ccm fir");
    let accepted = ctx.webrtc.accept(
        crate::net::webrtc::PeerFor::Publisher,
        SessionKind::Whip,
        &stream.id,
        Some(&key),
        &offer_text,
        ctx.shutdown.clone(),
    )?;
    // Claimed only now, so a failed negotiation never shows the stream live (dropping the
    // driver ends the session).
    let publisher = match ctx.hub.publish_owned(&stream.id, "whip").await {
        Ok(p) => p,
        Err(HubError::AlreadyPublishing(_) | HubError::OwnedElsewhere(_)) => {
            return Err(HttpError::conflict("the stream already has a publisher"));
        }
        Err(HubError::Unavailable(reason)) => {
            return Err(HttpError::unavailable(format!(
                "the server cannot take the stream now ({reason}); try again later"
            )));
        }
    };
    let session = accepted.session.clone();
    tracing::info!(stream = %stream.id, session = %session.id, "whip: publishing");
    let media = WhipMedia::new(offer.has_video(), offer.has_audio(), Instant::now());
    tokio::spawn(run(accepted.driver, publisher, media, fir));
    Ok(created_response(&session, "whip", accepted.answer))
}

/// The session's loop: RTP from the engine into [`WhipMedia`], frames into the hub,
/// keyframe requests (PLI, and FIR when offered) back to the publisher.
async fn run(mut driver: Driver, publisher: Publisher, mut media: WhipMedia, fir: bool) {
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut video_mid: Option<Mid> = None;
    let mut kinds: HashMap<Ssrc, bool> = HashMap::new();
    let mut last_pli: Option<Instant> = None;
    let mut fir_due = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let reason = loop {
        if let Err(reason) = driver.drain(&mut events) {
            break reason;
        }
        for event in events.drain(..) {
            match event {
                Event::MediaAdded(m) if m.kind == MediaKind::Video => video_mid = Some(m.mid),
                Event::RtpPacket(p) => {
                    let ssrc = p.header.ssrc;
                    let video = *kinds.entry(ssrc).or_insert_with(|| {
                        let mid = driver.rtc().direct_api().stream_rx(&ssrc).map(|s| s.mid());
                        mid.is_some() && mid == video_mid
                    });
                    let h = &p.header;
                    let (seq, ts, marker) = (h.sequence_number, h.timestamp, h.marker);
                    let payload = Bytes::from_owner(p.payload);
                    if video {
                        media.on_video(seq, ts, marker, &payload, p.timestamp, &mut out);
                    } else {
                        media.on_audio(seq, ts, &payload, p.timestamp, &mut out);
                    }
                    for o in out.drain(..) {
                        match o {
                            Output::Tracks(t) => publisher.set_tracks(t),
                            Output::Frame(f) => publisher.push(f),
                        }
                    }
                }
                _ => {}
            }
        }
        if fir_due {
            fir_due = false;
            if let Some(mid) = video_mid {
                if let Some(rx) = driver.rtc().direct_api().stream_rx_by_mid(mid, None) {
                    rx.request_keyframe(KeyframeRequestKind::Fir);
                    continue;
                }
            }
        }
        if media.needs_keyframe() && last_pli.is_none_or(|t| t.elapsed() >= PLI_INTERVAL) {
            if let Some(mid) = video_mid {
                let mut api = driver.rtc().direct_api();
                if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                    // One request per mutation: a FIR (when offered) after the next drain.
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    fir_due = fir;
                    media.keyframe_requested();
                    last_pli = Some(Instant::now());
                    continue;
                }
            }
        }
        tokio::select! {
            wake = driver.wait() => if let Err(reason) = driver.handle(wake) {
                break reason;
            },
            _ = tick.tick() => publisher.set_transport_stats(media.stats()),
            _ = publisher.stopped() => break "publisher disconnected by the API",
            _ = publisher.keyframe_requested() => media.want_keyframe(),
        }
    };
    let stream = driver.session().stream_id.clone();
    driver.finish(reason);
    drop(publisher);
    tracing::info!(%stream, "whip: publisher finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fu_a(
        seq: u16,
        ts: u32,
        nal: &[u8],
        out: &mut Vec<Output>,
        m: &mut WhipMedia,
        at: Instant,
    ) -> u16 {
        // Split a NAL in two FU-A packets.
        let (h, body) = (nal[0], &nal[1..]);
        let mid = body.len() / 2;
        let p1 = [&[(h & 0xe0) | 28, 0x80 | (h & 0x1f)][..], &body[..mid]].concat();
        let p2 = [&[(h & 0xe0) | 28, 0x40 | (h & 0x1f)][..], &body[mid..]].concat();
        m.on_video(seq, ts, false, &Bytes::from(p1), at, out);
        m.on_video(seq + 1, ts, true, &Bytes::from(p2), at, out);
        seq + 2
    }

    // From tests/fixtures/whip_baseline.h264 (x264, constrained baseline, 320x240).
    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xda, 0x05, 0x07, 0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40,
        0x00, 0x00, 0x0f, 0x03, 0xc5, 0x0a, 0xa8,
    ];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn stap(sps: &[u8], pps: &[u8]) -> Bytes {
        let mut v = vec![24u8];
        for n in [sps, pps] {
            v.extend_from_slice(&(n.len() as u16).to_be_bytes());
            v.extend_from_slice(n);
        }
        Bytes::from(v)
    }

    #[test]
    fn idr_with_parameter_sets_announces_and_publishes() {
        let t0 = Instant::now();
        let mut m = WhipMedia::new(true, true, t0);
        let mut out = Vec::new();
        // Audio before the first keyframe is not published (no tracks yet).
        m.on_audio(1, 1000, &Bytes::from_static(&[0xfc, 1]), t0, &mut out);
        assert!(out.is_empty());
        assert!(m.needs_keyframe());
        m.on_video(100, 5000, false, &stap(SPS, PPS), t0, &mut out);
        fu_a(101, 5000, &[0x65, 1, 2, 3, 4, 5, 6], &mut out, &mut m, t0);
        assert!(!m.needs_keyframe());
        assert_eq!(out.len(), 2, "{out:?}");
        let Output::Tracks(tracks) = &out[0] else {
            panic!()
        };
        assert_eq!(tracks.list.len(), 2);
        let CodecConfig::H264(avc) = &tracks.list[0].codec else {
            panic!()
        };
        assert_eq!(avc.info.width, 320);
        let Output::Frame(f) = &out[1] else { panic!() };
        assert!(f.keyframe);
        assert_eq!(f.dts, 0);
        assert_eq!(&f.data[..], &[0, 0, 0, 7, 0x65, 1, 2, 3, 4, 5, 6]);
        out.clear();
        // 33 ms later a P-frame; audio 20 ms after its first packet.
        m.on_video(
            103,
            5000 + 3000,
            true,
            &Bytes::from_static(&[0x41, 9]),
            t0,
            &mut out,
        );
        m.on_audio(2, 1960, &Bytes::from_static(&[0xfc, 2]), t0, &mut out);
        let dts: Vec<i64> = out
            .iter()
            .map(|o| match o {
                Output::Frame(f) => f.dts,
                Output::Tracks(_) => -1,
            })
            .collect();
        assert_eq!(dts, vec![3000, 960]);
    }

    #[test]
    fn loss_drops_frames_until_the_next_idr() {
        let t0 = Instant::now();
        let mut m = WhipMedia::new(true, false, t0);
        let mut out = Vec::new();
        m.on_video(1, 0, false, &stap(SPS, PPS), t0, &mut out);
        m.on_video(2, 0, true, &Bytes::from_static(&[0x65, 1]), t0, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        // seq 3 lost: frame at 3000 damaged; the following P-frame is dropped too.
        m.on_video(4, 3000, true, &Bytes::from_static(&[0x41, 1]), t0, &mut out);
        m.on_video(5, 6000, true, &Bytes::from_static(&[0x41, 2]), t0, &mut out);
        assert!(out.is_empty());
        assert!(m.needs_keyframe());
        m.on_video(6, 9000, true, &Bytes::from_static(&[0x65, 3]), t0, &mut out);
        assert_eq!(out.len(), 1);
        let s = m.stats();
        assert_eq!(s.packets_lost, 1);
        assert_eq!(s.damaged_frames, 2);
    }

    #[test]
    fn audio_only_publishes_at_once() {
        let t0 = Instant::now();
        let mut m = WhipMedia::new(false, true, t0);
        let mut out = Vec::new();
        m.on_audio(
            1,
            0,
            &Bytes::from_static(&[0xfc]),
            t0 + Duration::from_millis(100),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        // A packet that is not Opus is counted, not published.
        m.on_audio(2, 960, &Bytes::from_static(&[0xff, 0]), t0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(m.stats().malformed_packets, 1);
        let Output::Frame(f) = &out[1] else { panic!() };
        assert_eq!(f.dts, 4800);
    }
}
