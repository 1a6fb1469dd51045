//! Audio transcoding between AAC and Opus, sans-IO: [`AacToOpus`] (RTMP/camera AAC for WebRTC
//! viewers) and [`OpusToAac`] (WHIP or Enhanced-RTMP Opus for legacy RTMP destinations).
//!
//! Both take the source track's [`Frame`]s in order and return the other codec's frames,
//! timestamped on the source's timeline:
//! - The first input frame anchors the output: output pts = anchor + samples emitted since.
//!   An input whose pts strays more than [`MAX_DRIFT_MS`] from where the samples so far put it
//!   (a gap, a publisher's timestamp jump) restarts the anchor; buffered audio is dropped.
//! - Resampler delay is removed from the output, so a sound keeps its time.
//!
//! Codecs (all pure Rust): `rusty_aac` decodes AAC (LC, HE-AAC) and encodes AAC-LC;
//! `opus-rs` (a port of libopus) encodes and decodes Opus; `rubato` resamples to 48 kHz.
//! `rusty_aac`'s encoder buffers a whole stream before it encodes, but its frames are a pure
//! function of the PCM around them, so [`OpusToAac`] encodes a short window at a time: warm-up
//! blocks before (for the transient detector and the previous MDCT block), lookahead after
//! (for the window-sequence decision), keeping only the frames in the middle.

use bytes::Bytes;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::aac::AacConfig;
use super::opus::OpusConfig;
use super::{CodecConfig, Frame, Track, TrackId};

/// Opus's clock: every Opus stream decodes at 48 kHz.
pub const OPUS_RATE: u32 = 48_000;
/// Opus frame length we encode: 10 ms. A 20 ms frame would wait twice as long for AAC
/// frames (23 ms each) to fill it, and a WebRTC viewer's audio is as late as its packets are
/// sent (lip sync follows send times through RTCP sender reports).
const OPUS_FRAME: usize = 480;
/// Largest Opus frame a decoder may be handed (120 ms at 48 kHz).
const OPUS_MAX_FRAME: usize = 5760;
/// Samples per AAC-LC frame.
const AAC_FRAME: usize = 1024;
/// Opus encoder lookahead at 48 kHz (what libopus signals as pre-skip).
const OPUS_PRE_SKIP: u16 = 312;
/// How far an input frame's pts may stray from the sample count before the timeline restarts.
pub const MAX_DRIFT_MS: i64 = 100;
/// AAC windowed encoding: frames kept per window, warm-up blocks before, lookahead after.
const AAC_KEEP: usize = 4;
const AAC_WARMUP: usize = 3;
const AAC_LOOKAHEAD: usize = 2;

/// Settings of the transcoded output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioQuality {
    /// Opus bitrate for stereo (mono gets two thirds), bits per second.
    pub opus_bitrate: u32,
    /// AAC-LC bitrate for stereo (mono gets half), bits per second.
    pub aac_bitrate: u32,
}

impl Default for AudioQuality {
    fn default() -> Self {
        AudioQuality {
            opus_bitrate: 96_000,
            aac_bitrate: 128_000,
        }
    }
}

/// Why a transcoder could not be built or a frame could not be converted. A frame error
/// loses that frame only; the transcoder stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    /// The AAC decoder or encoder refused.
    #[error("AAC: {0}")]
    Aac(String),
    /// The Opus encoder or decoder refused.
    #[error("Opus: {0}")]
    Opus(&'static str),
    /// The resampler refused (an unsupported rate).
    #[error("resampler: {0}")]
    Resample(String),
    /// Something the transcoder does not do (more than two channels).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A codec crate panicked on this packet; the codecs were rebuilt.
    #[error("the codec failed on a malformed packet")]
    CodecPanicked,
}

fn aac_err(e: rusty_aac::Error) -> TranscodeError {
    TranscodeError::Aac(e.to_string())
}

/// Where the output timeline stands: the input pts it started from and the samples since.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// Input pts (in the input timescale) of the first sample.
    pts: i64,
    /// Input samples (at the input rate) taken since.
    samples_in: i64,
}

/// Tracks the input timeline; says when it must restart.
#[derive(Debug)]
struct Timeline {
    timescale: u32,
    anchor: Option<Anchor>,
}

impl Timeline {
    fn new(timescale: u32) -> Self {
        Timeline {
            timescale: timescale.max(1),
            anchor: None,
        }
    }

