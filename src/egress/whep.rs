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
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP9,
};
use rtc::rtp::codec::av1::Av1Payloader;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::codec::vp9::Vp9Payloader;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::RTCPeerConnectionState;
use webrtc::rtp_transceiver::RtpSender;

use crate::egress::transcode::{next_frame, AudioTranscoders};
use crate::error::HttpError;
use crate::hub::{Event, LiveStream};
use crate::media::audio::{Direction, OPUS_RATE};
use crate::media::{CodecConfig, Frame, Track, Tracks};
use crate::net::webrtc::{PeerEvent, Session, SessionKind, WebVideo};
use crate::net::webrtc_http::{bearer, created_response, require_sdp, sdp_error, WebRtcContext};
use crate::proto::rtp::avcc_to_annexb;
use crate::proto::sdp;

/// RTP payload size we packetize to (fits a 1280-byte path MTU with SRTP overhead).
const RTP_MTU: usize = 1200;
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
    let peer = ctx
        .webrtc
        .new_peer(crate::net::webrtc::PeerFor::Viewer(peer_addr.ip(), video))
        .await?;
    let offer_text = String::from_utf8_lossy(&body).into_owned();
    let setup = async {
        ctx.webrtc.apply_offer(&peer, offer_text).await?;
        let mut senders = Vec::new();
        if playable.video.is_some() {
            senders.push(add_track(&peer.pc, RtpCodecKind::Video, video).await?);
        }
        if playable.audio.is_some() && offer.has_audio() {
            senders.push(add_track(&peer.pc, RtpCodecKind::Audio, video).await?);
        }
        let answer = ctx.webrtc.answer(&peer).await?;
        Ok::<_, crate::net::webrtc::PeerError>((senders, answer))
    }
    .await;
    let (senders, answer) = match setup {
        Ok(v) => v,
        Err(e) => {
            ctx.webrtc.discard(peer).await;
            return Err(e.into());
        }
    };
    let (session, events) = ctx.webrtc.register(
        peer,
        SessionKind::Whep,
        &stream_id,
        None,
        ctx.shutdown.clone(),
    );
    tracing::info!(stream = %stream_id, session = %session.id, "whep: viewer joined");
    let transcoders = playable.audio_transcoded.then(|| ctx.transcoders.clone());
    tokio::spawn(run(session.clone(), stream, events, senders, transcoders));
    Ok(created_response(&session, "whep", answer))
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

/// One outgoing track: its RTP state and the sender it was negotiated on.
struct Outgoing {
    kind: RtpCodecKind,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
}

async fn add_track(
    pc: &Arc<dyn webrtc::peer_connection::PeerConnection>,
    kind: RtpCodecKind,
    video: WebVideo,
) -> Result<Outgoing, crate::net::webrtc::PeerError> {
    let ssrc = rand::random::<u32>();
    let video_codec = |mime: &str, fmtp: &str| RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    };
    let codec = match (kind, video) {
        (RtpCodecKind::Audio, _) => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        (_, WebVideo::H264) => video_codec(
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
        (_, WebVideo::Vp9) => video_codec(MIME_TYPE_VP9, "profile-id=0"),
        (_, WebVideo::Av1) => video_codec(MIME_TYPE_AV1, "level-idx=5;profile=0;tier=0"),
    };
    let label = if kind == RtpCodecKind::Audio {
        "audio"
    } else {
        "video"
    };
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "media-server".to_owned(),
        label.to_owned(),
        label.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )));
    let sender = pc
        .add_track(track.clone() as Arc<dyn TrackLocal>)
        .await
        .map_err(|e| crate::net::webrtc::PeerError::WebRtc(e.to_string()))?;
    Ok(Outgoing {
        kind,
        track,
        sender,
        ssrc,
    })
}

/// RTP state of one outgoing track.
struct RtpOut {
    out: Outgoing,
    payload_type: u8,
    seq: u16,
    ts_base: u32,
    first_pts: Option<(i64, u32)>,
}

impl RtpOut {
    /// RTP timestamp of a frame: its pts on the codec clock, from a random base.
    fn timestamp(&mut self, pts: i64, timescale: u32, clock: u32) -> u32 {
        let (first, _) = *self.first_pts.get_or_insert((pts, timescale));
        let ticks = (i128::from(pts - first) * i128::from(clock)) / i128::from(timescale.max(1));
        self.ts_base.wrapping_add(ticks as u32)
    }

    async fn send(&mut self, payloads: Vec<Bytes>, timestamp: u32) -> bool {
        let n = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: i + 1 == n,
                    payload_type: self.payload_type,
                    sequence_number: self.seq,
                    timestamp,
                    ssrc: self.out.ssrc,
                    ..Default::default()
                },
                payload,
            };
            self.seq = self.seq.wrapping_add(1);
            if self.out.track.write_rtp(packet).await.is_err() {
                return false;
            }
        }
        true
    }
}

async fn negotiated(out: Outgoing) -> Option<RtpOut> {
    let params = out.sender.get_parameters().await.ok()?;
    let payload_type = params.rtp_parameters.codecs.first()?.payload_type;
    Some(RtpOut {
        out,
        payload_type,
        seq: rand::random(),
        ts_base: rand::random(),
        first_pts: None,
    })
}

