//! Media values shared by every protocol: the [`Frame`] that flows through the hub, the
//! [`Track`]s a stream announces, and the codec configurations parsed from the bitstream
//! ([`h264::AvcConfig`], [`hevc::HevcConfig`], [`av1::Av1Config`], [`vp9::Vp9Config`],
//! [`aac::AacConfig`], [`opus::OpusConfig`]). Nothing here does I/O.

pub mod aac;
pub mod annexb;
pub mod audio;
pub mod av1;
pub mod bits;
mod frame;
pub mod h264;
pub mod hevc;
pub mod opus;
pub mod vp9;

pub use frame::{CodecConfig, Frame, Track, TrackId, TrackKind, Tracks, VideoInfo};

#[cfg(test)]
pub(crate) mod test_support;