    /// Accounts `samples` at `rate` starting at `pts`: the timeline (re)starts here, or goes
    /// on after `gap` samples of silence (a lost or undecodable frame, up to
    /// [`MAX_DRIFT_MS`]), so later audio keeps its time.
    fn take(&mut self, pts: i64, samples: usize, rate: u32) -> Placed {
        let ts = i128::from(self.timescale);
        let rate = i128::from(rate.max(1));
        let mut placed = Placed::Restart;
        if let Some(a) = self.anchor {
            let expected = i128::from(a.pts) + i128::from(a.samples_in) * ts / rate;
            let early = i128::from(pts) - expected;
            if early.abs() * 1000 <= i128::from(MAX_DRIFT_MS) * ts {
                let gap = early * rate / ts;
                // Less than 5 ms is timestamp rounding (RTMP has milliseconds), not a loss.
                let gap = if gap * 200 >= rate { gap as usize } else { 0 };
                placed = Placed::Continue { gap };
            }
        }
        match placed {
            Placed::Restart => self.anchor = Some(Anchor { pts, samples_in: 0 }),
            Placed::Continue { gap } => {
                if let Some(a) = self.anchor.as_mut() {
                    a.samples_in += gap as i64;
                }
            }
        }
        if let Some(a) = self.anchor.as_mut() {
            a.samples_in += samples as i64;
        }
        placed
    }

    /// The anchor's pts on a `rate` clock (the output timescale).
    fn anchor_at(&self, rate: u32) -> i64 {
        let pts = self.anchor.map_or(0, |a| a.pts);
        (i128::from(pts) * i128::from(rate) / i128::from(self.timescale)) as i64
    }
}

/// Where an input frame goes on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// A new timeline starts at this frame (the first, or after a jump).
    Restart,
    /// It follows the samples so far after `gap` samples of silence.
    Continue { gap: usize },
}

/// Interleaved f32 resampling to a fixed output rate, its start-up delay removed.
struct Resample {
    inner: Fft<f32>,
    channels: usize,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    /// Output frames still to drop (the resampler's delay).
    skip: usize,
}

impl Resample {
    fn new(rate_in: u32, rate_out: u32, channels: usize) -> Result<Self, TranscodeError> {
        // 10 ms input chunks keep the delay (and so the A/V offset) small.
        let chunk = (rate_in as usize / 100).max(1);
        let inner = Fft::new(
            rate_in as usize,
            rate_out as usize,
            chunk,
            channels,
            FixedSync::Input,
        )
        .map_err(|e| TranscodeError::Resample(e.to_string()))?;
        let skip = inner.output_delay();
        Ok(Resample {
            inner,
            channels,
            pending: Vec::new(),
            scratch: Vec::new(),
            skip,
        })
    }

    /// Appends the resampled form of `input` (interleaved) to `out`.
    fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), TranscodeError> {
        let ch = self.channels;
        let err = |e: &dyn std::fmt::Display| TranscodeError::Resample(e.to_string());
        self.pending.extend_from_slice(input);
        loop {
            let need = self.inner.input_frames_next();
            if self.pending.len() < need * ch {
                return Ok(());
            }
            let frames_out = self.inner.output_frames_next();
            self.scratch.resize(frames_out * ch, 0.0);
            let inp =
                InterleavedSlice::new(&self.pending[..need * ch], ch, need).map_err(|e| err(&e))?;
            let mut outp = InterleavedSlice::new_mut(&mut self.scratch[..], ch, frames_out)
                .map_err(|e| err(&e))?;
            let (used, written) = self
                .inner
                .process_into_buffer(&inp, &mut outp, None)
                .map_err(|e| err(&e))?;
            self.pending.drain(..used * ch);
            let drop = self.skip.min(written);
            self.skip -= drop;
            out.extend_from_slice(&self.scratch[drop * ch..written * ch]);
        }
    }
}

/// Keeps at most two channels of interleaved PCM.
fn to_stereo(samples: Vec<f32>, channels: usize) -> Result<Vec<f32>, TranscodeError> {
    match channels {
        1 | 2 => Ok(samples),
        _ => Err(TranscodeError::Unsupported(
            "audio with more than two channels is not transcoded",
        )),
    }
}

/// Which way a transcoder converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// AAC in, Opus out (for WebRTC viewers).
    AacToOpus,
    /// Opus in, AAC-LC out (for legacy RTMP destinations, HLS players without Opus).
    OpusToAac,
}

