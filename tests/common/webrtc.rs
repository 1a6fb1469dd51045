//! WebRTC test peers built with the `webrtc` crate (its own packetizer and depacketizer, not
//! ours): a WHIP publisher replaying the committed H.264 + Opus fixtures in real time, and a
//! WHEP player that writes what it receives to an Annex B file for ffprobe.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media::io::h26x_reader::H26xSampleReader;
use rtc::media::io::h26x_writer::H26xWriter;
use rtc::media::io::ogg_reader::OggReader;
use rtc::media::io::Writer;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::Track;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry,
};

pub const H264_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/whip_baseline.h264"
);
pub const OPUS_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/whip_opus.ogg");

pub fn h264_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        rtcp_feedback: vec![],
    }
}

pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub enum Ev {
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
}

struct Handler {
    tx: mpsc::UnboundedSender<Ev>,
    gathered: mpsc::UnboundedSender<()>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(Ev::State(state));
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(Ev::Track(track));
    }
}

pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub events: mpsc::UnboundedReceiver<Ev>,
    gathered: mpsc::UnboundedReceiver<()>,
}

pub async fn new_peer() -> Peer {
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: h264_codec(),
                payload_type: 102,
            },
            RtpCodecKind::Video,
        )
        .unwrap();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )
        .unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut engine).unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let (gtx, gathered) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { tx, gathered: gtx }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .unwrap();
    Peer {
        pc: Arc::new(pc),
        events,
        gathered,
    }
}

impl Peer {
    /// Creates the offer and waits for its candidates.
    pub async fn offer(&mut self) -> String {
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.gathered.recv()).await;
        self.pc.local_description().await.unwrap().sdp
    }

    pub async fn accept(&self, answer: String) {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
    }

    /// Waits for `Connected`; tracks seen meanwhile are returned.
    pub async fn connected(&mut self, secs: u64) -> Vec<Arc<dyn TrackRemote>> {
        let mut tracks = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ev::State(RTCPeerConnectionState::Connected))) => return tracks,
                Ok(Some(Ev::State(s))) => {
                    assert!(
                        !matches!(
                            s,
                            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        ),
                        "peer {s}"
                    );
                }
                Ok(Some(Ev::Track(t))) => tracks.push(t),
                Ok(None) | Err(_) => panic!("peer did not connect in {secs} s"),
            }
        }
    }
}

/// POSTs an SDP offer; returns status, headers and body.
pub async fn post_sdp(
    url: &str,
    bearer: Option<&str>,
    sdp: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(url)
        .header("content-type", "application/sdp")
        .body(sdp.to_owned());
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.expect("post");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

pub struct Publishing {
    pub peer: Peer,
    pub location: String,
    pub sender: tokio::task::JoinHandle<()>,
}

pub fn local_track(kind: RtpCodecKind, codec: RTCRtpCodec) -> Arc<TrackLocalStaticSample> {
    let label = if kind == RtpCodecKind::Audio {
        "audio"
    } else {
        "video"
    };
    Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "test".to_owned(),
                label.to_owned(),
                label.to_owned(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(rand::random::<u32>()),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            ),
        )
        .unwrap(),
    )
}

/// Publishes the fixtures over WHIP at `url`, `loops` times over; returns once connected.
pub async fn whip_publish(url: &str, key: &str, loops: usize) -> Publishing {
    let mut peer = new_peer().await;
    let video = local_track(RtpCodecKind::Video, h264_codec());
    let audio = local_track(RtpCodecKind::Audio, opus_codec());
    let vs = peer
        .pc
        .add_track(video.clone() as Arc<dyn TrackLocal>)
        .await
        .unwrap();
    let as_ = peer
        .pc
        .add_track(audio.clone() as Arc<dyn TrackLocal>)
        .await
        .unwrap();
    let offer = peer.offer().await;
    let (status, headers, answer) = post_sdp(url, Some(key), &offer).await;
    assert_eq!(status, 201, "WHIP POST: {answer}");
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_owned();
    assert!(headers.get("etag").is_some(), "ETag");
    peer.accept(answer).await;
    peer.connected(10).await;
    let vpt = vs.get_parameters().await.unwrap().rtp_parameters.codecs[0].payload_type;
    let apt = as_.get_parameters().await.unwrap().rtp_parameters.codecs[0].payload_type;
    let sender = tokio::spawn(async move {
        let v = tokio::spawn(send_video(video, vpt, loops));
        let a = tokio::spawn(send_audio(audio, apt, loops));
        let _ = v.await;
        let _ = a.await;
    });
    Publishing {
        peer,
        location,
        sender,
    }
}

