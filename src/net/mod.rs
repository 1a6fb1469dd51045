//! Protocol servers that own sockets and dispatch to ingest or egress (RTMP carries both a
//! publisher and a player on the same port).

pub mod http;
pub mod limits;
pub mod rtmp;
pub mod tls;
pub mod webrtc;
pub mod webrtc_http;