impl Direction {
    /// Whether `codec` is this direction's source.
    pub fn takes(self, codec: &CodecConfig) -> bool {
        matches!(
            (self, codec),
            (Direction::AacToOpus, CodecConfig::Aac(_))
                | (Direction::OpusToAac, CodecConfig::Opus(_))
        )
    }
}

/// The track a consumer of `tracks` gets in `direction`: the first audio track the direction
/// takes, converted (same id); `None` when there is none or it cannot be converted. Builds no
/// codec (cheap enough for every API view).
pub fn converted_track(tracks: &super::Tracks, direction: Direction) -> Option<Track> {
    let source = tracks.list.iter().find(|t| direction.takes(&t.codec))?;
    let codec = match (&source.codec, direction) {
        (CodecConfig::Aac(c), Direction::AacToOpus) => opus_output(aac_channels(c).ok()?),
        (CodecConfig::Opus(c), Direction::OpusToAac) => {
            aac_output(usize::from(c.channels.clamp(1, 2))).ok()?
        }
        _ => return None,
    };
    Some(Track {
        id: source.id,
        timescale: OPUS_RATE,
        codec,
    })
}

/// The channels an AAC source decodes to, if we transcode it (mono or stereo).
fn aac_channels(config: &AacConfig) -> Result<usize, TranscodeError> {
    match (config.object_type, config.channels) {
        // HE-AAC v2 (parametric stereo) has one core channel but decodes to two.
        (29, _) => Ok(2),
        (_, 1) => Ok(1),
        (_, 2) => Ok(2),
        // 0 means a program config element: more than two, or unknown.
        _ => Err(TranscodeError::Unsupported(
            "AAC with more than two channels is not transcoded",
        )),
    }
}

/// The Opus track made from `channels` of audio.
fn opus_output(channels: usize) -> CodecConfig {
    CodecConfig::Opus(OpusConfig {
        channels: channels as u8,
        input_sample_rate: OPUS_RATE,
        pre_skip: OPUS_PRE_SKIP,
    })
}

/// The AAC-LC (48 kHz) track made from `channels` of audio.
fn aac_output(channels: usize) -> Result<CodecConfig, TranscodeError> {
    let asc = rusty_aac::audio_specific_config_bytes(OPUS_RATE, channels as u16);
    AacConfig::parse(Bytes::from(asc))
        .map(CodecConfig::Aac)
        .map_err(|e| TranscodeError::Aac(e.to_string()))
}

/// The codec pair of a [`Transcoder`].
enum Codecs {
    AacToOpus(Box<AacToOpus>),
    OpusToAac(Box<OpusToAac>),
}

impl Codecs {
    fn new(
        source: &Track,
        direction: Direction,
        quality: AudioQuality,
    ) -> Result<Option<Self>, TranscodeError> {
        Ok(match (&source.codec, direction) {
            (CodecConfig::Aac(c), Direction::AacToOpus) => Some(Codecs::AacToOpus(Box::new(
                AacToOpus::new(c, source.timescale, source.id, quality)?,
            ))),
            (CodecConfig::Opus(c), Direction::OpusToAac) => Some(Codecs::OpusToAac(Box::new(
                OpusToAac::new(c, source.timescale, source.id, quality)?,
            ))),
            _ => None,
        })
    }
}

/// A transcoder of either direction. A codec crate that panics on a malformed packet (opus-rs
/// 0.1.40 does, on some corrupt SILK frames) loses that packet and the audio buffered with it:
/// the codecs are built anew and the stream goes on.
pub struct Transcoder {
    source: Track,
    direction: Direction,
    quality: AudioQuality,
    codecs: Codecs,
}

impl Transcoder {
    /// The transcoder for `source` in `direction`; `Ok(None)` when the track is not that
    /// direction's source codec. Output frames keep the source track's id.
    pub fn new(
        source: &Track,
        direction: Direction,
        quality: AudioQuality,
    ) -> Result<Option<Self>, TranscodeError> {
        Ok(
            Codecs::new(source, direction, quality)?.map(|codecs| Transcoder {
                source: source.clone(),
                direction,
                quality,
                codecs,
            }),
        )
    }

