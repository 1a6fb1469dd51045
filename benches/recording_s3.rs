//! Uploading recordings to S3-compatible object storage (moto's server on loopback, started
//! here), side by side with boto3 (the AWS SDK for Python, from moto's venv) uploading the
//! same file with the same part size to the same server:
//!
//! 1. Throughput and CPU: a spool the size of a 1-hour 2 Mbit/s recording (~900 MB) is
//!    uploaded part by part as a recording does it while running (each 8 MiB part as soon as
//!    it is written); our process's CPU time per uploaded Mbit/s (reading the spool, MD5 for
//!    the ETag check, SHA-256 of the object, SigV4 payload hashing, HTTP).
//! 2. Stop → `ready`: with every full part already up, the time from the recording's end
//!    (final length known) to `ready` in the database: the tail part, completing the upload,
//!    checking the object (size and multipart ETag) and storing the result.
//! 3. The anchor: boto3 (the AWS SDK for Python) uploading the same spool to the same server
//!    the same way (8 MiB parts one after the other, then complete), each phase timed, with
//!    its CPU time for the parts.
//!
//! Run: `cargo bench --bench recording_s3` (needs `target/moto-venv`, which `tests/run.sh`
//! makes, or `MS_TEST_MOTO`). Under `cargo test` it makes a short smoke run (a few MiB).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/proc.rs"]
mod proc;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::{moto_program, Moto, ACCESS_KEY, SECRET_KEY};

use media_server::config::StorageConfig;
use media_server::egress::storage::ObjectStorage;
use media_server::egress::upload::{self, Outcome, Progress, Upload};

const BUCKET: &str = "bench";

/// A spool of `len` bytes (not media: the uploader does not look inside).
fn make_spool(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("spool"));
    let mut block = vec![0u8; 1 << 20];
    let mut x: u32 = 0x1234_5678;
    let mut written = 0;
    while written < len {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let n = (len - written).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write");
        written += n as u64;
    }
    f.flush().expect("flush");
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let Some(program) = moto_program() else {
        return;
    };
    let part_mb: u64 = if full { 8 } else { 1 };
    // 1 hour at 2 Mbit/s: 900 MB, plus a tail that is not a whole part.
    let len: u64 = if full {
        900_000_000
    } else {
        3 * 1024 * 1024 + 12_345
    };
    let dir = std::env::temp_dir().join(format!("ms-bench-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let Some(moto) = Moto::start(&[]).await else {
        return;
    };
    moto.create_bucket(BUCKET).await;
    let store = media_server::store::Store::open(&dir).await.expect("store");
    let storage = ObjectStorage::from_config(
        &StorageConfig {
            kind: "s3".into(),
            endpoint: moto.endpoint(),
            bucket: BUCKET.into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            part_size_mb: part_mb,
            ..StorageConfig::default()
        },
        |_| None,
    )
    .expect("config")
    .expect("s3");
    let row = store
        .create_recording("str_bench", "bench", None, None, "")
        .await
        .expect("row");
    let spool = dir.join(&row.file);
    make_spool(&spool, len);
    let part = part_mb * 1024 * 1024;
    let full_parts = len / part * part;
    let (tx, rx) = tokio::sync::watch::channel(Progress {
        durable: 0,
        final_len: None,
    });
    let up = Upload {
        storage: storage.clone(),
        store: store.clone(),
        id: row.id.clone(),
        path: spool.clone(),
    };
    let task = tokio::spawn(upload::run(up, rx));
    // While recording: every full part is written at once (the spool exists whole); the
    // uploader sends them one after the other.
    let cpu0 = proc::cpu_seconds(std::process::id());
    let t0 = Instant::now();
    tx.send_modify(|p| p.durable = full_parts);
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let up = store
            .get_recording(&row.id)
            .await
            .ok()
            .flatten()
            .map_or(0, |r| r.uploaded_bytes);
        if up as u64 >= full_parts {
            break;
        }
        assert!(Instant::now() < deadline, "parts never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upload_secs = t0.elapsed().as_secs_f64();
    let cpu = proc::cpu_seconds(std::process::id()) - cpu0;
    // Stop: the final length is known; time to ready.
    store
        .set_recording_uploading(&row.id, len, 3_600_000, "v1;0")
        .await
        .expect("uploading");
    let t1 = Instant::now();
    tx.send_modify(|p| p.final_len = Some(len));
    let outcome = task.await.expect("upload task");
    let stop_to_ready = t1.elapsed();
    let Outcome::Ready(done) = outcome else {
        panic!("upload did not finish: {outcome:?}");
    };
    assert_eq!(done.size_bytes as u64, len);
    let mbit = full_parts as f64 * 8.0 / 1e6;
    println!(
        "RESULT s3_upload bytes={full_parts} parts={} part_mib={part_mb} secs={upload_secs:.2} \
         mbytes_per_sec={:.1} cpu_secs={cpu:.2} cpu_ms_per_mbit={:.3}",
        full_parts / part,
        full_parts as f64 / 1e6 / upload_secs,
        cpu * 1000.0 / mbit,
    );
    println!(
        "RESULT s3_stop_to_ready total_bytes={len} tail_bytes={} ms={:.1}",
        len - full_parts,
        stop_to_ready.as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let head = storage.head(&storage.key(&row.id)).await;
    println!(
        "RESULT s3_head ms={:.1} ok={}",
        t.elapsed().as_secs_f64() * 1000.0,
        head.is_ok()
    );
    // The anchor: boto3 from moto's venv, same file, same part size, same server, the same
    // pattern (parts one after the other, then complete), each phase timed.
    let python = program.with_file_name("python");
    let script = format!(
        "import time, boto3, resource\n\
         c = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
         aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1')\n\
         r0 = resource.getrusage(resource.RUSAGE_SELF)\n\
         t = time.time(); u = c.create_multipart_upload(Bucket='{BUCKET}', Key='boto3.bin')['UploadId']\n\
         parts = []\n\
         f = open('{}', 'rb'); n = 1\n\
         while True:\n\
         \x20   b = f.read({part})\n\
         \x20   if not b: break\n\
         \x20   e = c.upload_part(Bucket='{BUCKET}', Key='boto3.bin', UploadId=u, PartNumber=n, Body=b)['ETag']\n\
         \x20   parts.append({{'ETag': e, 'PartNumber': n}}); n += 1\n\
         up = time.time() - t\n\
         r1 = resource.getrusage(resource.RUSAGE_SELF)\n\
         t2 = time.time(); c.complete_multipart_upload(Bucket='{BUCKET}', Key='boto3.bin', UploadId=u, MultipartUpload={{'Parts': parts}})\n\
         done = time.time() - t2\n\
         cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)\n\
         print('RESULT boto3_upload parts=%d secs=%.2f mbytes_per_sec=%.1f cpu_secs=%.2f cpu_ms_per_mbit=%.3f complete_ms=%.1f' % \
         (len(parts), up, {len} / 1e6 / up, cpu, cpu * 1000 / ({len} * 8 / 1e6), done * 1000))\n",
        moto.endpoint(),
        spool.display()
    );
    match Command::new(&python).args(["-c", &script]).output() {
        Ok(out) if out.status.success() => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Ok(out) => println!(
            "boto3 anchor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => println!("boto3 anchor not run: {e}"),
    }
    drop(moto);
    let _ = std::fs::remove_dir_all(&dir);
}
