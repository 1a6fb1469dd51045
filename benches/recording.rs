//! Recording costs (not criterion: whole-pipeline runs).
//!
//! 1. Write throughput and CPU per recorded stream: one stream of synthetic 2 Mbit/s H.264
//!    (30 fps, IDR every 2 s) + AAC-sized audio goes through the hub to a recorder writing
//!    1 s fragments to a temp dir, paced at 10x real time; the process's CPU time over the run
//!    divided by the media duration is the cost of recording one real-time stream. Run with
//!    fsync on and off.
//! 2. Recovery of a 1-hour recording: a 1-hour file (3,600 one-second fragments at 2 Mbit/s;
//!    the mdat payloads are sparse holes, the headers real) with a torn last fragment is
//!    scanned, cut and measured the way a restart does it.
//!
//! Run: `cargo bench --bench recording` (numbers: BENCHMARKS.md). Under `cargo test` it makes a
//! short smoke run.

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use media_server::config::RecordingConfig;
use media_server::egress::record::{recover_file, Recorders};
use media_server::events::EventBus;
use media_server::hub::Hub;
use media_server::media::{CodecConfig, Frame, Track, TrackId, Tracks};
use media_server::proto::fmp4::{self, Sample, TrackRun};

const SPS: &[u8] = &[
    0x67, 0x42, 0xc0, 0x0d, 0xda, 0x05, 0x07, 0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00,
    0x00, 0x0f, 0x03, 0xc5, 0x0a, 0xa8,
];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
/// AAC-LC, 44.1 kHz, stereo.
const ASC: &[u8] = &[0x12, 0x10];

fn tracks() -> Tracks {
    let avcc = media_server::media::annexb::avcc_record(SPS, PPS).expect("avcC");
    Tracks {
        list: vec![
            Track {
                id: TrackId(0),
                timescale: 1000,
                codec: CodecConfig::H264(
                    media_server::media::h264::AvcConfig::parse(avcc).expect("avcC parses"),
                ),
            },
            Track {
                id: TrackId(1),
                timescale: 1000,
                codec: CodecConfig::Aac(
                    media_server::media::aac::AacConfig::parse(Bytes::from_static(ASC))
                        .expect("ASC parses"),
                ),
            },
        ],
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn write_run(media_secs: u64, fsync: bool) {
    let dir = std::env::temp_dir().join(format!("ms-bench-rec-{}-{}", std::process::id(), fsync));
    let _ = std::fs::remove_dir_all(&dir);
    let store = media_server::store::Store::open(&dir).await.expect("store");
    let (events, _rx) = EventBus::new();
    let config = RecordingConfig {
        fsync,
        min_free_mb: 0,
        ..RecordingConfig::default()
    };
    let recs = Recorders::new(
        store.clone(),
        config,
        &dir,
        events,
        ("bench".into(), false),
        None,
    );
    let hub = Hub::default();
    let publisher = hub.publish("str_bench", "rtmp").expect("publish");
    publisher.set_tracks(std::sync::Arc::new(tracks()));
    assert!(recs.start(publisher.stream().clone()));
    let video_p = Bytes::from(vec![0x41u8; 7_800]);
    let video_i = Bytes::from(vec![0x65u8; 40_000]);
    let audio = Bytes::from(vec![0x21u8; 400]);
    let frame_ms = 1000.0 / 30.0;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut audio_ms = 0i64;
    let frames = media_secs * 30;
    for n in 0..frames {
        let dts = (n as f64 * frame_ms) as i64;
        let key = n % 60 == 0;
        let data = if key { &video_i } else { &video_p };
        let mut avcc = Vec::with_capacity(data.len() + 4);
        avcc.extend_from_slice(&(data.len() as u32).to_be_bytes());
        avcc.extend_from_slice(data);
        publisher.push(Frame {
            track: TrackId(0),
            pts: dts,
            dts,
            keyframe: key,
            data: Bytes::from(avcc),
        });
        while audio_ms <= dts {
            publisher.push(Frame {
                track: TrackId(1),
                pts: audio_ms,
                dts: audio_ms,
                keyframe: true,
                data: audio.clone(),
            });
            audio_ms += 23;
        }
        // 10x real time.
        tokio::time::sleep_until(
            tokio::time::Instant::from_std(t0) + Duration::from_micros((n + 1) * 3_333),
        )
        .await;
    }
    drop(publisher);
    recs.idle().await;
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let page = store
        .list_recordings(
            Default::default(),
            media_server::store::RecordingOrder::StartedAt,
            false,
            10,
            None,
        )
        .await
        .expect("list");
    let rec = &page.rows[0];
    let mb = rec.size_bytes as f64 / 1e6;
    println!(
        "record 2 Mbit/s, fsync {fsync}: {media_secs} s of media in {wall:.1} s -> {:.1} MB/s written; \
         {:.2} % of one core per real-time stream; recording {} ({:.1} s, {mb:.1} MB)",
        mb / wall,
        cpu / media_secs as f64 * 100.0,
        rec.status,
        rec.duration_ms as f64 / 1000.0,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn recovery_run(fragments: u64) {
    let path = std::env::temp_dir().join(format!("ms-bench-recover-{}.mp4", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&fmp4::init_segment(&tracks()).expect("init"))
        .expect("write");
    let payload = Bytes::from(vec![0u8; 8_333]);
    let samples: Vec<Sample> = (0..30)
        .map(|i| Sample {
            duration: 33,
            composition_offset: 0,
            keyframe: i == 0,
            data: payload.clone(),
        })
        .collect();
    for n in 0..fragments {
        let run = TrackRun {
            track_id: 1,
            base_decode_time: n * 990,
            samples: &samples,
        };
        let chunks = fmp4::fragment(n as u32 + 1, &[run]).expect("fragment");
        let bytes = chunks.to_vec();
        // moof + mdat header for real; the payload as a hole.
        let head = bytes.len() - samples.len() * payload.len();
        f.write_all(&bytes[..head]).expect("write");
        f.seek(SeekFrom::Current((bytes.len() - head) as i64))
            .expect("seek");
    }
    // A torn last fragment: a moof header cut short.
    f.write_all(&[0, 0, 1, 0, b'm', b'o', b'o', b'f', 0, 0])
        .expect("write");
    f.sync_all().expect("sync");
    drop(f);
    let len = std::fs::metadata(&path).expect("meta").len();
    let t0 = Instant::now();
    let (size, duration) = recover_file(&path).expect("recover");
    let elapsed = t0.elapsed();
    println!(
        "recover a {:.1} h recording ({:.0} MB, {fragments} fragments, torn tail): {:.1} ms -> \
         {duration:.0} s of media, cut from {len} to {size} bytes",
        fragments as f64 / 3600.0,
        len as f64 / 1e6,
        elapsed.as_secs_f64() * 1000.0,
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let media_secs = if full { 60 } else { 3 };
    write_run(media_secs, true).await;
    write_run(media_secs, false).await;
    recovery_run(if full { 3600 } else { 60 });
}