    /// The track the output frames belong to (the source's id, the other codec, 48 kHz).
    pub fn output_track(&self) -> Result<Track, TranscodeError> {
        let (id, codec) = match &self.codecs {
            Codecs::AacToOpus(t) => (t.out_track, t.output_config()),
            Codecs::OpusToAac(t) => (t.out_track, t.output_config()?),
        };
        Ok(Track {
            id,
            timescale: OPUS_RATE,
            codec,
        })
    }

    /// Converts one source frame; returns the output frames now complete.
    pub fn push(&mut self, frame: &Frame) -> Result<Vec<Frame>, TranscodeError> {
        let codecs = &mut self.codecs;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match codecs {
            Codecs::AacToOpus(t) => t.push(frame),
            Codecs::OpusToAac(t) => t.push(frame),
        }));
        match result {
            Ok(r) => r,
            Err(_) => {
                // The codec's state is unknown after a panic: start over.
                if let Ok(Some(c)) = Codecs::new(&self.source, self.direction, self.quality) {
                    self.codecs = c;
                }
                Err(TranscodeError::CodecPanicked)
            }
        }
    }
}

/// AAC (any rate, mono or stereo) → Opus (48 kHz, 10 ms packets).
pub struct AacToOpus {
    decoder: rusty_aac::AacDecoder,
    encoder: opus_rs::OpusEncoder,
    /// Output channels (the source's, 1 or 2).
    channels: usize,
    /// Decoded rate the resampler was built for.
    rate: u32,
    resampler: Option<Resample>,
    timeline: Timeline,
    /// 48 kHz PCM waiting to fill a 10 ms frame.
    pcm: Vec<f32>,
    /// Output samples emitted since the anchor.
    emitted: i64,
    out_track: TrackId,
    packet: Vec<u8>,
}

impl AacToOpus {
    /// A transcoder for a track with this AAC configuration and `timescale`, emitting frames
    /// on `out_track`.
    pub fn new(
        config: &AacConfig,
        timescale: u32,
        out_track: TrackId,
        quality: AudioQuality,
    ) -> Result<Self, TranscodeError> {
        let channels = aac_channels(config)?;
        let decoder = rusty_aac::AacDecoder::with_config_bytes(&config.raw).map_err(aac_err)?;
        let mut encoder =
            opus_rs::OpusEncoder::new(OPUS_RATE as i32, channels, opus_rs::Application::Audio)
                .map_err(TranscodeError::Opus)?;
        encoder.bitrate_bps = if channels == 2 {
            quality.opus_bitrate as i32
        } else {
            (quality.opus_bitrate * 2 / 3) as i32
        };
        Ok(AacToOpus {
            decoder,
            encoder,
            channels,
            rate: 0,
            resampler: None,
            timeline: Timeline::new(timescale),
            pcm: Vec::new(),
            emitted: 0,
            out_track,
            packet: vec![0; 4000],
        })
    }

    /// The configuration of the Opus track this produces.
    pub fn output_config(&self) -> CodecConfig {
        opus_output(self.channels)
    }

    /// Decodes one AAC frame and returns the Opus frames (timescale 48 kHz) now complete.
    pub fn push(&mut self, frame: &Frame) -> Result<Vec<Frame>, TranscodeError> {
        let decoded = self
            .decoder
            .decode(&frame.data, Some(frame.pts))
            .map_err(aac_err)?;
        let dec_channels = usize::from(decoded.channels);
        let frames = decoded.frames();
        let mut samples = to_stereo(decoded.samples, dec_channels)?;
        if dec_channels != self.channels {
            // A mono decode in a stereo stream (or the reverse): match the encoder.
            samples = remix(&samples, dec_channels, self.channels);
        }
        if decoded.sample_rate != self.rate {
            self.rate = decoded.sample_rate;
            self.resampler = None;
            self.timeline.anchor = None;
        }
        match self.timeline.take(frame.pts, frames, self.rate) {
            Placed::Restart => {
                self.pcm.clear();
                self.emitted = 0;
                self.resampler = None;
                if self.rate != OPUS_RATE {
                    match Resample::new(self.rate, OPUS_RATE, self.channels) {
                        Ok(r) => self.resampler = Some(r),
                        Err(e) => {
                            // No PCM at the wrong rate: the next frame tries again.
                            self.timeline.anchor = None;
                            return Err(e);
                        }
                    }
                }
            }
            Placed::Continue { gap } if gap > 0 => {
                let mut padded = vec![0.0; gap * self.channels];
                padded.extend_from_slice(&samples);
                samples = padded;
            }
            Placed::Continue { .. } => {}
        }
        match self.resampler.as_mut() {
            Some(r) => r.push(&samples, &mut self.pcm)?,
            None => self.pcm.extend_from_slice(&samples),
        }
        let anchor = self.timeline.anchor_at(OPUS_RATE);
        let step = OPUS_FRAME * self.channels;
        let mut out = Vec::new();
        let mut used = 0;
        while self.pcm.len() - used >= step {
            let n = self
                .encoder
                .encode(&self.pcm[used..used + step], OPUS_FRAME, &mut self.packet)
                .map_err(TranscodeError::Opus)?;
            used += step;
            let pts = anchor + self.emitted;
            self.emitted += OPUS_FRAME as i64;
            out.push(Frame {
                track: self.out_track,
                pts,
                dts: pts,
                keyframe: true,
                data: Bytes::copy_from_slice(&self.packet[..n]),
            });
        }
        self.pcm.drain(..used);
        Ok(out)
    }
}

