//! Core hot paths: RTMP chunk reading, FLV → Frame, fMP4 part muxing, and hub fan-out to
//! 1/100/1000 subscribers. Besides criterion's timings, the fan-out group counts heap
//! allocations and payload copies per frame per subscriber with a counting allocator.
//!
//! Run: `cargo bench --bench core` (results and the numbers we got: BENCHMARKS.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use media_server::hub::{Event, Hub};
use media_server::ingest::rtmp::RtmpIngest;
use media_server::media::aac::AacConfig;
use media_server::media::h264::AvcConfig;
use media_server::media::{CodecConfig, Frame, Track, TrackId, Tracks};
use media_server::proto::flv;
use media_server::proto::fmp4::{self, Sample, TrackRun};
use media_server::proto::rtmp::chunk::{ChunkReader, ChunkWriter};

/// Counts allocations so the fan-out benchmark can report allocations per frame.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const AVCC: &[u8] = &[
    0x01, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0x00, 0x17, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16,
    0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x0c, 0x23, 0xc6, 0x0c, 0xa8, 0x01,
    0x00, 0x04, 0x68, 0xce, 0x0f, 0xc8,
];

fn tracks() -> Arc<Tracks> {
    Tracks::shared(vec![
        Track {
            id: TrackId(0),
            timescale: 1000,
            codec: CodecConfig::H264(AvcConfig::parse(Bytes::from_static(AVCC)).unwrap()),
        },
        Track {
            id: TrackId(1),
            timescale: 1000,
            codec: CodecConfig::Aac(AacConfig::parse(Bytes::from_static(&[0x12, 0x10])).unwrap()),
        },
    ])
}

/// 30 fps video of ~4 Mbit/s (16 KB frames) as RTMP chunks of 4096 bytes.
fn rtmp_bytes(frames: usize) -> Vec<u8> {
    let mut w = ChunkWriter::new();
    w.set_chunk_size(4096);
    let mut out = BytesMut::new();
    let payload = vec![0x27u8; 16 * 1024];
    for i in 0..frames {
        w.write_message(&mut out, 6, (i * 33) as u32, 9, 1, &payload);
    }
    out.to_vec()
}

fn chunk_reader(c: &mut Criterion) {
    let data = rtmp_bytes(300);
    let mut g = c.benchmark_group("rtmp_chunk_reader");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("16KiB_video_messages_4096_chunks", |b| {
        b.iter(|| {
            let mut r = ChunkReader::new(1 << 24);
            r.set_chunk_size(4096).unwrap();
            for piece in data.chunks(64 * 1024) {
                r.push(piece);
                while let Some(m) = r.read_message().unwrap() {
                    black_box(m);
                }
            }
        })
    });
    g.finish();
}

fn flv_to_frame(c: &mut Criterion) {
    let mut tag = flv::avc_frame_tag_header(false, 66).to_vec();
    tag.extend_from_slice(&[0u8; 16 * 1024]);
    let tag = Bytes::from(tag);
    let hub = Hub::default();
    let mut ingest = RtmpIngest::new(hub.publish("bench", "rtmp").unwrap());
    ingest
        .on_video(0, flv::avc_sequence_header_tag(AVCC))
        .unwrap();
    ingest
        .on_video(0, Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]))
        .unwrap();
    let mut g = c.benchmark_group("flv_to_frame");
    g.throughput(Throughput::Elements(1));
    let mut ts = 0u32;
    g.bench_function("h264_16KiB_tag_into_hub_without_subscribers", |b| {
        b.iter(|| {
            ts = ts.wrapping_add(33);
            ingest.on_video(ts, tag.clone()).unwrap();
        })
    });
    g.finish();
}

fn fmp4_part(c: &mut Criterion) {
    // A 200 ms part: 6 video frames of 16 KiB + 9 AAC frames of 400 bytes.
    let video: Vec<Sample> = (0..6)
        .map(|i| Sample {
            duration: 33,
            composition_offset: 33,
            keyframe: i == 0,
            data: Bytes::from(vec![0u8; 16 * 1024]),
        })
        .collect();
    let audio: Vec<Sample> = (0..9)
        .map(|_| Sample {
            duration: 23,
            composition_offset: 0,
            keyframe: true,
            data: Bytes::from(vec![0u8; 400]),
        })
        .collect();
    let bytes: usize = video.iter().chain(&audio).map(|s| s.data.len()).sum();
    let mut g = c.benchmark_group("fmp4_part");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("moof_mdat_6_video_9_audio", |b| {
        b.iter(|| {
            let runs = [
                TrackRun {
                    track_id: 1,
                    base_decode_time: 90_000,
                    samples: &video,
                },
                TrackRun {
                    track_id: 2,
                    base_decode_time: 90_000,
                    samples: &audio,
                },
            ];
            black_box(fmp4::fragment(7, &runs).unwrap())
        })
    });
    g.finish();
}

