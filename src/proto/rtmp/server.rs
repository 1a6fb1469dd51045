//! The server side of an RTMP connection after the handshake, without I/O.
//!
//! [`ServerSession::push`] takes socket bytes; [`ServerSession::poll_event`] turns complete
//! messages into [`SessionEvent`]s (publish or play requests, metadata, audio, video) while
//! answering the connection-level commands itself (`connect`, `createStream`,
//! `releaseStream`, `FCPublish`, acknowledgements); [`ServerSession::take_output`] hands back
//! the bytes to write. The driver decides whether a publish or play is allowed and answers
//! through [`ServerSession::accept_publish`], [`ServerSession::reject`] and friends.
//!
//! Every byte from the network goes through our hardened [`ChunkReader`] and AMF0 decoder;
//! `rml_rtmp`'s deserializer is never reached.

use bytes::{Bytes, BytesMut};

use super::amf0::Amf0Value;
use super::chunk::{ChunkError, ChunkReader, ChunkWriter};
use super::message::{self, MessageError, RtmpMessage};
use super::MediaSink as _;

/// The message stream id handed out by `createStream`.
pub const MEDIA_STREAM_ID: u32 = 1;
/// Acknowledgement window the server announces.
const WINDOW_ACK_SIZE: u32 = 2_500_000;
/// Largest command or data (metadata) message decoded. AMF0 values take ~30 times their
/// encoded size in memory, so only media messages may use the full message limit.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A connection-fatal protocol error.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Chunk layer.
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    /// Message layer.
    #[error("message: {0}")]
    Message(#[from] MessageError),
    /// A command that makes no sense at this point.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// `publish`: the client wants to publish `name` (the stream key) in `app`.
    Publish {
        /// Application from `connect`.
        app: String,
        /// Publishing name (the stream key; never log it).
        name: String,
        /// The name's query string (`name?token=…`), empty if none; an external
        /// authoriser reads its credential from it. Never log it.
        query: String,
    },
    /// `play`: the client wants to watch `name` in `app`.
    Play {
        /// Application from `connect`.
        app: String,
        /// Play name (the stream id).
        name: String,
        /// `token=` from the play name's query (`str_…?token=…`), for private streams.
        token: Option<String>,
    },
    /// `@setDataFrame`/`onMetaData` from the publisher.
    Metadata(Amf0Value),
    /// An FLV audio tag body.
    Audio {
        /// Timestamp in ms.
        timestamp: u32,
        /// Tag body.
        data: Bytes,
    },
    /// An FLV video tag body.
    Video {
        /// Timestamp in ms.
        timestamp: u32,
        /// Tag body.
        data: Bytes,
    },
    /// `FCUnpublish`/`deleteStream`/`closeStream`: the client is done.
    Unpublish,
}

/// RTMP server session state.
#[derive(Debug)]
pub struct ServerSession {
    reader: ChunkReader,
    writer: ChunkWriter,
    out: BytesMut,
    out_chunk_size: u32,
    app: Option<String>,
    housekeeping: Housekeeping,
}

impl ServerSession {
    /// A session that accepts messages up to `max_message_bytes` and sends chunks of
    /// `out_chunk_size`.
    pub fn new(max_message_bytes: u32, out_chunk_size: u32) -> Self {
        ServerSession {
            reader: ChunkReader::new(max_message_bytes),
            writer: ChunkWriter::new(),
            out: BytesMut::with_capacity(4096),
            out_chunk_size,
            app: None,
            housekeeping: Housekeeping::default(),
        }
    }