/// Converts interleaved PCM between one and two channels.
fn remix(samples: &[f32], from: usize, to: usize) -> Vec<f32> {
    match (from, to) {
        (1, 2) => samples.iter().flat_map(|&s| [s, s]).collect(),
        (2, 1) => samples
            .chunks_exact(2)
            .map(|p| (p[0] + p[1]) * 0.5)
            .collect(),
        _ => samples.to_vec(),
    }
}

/// Opus (mono or stereo) → AAC-LC (48 kHz, 1024-sample frames).
pub struct OpusToAac {
    decoder: opus_rs::OpusDecoder,
    channels: usize,
    bitrate: u32,
    timeline: Timeline,
    /// Decoder output still to drop (the stream's pre-skip).
    pre_skip: usize,
    /// Interleaved 48 kHz PCM from global block `base` on (blocks before 0 are silence).
    pcm: Vec<f32>,
    /// Global block index of `pcm`'s first sample.
    base: i64,
    out_track: TrackId,
    decoded: Vec<f32>,
}

impl OpusToAac {
    /// A transcoder for an Opus track with this configuration and `timescale`, emitting
    /// frames on `out_track`.
    pub fn new(
        config: &OpusConfig,
        timescale: u32,
        out_track: TrackId,
        quality: AudioQuality,
    ) -> Result<Self, TranscodeError> {
        let channels = usize::from(config.channels.clamp(1, 2));
        let decoder =
            opus_rs::OpusDecoder::new(OPUS_RATE as i32, channels).map_err(TranscodeError::Opus)?;
        let bitrate = if channels == 2 {
            quality.aac_bitrate
        } else {
            quality.aac_bitrate / 2
        };
        let mut t = OpusToAac {
            decoder,
            channels,
            bitrate,
            timeline: Timeline::new(timescale),
            pre_skip: usize::from(config.pre_skip),
            pcm: Vec::new(),
            base: 0,
            out_track,
            decoded: vec![0.0; OPUS_MAX_FRAME * 2],
        };
        t.restart();
        Ok(t)
    }

    /// The configuration of the AAC track this produces (AAC-LC, 48 kHz).
    pub fn output_config(&self) -> Result<CodecConfig, TranscodeError> {
        aac_output(self.channels)
    }

    /// Starts a new output timeline: silence before global block 0, packet 1 next.
    fn restart(&mut self) {
        self.pcm.clear();
        self.pcm
            .resize((AAC_WARMUP - 1) * AAC_FRAME * self.channels, 0.0);
        // Global packet G decodes to block G-1; packet 1 (block 0) comes first, so the window
        // starts AAC_WARMUP blocks before it.
        self.base = 1 - AAC_WARMUP as i64;
    }

    /// Decodes one Opus packet and returns the AAC frames (timescale 48 kHz) now complete.
    pub fn push(&mut self, frame: &Frame) -> Result<Vec<Frame>, TranscodeError> {
        // An empty packet (DTX, or nothing) would be concealed as 120 ms: the next packet's
        // timestamp tells the gap instead.
        if frame.data.len() <= 1 {
            return Ok(Vec::new());
        }
        let n = self
            .decoder
            .decode(&frame.data, OPUS_MAX_FRAME, &mut self.decoded)
            .map_err(TranscodeError::Opus)?;
        let n = n.min(OPUS_MAX_FRAME);
        let skip = self.pre_skip.min(n);
        self.pre_skip -= skip;
        if skip == n {
            return Ok(Vec::new());
        }
        // The kept samples start `skip` samples after the packet's time.
        let pts =
            frame.pts + (skip as i64 * i64::from(self.timeline.timescale)) / i64::from(OPUS_RATE);
        match self.timeline.take(pts, n - skip, OPUS_RATE) {
            Placed::Restart => self.restart(),
            Placed::Continue { gap } => {
                let len = self.pcm.len() + gap * self.channels;
                self.pcm.resize(len, 0.0);
            }
        }
        let ch = self.channels;
        self.pcm.extend_from_slice(&self.decoded[skip * ch..n * ch]);
        self.encode_ready()
    }

