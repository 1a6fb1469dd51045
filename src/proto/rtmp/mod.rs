//! RTMP without I/O: the hardened chunk reader and writer ([`chunk`]), AMF0 ([`amf0`]),
//! message types ([`message`]), the server session state machine ([`server`]) and the
//! publishing client used by restream pushers ([`client`]).
//!
//! `rml_rtmp` 0.8 is used only for the handshake (by the connection driver); its chunk
//! deserializer and `rml_amf0` decoding have crashers (see DESIGN.md) and are never fed
//! network bytes.

pub mod amf0;
pub mod chunk;
pub mod client;
pub mod message;
pub mod server;
