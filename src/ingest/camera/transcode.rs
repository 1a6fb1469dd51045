//! JPEG → H.264 for cameras, so their streams play as HLS, record and restream like any other.
//!
//! One encoder thread per camera: `zune-jpeg` decodes, `openh264` encodes at the camera's size
//! (cropped to even dimensions), and the access unit joins the hub as the stream's H.264
//! track. The hand-off is a one-slot channel: a frame that arrives while the encoder is busy
//! is skipped and counted, never queued, so CPU per camera is bounded by the encoder's speed.
//! An IDR is forced every HLS segment target (`keyframe_interval_ms`) so segments are cut at
//! their target, and whenever the segmenter asks for one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, RateControlMode, UsageType};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::{OpenH264API, Timestamp};

use crate::hub::Publisher;
use crate::media::annexb;
use crate::media::h264::AvcConfig;
use crate::media::{CodecConfig, Frame, Track, TrackId, Tracks};

/// Track id of a camera's H.264 track (listed first: its keyframes drive GOPs).
pub const H264_TRACK: TrackId = TrackId(0);
/// Track id of a camera's JPEG track.
pub const JPEG_TRACK: TrackId = TrackId(2);
/// Largest picture decoded (ESP32 cameras go up to UXGA, 1600×1200).
const MAX_DIMENSION: usize = 4096;

/// Why a frame could not be transcoded (logged; the camera carries on).
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The JPEG did not decode.
    #[error("jpeg decode: {0}")]
    Decode(String),
    /// The encoder failed.
    #[error("h264 encode: {0}")]
    Encode(String),
}

struct Job {
    jpeg: Bytes,
    dts: i64,
    jpeg_track: Track,
}

/// Handle on a camera's encoder thread; dropping it stops the thread.
pub struct Transcoder {
    tx: SyncSender<Job>,
    skipped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder").finish_non_exhaustive()
    }
}

