//! Camera costs: JPEG → H.264 per frame (zune-jpeg decode + openh264 encode) at 640×480 and
//! 1280×720, from which CPU per camera at 10 and 25 fps follows; and MJPEG fan-out of one
//! camera to 100 viewers (hub push + each viewer taking the newest frame and framing it).
//!
//! Run: `cargo bench --bench camera` (numbers: BENCHMARKS.md).

#[path = "../examples/esp32_cam/frames.rs"]
mod frames;

use std::time::Instant;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use media_server::hub::{Event, Hub};
use media_server::ingest::camera::transcode::FrameEncoder;
use media_server::media::{CodecConfig, Frame, Track, TrackId, Tracks};
use media_server::proto::multipart;

fn transcode(c: &mut Criterion) {
    let mut g = c.benchmark_group("camera_jpeg_to_h264");
    g.sample_size(20);
    for (w, h) in [(640u16, 480u16), (1280, 720)] {
        let jpegs: Vec<Vec<u8>> = (0..50).map(|n| frames::jpeg(n, w, h, 80)).collect();
        let mut enc = FrameEncoder::new(1_500_000);
        let mut n = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{w}x{h}"), |b| {
            b.iter(|| {
                let out = enc.encode(&jpegs[n % jpegs.len()], (n * 100) as i64);
                n += 1;
                black_box(out.unwrap())
            })
        });
        // CPU per camera: seconds of one core per second of video.
        let start = Instant::now();
        let frames_timed = 100;
        let mut enc = FrameEncoder::new(1_500_000);
        for i in 0..frames_timed {
            black_box(
                enc.encode(&jpegs[i % jpegs.len()], (i * 100) as i64)
                    .unwrap(),
            );
        }
        let per_frame = start.elapsed().as_secs_f64() / frames_timed as f64;
        for fps in [10.0, 25.0] {
            println!(
                "camera transcode {w}x{h} @ {fps} fps: {:.1} ms per frame, {:.0} % of one core",
                per_frame * 1000.0,
                per_frame * fps * 100.0
            );
        }
    }
    g.finish();
}

fn mjpeg_fanout(c: &mut Criterion) {
    let jpeg = Bytes::from(frames::jpeg(1, 640, 480, 80));
    let hub = Hub::default();
    let p = hub.publish("cam", "ws-mjpeg").unwrap();
    p.set_tracks(Tracks::shared(vec![Track {
        id: TrackId(2),
        timescale: 1000,
        codec: CodecConfig::Jpeg {
            width: 640,
            height: 480,
        },
    }]));
    let live = hub.get("cam").unwrap();
    let mut viewers: Vec<_> = (0..100).map(|_| live.subscribe_short(4, "mjpeg")).collect();
    let mut g = c.benchmark_group("mjpeg_fanout");
    g.throughput(Throughput::Elements(1));
    let mut dts = 0i64;
    g.bench_function("100_viewers_640x480", |b| {
        b.iter(|| {
            dts += 40;
            p.push(Frame {
                track: TrackId(2),
                pts: dts,
                dts,
                keyframe: true,
                data: jpeg.clone(),
            });
            // What each viewer does per frame: take the newest, frame it as a part.
            for v in &mut viewers {
                let mut newest = None;
                while let Some(ev) = v.try_recv() {
                    if let Event::Frame(f) = ev {
                        newest = Some(f);
                    }
                }
                if let Some(f) = newest {
                    black_box((multipart::part_header(f.data.len()), f.data));
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, transcode, mjpeg_fanout);
criterion_main!(benches);