    /// Changes the largest message and the most partially received messages accepted from
    /// now on (see [`ChunkReader::set_limits`]).
    pub fn set_limits(&mut self, max_message_bytes: u32, max_partial: usize) {
        self.reader.set_limits(max_message_bytes, max_partial);
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

    /// The application named in `connect`.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// The next event, `Ok(None)` when more bytes are needed.
    pub fn poll_event(&mut self) -> Result<Option<SessionEvent>, SessionError> {
        loop {
            let Some((timestamp, msg)) =
                self.housekeeping
                    .next(&mut self.reader, &mut self.writer, &mut self.out)?
            else {
                return Ok(None);
            };
            let event = match msg {
                RtmpMessage::Audio(data) => Some(SessionEvent::Audio { timestamp, data }),
                RtmpMessage::Video(data) => Some(SessionEvent::Video { timestamp, data }),
                RtmpMessage::Data(values) => metadata(values),
                RtmpMessage::Command {
                    name,
                    transaction_id,
                    object,
                    args,
                } => self.command(&name, transaction_id, &object, &args)?,
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
        object: &Amf0Value,
        args: &[Amf0Value],
    ) -> Result<Option<SessionEvent>, SessionError> {
        let first_string = || {
            args.iter()
                .find_map(|a| a.as_str())
                .map(str::to_owned)
                .unwrap_or_default()
        };
        match name {
            "connect" => {
                let app = object
                    .get("app")
                    .and_then(Amf0Value::as_str)
                    .ok_or_else(|| SessionError::Protocol("connect without app".into()))?;
                // Some clients append "?query" or a trailing slash to the app.
                let app = app.split('?').next().unwrap_or("").trim_matches('/');
                self.app = Some(app.to_owned());
                self.answer_connect(txn);
                Ok(None)
            }
            "createStream" => {
                self.result(
                    txn,
                    &[
                        Amf0Value::Null,
                        Amf0Value::Number(f64::from(MEDIA_STREAM_ID)),
                    ],
                );
                Ok(None)
            }
            "releaseStream" | "FCPublish" | "getStreamLength" => {
                if txn != 0.0 {
                    self.result(txn, &[Amf0Value::Null, Amf0Value::Undefined]);
                }
                Ok(None)
            }
            "publish" | "play" => {
                let app = self
                    .app
                    .clone()
                    .ok_or_else(|| SessionError::Protocol(format!("{name} before connect")))?;
                // The name may carry a query string (`key?token=...`); it is not part of it.
                let full = first_string();
                let (name_only, query) = full.split_once('?').unwrap_or((full.as_str(), ""));
                let name_only = name_only.to_owned();
                Ok(Some(if name == "publish" {
                    SessionEvent::Publish {
                        app,
                        name: name_only,
                        query: query.to_owned(),
                    }
                } else {
                    let token = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("token="))
                        .map(str::to_owned);
                    SessionEvent::Play {
                        app,
                        name: name_only,
                        token,
                    }
                }))
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => Ok(Some(SessionEvent::Unpublish)),
            _ => Ok(None),
        }
    }

    fn answer_connect(&mut self, txn: f64) {
        let (w, out) = (&mut self.writer, &mut self.out);
        message::write_window_ack_size(w, out, WINDOW_ACK_SIZE);
        message::write_set_peer_bandwidth(w, out, WINDOW_ACK_SIZE, 2);
        message::write_set_chunk_size(w, out, self.out_chunk_size);
        let props = Amf0Value::object([
            ("fmsVer", Amf0Value::String("FMS/3,5,7,7009".into())),
            ("capabilities", Amf0Value::Number(31.0)),
            ("mode", Amf0Value::Number(1.0)),
            // Enhanced RTMP: the codecs we take and serve.
            (
                "fourCcList",
                Amf0Value::StrictArray(
                    super::client::ENHANCED_FOURCCS
                        .iter()
                        .map(|f| Amf0Value::String((*f).to_owned()))
                        .collect(),
                ),
            ),
        ]);
        let info = status(
            "status",
            "NetConnection.Connect.Success",
            "Connection succeeded.",
        );
        message::write_command(w, out, 0, "_result", txn, &props, &[info]);
    }

    fn result(&mut self, txn: f64, values: &[Amf0Value]) {
        let (object, rest) = values
            .split_first()
            .map_or((Amf0Value::Null, &[][..]), |(o, r)| (o.clone(), r));
        message::write_command(
            &mut self.writer,
            &mut self.out,
            0,
            "_result",
            txn,
            &object,
            rest,
        );
    }

    fn on_status(&mut self, level: &str, code: &str, description: &str) {
        let info = status(level, code, description);
        message::write_command(
            &mut self.writer,
            &mut self.out,
            MEDIA_STREAM_ID,
            "onStatus",
            0.0,
            &Amf0Value::Null,
            &[info],
        );
    }

    /// Tells the client its publish started.
    pub fn accept_publish(&mut self) {
        message::write_user_control_stream_begin(&mut self.writer, &mut self.out, MEDIA_STREAM_ID);
        self.on_status("status", "NetStream.Publish.Start", "Publishing started.");
    }

    /// Refuses a publish or play with an `onStatus` error (`NetStream.Publish.BadName`, ...).
    /// The driver closes the connection after writing the output.
    pub fn reject(&mut self, code: &str, description: &str) {
        self.on_status("error", code, description);
    }

    /// Tells the client its play started; media follows with [`Self::send_media`].
    pub fn accept_play(&mut self) {
        message::write_user_control_stream_begin(&mut self.writer, &mut self.out, MEDIA_STREAM_ID);
        self.on_status("status", "NetStream.Play.Reset", "Playing and resetting.");
        self.on_status("status", "NetStream.Play.Start", "Started playing.");
        message::write_data(
            &mut self.writer,
            &mut self.out,
            MEDIA_STREAM_ID,
            &[
                Amf0Value::String("|RtmpSampleAccess".into()),
                Amf0Value::Boolean(true),
                Amf0Value::Boolean(true),
            ],
        );
    }

    /// Tells a player the stream ended.
    pub fn end_play(&mut self) {
        message::write_user_control_stream_eof(&mut self.writer, &mut self.out, MEDIA_STREAM_ID);
        self.on_status(
            "status",
            "NetStream.Play.UnpublishNotify",
            "The stream ended.",
        );
    }

    /// Sends `onMetaData` to a player.
    pub fn send_metadata(&mut self, metadata: &Amf0Value) {
        message::write_data(
            &mut self.writer,
            &mut self.out,
            MEDIA_STREAM_ID,
            &[Amf0Value::String("onMetaData".into()), metadata.clone()],
        );
    }

    /// Sends an FLV audio (type 8) or video (type 9) tag body to a player.
    pub fn send_media(&mut self, type_id: u8, timestamp: u32, tag: &[u8]) {
        self.send_media_parts(type_id, timestamp, &[], tag);
    }
}

impl super::MediaSink for ServerSession {
    fn send_metadata(&mut self, metadata: &Amf0Value) {
        ServerSession::send_metadata(self, metadata);
    }

    fn send_media_parts(&mut self, type_id: u8, timestamp: u32, head: &[u8], body: &[u8]) {
        message::write_media_parts(
            &mut self.writer,
            &mut self.out,
            type_id,
            MEDIA_STREAM_ID,
            timestamp,
            head,
            body,
        );
    }
}

/// What both ends of a connection do besides their own commands: acknowledge the peer's
/// window of received bytes, answer pings, and refuse oversized command/data messages.
#[derive(Debug, Default)]
pub(super) struct Housekeeping {
    peer_window: u32,
    last_ack: u64,
}

impl Housekeeping {
    /// The next message (with its timestamp) that is not housekeeping; `Ok(None)` when more
    /// bytes are needed.
    pub(super) fn next(
        &mut self,
        reader: &mut ChunkReader,
        writer: &mut ChunkWriter,
        out: &mut BytesMut,
    ) -> Result<Option<(u32, RtmpMessage)>, SessionError> {
        loop {
            let Some(raw) = reader.read_message()? else {
                return Ok(None);
            };
            let received = reader.bytes_received();
            if self.peer_window > 0 && received - self.last_ack >= u64::from(self.peer_window) {
                self.last_ack = received;
                message::write_acknowledgement(writer, out, received as u32);
            }
            if matches!(raw.type_id, 15 | 17 | 18 | 20) && raw.payload.len() > MAX_COMMAND_BYTES {
                return Err(SessionError::Protocol(format!(
                    "command/data message of {} bytes (limit {MAX_COMMAND_BYTES})",
                    raw.payload.len()
                )));
            }
            match RtmpMessage::parse(&raw)? {
                RtmpMessage::WindowAckSize(size) => self.peer_window = size,
                RtmpMessage::UserControl { event: 6, data } => {
                    // PingRequest: answer with PingResponse carrying the same timestamp.
                    let mut payload = vec![0, 7];
                    payload.extend_from_slice(&data);
                    writer.write_message(out, 2, 0, message::TYPE_USER_CONTROL, 0, &payload);
                }
                msg => return Ok(Some((raw.timestamp, msg))),
            }
        }
    }
}

fn status(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::object([
        ("level", Amf0Value::String(level.into())),
        ("code", Amf0Value::String(code.into())),
        ("description", Amf0Value::String(description.into())),
    ])
}

/// `["@setDataFrame", "onMetaData", {..}]` or `["onMetaData", {..}]` → the object.
fn metadata(values: Vec<Amf0Value>) -> Option<SessionEvent> {
    let mut it = values.into_iter().peekable();
    if it.peek().and_then(Amf0Value::as_str) == Some("@setDataFrame") {
        it.next();
    }
    if it.next().as_ref().and_then(Amf0Value::as_str) != Some("onMetaData") {
        return None;
    }
    it.next()
        .filter(|v| matches!(v, Amf0Value::Object(_) | Amf0Value::EcmaArray(_)))
        .map(SessionEvent::Metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtmp::chunk::ChunkReader;

    /// A client's side of the conversation, built with our own writer.
    struct Client {
        w: ChunkWriter,
        out: BytesMut,
    }

    impl Client {
        fn new() -> Self {
            Client {
                w: ChunkWriter::new(),
                out: BytesMut::new(),
            }
        }
        fn command(
            &mut self,
            stream: u32,
            name: &str,
            txn: f64,
            obj: Amf0Value,
            args: &[Amf0Value],
        ) {
            message::write_command(&mut self.w, &mut self.out, stream, name, txn, &obj, args);
        }
    }

    fn replies(bytes: &[u8]) -> Vec<RtmpMessage> {
        let mut r = ChunkReader::new(1 << 20);
        r.push(bytes);
        let mut out = vec![];
        while let Some(m) = r.read_message().unwrap() {
            out.push(RtmpMessage::parse(&m).unwrap());
        }
        out
    }

    fn events(s: &mut ServerSession) -> Vec<SessionEvent> {
        let mut v = vec![];
        while let Some(e) = s.poll_event().unwrap() {
            v.push(e);
        }
        v
    }

    #[test]
    fn ffmpeg_publish_flow() {
        let mut c = Client::new();
        c.command(
            0,
            "connect",
            1.0,
            Amf0Value::object([
                ("app", Amf0Value::String("live".into())),
                ("tcUrl", Amf0Value::String("rtmp://h/live".into())),
            ]),
            &[],
        );
        c.command(
            0,
            "releaseStream",
            2.0,
            Amf0Value::Null,
            &[Amf0Value::String("sk_1".into())],
        );
        c.command(
            0,
            "FCPublish",
            3.0,
            Amf0Value::Null,
            &[Amf0Value::String("sk_1".into())],
        );
        c.command(0, "createStream", 4.0, Amf0Value::Null, &[]);
        c.command(
            1,
            "publish",
            5.0,
            Amf0Value::Null,
            &[
                Amf0Value::String("sk_1".into()),
                Amf0Value::String("live".into()),
            ],
        );
        message::write_data(
            &mut c.w,
            &mut c.out,
            1,
            &[
                Amf0Value::String("@setDataFrame".into()),
                Amf0Value::String("onMetaData".into()),
                Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
            ],
        );
        message::write_media(&mut c.w, &mut c.out, 9, 1, 40, &[0x17, 0, 0, 0, 0]);
        let mut s = ServerSession::new(1 << 20, 4096);
        s.push(&c.out);
        let ev = events(&mut s);
        assert_eq!(
            ev[0],
            SessionEvent::Publish {
                app: "live".into(),
                name: "sk_1".into(),
                query: String::new(),
            }
        );
        assert!(
            matches!(&ev[1], SessionEvent::Metadata(m) if m.get("width").and_then(Amf0Value::as_f64) == Some(1280.0))
        );
        assert!(matches!(&ev[2], SessionEvent::Video { timestamp: 40, .. }));
        s.accept_publish();
        let out = replies(&s.take_output());
        let results: Vec<_> = out
            .iter()
            .filter_map(|m| match m {
                RtmpMessage::Command {
                    name,
                    transaction_id,
                    args,
                    ..
                } => Some((name.clone(), *transaction_id, args.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(results[0].0, "_result");
        assert_eq!(
            results[0].2[0].get("code").and_then(Amf0Value::as_str),
            Some("NetConnection.Connect.Success")
        );
        assert!(results.iter().any(|r| r.0 == "_result"
            && r.1 == 4.0
            && r.2.first() == Some(&Amf0Value::Number(1.0))));
        let last = results.last().unwrap();
        assert_eq!(last.0, "onStatus");
        assert_eq!(
            last.2[0].get("code").and_then(Amf0Value::as_str),
            Some("NetStream.Publish.Start")
        );
        assert!(out
            .iter()
            .any(|m| matches!(m, RtmpMessage::SetChunkSize(4096))));
    }

    #[test]
    fn oversized_commands_are_refused_before_decoding() {
        let mut c = Client::new();
        let filler = vec![Amf0Value::Null; MAX_COMMAND_BYTES];
        c.command(0, "connect", 1.0, Amf0Value::Null, &filler);
        let mut s = ServerSession::new(1 << 24, 4096);
        s.push(&c.out);
        assert!(matches!(s.poll_event(), Err(SessionError::Protocol(m)) if m.contains("limit")));
    }

    #[test]
    fn play_token_is_taken_from_the_query() {
        let mut c = Client::new();
        c.command(
            0,
            "connect",
            1.0,
            Amf0Value::object([("app", Amf0Value::String("live".into()))]),
            &[],
        );
        c.command(
            1,
            "play",
            0.0,
            Amf0Value::Null,
            &[Amf0Value::String("str_1?a=b&token=123.abc".into())],
        );
        let mut s = ServerSession::new(1 << 20, 4096);
        s.push(&c.out);
        assert_eq!(
            events(&mut s),
            vec![SessionEvent::Play {
                app: "live".into(),
                name: "str_1".into(),
                token: Some("123.abc".into()),
            }]
        );
    }

    #[test]
    fn publish_before_connect_is_a_protocol_error() {
        let mut c = Client::new();
        c.command(
            1,
            "publish",
            5.0,
            Amf0Value::Null,
            &[Amf0Value::String("k".into())],
        );
        let mut s = ServerSession::new(1 << 20, 4096);
        s.push(&c.out);
        assert!(matches!(s.poll_event(), Err(SessionError::Protocol(_))));
    }

    #[test]
    fn stream_name_query_is_stripped_and_reject_writes_error_status() {
        let mut c = Client::new();
        c.command(
            0,
            "connect",
            1.0,
            Amf0Value::object([("app", Amf0Value::String("live/".into()))]),
            &[],
        );
        c.command(
            1,
            "play",
            0.0,
            Amf0Value::Null,
            &[Amf0Value::String("str_1?x=1".into())],
        );
        let mut s = ServerSession::new(1 << 20, 4096);
        s.push(&c.out);
        assert_eq!(
            events(&mut s),
            vec![SessionEvent::Play {
                app: "live".into(),
                name: "str_1".into(),
                token: None,
            }]
        );
        s.take_output();
        s.reject("NetStream.Play.StreamNotFound", "no such stream");
        let out = replies(&s.take_output());
        assert!(matches!(&out[0], RtmpMessage::Command { name, args, .. }
            if name == "onStatus" && args[0].get("level").and_then(Amf0Value::as_str) == Some("error")));
    }

    #[test]
    fn acknowledges_after_the_peer_window() {
        let mut c = Client::new();
        let mut payload = BytesMut::new();
        payload.extend_from_slice(&5000u32.to_be_bytes());
        c.w.write_message(&mut c.out, 2, 0, message::TYPE_WINDOW_ACK_SIZE, 0, &payload);
        for _ in 0..10 {
            message::write_media(&mut c.w, &mut c.out, 8, 1, 0, &[0xAF; 1000]);
        }
        let mut s = ServerSession::new(1 << 20, 4096);
        s.push(&c.out);
        let _ = events(&mut s);
        let acks = replies(&s.take_output())
            .into_iter()
            .filter(|m| matches!(m, RtmpMessage::Acknowledgement(_)))
            .count();
        assert!((1..=3).contains(&acks), "{acks} acknowledgements");
    }
}