    /// Encodes every window whose lookahead has arrived.
    fn encode_ready(&mut self) -> Result<Vec<Frame>, TranscodeError> {
        let block = AAC_FRAME * self.channels;
        let window = AAC_WARMUP + AAC_KEEP + AAC_LOOKAHEAD;
        let anchor = self.timeline.anchor_at(OPUS_RATE);
        let mut out = Vec::new();
        while self.pcm.len() >= window * block {
            // Only settings whose per-frame decisions depend on nearby PCM alone: the relative
            // transient detector and the automatic window shape look at the whole buffer,
            // which would make neighbouring windows disagree at their edges.
            let mut enc = rusty_aac::AacEncoder::new(rusty_aac::AacEncoderConfig {
                bitrate_bps: self.bitrate,
                relative_transients: false,
                window_shape: rusty_aac::WindowShape::Sine,
                ..Default::default()
            });
            enc.push_pcm(&self.pcm[..window * block], self.channels as u16, OPUS_RATE)
                .map_err(aac_err)?;
            enc.finish();
            let mut local = 0usize;
            while let Ok(p) = enc.next_packet() {
                if (AAC_WARMUP..AAC_WARMUP + AAC_KEEP).contains(&local) {
                    // Local frame i is global packet base + i; it decodes to the block
                    // before it, which starts at (G - 1) * 1024 after the anchor.
                    let g = self.base + local as i64;
                    let pts = anchor + (g - 1) * AAC_FRAME as i64;
                    out.push(Frame {
                        track: self.out_track,
                        pts,
                        dts: pts,
                        keyframe: true,
                        data: Bytes::from(p.data),
                    });
                }
                local += 1;
            }
            self.pcm.drain(..AAC_KEEP * block);
            self.base += AAC_KEEP as i64;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, channels: usize, secs: f32, hz: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .flat_map(|i| {
                let s = (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5;
                std::iter::repeat_n(s, channels)
            })
            .collect()
    }

    fn aac_frames(pcm: &[f32], rate: u32, channels: usize) -> (AacConfig, Vec<Vec<u8>>) {
        let mut enc = rusty_aac::AacEncoder::new(rusty_aac::AacEncoderConfig::default());
        enc.push_pcm(pcm, channels as u16, rate).unwrap();
        enc.finish();
        let mut out = Vec::new();
        while let Ok(p) = enc.next_packet() {
            out.push(p.data);
        }
        let asc = rusty_aac::audio_specific_config_bytes(rate, channels as u16);
        (AacConfig::parse(Bytes::from(asc)).unwrap(), out)
    }

    #[test]
    fn aac_to_opus_keeps_the_timeline_and_restarts_on_a_jump() {
        let (config, packets) = aac_frames(&tone(44_100, 2, 1.0, 440.0), 44_100, 2);
        let mut t = AacToOpus::new(&config, 1000, TrackId(7), AudioQuality::default()).unwrap();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let pts = 5_000 + (i as i64 * 1024 * 1000) / 44_100;
            let f = Frame {
                track: TrackId(1),
                pts,
                dts: pts,
                keyframe: true,
                data: Bytes::from(p.clone()),
            };
            out.extend(t.push(&f).unwrap());
        }
        assert!(
            out.len() >= 90,
            "about 100 Opus frames for 1 s, got {}",
            out.len()
        );
        assert_eq!(out[0].pts, 5_000 * 48);
        assert!(out.windows(2).all(|w| w[1].pts - w[0].pts == 480));
        assert!(out.iter().all(|f| f.track == TrackId(7)));
        // A jump of 10 s restarts the timeline at the new pts.
        let f = Frame {
            track: TrackId(1),
            pts: 20_000,
            dts: 20_000,
            keyframe: true,
            data: Bytes::from(packets[5].clone()),
        };
        let mut after = Vec::new();
        for _ in 0..3 {
            after.extend(t.push(&f).unwrap());
        }
        assert!(after.first().is_some_and(|f| f.pts == 20_000 * 48));
    }

    #[test]
    fn opus_to_aac_windows_decode_like_the_source() {
        let pcm = tone(48_000, 2, 1.0, 1000.0);
        let mut enc = opus_rs::OpusEncoder::new(48_000, 2, opus_rs::Application::Audio).unwrap();
        enc.bitrate_bps = 128_000;
        let mut t = OpusToAac::new(
            &OpusConfig::webrtc(),
            48_000,
            TrackId(3),
            AudioQuality::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4000];
        for (i, chunk) in pcm.chunks_exact(960 * 2).enumerate() {
            let n = enc.encode(chunk, 960, &mut buf).unwrap();
            let pts = 1_000 + i as i64 * 960;
            out.extend(
                t.push(&Frame {
                    track: TrackId(2),
                    pts,
                    dts: pts,
                    keyframe: true,
                    data: Bytes::copy_from_slice(&buf[..n]),
                })
                .unwrap(),
            );
        }
        assert!(
            out.len() >= 40,
            "about 46 AAC frames for 1 s, got {}",
            out.len()
        );
        assert_eq!(out[0].pts, 1_000);
        assert!(out.windows(2).all(|w| w[1].pts - w[0].pts == 1024));
        // Our own decoder hears the tone: the windowed frames join without clicks.
        let CodecConfig::Aac(cfg) = t.output_config().unwrap() else {
            panic!("AAC output")
        };
        let mut dec = rusty_aac::AacDecoder::with_config_bytes(&cfg.raw).unwrap();
        let mut decoded = Vec::new();
        for f in &out {
            decoded.extend(dec.decode(&f.data, None).unwrap().samples);
        }
        // Past the first frames, compare with a 1 kHz sine fitted in phase (the codecs'
        // delays shift it): the residual is small.
        let left: Vec<f32> = decoded
            .iter()
            .step_by(2)
            .copied()
            .skip(4096)
            .take(30_000)
            .collect();
        let snr = fitted_snr(&left, 1000.0, 48_000.0);
        assert!(
            snr > 15.0,
            "AAC from windowed encoding: {snr:.1} dB against the tone"
        );
    }

    fn opus_packets(secs: f32) -> Vec<Bytes> {
        let pcm = tone(48_000, 2, secs, 1000.0);
        let mut enc = opus_rs::OpusEncoder::new(48_000, 2, opus_rs::Application::Audio).unwrap();
        let mut buf = vec![0u8; 4000];
        pcm.chunks_exact(960 * 2)
            .map(|c| {
                let n = enc.encode(c, 960, &mut buf).unwrap();
                Bytes::copy_from_slice(&buf[..n])
            })
            .collect()
    }

    fn run_opus(config: OpusConfig, packets: &[Bytes], skip: Option<usize>) -> Vec<Frame> {
        let mut t = OpusToAac::new(&config, 48_000, TrackId(3), AudioQuality::default()).unwrap();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let pts = 1_000 + i as i64 * 960;
            let f = Frame {
                track: TrackId(2),
                pts,
                dts: pts,
                keyframe: true,
                data: p.clone(),
            };
            out.extend(t.push(&f).unwrap());
        }
        out
    }