async fn send_video(track: Arc<TrackLocalStaticSample>, pt: u8, loops: usize) {
    let ssrc = track.ssrcs().await[0];
    let frame = Duration::from_nanos(1_000_000_000 / 30);
    let start = tokio::time::Instant::now();
    let mut n = 0u32;
    for _ in 0..loops {
        let file = std::fs::File::open(H264_FIXTURE).unwrap();
        let mut reader = H26xSampleReader::new(std::io::BufReader::new(file), 1 << 20, false);
        while let Ok(sample) = reader.next_sample() {
            let timed = sample.timed;
            if track
                .sample_writer(ssrc, pt)
                .write_sample(&Sample {
                    data: sample.data,
                    duration: if timed { frame } else { Duration::ZERO },
                    ..Sample::new(Instant::now())
                })
                .await
                .is_err()
            {
                return;
            }
            if timed {
                n += 1;
                tokio::time::sleep_until(start + frame * n).await;
            }
        }
    }
}

async fn send_audio(track: Arc<TrackLocalStaticSample>, pt: u8, loops: usize) {
    let ssrc = track.ssrcs().await[0];
    let start = tokio::time::Instant::now();
    let mut elapsed = Duration::ZERO;
    for _ in 0..loops {
        let file = std::fs::File::open(OPUS_FIXTURE).unwrap();
        let (mut ogg, _) = OggReader::new(std::io::BufReader::new(file), true).unwrap();
        let mut last_granule = 0u64;
        while let Ok((page, header)) = ogg.parse_next_page() {
            let samples = header.granule_position.saturating_sub(last_granule);
            last_granule = header.granule_position;
            let duration = Duration::from_micros(samples * 1_000_000 / 48_000);
            if track
                .sample_writer(ssrc, pt)
                .write_sample(&Sample {
                    data: page.freeze(),
                    duration,
                    ..Sample::new(Instant::now())
                })
                .await
                .is_err()
            {
                return;
            }
            elapsed += duration;
            tokio::time::sleep_until(start + elapsed).await;
        }
    }
}

/// A WHEP viewer: returns the peer (connected) and the tracks it was offered.
pub async fn whep_play(url: &str, token: Option<&str>) -> (Peer, String) {
    let (peer, offer) = viewer_offer().await;
    let (status, headers, answer) = post_sdp(url, token, &offer).await;
    assert_eq!(status, 201, "WHEP POST: {answer}");
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_owned();
    peer.accept(answer).await;
    (peer, location)
}

/// Receives video for `secs` seconds into an Annex B file; returns RTP packets received.
pub async fn receive_video(peer: &mut Peer, path: &std::path::Path, secs: u64) -> u64 {
    let mut writer = H26xWriter::new(std::fs::File::create(path).unwrap(), false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut video: Option<Arc<dyn TrackRemote>> = None;
    let mut packets = 0;
    loop {
        if let Some(t) = &video {
            match tokio::time::timeout_at(deadline, t.poll()).await {
                Ok(Some(TrackRemoteEvent::OnRtpPacket(p))) => {
                    packets += 1;
                    writer.write_rtp(&p).unwrap();
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        } else {
            match tokio::time::timeout_at(deadline, peer.events.recv()).await {
                Ok(Some(Ev::Track(t))) => {
                    if t.kind().await == RtpCodecKind::Video {
                        video = Some(t);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    writer.close().unwrap();
    packets
}

/// A peer with H.264 + Opus send tracks and its offer (nothing is sent).
pub async fn publisher_offer() -> (Peer, String) {
    let mut peer = new_peer().await;
    for (kind, codec) in [
        (RtpCodecKind::Video, h264_codec()),
        (RtpCodecKind::Audio, opus_codec()),
    ] {
        peer.pc
            .add_track(local_track(kind, codec) as Arc<dyn TrackLocal>)
            .await
            .unwrap();
    }
    let offer = peer.offer().await;
    (peer, offer)
}

/// A WHEP viewer's offer (recvonly video and audio) and the peer that made it (keep it
/// alive while the offer is in use).
pub async fn viewer_offer() -> (Peer, String) {
    let mut peer = new_peer().await;
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        peer.pc
            .add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
    }
    let offer = peer.offer().await;
    (peer, offer)
}
