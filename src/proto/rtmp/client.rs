//! The client side of an RTMP connection after the handshake, without I/O: what a restream
//! pusher speaks to YouTube, Twitch, Facebook or any RTMP server, and what a player (the
//! load generator's) speaks to pull a stream.
//!
//! [`ClientSession::new`] (publishing) queues `connect`; [`ClientSession::poll_event`]
//! consumes the server's messages, walks `connect` → `releaseStream`/`FCPublish`/
//! `createStream` → `publish` and reports [`ClientEvent::Publishing`] once the server answers
//! `NetStream.Publish.Start`; after that [`ClientSession::send_metadata`] and
//! [`ClientSession::send_media`] queue FLV tag bodies. [`ClientSession::player`] walks
//! `connect` → `createStream` → `play`, reports [`ClientEvent::Playing`] on
//! `NetStream.Play.Start` and then every audio/video message as [`ClientEvent::Media`].
//! Pings are answered and acknowledgements sent on the way.
//!
//! `rml_rtmp`'s `ClientSession` implements the same flow but can only be fed raw socket
//! bytes, which would put its chunk deserializer and `rml_amf0` (both with crashers, see
//! DESIGN.md) in front of whatever a remote server sends. Here every byte from the network
//! goes through our hardened [`ChunkReader`] and AMF0 decoder, as on the server side.

use bytes::{Bytes, BytesMut};

use super::amf0::Amf0Value;
use super::chunk::{ChunkReader, ChunkWriter};
use super::message::{self, RtmpMessage};
use super::server::{Housekeeping, SessionError};
use super::MediaSink;

/// Transaction ids of the commands we send.
const TXN_CONNECT: f64 = 1.0;
const TXN_RELEASE: f64 = 2.0;
const TXN_FCPUBLISH: f64 = 3.0;
const TXN_CREATE_STREAM: f64 = 4.0;
const TXN_PUBLISH: f64 = 5.0;
const TXN_PLAY: f64 = 6.0;

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted the publish: metadata and media may follow.
    Publishing,
    /// The server accepted the play (`NetStream.Play.Start`): media follows.
    Playing,
    /// An audio (type 8) or video (type 9) message received while playing: an FLV tag body.
    Media {
        /// 8 (audio) or 9 (video).
        type_id: u8,
        /// The message timestamp (ms).
        timestamp: u32,
        /// The FLV tag body.
        payload: Bytes,
    },
}

/// Where the client is in the command exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    CreatingStream,
    Publishing,
    Live,
}

/// RTMP publishing client session state.
#[derive(Debug)]
pub struct ClientSession {
    reader: ChunkReader,
    writer: ChunkWriter,
    out: BytesMut,
    stream_name: String,
    phase: Phase,
    stream_id: u32,
    housekeeping: Housekeeping,
    play: bool,
    fourccs: Vec<String>,
}

/// The FourCCs this client offers in `connect` (Enhanced RTMP `fourCcList`).
pub const ENHANCED_FOURCCS: [&str; 6] = ["hvc1", "av01", "vp09", "avc1", "Opus", "mp4a"];

/// The FourCCs an Enhanced RTMP server announces in its `connect` reply: `fourCcList`, or
/// the keys of `videoFourCcInfoMap`/`audioFourCcInfoMap` (`*` means every codec).
fn announced_fourccs(values: &[Amf0Value]) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        if let Some(Amf0Value::StrictArray(list)) = v.get("fourCcList") {
            out.extend(list.iter().filter_map(Amf0Value::as_str).map(str::to_owned));
        }
        for map in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
            if let Some(Amf0Value::Object(pairs) | Amf0Value::EcmaArray(pairs)) = v.get(map) {
                out.extend(pairs.iter().map(|(k, _)| k.clone()));
            }
        }
    }
    out.truncate(64);
    out
}

impl ClientSession {
    /// A session publishing `stream_name` (the destination's stream key; never log it) to
    /// `app` at `tc_url` (`rtmp://host/app`). Accepts messages up to `max_message_bytes`;
    /// sends chunks of `out_chunk_size`. The `connect` command is queued at once.
    pub fn new(
        app: &str,
        tc_url: &str,
        stream_name: &str,
        max_message_bytes: u32,
        out_chunk_size: u32,
    ) -> Self {
        let mut session = ClientSession {
            reader: ChunkReader::new(max_message_bytes),
            writer: ChunkWriter::new(),
            out: BytesMut::with_capacity(4096),
            stream_name: stream_name.to_owned(),
            phase: Phase::Connecting,
            stream_id: 0,
            housekeeping: Housekeeping::default(),
            play: false,
            fourccs: Vec::new(),
        };
        message::write_set_chunk_size(&mut session.writer, &mut session.out, out_chunk_size);
        let object = Amf0Value::object([
            ("app", Amf0Value::String(app.to_owned())),
            ("type", Amf0Value::String("nonprivate".into())),
            (
                "flashVer",
                Amf0Value::String("FMLE/3.0 (compatible; media-server)".into()),
            ),
            ("tcUrl", Amf0Value::String(tc_url.to_owned())),
            (
                "fourCcList",
                Amf0Value::StrictArray(
                    ENHANCED_FOURCCS
                        .iter()
                        .map(|f| Amf0Value::String((*f).to_owned()))
                        .collect(),
                ),
            ),
        ]);
        message::write_command(
            &mut session.writer,
            &mut session.out,
            0,
            "connect",
            TXN_CONNECT,
            &object,
            &[],
        );
        session
    }

