//! Sans-IO protocol and container code: bytes (and `now`) in, values out. No tokio, no
//! sockets, no clocks; every parser here has a fuzz target under `fuzz/`.

pub mod flv;
pub mod fmp4;
pub mod ice;
pub mod jpeg;
pub mod mp4scan;
pub mod multipart;
pub mod playlist;
pub mod relay;
pub mod rtmp;
pub mod rtp;
pub mod sdp;