async fn run(
    session: Arc<Session>,
    stream: Arc<LiveStream>,
    mut events: mpsc::UnboundedReceiver<PeerEvent>,
    senders: Vec<Outgoing>,
    transcoders: Option<Arc<AudioTranscoders>>,
) {
    // Media starts once ICE and DTLS are up.
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(PeerEvent::State(RTCPeerConnectionState::Connected)) => break,
                Some(_) => {}
                None => return,
            },
            _ = session.closed() => return,
        }
    }
    let mut video = None;
    let mut audio = None;
    for s in senders {
        let kind = s.kind;
        match negotiated(s).await {
            Some(o) if kind == RtpCodecKind::Video => video = Some(o),
            Some(o) => audio = Some(o),
            None => tracing::warn!(session = %session.id, "whep: a track was not negotiated"),
        }
    }
    let mut sub = stream.subscribe("whep");
    // AAC audio arrives as Opus from the stream's shared transcoder, subscribed to with the
    // hub at the same moment so both start from the GOP cache.
    let mut feed = match (&transcoders, &audio) {
        (Some(t), Some(_)) => t.feed(&stream, Direction::AacToOpus),
        _ => None,
    };
    let mut tracks: Option<Arc<Tracks>> = None;
    let mut h264 = H264Payloader::default();
    let mut vp9 = Vp9Payloader::default();
    let mut av1 = Av1Payloader {};
    let mut waiting_for_keyframe = true;
    loop {
        let event = tokio::select! {
            e = sub.recv() => e,
            opus = next_frame(&mut feed) => {
                if let (Some(frame), Some(a)) = (opus, audio.as_mut()) {
                    stream.add_bytes_out(frame.data.len() as u64);
                    let ts = a.timestamp(frame.pts, OPUS_RATE, 48_000);
                    if !a.send(vec![frame.data.clone()], ts).await {
                        break;
                    }
                }
                continue;
            }
            _ = session.closed() => break,
            ev = events.recv() => { if ev.is_none() { break; } continue; }
        };
        let Some(event) = event else {
            tracing::info!(session = %session.id, "whep: the stream ended");
            break;
        };
        match event {
            Event::Tracks(t) => {
                // The answer named one video codec; a publisher that switches codecs
                // mid-stream cannot continue on it: the viewer reconnects and negotiates anew.
                let before = tracks.as_ref().and_then(|t| first_web_video(t));
                let after = first_web_video(&t);
                if video.is_some() && tracks.is_some() && before != after {
                    tracing::info!(session = %session.id, "whep: the stream changed its video codec; closing");
                    break;
                }
                tracks = Some(t);
                waiting_for_keyframe = true;
            }
            Event::Frame(frame) => {
                let Some(t) = tracks.as_ref().and_then(|t| t.get(frame.track)) else {
                    continue;
                };
                stream.add_bytes_out(frame.data.len() as u64);
                let is_video = web_video(&t.codec).is_some();
                if is_video && video.is_some() {
                    if waiting_for_keyframe && !frame.keyframe {
                        continue;
                    }
                    waiting_for_keyframe = false;
                }
                let ok = match &t.codec {
                    CodecConfig::H264(avc) => match video.as_mut() {
                        Some(v) => send_video(v, &mut h264, avc, &frame, t.timescale).await,
                        None => true,
                    },
                    CodecConfig::Vp9(_) => match video.as_mut() {
                        Some(v) => {
                            send_payloaded(v, &mut vp9, &frame.data, &frame, t.timescale).await
                        }
                        None => true,
                    },
                    CodecConfig::Av1(c) => match video.as_mut() {
                        Some(v) => {
                            let sample = av1_sample(c, &frame);
                            send_payloaded(v, &mut av1, &sample, &frame, t.timescale).await
                        }
                        None => true,
                    },
                    CodecConfig::Opus(_) => match audio.as_mut() {
                        Some(a) => {
                            let ts = a.timestamp(frame.pts, t.timescale, 48_000);
                            a.send(vec![frame.data.clone()], ts).await
                        }
                        None => true,
                    },
                    _ => true,
                };
                if !ok {
                    break;
                }
            }
        }
    }
    session.close();
}

/// Packetizes `data` (the frame's sample as the codec's payloader takes it) and sends it at
/// the frame's time on the 90 kHz video clock; a sample the payloader refuses is skipped.
async fn send_payloaded(
    v: &mut RtpOut,
    payloader: &mut impl Payloader,
    data: &Bytes,
    frame: &Frame,
    timescale: u32,
) -> bool {
    let ts = v.timestamp(frame.pts, timescale, 90_000);
    match payloader.payload(RTP_MTU, data) {
        Ok(payloads) => v.send(payloads, ts).await,
        Err(_) => true,
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

async fn send_video(
    v: &mut RtpOut,
    payloader: &mut H264Payloader,
    avc: &crate::media::h264::AvcConfig,
    frame: &Frame,
    timescale: u32,
) -> bool {
    let prefix: Vec<Bytes> = if frame.keyframe {
        avc.sps.iter().chain(avc.pps.iter()).cloned().collect()
    } else {
        Vec::new()
    };
    let annexb = avcc_to_annexb(&frame.data, avc.nal_length_size, &prefix);
    let Ok(payloads) = payloader.payload(RTP_MTU, &annexb) else {
        return true;
    };
    let ts = v.timestamp(frame.pts, timescale, 90_000);
    v.send(payloads, ts).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::converted_track;
    use crate::media::test_support::av_tracks;

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
