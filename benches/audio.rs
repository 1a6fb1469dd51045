//! Audio transcoding cost and quality, side by side with ffmpeg doing the same conversion.
//!
//! A 20 s stereo test signal (a chord with vibrato, a percussive click track and noise, made
//! by ffmpeg's lavfi) is encoded to AAC-LC 44.1 kHz 128 kbit/s by ffmpeg (what an RTMP
//! publisher sends) and to Opus 96 kbit/s (what a WHIP publisher sends). Then:
//! - AAC → Opus (WHEP viewers): our transcoder (decode, resample to 48 kHz, encode) and
//!   `ffmpeg -c:a libopus -b:a 96k` on the same AAC;
//! - Opus → AAC (legacy RTMP destinations, HLS): ours and `ffmpeg -c:a aac -b:a 128k`.
//!
//! CPU is user+system time per second of audio (one core = 100 %). Quality: ffmpeg decodes
//! each output; the SNR against the source signal is measured after aligning the two by
//! cross-correlation (a crude metric for perceptual codecs, but the same for both sides).
//!
//! Run: `cargo bench --bench audio` (needs ffmpeg with libopus; numbers: BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use media_server::media::aac::AacConfig;
use media_server::media::audio::{AudioQuality, Direction, Transcoder};
use media_server::media::opus::OpusConfig;
use media_server::media::{CodecConfig, Frame, Track, TrackId};

const SECS: u32 = 20;

fn ffmpeg(args: &[&str]) -> f64 {
    let before = children_cpu();
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-threads",
            "1",
        ])
        .args(args)
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    children_cpu() - before
}

/// CPU seconds from `/proc/self/stat`: this process (`children = false`) or its finished
/// children (clock ticks of 10 ms).
fn stat_cpu(children: bool) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let at = if children { 13 } else { 11 };
    let ticks: f64 = fields.get(at).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields
            .get(at + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

fn children_cpu() -> f64 {
    stat_cpu(true)
}

fn self_cpu() -> f64 {
    stat_cpu(false)
}

fn pcm_of(file: &Path, dir: &Path) -> Vec<f32> {
    let raw = dir.join("decoded.f32");
    ffmpeg(&[
        "-i",
        file.to_str().unwrap(),
        "-ac",
        "2",
        "-ar",
        "48000",
        "-f",
        "f32le",
        raw.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&raw).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// SNR (dB) of `test` against `reference` (interleaved stereo, 48 kHz), after finding the
/// best lag within ±100 ms by cross-correlation on the left channel.
fn aligned_snr(reference: &[f32], test: &[f32]) -> f64 {
    let left = |v: &[f32]| -> Vec<f32> { v.iter().step_by(2).copied().collect() };
    let (r, t) = (left(reference), left(test));
    let skip = 48_000; // leave the first second (codec start-up) out
    let n = 48_000 * 10;
    let mut best = (f64::MIN, 0i64);
    for lag in (-4800i64..=4800).step_by(1) {
        let mut dot = 0f64;
        for i in (skip..skip + n).step_by(16) {
            let j = i as i64 + lag;
            if j < 0 || j as usize >= t.len() || i >= r.len() {
                continue;
            }
            dot += f64::from(r[i]) * f64::from(t[j as usize]);
        }
        if dot > best.0 {
            best = (dot, lag);
        }
    }
    let lag = best.1;
    let (mut sig, mut err) = (0f64, 0f64);
    for i in skip..skip + n {
        let j = i as i64 + lag;
        if j < 0 || j as usize >= t.len() || i >= r.len() {
            continue;
        }
        sig += f64::from(r[i]).powi(2);
        err += (f64::from(r[i]) - f64::from(t[j as usize])).powi(2);
    }
    // What a gain difference explains (a codec that changes the level is not noisier).
    let (mut rt, mut tt) = (0f64, 0f64);
    for i in skip..skip + n {
        let j = i as i64 + lag;
        if j >= 0 && (j as usize) < t.len() && i < r.len() {
            rt += f64::from(r[i]) * f64::from(t[j as usize]);
            tt += f64::from(t[j as usize]).powi(2);
        }
    }
    eprintln!("  lag {lag} samples, best gain {:.3}", rt / tt.max(1e-12));
    10.0 * (sig / err.max(1e-12)).log10()
}

fn adts_frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 7 <= data.len() {
        let len = (usize::from(data[pos + 3] & 3) << 11)
            | (usize::from(data[pos + 4]) << 3)
            | usize::from(data[pos + 5] >> 5);
        let header = if data[pos + 1] & 1 == 0 { 9 } else { 7 };
        if len < header || pos + len > data.len() {
            break;
        }
        out.push(data[pos + header..pos + len].to_vec());
        pos += len;
    }
    out
}

fn write_adts(frames: &[Frame], channels: u16, path: &Path) {
    let mut out = Vec::new();
    for f in frames {
        let hdr = rusty_aac::AdtsHeader {
            object_type: 2,
            sample_rate: 48_000,
            channels,
            frame_length: 7 + f.data.len(),
            header_len: 7,
        };
        out.extend_from_slice(&rusty_aac::write_adts_header(&hdr));
        out.extend_from_slice(&f.data);
    }
    std::fs::write(path, out).unwrap();
}

/// Opus packets of `samples_each` samples in a minimal Ogg file (RFC 7845) for ffmpeg.
fn write_ogg_opus(packets: &[Vec<u8>], samples_each: u64, path: &Path) {
    fn crc(data: &[u8]) -> u32 {
        let mut c = 0u32;
        for &b in data {
            c ^= u32::from(b) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04c1_1db7
                } else {
                    c << 1
                };
            }
        }
        c
    }
    let mut out = Vec::new();
    let mut page = |seq: u32, granule: u64, flags: u8, body: &[u8]| {
        let mut lace = Vec::new();
        let mut n = body.len();
        while n >= 255 {
            lace.push(255u8);
            n -= 255;
        }
        lace.push(n as u8);
        let mut p = b"OggS".to_vec();
        p.push(0);
        p.push(flags);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.push(lace.len() as u8);
        p.extend_from_slice(&lace);
        p.extend_from_slice(body);
        let c = crc(&p);
        p[22..26].copy_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&p);
    };
    let head = OpusConfig {
        channels: 2,
        input_sample_rate: 48_000,
        pre_skip: 312,
    }
    .head();
    page(0, 0, 2, &head);
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&4u32.to_le_bytes());
    tags.extend_from_slice(b"test");
    tags.extend_from_slice(&0u32.to_le_bytes());
    page(1, 0, 0, &tags);
    let mut granule = 0u64;
    for (i, p) in packets.iter().enumerate() {
        granule += samples_each;
        let last = i + 1 == packets.len();
        page(i as u32 + 2, granule, if last { 4 } else { 0 }, p);
    }
    std::fs::write(path, out).unwrap();
}