    #[test]
    fn a_lost_opus_packet_becomes_silence_and_later_audio_keeps_its_time() {
        let packets = opus_packets(1.0);
        let whole = run_opus(OpusConfig::webrtc(), &packets, None);
        let lossy = run_opus(OpusConfig::webrtc(), &packets, Some(10));
        assert_eq!(lossy.len(), whole.len());
        let pts = |v: &[Frame]| v.iter().map(|f| f.pts).collect::<Vec<_>>();
        assert_eq!(pts(&lossy), pts(&whole));
        // An empty packet (DTX) is not 120 ms of concealment either.
        let mut with_empty = packets.clone();
        with_empty[20] = Bytes::from_static(&[0xfc]);
        assert_eq!(
            run_opus(OpusConfig::webrtc(), &with_empty, None).len(),
            whole.len()
        );
    }

    #[test]
    fn opus_pre_skip_moves_the_first_sample_not_the_timeline() {
        let packets = opus_packets(0.5);
        let config = OpusConfig {
            pre_skip: 312,
            ..OpusConfig::webrtc()
        };
        let out = run_opus(config, &packets, None);
        assert_eq!(out[0].pts, 1_000 + 312);
        // A pre-skip longer than a packet drops whole packets without restarting.
        let config = OpusConfig {
            pre_skip: 3000,
            ..OpusConfig::webrtc()
        };
        let out = run_opus(config, &packets, None);
        assert_eq!(out[0].pts, 1_000 + 3000);
        assert!(out.windows(2).all(|w| w[1].pts - w[0].pts == 1024));
    }