    /// A session playing `stream_name` from `app` at `tc_url`: `connect` is queued at once,
    /// `createStream` and `play` follow the answers.
    pub fn player(
        app: &str,
        tc_url: &str,
        stream_name: &str,
        max_message_bytes: u32,
        out_chunk_size: u32,
    ) -> Self {
        let mut session = Self::new(app, tc_url, stream_name, max_message_bytes, out_chunk_size);
        session.play = true;
        session
    }

    /// Whether the server announced Enhanced RTMP support for `fourcc` (`hvc1`, `Opus`...)
    /// in its `connect` reply. Known once the session is publishing.
    pub fn server_accepts(&self, fourcc: &str) -> bool {
        self.fourccs.iter().any(|f| f == fourcc || f == "*")
    }

    /// Feeds bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.reader.push(data);
    }

    /// Bytes to write to the socket (empty if none).
    pub fn take_output(&mut self) -> BytesMut {
        message::take_output(&mut self.out)
    }

    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Whether the server accepted the publish (or the play, for a player).
    pub fn is_publishing(&self) -> bool {
        self.phase == Phase::Live
    }

    /// The next event, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// A malformed chunk or message, or the server refusing the connection or the publish
    /// ([`SessionError::Protocol`] with the server's status code and description).
    pub fn poll_event(&mut self) -> Result<Option<ClientEvent>, SessionError> {
        loop {
            let Some((timestamp, msg)) =
                self.housekeeping
                    .next(&mut self.reader, &mut self.writer, &mut self.out)?
            else {
                return Ok(None);
            };
            let live = self.play && self.phase == Phase::Live;
            let event = match msg {
                RtmpMessage::Command {
                    name,
                    transaction_id,
                    object,
                    args,
                } => {
                    if name == "_result" && transaction_id == TXN_CONNECT {
                        let mut all = vec![object];
                        all.extend(args.iter().cloned());
                        self.fourccs = announced_fourccs(&all);
                    }
                    self.command(&name, transaction_id, &args)?
                }
                RtmpMessage::Audio(payload) if live => Some(ClientEvent::Media {
                    type_id: message::TYPE_AUDIO,
                    timestamp,
                    payload,
                }),
                RtmpMessage::Video(payload) if live => Some(ClientEvent::Media {
                    type_id: message::TYPE_VIDEO,
                    timestamp,
                    payload,
                }),
                _ => None,
            };
            if event.is_some() {
                return Ok(event);
            }
        }
    }

    fn command(
        &mut self,
        name: &str,
        txn: f64,
        args: &[Amf0Value],
    ) -> Result<Option<ClientEvent>, SessionError> {
        match (name, self.phase) {
            ("_result", Phase::Connecting) if txn == TXN_CONNECT && self.play => {
                self.send_command(0, "createStream", TXN_CREATE_STREAM, Vec::new());
                self.phase = Phase::CreatingStream;
                Ok(None)
            }
            ("_result", Phase::Connecting) if txn == TXN_CONNECT => {
                self.send_command(
                    0,
                    "releaseStream",
                    TXN_RELEASE,
                    vec![Amf0Value::String(self.stream_name.clone())],
                );
                self.send_command(
                    0,
                    "FCPublish",
                    TXN_FCPUBLISH,
                    vec![Amf0Value::String(self.stream_name.clone())],
                );
                self.send_command(0, "createStream", TXN_CREATE_STREAM, Vec::new());
                self.phase = Phase::CreatingStream;
                Ok(None)
            }
            ("_result", Phase::CreatingStream) if txn == TXN_CREATE_STREAM => {
                let id = args
                    .iter()
                    .find_map(Amf0Value::as_f64)
                    .filter(|n| n.is_finite() && *n >= 0.0 && *n <= f64::from(u32::MAX))
                    .ok_or_else(|| {
                        SessionError::Protocol("createStream answered without a stream id".into())
                    })?;
                self.stream_id = id as u32;
                let name = Amf0Value::String(self.stream_name.clone());
                if self.play {
                    self.send_command(self.stream_id, "play", TXN_PLAY, vec![name]);
                } else {
                    let kind = Amf0Value::String("live".into());
                    self.send_command(self.stream_id, "publish", TXN_PUBLISH, vec![name, kind]);
                }
                self.phase = Phase::Publishing;
                Ok(None)
            }
            ("_error", _) => Err(refused(name, args)),
            ("onStatus", _) => {
                let info = args.iter().find(|a| a.get("code").is_some());
                let code = info
                    .and_then(|i| i.get("code"))
                    .and_then(Amf0Value::as_str)
                    .unwrap_or("");
                let level = info
                    .and_then(|i| i.get("level"))
                    .and_then(Amf0Value::as_str)
                    .unwrap_or("");
                if code == "NetStream.Publish.Start" && self.phase == Phase::Publishing {
                    self.phase = Phase::Live;
                    return Ok(Some(ClientEvent::Publishing));
                }
                if code == "NetStream.Play.Start" && self.play && self.phase == Phase::Publishing {
                    self.phase = Phase::Live;
                    return Ok(Some(ClientEvent::Playing));
                }
                if level == "error"
                    || code.ends_with(".BadName")
                    || code.ends_with(".Failed")
                    || code.ends_with("Rejected")
                {
                    return Err(refused(name, args));
                }
                Ok(None)
            }
            // `onBWDone`, `onFCPublish`, answers to releaseStream/FCPublish, ...: nothing to do.
            _ => Ok(None),
        }
    }

    fn send_command(&mut self, stream_id: u32, name: &str, txn: f64, args: Vec<Amf0Value>) {
        message::write_command(
            &mut self.writer,
            &mut self.out,
            stream_id,
            name,
            txn,
            &Amf0Value::Null,
            &args,
        );
    }

    /// Sends `@setDataFrame onMetaData` (call once publishing).
    pub fn send_metadata(&mut self, metadata: &Amf0Value) {
        message::write_data(
            &mut self.writer,
            &mut self.out,
            self.stream_id,
            &[
                Amf0Value::String("@setDataFrame".into()),
                Amf0Value::String("onMetaData".into()),
                metadata.clone(),
            ],
        );
    }

    /// Sends an FLV audio (type 8) or video (type 9) tag body.
    pub fn send_media(&mut self, type_id: u8, timestamp: u32, tag: &[u8]) {
        MediaSink::send_media_parts(self, type_id, timestamp, &[], tag);
    }

    /// Tells the server the publish is over (`FCUnpublish` + `deleteStream`).
    pub fn unpublish(&mut self) {
        if self.phase != Phase::Live {
            return;
        }
        let name = Amf0Value::String(self.stream_name.clone());
        self.send_command(self.stream_id, "FCUnpublish", 6.0, vec![name]);
        self.send_command(
            0,
            "deleteStream",
            7.0,
            vec![Amf0Value::Number(f64::from(self.stream_id))],
        );
        self.phase = Phase::Connecting;
    }
}

