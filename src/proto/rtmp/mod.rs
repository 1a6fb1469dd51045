//! RTMP without I/O: the hardened chunk reader and writer ([`chunk`]), AMF0 ([`amf0`]),
//! message types ([`message`]), the server session state machine ([`server`]) and the
//! client session of restream pushers and the load generator's players ([`client`]).
//!
//! `rml_rtmp` 0.8 is used only for the handshake (by the connection driver); its chunk
//! deserializer and `rml_amf0` decoding have crashers (see DESIGN.md) and are never fed
//! network bytes.

pub mod amf0;
pub mod chunk;
pub mod client;
pub mod message;
pub mod server;

/// A session that sends media: the server's to a player, the client's to a destination.
pub trait MediaSink {
    /// Sends `@setDataFrame onMetaData` / `onMetaData`.
    fn send_metadata(&mut self, metadata: &amf0::Amf0Value);
    /// Sends an FLV audio (8) or video (9) tag body made of `head` followed by `body`.
    fn send_media_parts(&mut self, type_id: u8, timestamp: u32, head: &[u8], body: &[u8]);
}