    #[test]
    fn a_lost_aac_frame_becomes_silence_and_later_audio_keeps_its_time() {
        let (config, packets) = aac_frames(&tone(48_000, 2, 1.0, 440.0), 48_000, 2);
        let run = |skip: Option<usize>| {
            let mut t =
                AacToOpus::new(&config, 48_000, TrackId(7), AudioQuality::default()).unwrap();
            let mut out = Vec::new();
            for (i, p) in packets.iter().enumerate() {
                if Some(i) == skip {
                    continue;
                }
                let pts = i as i64 * 1024;
                let f = Frame {
                    track: TrackId(1),
                    pts,
                    dts: pts,
                    keyframe: true,
                    data: Bytes::from(p.clone()),
                };
                out.extend(t.push(&f).unwrap());
            }
            out.iter().map(|f| f.pts).collect::<Vec<_>>()
        };
        assert_eq!(run(Some(12)), run(None));
    }

    /// A fuzzer-found Opus packet on which opus-rs 0.1.40 panics (a subtraction overflow in
    /// its SILK redundancy code): the transcoder reports an error and goes on.
    #[test]
    fn a_packet_that_panics_the_codec_is_an_error_and_the_stream_goes_on() {
        let seed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/audio_transcode/crash-e877f91245e311a28a1e854bbcbfd227a241aa2e"
        ))
        .unwrap();
        let source = Track {
            id: TrackId(1),
            timescale: 1000,
            codec: CodecConfig::Opus(OpusConfig {
                channels: 1,
                ..OpusConfig::webrtc()
            }),
        };
        let mut t = Transcoder::new(&source, Direction::OpusToAac, AudioQuality::default())
            .unwrap()
            .unwrap();
        let (mut rest, mut pts, mut panicked) = (&seed[1..], 0i64, 0);
        while rest.len() >= 4 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            pts += i64::from(i16::from_be_bytes([rest[2], rest[3]]));
            let (packet, tail) = rest[4..].split_at(len.min(rest.len() - 4));
            rest = tail;
            let f = Frame {
                track: TrackId(1),
                pts,
                dts: pts,
                keyframe: true,
                data: Bytes::copy_from_slice(packet),
            };
            if t.push(&f) == Err(TranscodeError::CodecPanicked) {
                panicked += 1;
            }
        }
        assert!(panicked >= 1, "the seed still reaches the codec's panic");
        // Good packets after it transcode again.
        let mut out = 0;
        for (i, p) in opus_packets(0.5).iter().enumerate() {
            let pts = 100_000 + i as i64 * 20;
            let f = Frame {
                track: TrackId(1),
                pts,
                dts: pts,
                keyframe: true,
                data: p.clone(),
            };
            out += t.push(&f).unwrap().len();
        }
        assert!(out >= 10, "{out} AAC frames after the bad packet");
    }

    /// SNR of `x` against the best-fitting sine of frequency `hz` (least squares).
    fn fitted_snr(x: &[f32], hz: f32, rate: f32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * hz / rate;
        let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (i, &v) in x.iter().enumerate() {
            let (s, c) = ((w * i as f32).sin() as f64, (w * i as f32).cos() as f64);
            ss += s * s;
            sc += s * c;
            cc += c * c;
            xs += f64::from(v) * s;
            xc += f64::from(v) * c;
        }
        let det = ss * cc - sc * sc;
        let a = (xs * cc - xc * sc) / det;
        let b = (xc * ss - xs * sc) / det;
        let (mut sig, mut err) = (0f64, 0f64);
        for (i, &v) in x.iter().enumerate() {
            let fit = a * (w * i as f32).sin() as f64 + b * (w * i as f32).cos() as f64;
            sig += fit * fit;
            err += (f64::from(v) - fit).powi(2);
        }
        (10.0 * (sig / err.max(1e-12)).log10()) as f32
    }
}
