//! Uploading a recording to object storage while it is written: the local file is a spool
//! that only grows (the init segment first, then whole fragments), so every byte below the
//! length last written is final and can go up as a multipart part at once. Parts are all
//! [`ObjectStorage::part_size`] bytes but the last (what R2 and S3 want), one in flight per
//! recording; losing the node loses at most the part being filled.
//!
//! [`next_step`] decides (sans-IO) what to send next from what is written and what is sent;
//! [`run`] does it: it creates the upload at the first part, stores each part's ETag in the
//! database (so a restart resumes instead of starting over), completes the upload once the
//! recording is finished, checks the object (size, and the multipart ETag against the MD5s
//! of the parts), and only then reports the recording `ready`. An unreachable store is
//! retried with backoff for as long as it takes (the recording stays `uploading`, with the
//! last error as its reason); refusals count toward `upload_attempts`, then `failed`.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest as _, Md5};
use sha2::Sha256;
use tokio::sync::watch;

use super::storage::{ObjectStorage, StorageError};
use crate::store::{RecordingRow, Store};

/// The most parts a multipart upload may have (S3).
pub const MAX_PARTS: usize = 10_000;

/// How far the spool is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes written (and synced) to the spool: final, they never change.
    pub durable: u64,
    /// The spool's final length, once the recording is finished.
    pub final_len: Option<u64>,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Upload part `idx` (0-based), the spool's bytes `range`.
    Part {
        /// Part index.
        idx: usize,
        /// Bytes of the spool.
        range: Range<u64>,
    },
    /// Every byte is in a part: complete the upload.
    Complete,
    /// Wait for more bytes.
    Wait,
}

/// The next step for a spool at `progress` of which the first `parts_done` parts of
/// `part_size` bytes are uploaded. An error when the recording needs more than
/// [`MAX_PARTS`] parts or is empty.
pub fn next_step(part_size: u64, progress: Progress, parts_done: usize) -> Result<Step, String> {
    let part_size = part_size.max(1);
    let start = parts_done as u64 * part_size;
    let durable = progress.durable.max(progress.final_len.unwrap_or(0));
    let part = |end: u64| {
        if parts_done >= MAX_PARTS {
            Err(format!(
                "too many parts: more than {MAX_PARTS} of {part_size} bytes"
            ))
        } else {
            Ok(Step::Part {
                idx: parts_done,
                range: start..end,
            })
        }
    };
    match progress.final_len {
        Some(0) => Err("the recording is empty".into()),
        Some(f) if start >= f && parts_done > 0 => Ok(Step::Complete),
        Some(f) if f.saturating_sub(start) <= part_size => part(f),
        _ if durable >= start + part_size => part(start + part_size),
        _ => Ok(Step::Wait),
    }
}

/// How an upload ended.
#[derive(Debug)]
pub enum Outcome {
    /// Uploaded and verified: the row, now `ready` in object storage.
    Ready(RecordingRow),
    /// Given up: the row, now `failed` (the spool is kept).
    Failed(RecordingRow),
    /// The recording was deleted, or the spool went away before it was finished.
    Gone,
}

/// Parts in flight at once over the whole server (each holds a part in memory).
static PARTS_IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// One recording's upload.
pub struct Upload {
    /// The store.
    pub storage: Arc<ObjectStorage>,
    /// Recording rows.
    pub store: Store,
    /// The recording.
    pub id: String,
    /// The spool file.
    pub path: PathBuf,
}

/// What is uploaded so far.
struct Sent {
    upload_id: Option<String>,
    etags: Vec<String>,
    md5s: Vec<[u8; 16]>,
    sha: Sha256,
    /// Every part's ETag was the MD5 of its bytes (not so with SSE-KMS or SSE-C buckets):
    /// the object's multipart ETag can then be checked too.
    etags_are_md5: bool,
}

impl Default for Sent {
    fn default() -> Self {
        Sent {
            upload_id: None,
            etags: Vec::new(),
            md5s: Vec::new(),
            sha: Sha256::default(),
            etags_are_md5: true,
        }
    }
}

/// Bytes of the spool, with their MD5.
struct Piece {
    bytes: bytes::Bytes,
    md5: [u8; 16],
}

impl Upload {
    fn key(&self) -> String {
        self.storage.key(&self.id)
    }