impl Transcoder {
    /// Starts the encoder thread feeding `publisher`. The thread holds only a weak handle:
    /// when the camera disconnects the stream ends at once, not after the encoder's frame.
    /// An IDR is made every `keyframe_interval_ms` (the HLS segment target).
    pub fn spawn(
        publisher: &Arc<Publisher>,
        bitrate_bps: u32,
        keyframe_interval_ms: u32,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(1);
        let stream_id = publisher.stream().id.clone();
        let publisher = Arc::downgrade(publisher);
        let enc = FrameEncoder::new(bitrate_bps).with_keyframe_interval(keyframe_interval_ms);
        std::thread::Builder::new()
            .name(format!("h264-{stream_id}"))
            .spawn(move || run(rx, publisher, enc))?;
        Ok(Transcoder {
            tx,
            skipped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Hands a frame to the encoder; `false` if it was busy and the frame was skipped.
    pub fn offer(&self, jpeg: Bytes, dts: i64, jpeg_track: Track) -> bool {
        match self.tx.try_send(Job {
            jpeg,
            dts,
            jpeg_track,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Frames skipped because the encoder was busy.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// JPEG in, H.264 access unit out, for one camera (used by the encoder thread; public for
/// benchmarks).
pub struct FrameEncoder {
    encoder: Option<(Encoder, usize, usize)>,
    bitrate_bps: u32,
    avcc: Option<Bytes>,
    last_idr: Option<i64>,
    /// Longest time between IDRs (ms).
    keyframe_interval_ms: i64,
    /// The next frame is an IDR (asked for by the segmenter).
    keyframe_wanted: bool,
}

fn run(rx: Receiver<Job>, publisher: Weak<Publisher>, mut enc: FrameEncoder) {
    while let Ok(job) = rx.recv() {
        // The strong handle is held only for a moment, never across the encode: a camera
        // that disconnects ends its stream at once.
        if publisher
            .upgrade()
            .is_some_and(|p| p.take_keyframe_request())
        {
            enc.request_keyframe();
        }
        let result = enc.encode(&job.jpeg, job.dts);
        let Some(publisher) = publisher.upgrade() else {
            break; // the camera is gone
        };
        match result {
            Ok(Some((frame, new_config))) => {
                if let Some(config) = new_config {
                    let tracks = Tracks {
                        list: vec![
                            Track {
                                id: H264_TRACK,
                                timescale: 1000,
                                codec: CodecConfig::H264(config),
                            },
                            job.jpeg_track.clone(),
                        ],
                    };
                    publisher.set_tracks(Arc::new(tracks));
                }
                publisher.push(frame);
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(stream = %publisher.stream().id, %err, "camera: frame not transcoded")
            }
        }
    }
}

impl FrameEncoder {
    /// An encoder targeting `bitrate_bps`; it is set up at the first frame's size.
    pub fn new(bitrate_bps: u32) -> Self {
        FrameEncoder {
            encoder: None,
            bitrate_bps,
            avcc: None,
            last_idr: None,
            keyframe_interval_ms: 1000,
            keyframe_wanted: false,
        }
    }

    /// An IDR at least every `ms` (default 1000).
    pub fn with_keyframe_interval(mut self, ms: u32) -> Self {
        self.keyframe_interval_ms = i64::from(ms.max(1));
        self
    }

    /// Makes the next frame an IDR.
    pub fn request_keyframe(&mut self) {
        self.keyframe_wanted = true;
    }

    /// Encodes one JPEG taken at `dts` ms; returns the H.264 frame (none while the encoder
    /// has nothing to emit) and, when it changed, the new decoder configuration.
    pub fn encode(
        &mut self,
        jpeg: &[u8],
        dts: i64,
    ) -> Result<Option<(Frame, Option<AvcConfig>)>, TranscodeError> {
        let (rgb, w, h) = decode_rgb(jpeg)?;
        let (w2, h2) = (w & !1, h & !1);
        if w2 == 0 || h2 == 0 {
            return Err(TranscodeError::Decode("picture smaller than 2x2".into()));
        }
        let rgb = crop_even(rgb, w, h);
        if self
            .encoder
            .as_ref()
            .is_none_or(|(_, ew, eh)| (*ew, *eh) != (w2, h2))
        {
            let config = EncoderConfig::new()
                .bitrate(BitRate::from_bps(self.bitrate_bps))
                .rate_control_mode(RateControlMode::Bitrate)
                .max_frame_rate(FrameRate::from_hz(30.0))
                .usage_type(UsageType::CameraVideoRealTime)
                .skip_frames(true);
            let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
                .map_err(|e| TranscodeError::Encode(e.to_string()))?;
            self.encoder = Some((encoder, w2, h2));
            self.avcc = None;
            self.last_idr = None;
        }
        let Some((encoder, _, _)) = self.encoder.as_mut() else {
            return Ok(None);
        };
        if std::mem::take(&mut self.keyframe_wanted)
            || self
                .last_idr
                .is_none_or(|t| dts - t >= self.keyframe_interval_ms)
        {
            encoder.force_intra_frame();
        }
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&rgb, (w2, h2)));
        let stream = encoder
            .encode_at(&yuv, Timestamp::from_millis(dts.max(0) as u64))
            .map_err(|e| TranscodeError::Encode(e.to_string()))?
            .to_vec();
        let nals = annexb::nal_units(&stream);
        let sps = nals.iter().find(|n| annexb::nal_type(n) == annexb::NAL_SPS);
        let pps = nals.iter().find(|n| annexb::nal_type(n) == annexb::NAL_PPS);
        let mut new_config = None;
        if let (Some(sps), Some(pps)) = (sps, pps) {
            if let Some(record) = annexb::avcc_record(sps, pps) {
                if self.avcc.as_ref() != Some(&record) {
                    new_config = Some(
                        AvcConfig::parse(record.clone())
                            .map_err(|e| TranscodeError::Encode(format!("encoder SPS: {e}")))?,
                    );
                    self.avcc = Some(record);
                }
            }
        }
        let (sample, idr) = annexb::to_avcc_sample(&nals);
        if sample.is_empty() || self.avcc.is_none() {
            return Ok(None);
        }
        if idr {
            self.last_idr = Some(dts);
        }
        Ok(Some((
            Frame {
                track: H264_TRACK,
                pts: dts,
                dts,
                keyframe: idr,
                data: sample,
            },
            new_config,
        )))
    }
}

/// Decodes a JPEG to packed RGB.
pub fn decode_rgb(jpeg: &[u8]) -> Result<(Vec<u8>, usize, usize), TranscodeError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .set_max_width(MAX_DIMENSION)
        .set_max_height(MAX_DIMENSION)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
    let pixels = decoder
        .decode()
        .map_err(|e| TranscodeError::Decode(format!("{e:?}")))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| TranscodeError::Decode("no dimensions".into()))?;
    if pixels.len() < w * h * 3 {
        return Err(TranscodeError::Decode("short pixel buffer".into()));
    }
    Ok((pixels, w, h))
}

/// Drops an odd last column and row (the encoder needs even dimensions).
fn crop_even(rgb: Vec<u8>, w: usize, h: usize) -> Vec<u8> {
    let (w2, h2) = (w & !1, h & !1);
    if (w2, h2) == (w, h) {
        return rgb;
    }
    let mut out = Vec::with_capacity(w2 * h2 * 3);
    for row in rgb.chunks(w * 3).take(h2) {
        out.extend_from_slice(&row[..w2 * 3]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sizes_are_cropped_to_even() {
        let rgb: Vec<u8> = (0..3 * 3 * 3).map(|i| i as u8).collect();
        let out = crop_even(rgb, 3, 3);
        assert_eq!(out.len(), 2 * 2 * 3);
        assert_eq!(&out[..6], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(&out[6..], &[9, 10, 11, 12, 13, 14]);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(decode_rgb(b"\xFF\xD8\xFF\xD9").is_err());
        assert!(decode_rgb(&[]).is_err());
    }
}