fn run(direction: Direction, source: &Track, frames: &[Frame]) -> (f64, Vec<Frame>) {
    let mut t = Transcoder::new(source, direction, AudioQuality::default())
        .unwrap()
        .unwrap();
    let start_cpu = self_cpu();
    let start = Instant::now();
    let mut out = Vec::new();
    for f in frames {
        out.extend(t.push(f).unwrap_or_default());
    }
    let cpu = self_cpu() - start_cpu;
    eprintln!("  ({:.2} s wall)", start.elapsed().as_secs_f64());
    (cpu, out)
}

fn main() {
    let dir: PathBuf = std::env::temp_dir().join(format!("ms-audio-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let secs = SECS.to_string();
    // The source: 44.1 kHz stereo, a chord with vibrato, clicks and a little noise.
    ffmpeg(&[
        "-f", "lavfi", "-i",
        "aevalsrc='0.25*sin(2*PI*(220+3*sin(2*PI*5*t))*t)+0.15*sin(2*PI*277*t)+0.12*sin(2*PI*330*t)+0.1*sin(2*PI*1760*t)*exp(-20*mod(t,0.5))|0.2*sin(2*PI*(330+2*sin(2*PI*4*t))*t)+0.15*sin(2*PI*440*t)+0.1*sin(2*PI*2637*t)*exp(-20*mod(t+0.25,0.5))':s=44100",
        "-f", "lavfi", "-i", "anoisesrc=a=0.01:c=pink:r=44100",
        "-filter_complex", "[0][1]amix=inputs=2:normalize=0,aformat=channel_layouts=stereo",
        "-t", &secs, &p("source.wav"),
    ]);
    let source = pcm_of(Path::new(&p("source.wav")), &dir);

    // ---- AAC -> Opus ----
    ffmpeg(&[
        "-i",
        &p("source.wav"),
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-f",
        "adts",
        &p("in.aac"),
    ]);
    let aac = adts_frames(&std::fs::read(p("in.aac")).unwrap());
    let asc = AacConfig::parse(Bytes::from_static(&[0x12, 0x10])).unwrap();
    let aac_track = Track {
        id: TrackId(1),
        timescale: 44_100,
        codec: CodecConfig::Aac(asc),
    };
    let aac_frames: Vec<Frame> = aac
        .iter()
        .enumerate()
        .map(|(i, d)| Frame {
            track: TrackId(1),
            pts: i as i64 * 1024,
            dts: i as i64 * 1024,
            keyframe: true,
            data: Bytes::from(d.clone()),
        })
        .collect();
    let (ours_cpu, opus) = run(Direction::AacToOpus, &aac_track, &aac_frames);
    let packets: Vec<Vec<u8>> = opus.iter().map(|f| f.data.to_vec()).collect();
    write_ogg_opus(&packets, 480, Path::new(&p("ours.opus")));
    let ours_snr = aligned_snr(&source, &pcm_of(Path::new(&p("ours.opus")), &dir));
    let ours_kbps =
        packets.iter().map(Vec::len).sum::<usize>() as f64 * 8.0 / f64::from(SECS) / 1000.0;
    let ff_cpu = ffmpeg(&[
        "-i",
        &p("in.aac"),
        "-c:a",
        "libopus",
        "-b:a",
        "96k",
        "-frame_duration",
        "10",
        &p("ff.opus"),
    ]);
    let ff_snr = aligned_snr(&source, &pcm_of(Path::new(&p("ff.opus")), &dir));
    let pct = |cpu: f64| cpu / f64::from(SECS) * 100.0;
    println!("AAC->Opus  ours:   {:.2} % of a core per stream, SNR {ours_snr:.1} dB, {ours_kbps:.0} kbit/s", pct(ours_cpu));
    println!("AAC->Opus  ffmpeg: {:.2} % of a core per stream, SNR {ff_snr:.1} dB (libopus 96k, 10 ms frames; decode+encode, process start included)", pct(ff_cpu));

    // ---- Opus -> AAC ----
    let mut enc = opus_rs::OpusEncoder::new(48_000, 2, opus_rs::Application::Audio).unwrap();
    enc.bitrate_bps = 96_000;
    let mut buf = vec![0u8; 4000];
    let opus_in: Vec<Vec<u8>> = source
        .chunks_exact(960 * 2)
        .map(|c| {
            let n = enc.encode(c, 960, &mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect();
    let opus_track = Track {
        id: TrackId(1),
        timescale: 48_000,
        codec: CodecConfig::Opus(OpusConfig::webrtc()),
    };
    let opus_frames: Vec<Frame> = opus_in
        .iter()
        .enumerate()
        .map(|(i, d)| Frame {
            track: TrackId(1),
            pts: i as i64 * 960,
            dts: i as i64 * 960,
            keyframe: true,
            data: Bytes::from(d.clone()),
        })
        .collect();
    let (ours_cpu, aac_out) = run(Direction::OpusToAac, &opus_track, &opus_frames);
    write_adts(&aac_out, 2, Path::new(&p("ours.aac")));
    let ours_snr = aligned_snr(&source, &pcm_of(Path::new(&p("ours.aac")), &dir));
    let ours_kbps =
        aac_out.iter().map(|f| f.data.len()).sum::<usize>() as f64 * 8.0 / f64::from(SECS) / 1000.0;
    // The same encoder over the whole decoded signal at once (what windowing costs).
    let mut dec = opus_rs::OpusDecoder::new(48_000, 2).unwrap();
    let mut pcm = Vec::new();
    let mut out = vec![0f32; 5760 * 2];
    for p in &opus_in {
        let n = dec.decode(p, 5760, &mut out).unwrap();
        pcm.extend_from_slice(&out[..n * 2]);
    }
    let batch_start = self_cpu();
    let mut enc = rusty_aac::AacEncoder::new(rusty_aac::AacEncoderConfig {
        bitrate_bps: 128_000,
        ..Default::default()
    });
    enc.push_pcm(&pcm, 2, 48_000).unwrap();
    enc.finish();
    let mut batch = Vec::new();
    while let Ok(p) = enc.next_packet() {
        batch.push(Frame {
            track: TrackId(1),
            pts: p.pts,
            dts: p.pts,
            keyframe: true,
            data: Bytes::from(p.data),
        });
    }
    let batch_cpu = self_cpu() - batch_start;
    write_adts(&batch, 2, Path::new(&p("batch.aac")));
    let batch_snr = aligned_snr(&source, &pcm_of(Path::new(&p("batch.aac")), &dir));
    println!("Opus->AAC  rusty_aac over the whole clip at once: {:.2} % of a core, SNR {batch_snr:.1} dB", pct(batch_cpu));
    // ffmpeg's input: the same Opus packets in Ogg (20 ms each).
    write_ogg_opus(&opus_in, 960, Path::new(&p("in.opus")));
    let ff_cpu = ffmpeg(&[
        "-i",
        &p("in.opus"),
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-f",
        "adts",
        &p("ff.aac"),
    ]);
    let ff_snr = aligned_snr(&source, &pcm_of(Path::new(&p("ff.aac")), &dir));
    println!("Opus->AAC  ours:   {:.2} % of a core per stream, SNR {ours_snr:.1} dB, {ours_kbps:.0} kbit/s", pct(ours_cpu));
    println!("Opus->AAC  ffmpeg: {:.2} % of a core per stream, SNR {ff_snr:.1} dB (native aac 128k; decode+encode, process start included)", pct(ff_cpu));
    let _ = std::fs::remove_dir_all(&dir);
}