fn frame(i: i64) -> Frame {
    Frame {
        track: TrackId(0),
        dts: i * 33,
        pts: i * 33,
        keyframe: i % 60 == 0,
        data: Bytes::from_static(&[0u8; 16 * 1024]),
    }
}

fn hub_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_fanout");
    for subscribers in [1usize, 100, 1000] {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, &n| {
                let hub = Hub::new(64);
                let p = hub.publish("s", "rtmp").unwrap();
                p.set_tracks(tracks());
                let mut subs: Vec<_> = (0..n)
                    .map(|_| hub.subscribe("s", "rtmp").unwrap())
                    .collect();
                let mut i = 0i64;
                b.iter(|| {
                    p.push(frame(i));
                    i += 1;
                    // Subscribers keep up (drain every 32 frames), as a healthy viewer does.
                    if i % 32 == 0 {
                        for s in &mut subs {
                            while let Some(ev) = s.try_recv() {
                                black_box(ev);
                            }
                        }
                    }
                })
            },
        );
    }
    g.finish();
    report_allocations();
}

/// Allocations per frame per subscriber in steady state, printed for BENCHMARKS.md.
fn report_allocations() {
    for n in [1usize, 100, 1000] {
        let hub = Hub::new(64);
        let p = hub.publish("alloc", "rtmp").unwrap();
        p.set_tracks(tracks());
        let mut subs: Vec<_> = (0..n)
            .map(|_| hub.subscribe("alloc", "rtmp").unwrap())
            .collect();
        let payload = Bytes::from(vec![0u8; 16 * 1024]);
        let push = |i: i64| {
            p.push(Frame {
                track: TrackId(0),
                dts: i * 33,
                pts: i * 33,
                keyframe: i % 60 == 0,
                data: payload.clone(),
            })
        };
        let drain = |subs: &mut Vec<media_server::hub::Subscription>| {
            let mut same_buffer = true;
            for s in subs.iter_mut() {
                while let Some(ev) = s.try_recv() {
                    if let Event::Frame(f) = ev {
                        same_buffer &= f.data.as_ptr() == payload.as_ptr();
                    }
                }
            }
            same_buffer
        };
        // Warm up: queues and the GOP cache reach their steady capacity.
        for i in 0..600 {
            push(i);
            if i % 32 == 31 {
                drain(&mut subs);
            }
        }
        drain(&mut subs);
        let frames = 32 * 20;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let mut shared = true;
        for i in 600..600 + frames {
            push(i);
            if i % 32 == 31 {
                // Draining does not allocate either; it is included in the count.
                shared &= drain(&mut subs);
            }
        }
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "hub_fanout allocations: {n} subscribers: {:.4} allocations per frame per subscriber ({allocs} over {frames} frames); payloads shared, not copied: {shared}",
            allocs as f64 / (frames as f64 * n as f64)
        );
    }
}

/// The per-frame cost of the health bookkeeping (done under the stream's own lock on every
/// pushed frame) and of one evaluation (a few per minute per stream).
fn stats_bookkeeping(c: &mut Criterion) {
    use media_server::hub::health::{External, FrameInfo, HealthTracker};
    use std::time::{Duration, Instant};
    let info = |i: u64| FrameInfo {
        video: i % 3 != 2,
        clock: i % 3 != 2,
        dts_ms: (i * 22) as i64,
        keyframe: i % 90 == 0,
        bytes: 16 * 1024,
    };
    let start = Instant::now();
    let at = |i: u64| start + Duration::from_micros(i * 22_000);
    let mut g = c.benchmark_group("stats_bookkeeping");
    g.throughput(Throughput::Elements(1));
    g.bench_function("health_record_per_frame", |b| {
        let mut h = HealthTracker::default();
        let mut i = 0u64;
        b.iter(|| {
            h.record(at(i), black_box(info(i)));
            i += 1;
        })
    });
    g.bench_function("health_evaluate_30s_window", |b| {
        let mut h = HealthTracker::default();
        for i in 0..2000 {
            h.record(at(i), info(i));
        }
        b.iter(|| black_box(h.evaluate(at(2000), External::default())))
    });
    g.finish();
    let mut h = HealthTracker::default();
    for i in 0..2000 {
        h.record(at(i), info(i));
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 2000..12_000 {
        h.record(at(i), info(i));
    }
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("stats_bookkeeping allocations: {allocs} over 10000 recorded frames");
}

criterion_group!(
    benches,
    chunk_reader,
    flv_to_frame,
    fmp4_part,
    hub_fanout,
    stats_bookkeeping
);
criterion_main!(benches);