impl MediaSink for ClientSession {
    fn send_metadata(&mut self, metadata: &Amf0Value) {
        ClientSession::send_metadata(self, metadata);
    }

    fn send_media_parts(&mut self, type_id: u8, timestamp: u32, head: &[u8], body: &[u8]) {
        message::write_media_parts(
            &mut self.writer,
            &mut self.out,
            type_id,
            self.stream_id,
            timestamp,
            head,
            body,
        );
    }
}

/// `code: description` of a refusal (`_error` or an error `onStatus`).
fn refused(name: &str, args: &[Amf0Value]) -> SessionError {
    let info = args.iter().find(|a| a.get("code").is_some());
    let field = |k: &str| {
        info.and_then(|i| i.get(k))
            .and_then(Amf0Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (code, description) = (field("code"), field("description"));
    SessionError::Protocol(if code.is_empty() {
        format!("server answered {name}")
    } else if description.is_empty() {
        format!("server refused: {code}")
    } else {
        format!("server refused: {code} ({description})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtmp::message::{TYPE_AUDIO, TYPE_VIDEO};
    use crate::proto::rtmp::server::{ServerSession, SessionEvent};

    /// Runs the client against our own server session in memory until neither has output.
    fn exchange(client: &mut ClientSession, server: &mut ServerSession) -> Vec<SessionEvent> {
        let mut events = Vec::new();
        for _ in 0..20 {
            let to_server = client.take_output();
            server.push(&to_server);
            while let Some(ev) = server.poll_event().unwrap() {
                if let SessionEvent::Publish { .. } = ev {
                    server.accept_publish();
                }
                events.push(ev);
            }
            let to_client = server.take_output();
            client.push(&to_client);
            while client.poll_event().unwrap().is_some() {}
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
        }
        events
    }

    #[test]
    fn publishes_metadata_and_media_to_our_server() {
        let mut client = ClientSession::new("live", "rtmp://h/live", "key1", 1 << 20, 4096);
        let mut server = ServerSession::new(1 << 20, 4096);
        let events = exchange(&mut client, &mut server);
        assert!(client.is_publishing());
        assert!(events.contains(&SessionEvent::Publish {
            app: "live".into(),
            name: "key1".into(),
            query: String::new(),
        }));
        client.send_metadata(&Amf0Value::object([("width", Amf0Value::Number(640.0))]));
        let video = vec![0x17u8; 10_000];
        client.send_media(TYPE_VIDEO, 40, &video);
        client.send_media(TYPE_AUDIO, 41, &[0xAF, 1, 2]);
        client.unpublish();
        let events = exchange(&mut client, &mut server);
        assert!(matches!(&events[0], SessionEvent::Metadata(m) if m.get("width").is_some()));
        assert_eq!(
            events[1],
            SessionEvent::Video {
                timestamp: 40,
                data: video.into()
            }
        );
        assert!(matches!(
            events[2],
            SessionEvent::Audio { timestamp: 41, .. }
        ));
        assert_eq!(events[3], SessionEvent::Unpublish);
    }

    #[test]
    fn plays_media_from_our_server() {
        let mut client = ClientSession::player("live", "rtmp://h/live", "s1", 1 << 20, 4096);
        let mut server = ServerSession::new(1 << 20, 4096);
        let mut played = None;
        let mut events = Vec::new();
        for _ in 0..10 {
            server.push(&client.take_output());
            while let Some(ev) = server.poll_event().unwrap() {
                if let SessionEvent::Play { name, .. } = &ev {
                    played = Some(name.clone());
                    server.accept_play();
                    server.send_media(TYPE_VIDEO, 80, &[0x17, 0, 1, 2]);
                    server.send_media(TYPE_AUDIO, 81, &[0xAF, 1]);
                }
            }
            client.push(&server.take_output());
            while let Some(ev) = client.poll_event().unwrap() {
                events.push(ev);
            }
        }
        assert_eq!(played.as_deref(), Some("s1"));
        assert!(client.is_publishing());
        assert_eq!(events[0], ClientEvent::Playing);
        assert_eq!(
            events[1..],
            [
                ClientEvent::Media {
                    type_id: TYPE_VIDEO,
                    timestamp: 80,
                    payload: Bytes::from_static(&[0x17, 0, 1, 2])
                },
                ClientEvent::Media {
                    type_id: TYPE_AUDIO,
                    timestamp: 81,
                    payload: Bytes::from_static(&[0xAF, 1])
                }
            ]
        );
    }

    #[test]
    fn a_refused_publish_is_an_error_naming_the_code() {
        let mut client = ClientSession::new("live", "rtmp://h/live", "bad", 1 << 20, 4096);
        let mut server = ServerSession::new(1 << 20, 4096);
        for _ in 0..5 {
            server.push(&client.take_output());
            while let Some(ev) = server.poll_event().unwrap() {
                if let SessionEvent::Publish { .. } = ev {
                    server.reject("NetStream.Publish.BadName", "unknown stream key");
                }
            }
            client.push(&server.take_output());
            if let Err(e) = client.poll_event() {
                let text = e.to_string();
                assert!(text.contains("NetStream.Publish.BadName"), "{text}");
                assert!(text.contains("unknown stream key"), "{text}");
                return;
            }
        }
        panic!("refusal not reported");
    }

    #[test]
    fn garbage_from_the_server_is_an_error_not_a_panic() {
        let mut client = ClientSession::new("live", "rtmp://h/live", "k", 1 << 16, 4096);
        // A command message declaring more than the limit, then random bytes.
        client.push(&[0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 20, 0, 0, 0, 0]);
        assert!(client.poll_event().is_err());
        let mut client = ClientSession::new("live", "rtmp://h/live", "k", 1 << 16, 4096);
        let mut seed = 7u32;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        client.push(&bytes);
        for _ in 0..100 {
            match client.poll_event() {
                Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
    }

    #[test]
    fn answers_pings() {
        let mut client = ClientSession::new("live", "rtmp://h/live", "k", 1 << 16, 4096);
        let _ = client.take_output();
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        w.write_message(
            &mut out,
            2,
            0,
            message::TYPE_USER_CONTROL,
            0,
            &[0, 6, 0, 0, 1, 2],
        );
        client.push(&out);
        assert!(client.poll_event().unwrap().is_none());
        let mut reader = ChunkReader::new(1 << 16);
        reader.push(&client.take_output());
        let msg = reader.read_message().unwrap().unwrap();
        assert_eq!(msg.type_id, message::TYPE_USER_CONTROL);
        assert_eq!(&msg.payload[..], &[0, 7, 0, 0, 1, 2]);
    }
}