    /// Reads (and hashes, off the async threads) a range of the spool.
    async fn read(&self, range: Range<u64>) -> Result<Piece, Failure> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            file.read_exact_at(&mut buf, range.start)?;
            let md5: [u8; 16] = Md5::digest(&buf).into();
            Ok::<_, std::io::Error>(Piece {
                bytes: bytes::Bytes::from(buf),
                md5,
            })
        })
        .await
        .map_err(|e| Failure::Local(e.to_string()))?;
        read.map_err(|e| match e.kind() {
            // The spool is gone or shorter than what was written: no retry brings it back.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof => Failure::SpoolGone(
                format!("the local file to upload is gone or cut short: {e}"),
            ),
            _ => Failure::Local(format!("reading the spool: {e}")),
        })
    }

    /// Adds bytes to the object's SHA-256, off the async threads.
    async fn hash(sent: &mut Sent, bytes: bytes::Bytes) {
        let mut sha = std::mem::take(&mut sent.sha);
        sent.sha = tokio::task::spawn_blocking(move || {
            sha2::Digest::update(&mut sha, &bytes);
            sha
        })
        .await
        .unwrap_or_default();
    }

    /// What a restart finds: the parts stored for the current upload whose bytes the spool
    /// still has (anything else starts over).
    async fn resume(&self, row: &RecordingRow) -> Sent {
        let Some(upload_id) = row.upload_id.clone() else {
            return Sent::default();
        };
        let parts = self
            .store
            .recording_parts(&self.id)
            .await
            .unwrap_or_default();
        let mut sent = Sent {
            upload_id: Some(upload_id),
            ..Sent::default()
        };
        let size = self.storage.part_size;
        for (i, p) in parts.iter().enumerate() {
            let range = i as u64 * size..i as u64 * size + p.size;
            let same = p.part as usize == i
                && match self.read(range).await {
                    Ok(piece) => {
                        let etag = etag_md5(&p.etag);
                        let matches = etag.is_none_or(|e| e == piece.md5);
                        if matches {
                            sent.etags_are_md5 &= etag.is_some();
                            sent.md5s.push(piece.md5);
                            sent.etags.push(p.etag.clone());
                            Self::hash(&mut sent, piece.bytes).await;
                        }
                        matches
                    }
                    Err(_) => false,
                };
            if !same {
                tracing::warn!(recording = %self.id, part = i, "upload: the spool no longer has a stored part's bytes; starting the upload over");
                self.restart(&mut sent).await;
                break;
            }
        }
        sent
    }

    /// Drops the current upload (aborted at the store) to start from part 0.
    async fn restart(&self, sent: &mut Sent) {
        if let Some(id) = sent.upload_id.take() {
            let _ = self.storage.abort(&self.key(), &id).await;
        }
        let _ = self.store.clear_recording_upload(&self.id).await;
        *sent = Sent::default();
    }

    /// Sends one part. `Ok(false)`: the recording is gone.
    async fn part(&self, sent: &mut Sent, idx: usize, range: Range<u64>) -> Result<bool, Failure> {
        let _slot = PARTS_IN_FLIGHT
            .acquire()
            .await
            .map_err(|e| Failure::Local(e.to_string()))?;
        let key = self.key();
        let upload_id = match &sent.upload_id {
            Some(u) => u.clone(),
            None => {
                let u = self.storage.create_upload(&key).await?;
                if !self
                    .store
                    .start_recording_upload(&self.id, &u, &key)
                    .await
                    .map_err(|e| Failure::Local(e.to_string()))?
                {
                    let _ = self.storage.abort(&key, &u).await;
                    return Ok(false);
                }
                sent.upload_id = Some(u.clone());
                u
            }
        };
        let len = range.end - range.start;
        let Piece { bytes, md5 } = self.read(range).await?;
        let etag = self
            .storage
            .put_part(&key, &upload_id, idx, bytes.clone())
            .await?;
        match etag_md5(&etag) {
            Some(e) if e == md5 => {}
            // Encrypted buckets (SSE-KMS, SSE-C) answer ETags that are not the MD5: the
            // object is then checked by its size only.
            _ => {
                if sent.etags_are_md5 {
                    tracing::info!(recording = %self.id, %etag, "upload: the store's ETags are not MD5s of the parts (an encrypted bucket?); checking the object by size");
                }
                sent.etags_are_md5 = false;
            }
        }
        let stored = self
            .store
            .add_recording_part(&self.id, &upload_id, idx as u32, &etag, len)
            .await
            .map_err(|e| Failure::Local(e.to_string()))?;
        if !stored {
            let _ = self.storage.abort(&key, &upload_id).await;
            return Ok(false);
        }
        sent.etags.push(etag);
        sent.md5s.push(md5);
        Self::hash(sent, bytes).await;
        Ok(true)
    }

    /// Completes the upload and checks the object. `Ok(None)`: the recording is gone.
    async fn complete(
        &self,
        sent: &mut Sent,
        final_len: u64,
    ) -> Result<Option<RecordingRow>, Failure> {
        let key = self.key();
        let upload_id = sent
            .upload_id
            .clone()
            .ok_or_else(|| Failure::Local("no upload to complete".into()))?;
        self.storage
            .complete(&key, &upload_id, sent.etags.clone())
            .await?;
        self.verify(sent, final_len).await
    }

    /// Checks the object against what was sent and marks the recording ready.
    async fn verify(&self, sent: &Sent, final_len: u64) -> Result<Option<RecordingRow>, Failure> {
        let key = self.key();
        let (size, etag) = self.storage.head(&key).await?;
        if size != final_len {
            return Err(Failure::Storage(StorageError::Mismatch(format!(
                "the object has {size} bytes, the recording {final_len}"
            ))));
        }
        let expected = multipart_etag(&sent.md5s);
        let etag = etag.unwrap_or_default();
        if sent.etags_are_md5 && looks_multipart(&etag) && etag.trim_matches('"') != expected {
            return Err(Failure::Storage(StorageError::Mismatch(format!(
                "the object's ETag {etag} is not {expected}, the one of the parts sent"
            ))));
        }
        let sha = hex(&sha2::Digest::finalize(sent.sha.clone()));
        let row = self
            .store
            .finish_recording_upload(&self.id, etag.trim_matches('"'), &sha)
            .await
            .map_err(|e| Failure::Local(e.to_string()))?;
        if row.is_none() {
            // Deleted while the upload completed: the object must not outlive its row.
            let _ = self.storage.delete(&key).await;
        }
        Ok(row)
    }
}

