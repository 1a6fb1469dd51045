//! Egress: hub subscriptions → what viewers receive. Each egress sees only the hub's
//! subscribe interface.

pub mod hls;
pub mod rtmp_play;
