//! Media values shared by every protocol: the [`Frame`] that flows through the hub, the
//! [`Track`]s a stream announces, and the codec configurations parsed from the bitstream
//! ([`h264::AvcConfig`], [`aac::AacConfig`]). Nothing here does I/O.

pub mod aac;
pub mod annexb;
pub mod bits;
mod frame;
pub mod h264;
pub mod opus;

pub use frame::{CodecConfig, Frame, Track, TrackId, TrackKind, Tracks};

#[cfg(test)]
pub(crate) mod test_support;