/// Why a step failed.
#[derive(Debug)]
enum Failure {
    Storage(StorageError),
    /// The spool or the database: retried like an outage.
    Local(String),
    /// The spool is gone or cut short.
    SpoolGone(String),
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        Failure::Storage(e)
    }
}

/// Uploads a recording as `progress` says it grows, until it is in the store (or given up,
/// or gone). A sender dropped before the final length is known ends it as [`Outcome::Gone`]
/// (the recording is resumed from the database at the next start).
pub async fn run(up: Upload, mut progress: watch::Receiver<Progress>) -> Outcome {
    let mut backoff = Duration::from_secs(1);
    let row = loop {
        match up.store.get_recording(&up.id).await {
            Ok(Some(r)) => break r,
            Ok(None) => return Outcome::Gone,
            Err(err) => {
                tracing::warn!(recording = %up.id, %err, "upload: cannot read the recording; retrying");
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    let mut sent = up.resume(&row).await;
    // A crash between completing the upload and storing it: the object is there already.
    let final_len = progress.borrow().final_len;
    if let Some(f) = final_len {
        if sent.upload_id.is_some() && up.storage.head(&up.key()).await.is_ok_and(|(s, _)| s == f) {
            if let Ok(Some(row)) = up.verify(&sent, f).await {
                return Outcome::Ready(row);
            }
        }
    }
    let mut backoff = Duration::from_secs(1);
    let mut lost_upload_hints = 0u32;
    loop {
        let now = *progress.borrow_and_update();
        let step = match next_step(up.storage.part_size, now, sent.etags.len()) {
            Ok(s) => s,
            Err(reason) => {
                return give_up(
                    &up,
                    &mut sent,
                    &mut progress,
                    format!("upload_failed: {reason}"),
                )
                .await
            }
        };
        let result = match step {
            Step::Wait => {
                if progress.changed().await.is_err() && progress.borrow().final_len.is_none() {
                    // The recording ended without a file to upload (it failed): drop the
                    // upload at the store too.
                    up.restart(&mut sent).await;
                    return Outcome::Gone;
                }
                continue;
            }
            Step::Part { idx, range } => match up.part(&mut sent, idx, range).await {
                Ok(true) => Ok(()),
                Ok(false) => return Outcome::Gone,
                Err(e) => Err(e),
            },
            Step::Complete => match up.complete(&mut sent, now.final_len.unwrap_or(0)).await {
                Ok(Some(row)) => return Outcome::Ready(row),
                Ok(None) => return Outcome::Gone,
                Err(e) => Err::<(), _>(e),
            },
        };
        let failure = match result {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                lost_upload_hints = 0;
                continue;
            }
            Err(f) => f,
        };
        match failure {
            Failure::Storage(StorageError::Refused(msg)) => {
                let attempts = up
                    .store
                    .note_upload_failure(&up.id, &format!("upload refused: {msg}"), true)
                    .await
                    .unwrap_or(i64::MAX);
                tracing::warn!(recording = %up.id, attempts, reason = %msg, "upload: refused by the object store");
                if attempts >= i64::from(up.storage.attempts) {
                    return give_up(
                        &up,
                        &mut sent,
                        &mut progress,
                        format!("upload_failed: {msg}"),
                    )
                    .await;
                }
            }
            Failure::SpoolGone(msg) => {
                if up
                    .store
                    .get_recording(&up.id)
                    .await
                    .is_ok_and(|r| r.is_none())
                {
                    up.restart(&mut sent).await;
                    return Outcome::Gone;
                }
                return give_up(
                    &up,
                    &mut sent,
                    &mut progress,
                    format!("upload_failed: {msg}"),
                )
                .await;
            }
            Failure::Storage(e @ (StorageError::NotFound(_) | StorageError::Mismatch(_))) => {
                // The upload went away at the store (or holds other bytes): start over from
                // the spool, which has every byte.
                tracing::warn!(recording = %up.id, reason = %e, "upload: starting over");
                let permanent = matches!(e, StorageError::Mismatch(_));
                let reason = format!("retrying from the start: {e}");
                let attempts = up
                    .store
                    .note_upload_failure(&up.id, &reason, permanent)
                    .await
                    .unwrap_or(i64::MAX);
                if permanent {
                    let _ = up.storage.delete(&up.key()).await;
                    if attempts >= i64::from(up.storage.attempts) {
                        return give_up(
                            &up,
                            &mut sent,
                            &mut progress,
                            format!("upload_failed: {e}"),
                        )
                        .await;
                    }
                }
                up.restart(&mut sent).await;
            }
            Failure::Storage(StorageError::Unreachable(msg)) | Failure::Local(msg) => {
                if up
                    .store
                    .get_recording(&up.id)
                    .await
                    .is_ok_and(|r| r.is_none())
                {
                    // Deleted meanwhile (its spool with it).
                    up.restart(&mut sent).await;
                    return Outcome::Gone;
                }
                let reason = format!("retrying: {msg}");
                let _ = up.store.note_upload_failure(&up.id, &reason, false).await;
                tracing::warn!(recording = %up.id, %reason, "upload: will retry");
                // Some stores (moto) answer an upload id they lost with a server error
                // instead of `NoSuchUpload`: when the store itself answers and the same
                // upload keeps getting 500s, it starts over. Timeouts and 503s never do.
                if msg.contains("500 Internal Server Error") {
                    lost_upload_hints += 1;
                }
                if lost_upload_hints >= 3 && up.storage.probe().await.is_ok() {
                    tracing::warn!(recording = %up.id, "upload: the store answers but the upload keeps failing; starting over");
                    up.restart(&mut sent).await;
                    lost_upload_hints = 0;
                    backoff = Duration::from_millis(500);
                }
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Gives the upload up: aborted at the store, the recording `failed` with `reason` (the
/// spool is kept). A recording still being written is marked once its writer is done, so
/// that the writer's own updates cannot bring the row back.
async fn give_up(
    up: &Upload,
    sent: &mut Sent,
    progress: &mut watch::Receiver<Progress>,
    reason: String,
) -> Outcome {
    if let Some(id) = sent.upload_id.take() {
        let _ = up.storage.abort(&up.key(), &id).await;
    }
    let _ = up.store.clear_recording_upload(&up.id).await;
    tracing::warn!(recording = %up.id, %reason, "upload: given up; the recording stays on local disk");
    let _ = up.store.note_upload_failure(&up.id, &reason, false).await;
    while progress.borrow().final_len.is_none() {
        if progress.changed().await.is_err() {
            break;
        }
    }
    match up.store.get_recording(&up.id).await {
        Ok(Some(row)) => match up
            .store
            .set_recording_status(
                &up.id,
                "failed",
                Some(reason),
                row.size_bytes.max(0) as u64,
                row.duration_ms.max(0) as u64,
            )
            .await
        {
            Ok(Some(row)) => Outcome::Failed(row),
            _ => Outcome::Gone,
        },
        _ => Outcome::Gone,
    }
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    let f = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

/// The MD5 a plain (single-part) ETag carries, if it has that shape.
fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let hexed = etag.trim_matches('"');
    if hexed.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hexed.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether an ETag has the multipart shape `"{32 hex}-{n}"`.
fn looks_multipart(etag: &str) -> bool {
    etag.trim_matches('"')
        .split_once('-')
        .is_some_and(|(h, n)| etag_md5(h).is_some() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// S3's ETag of a multipart object: the MD5 of the parts' MD5s, then `-{parts}`.
pub fn multipart_etag(md5s: &[[u8; 16]]) -> String {
    let mut all = Md5::new();
    for m in md5s {
        all.update(m);
    }
    format!("{}-{}", hex(&all.finalize()), md5s.len())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 100;

    fn at(durable: u64, final_len: Option<u64>) -> Progress {
        Progress { durable, final_len }
    }

    #[test]
    fn parts_go_up_as_soon_as_they_are_full_and_the_tail_at_the_end() {
        assert_eq!(next_step(P, at(99, None), 0), Ok(Step::Wait));
        assert_eq!(
            next_step(P, at(100, None), 0),
            Ok(Step::Part {
                idx: 0,
                range: 0..100
            })
        );
        assert_eq!(
            next_step(P, at(250, None), 1),
            Ok(Step::Part {
                idx: 1,
                range: 100..200
            })
        );
        assert_eq!(next_step(P, at(250, None), 2), Ok(Step::Wait));
        // Finished: the rest is the last part, then complete.
        assert_eq!(
            next_step(P, at(250, Some(250)), 2),
            Ok(Step::Part {
                idx: 2,
                range: 200..250
            })
        );
        assert_eq!(next_step(P, at(250, Some(250)), 3), Ok(Step::Complete));
        // A small recording is one part.
        assert_eq!(
            next_step(P, at(0, Some(42)), 0),
            Ok(Step::Part {
                idx: 0,
                range: 0..42
            })
        );
        // Exactly two full parts: no empty third.
        assert_eq!(
            next_step(P, at(200, Some(200)), 1),
            Ok(Step::Part {
                idx: 1,
                range: 100..200
            })
        );
        assert_eq!(next_step(P, at(200, Some(200)), 2), Ok(Step::Complete));
        // A long tail after a crash resume: full parts first.
        assert_eq!(
            next_step(P, at(0, Some(350)), 1),
            Ok(Step::Part {
                idx: 1,
                range: 100..200
            })
        );
        assert!(next_step(P, at(0, Some(0)), 0).is_err());
        let huge = (MAX_PARTS as u64 + 1) * P;
        assert!(next_step(P, at(huge, None), MAX_PARTS).is_err());
    }

    #[test]
    fn etags_are_read_and_multipart_etags_computed_as_s3_does() {
        let md5: [u8; 16] = Md5::digest(b"hello").into();
        assert_eq!(etag_md5("\"5d41402abc4b2a76b9719d911017c592\""), Some(md5));
        assert_eq!(etag_md5("\"abc\""), None);
        assert_eq!(etag_md5("\"zz41402abc4b2a76b9719d911017c592\""), None);
        // md5(md5("hello") ++ md5("world")) with two parts.
        let world: [u8; 16] = Md5::digest(b"world").into();
        let mut cat = md5.to_vec();
        cat.extend_from_slice(&world);
        let expected = format!("{}-2", hex(&Md5::digest(&cat)));
        assert_eq!(multipart_etag(&[md5, world]), expected);
        assert!(looks_multipart(&format!("\"{expected}\"")));
        assert!(!looks_multipart("\"5d41402abc4b2a76b9719d911017c592\""));
    }
}
