//! Recordings: one row per file under `data_dir/recordings/`, its status
//! (`recording` → `finalizing` → `ready`, or `failed` with a reason) and what the API lists
//! (size, duration, resolution, codecs).
//!
//! With object storage (S3) a finished recording goes `finalizing` → `uploading` → `ready`
//! (`storage = "s3"`): the multipart upload in progress is the row's `upload_id`, and each
//! part uploaded is a `recording_parts` row of that upload, so a node that restarts resumes
//! where it stopped. The VOD index an object's playlist is rendered from (`vod_index`, tens
//! of KB) is read on its own, never with the row.

use super::sql::{args, params, Arg, Db, Row};

use super::{now_rfc3339, random_id, Store, StoreError};

/// A stored recording.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingRow {
    /// `rec_…`.
    pub id: String,
    /// The stream recorded.
    pub stream_id: String,
    /// `recording`, `finalizing`, `uploading` (to object storage), `ready` or `failed`.
    pub status: String,
    /// Why it failed (`disk_full`, `write_error: …`, `nothing recoverable: …`,
    /// `upload_failed: …`), or, while `uploading`, why the upload is retrying.
    pub reason: Option<String>,
    /// File name inside the recordings directory.
    pub file: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once finished.
    pub ended_at: Option<String>,
    /// Media duration in milliseconds.
    pub duration_ms: i64,
    /// File size in bytes.
    pub size_bytes: i64,
    /// Video width, if any.
    pub width: Option<i64>,
    /// Video height, if any.
    pub height: Option<i64>,
    /// RFC 6381 codec strings, comma-separated.
    pub codecs: String,
    /// The stream's privacy, copied when recording starts and kept in step with the stream:
    /// a recording whose stream was deleted stays as private as it was.
    pub privacy: super::Privacy,
    /// The stream's play-token generation when the stream was deleted (tokens minted before
    /// still play its recordings); 0 while the stream exists.
    pub token_generation: u64,
    /// Where the finished file is: `local` (the recordings directory) or `s3` (the object
    /// `object_key`).
    pub storage: String,
    /// The object's key in the bucket, once an upload started.
    pub object_key: Option<String>,
    /// The object's ETag, once uploaded.
    pub etag: Option<String>,
    /// Hex SHA-256 of the file, once uploaded.
    pub sha256: Option<String>,
    /// The multipart upload in progress, if any.
    pub upload_id: Option<String>,
    /// Permanent upload failures so far (outages do not count).
    pub upload_attempts: i64,
    /// Bytes in the parts of the upload in progress (0 when there is none).
    pub uploaded_bytes: i64,
}

/// A part of a recording's multipart upload, stored once the object store took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingPart {
    /// 0-based part index (S3's part number is this + 1).
    pub part: u32,
    /// The part's ETag, as the object store returned it.
    pub etag: String,
    /// Bytes in the part.
    pub size: u64,
}

/// Filters of the list endpoint.
#[derive(Debug, Clone, Default)]
pub struct RecordingFilter {
    /// Only this stream's.
    pub stream_id: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Started at or after (RFC 3339).
    pub since: Option<String>,
    /// Started before (RFC 3339).
    pub until: Option<String>,
}

/// Sort key of the list endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingOrder {
    /// `started_at`.
    StartedAt,
    /// `size_bytes`.
    Size,
    /// `duration`.
    Duration,
}

impl RecordingOrder {
    fn column(self) -> &'static str {
        match self {
            RecordingOrder::StartedAt => "started_at",
            RecordingOrder::Size => "size_bytes",
            RecordingOrder::Duration => "duration_ms",
        }
    }
}

// The last column sums the parts of the upload in progress (`SUM` of a `BIGINT` is a
// `NUMERIC` in PostgreSQL, hence the cast).
const COLUMNS: &str = "rowid, id, stream_id, status, reason, file, started_at, ended_at, \
                       duration_ms, size_bytes, width, height, codecs, privacy, \
                       token_generation, storage, object_key, etag, sha256, upload_id, \
                       upload_attempts, CAST(COALESCE((SELECT SUM(p.size) FROM \
                       recording_parts p WHERE p.recording_id = recordings.id AND \
                       p.upload_id = recordings.upload_id), 0) AS BIGINT)";

fn row_to_recording(r: &Row) -> Result<(i64, RecordingRow), StoreError> {
    Ok((
        r.get(0)?,
        RecordingRow {
            id: r.get(1)?,
            stream_id: r.get(2)?,
            status: r.get(3)?,
            reason: r.get(4)?,
            file: r.get(5)?,
            started_at: r.get(6)?,
            ended_at: r.get(7)?,
            duration_ms: r.get(8)?,
            size_bytes: r.get(9)?,
            width: r.get(10)?,
            height: r.get(11)?,
            codecs: r.get(12)?,
            // Anything but "public" is private: fail closed.
            privacy: if r.get::<String>(13)? == "public" {
                super::Privacy::Public
            } else {
                super::Privacy::Private
            },
            token_generation: r.get::<i64>(14)?.max(0) as u64,
            storage: r.get(15)?,
            object_key: r.get(16)?,
            etag: r.get(17)?,
            sha256: r.get(18)?,
            upload_id: r.get(19)?,
            upload_attempts: r.get(20)?,
            uploaded_bytes: r.get(21)?,
        },
    ))
}

fn by_id(c: &mut Db<'_>, id: &str) -> Result<Option<RecordingRow>, StoreError> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1"),
        params![id],
        row_to_recording,
    )
    .map(|r| r.map(|(_, row)| row))
}

/// Rows matching `cond` of every node (`None`), of `Some(node)`, or with `Some("")` of
/// unknown node (see [`Store::unfinished_recordings`]).
fn rows_of_node(
    c: &mut Db<'_>,
    cond: &str,
    node: Option<String>,
) -> Result<Vec<RecordingRow>, StoreError> {
    match node {
        None => c.query_map(
            &format!("SELECT {COLUMNS} FROM recordings WHERE {cond}"),
            params![],
            |r| row_to_recording(r).map(|(_, row)| row),
        ),
        Some(node) if node.is_empty() => c.query_map(
            &format!("SELECT {COLUMNS} FROM recordings WHERE {cond} AND node IS NULL"),
            params![],
            |r| row_to_recording(r).map(|(_, row)| row),
        ),
        Some(node) => c.query_map(
            &format!("SELECT {COLUMNS} FROM recordings WHERE {cond} AND node = ?1"),
            params![node],
            |r| row_to_recording(r).map(|(_, row)| row),
        ),
    }
}

/// A keyset cursor: the sort value and rowid of the last row of a page.
fn encode_cursor(value: &str, rowid: i64) -> String {
    hex::encode(format!("r1:{rowid}:{value}"))
}

fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let raw = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let rest = raw.strip_prefix("r1:")?;
    let (rowid, value) = rest.split_once(':')?;
    Some((rowid.parse().ok()?, value.to_owned()))
}

/// A page of recordings.
#[derive(Debug, Clone)]
pub struct RecordingPage {
    /// Rows of this page.
    pub rows: Vec<RecordingRow>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// Why a list request is refused.
pub const BAD_CURSOR: &str = "invalid cursor";

impl Store {
    /// A new `recording` row for `stream_id`, writing to `{id}.mp4`.
    pub async fn create_recording(
        &self,
        stream_id: &str,
        node: &str,
        width: Option<u32>,
        height: Option<u32>,
        codecs: &str,
    ) -> Result<RecordingRow, StoreError> {
        let id = random_id("rec_", 8);
        let row = RecordingRow {
            file: format!("{id}.mp4"),
            id,
            stream_id: stream_id.to_owned(),
            status: "recording".into(),
            reason: None,
            started_at: now_rfc3339(),
            ended_at: None,
            duration_ms: 0,
            size_bytes: 0,
            width: width.map(i64::from),
            height: height.map(i64::from),
            codecs: codecs.to_owned(),
            privacy: super::Privacy::Private,
            token_generation: 0,
            storage: "local".into(),
            object_key: None,
            etag: None,
            sha256: None,
            upload_id: None,
            upload_attempts: 0,
            uploaded_bytes: 0,
        };
        let mut r = row;
        let node = node.to_owned();
        let row = self
            .call(move |c| {
                // The stream's privacy is copied in the same statement (private if it is gone).
                c.execute(
                "INSERT INTO recordings (id, stream_id, status, file, started_at, duration_ms, \
                 size_bytes, width, height, codecs, privacy, node) VALUES (?1, ?2, ?3, ?4, ?5, 0, \
                 0, ?6, ?7, ?8, COALESCE((SELECT privacy FROM streams WHERE id = ?2), 'private'), \
                 ?9)",
                params![
                    r.id,
                    r.stream_id,
                    r.status,
                    r.file,
                    r.started_at,
                    r.width,
                    r.height,
                    r.codecs,
                    node
                ],
            )?;
                let privacy: String = c.query_row(
                    "SELECT privacy FROM recordings WHERE id = ?1",
                    params![r.id],
                    |x| x.get(0),
                )?;
                if privacy == "public" {
                    r.privacy = super::Privacy::Public;
                }
                Ok(r)
            })
            .await?;
        Ok(row)
    }

    /// Progress of a running recording.
    pub async fn update_recording_progress(
        &self,
        id: &str,
        size_bytes: u64,
        duration_ms: u64,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE recordings SET size_bytes = ?2, duration_ms = ?3 WHERE id = ?1",
                params![id, size_bytes as i64, duration_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets the status (and, for `ready`/`failed`, the end time, size and duration).
    pub async fn set_recording_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<String>,
        size_bytes: u64,
        duration_ms: u64,
    ) -> Result<Option<RecordingRow>, StoreError> {
        let (id, status) = (id.to_owned(), status.to_owned());
        self.call(move |c| {
            let ended = matches!(status.as_str(), "ready" | "failed").then(now_rfc3339);
            c.execute(
                "UPDATE recordings SET status = ?2, reason = ?3, size_bytes = ?4, \
                 duration_ms = ?5, ended_at = COALESCE(?6, ended_at) WHERE id = ?1",
                params![
                    id,
                    status,
                    reason,
                    size_bytes as i64,
                    duration_ms as i64,
                    ended
                ],
            )?;
            by_id(c, &id)
        })
        .await
    }

    /// One recording.
    pub async fn get_recording(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| by_id(c, &id)).await
    }

    /// Recordings left `recording` or `finalizing` (by a crash): all of them (`None`), those
    /// `Some(node)` wrote, or with `Some("")` those of unknown node (written before the
    /// column existed, or by a node of an older version).
    pub async fn unfinished_recordings(
        &self,
        node: Option<&str>,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        let node = node.map(str::to_owned);
        self.call(move |c| rows_of_node(c, "status IN ('recording', 'finalizing')", node))
            .await
    }

    /// Recordings left `uploading` (to object storage), filtered by node as
    /// [`Store::unfinished_recordings`] is: the node that wrote the file uploads it.
    pub async fn pending_uploads(
        &self,
        node: Option<&str>,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        let node = node.map(str::to_owned);
        self.call(move |c| rows_of_node(c, "status = 'uploading'", node))
            .await
    }

    /// A finished recording whose file goes to object storage: `uploading` with its final
    /// size, duration and VOD index, no reason, and `ended_at` now (kept if already set).
    /// Only a row still `recording`, `finalizing` or `uploading` changes; returns the row as
    /// it is then (check `status`), `None` if it is gone.
    pub async fn set_recording_uploading(
        &self,
        id: &str,
        size_bytes: u64,
        duration_ms: u64,
        vod_index: &str,
    ) -> Result<Option<RecordingRow>, StoreError> {
        let (id, vod_index) = (id.to_owned(), vod_index.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE recordings SET status = 'uploading', reason = NULL, size_bytes = ?2, \
                 duration_ms = ?3, vod_index = ?4, ended_at = COALESCE(ended_at, ?5) \
                 WHERE id = ?1 AND status IN ('recording', 'finalizing', 'uploading')",
                params![
                    id,
                    size_bytes as i64,
                    duration_ms as i64,
                    vod_index,
                    now_rfc3339()
                ],
            )?;
            by_id(c, &id)
        })
        .await
    }

    /// A new multipart upload of a recording (the first, or one that starts over): forgets
    /// the parts of any earlier one and records `upload_id` and the object's key. `false`
    /// if the row is gone.
    pub async fn start_recording_upload(
        &self,
        id: &str,
        upload_id: &str,
        object_key: &str,
    ) -> Result<bool, StoreError> {
        let (id, upload_id, object_key) =
            (id.to_owned(), upload_id.to_owned(), object_key.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE recordings SET upload_id = ?2, object_key = ?3 WHERE id = ?1",
                params![id, upload_id, object_key],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM recording_parts WHERE recording_id = ?1",
                params![id],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// The parts stored for a recording's upload in progress, by index (none when there is
    /// no upload or no row).
    pub async fn recording_parts(&self, id: &str) -> Result<Vec<RecordingPart>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.query_map(
                "SELECT p.part, p.etag, p.size FROM recording_parts p JOIN recordings r \
                 ON r.id = p.recording_id AND r.upload_id = p.upload_id \
                 WHERE p.recording_id = ?1 ORDER BY p.part",
                params![id],
                |r| {
                    Ok(RecordingPart {
                        part: r.get(0)?,
                        etag: r.get(1)?,
                        size: r.get(2)?,
                    })
                },
            )
        })
        .await
    }

    /// Stores (or replaces) part `part` of upload `upload_id`, only while that is the row's
    /// upload in progress. `false` if the row is gone or its upload was replaced or
    /// cleared: the uploader then aborts.
    pub async fn add_recording_part(
        &self,
        id: &str,
        upload_id: &str,
        part: u32,
        etag: &str,
        size: u64,
    ) -> Result<bool, StoreError> {
        let (id, upload_id, etag) = (id.to_owned(), upload_id.to_owned(), etag.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            // A no-op update: it checks the upload and, in PostgreSQL, locks the row until
            // the part is in (a concurrent restart waits, then deletes it).
            let n = tx.execute(
                "UPDATE recordings SET upload_id = upload_id WHERE id = ?1 AND upload_id = ?2",
                params![id, upload_id],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO recording_parts (recording_id, upload_id, part, etag, size) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (recording_id, part) DO UPDATE SET \
                 upload_id = excluded.upload_id, etag = excluded.etag, size = excluded.size",
                params![id, upload_id, part, etag, size],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// The verified upload is done: `ready` in object storage (`storage = "s3"`) with the
    /// object's ETag and the file's SHA-256; the upload state (id, parts, reason) is
    /// cleared and `ended_at` kept (now if unset). Returns the row, `None` if it is gone.
    pub async fn finish_recording_upload(
        &self,
        id: &str,
        etag: &str,
        sha256: &str,
    ) -> Result<Option<RecordingRow>, StoreError> {
        let (id, etag, sha256) = (id.to_owned(), etag.to_owned(), sha256.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE recordings SET status = 'ready', storage = 's3', etag = ?2, \
                 sha256 = ?3, reason = NULL, upload_id = NULL, \
                 ended_at = COALESCE(ended_at, ?4) WHERE id = ?1",
                params![id, etag, sha256, now_rfc3339()],
            )?;
            tx.execute(
                "DELETE FROM recording_parts WHERE recording_id = ?1",
                params![id],
            )?;
            let row = by_id(&mut tx, &id)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// An upload failed: `reason` says why (the status stays `uploading`); a `permanent`
    /// failure counts toward the attempts, an outage does not. Returns the attempts now (0
    /// if the row is gone).
    pub async fn note_upload_failure(
        &self,
        id: &str,
        reason: &str,
        permanent: bool,
    ) -> Result<i64, StoreError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE recordings SET reason = ?2, upload_attempts = upload_attempts + ?3 \
                 WHERE id = ?1",
                params![id, reason, i64::from(permanent)],
            )?;
            let attempts: Option<i64> = tx.query_opt(
                "SELECT upload_attempts FROM recordings WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(attempts.unwrap_or(0))
        })
        .await
    }

    /// Forgets a recording's upload in progress (its id and parts), after it was aborted,
    /// so the next one starts over from part 0.
    pub async fn clear_recording_upload(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE recordings SET upload_id = NULL WHERE id = ?1",
                params![id],
            )?;
            tx.execute(
                "DELETE FROM recording_parts WHERE recording_id = ?1",
                params![id],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// A recording's VOD index (`None` if unset or the row is gone).
    pub async fn recording_vod_index(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let index: Option<Option<String>> = c.query_opt(
                "SELECT vod_index FROM recordings WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            Ok(index.flatten())
        })
        .await
    }

    /// Sets a recording's VOD index.
    pub async fn set_recording_vod_index(
        &self,
        id: &str,
        vod_index: &str,
    ) -> Result<(), StoreError> {
        let (id, vod_index) = (id.to_owned(), vod_index.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE recordings SET vod_index = ?2 WHERE id = ?1",
                params![id, vod_index],
            )?;
            Ok(())
        })
        .await
    }

    /// Finished recordings that ended before `cutoff` (RFC 3339), for retention.
    pub async fn recordings_ended_before(
        &self,
        cutoff: &str,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        let cutoff = cutoff.to_owned();
        self.call(move |c| {
            c.query_map(
                &format!(
                    "SELECT {COLUMNS} FROM recordings WHERE status IN ('ready', 'failed') \
                     AND ended_at < ?1"
                ),
                params![cutoff],
                |r| row_to_recording(r).map(|(_, row)| row),
            )
        })
        .await
    }

    /// Removes a row and the parts of its upload; returns it.
    pub async fn delete_recording(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            let row = by_id(&mut tx, &id)?;
            // The row first, as every write of an upload does: a concurrent
            // `add_recording_part` waits for it (PostgreSQL), then finds it gone.
            tx.execute("DELETE FROM recordings WHERE id = ?1", params![id])?;
            tx.execute(
                "DELETE FROM recording_parts WHERE recording_id = ?1",
                params![id],
            )?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// A page of recordings, filtered and ordered; `Err(Conflict(BAD_CURSOR))` for a cursor
    /// this query did not produce.
    pub async fn list_recordings(
        &self,
        filter: RecordingFilter,
        order: RecordingOrder,
        descending: bool,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<RecordingPage, StoreError> {
        let after = match cursor.as_deref() {
            None => None,
            Some(c) => {
                Some(decode_cursor(c).ok_or_else(|| StoreError::Conflict(BAD_CURSOR.into()))?)
            }
        };
        self.call(move |c| {
            let col = order.column();
            let mut sql = format!("SELECT {COLUMNS} FROM recordings WHERE 1 = 1");
            let mut list: Vec<Arg> = Vec::new();
            let mut bind = |sql: &mut String, clause: &str, value: Arg| {
                list.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", list.len())));
            };
            if let Some(s) = filter.stream_id {
                bind(&mut sql, " AND stream_id = ?", s.into());
            }
            if let Some(s) = filter.status {
                bind(&mut sql, " AND status = ?", s.into());
            }
            if let Some(s) = filter.since {
                bind(&mut sql, " AND started_at >= ?", s.into());
            }
            if let Some(s) = filter.until {
                bind(&mut sql, " AND started_at < ?", s.into());
            }
            let cmp = if descending { "<" } else { ">" };
            if let Some((rowid, value)) = after {
                let value: Arg = match order {
                    RecordingOrder::StartedAt => value.into(),
                    _ => value.parse::<i64>().unwrap_or(0).into(),
                };
                list.push(value);
                let v = list.len();
                list.push(rowid.into());
                let r = list.len();
                sql.push_str(&format!(
                    " AND ({col} {cmp} ?{v} OR ({col} = ?{v} AND rowid {cmp} ?{r}))"
                ));
            }
            let dir = if descending { "DESC" } else { "ASC" };
            sql.push_str(&format!(
                " ORDER BY {col} {dir}, rowid {dir} LIMIT {}",
                limit + 1
            ));
            let mut rows = c.query_map(&sql, &args(&list), row_to_recording)?;
            let next_cursor = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|(rowid, r)| {
                    let value = match order {
                        RecordingOrder::StartedAt => r.started_at.clone(),
                        RecordingOrder::Size => r.size_bytes.to_string(),
                        RecordingOrder::Duration => r.duration_ms.to_string(),
                    };
                    encode_cursor(&value, *rowid)
                })
            } else {
                None
            };
            Ok(RecordingPage {
                rows: rows.into_iter().map(|(_, r)| r).collect(),
                next_cursor,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle_and_keyset_pages() {
        let dir = std::env::temp_dir().join(format!("ms-rec-{}", random_id("", 6)));
        let store = Store::open(&dir).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..5u64 {
            let r = store
                .create_recording("str_a", "n1", Some(640), Some(360), "avc1.64001f,mp4a.40.2")
                .await
                .unwrap();
            store
                .set_recording_status(&r.id, "ready", None, 1000 * (5 - i), 100 * i)
                .await
                .unwrap();
            ids.push(r.id);
        }
        let other = store
            .create_recording("str_b", "n2", None, None, "opus")
            .await
            .unwrap();
        assert_eq!(
            store.unfinished_recordings(None).await.unwrap(),
            vec![other.clone()]
        );
        // In a cluster a node recovers only what it was writing.
        assert_eq!(
            store.unfinished_recordings(Some("n2")).await.unwrap(),
            vec![other.clone()]
        );
        assert!(store
            .unfinished_recordings(Some("n1"))
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .unfinished_recordings(Some(""))
            .await
            .unwrap()
            .is_empty());
        // Ordered by size ascending in pages of two: sizes 1000, 2000 | 3000, 4000 | 5000.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_recordings(
                    RecordingFilter {
                        stream_id: Some("str_a".into()),
                        ..Default::default()
                    },
                    RecordingOrder::Size,
                    false,
                    2,
                    cursor,
                )
                .await
                .unwrap();
            seen.extend(page.rows.iter().map(|r| r.size_bytes));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(seen, vec![1000, 2000, 3000, 4000, 5000]);
        let desc = store
            .list_recordings(
                RecordingFilter::default(),
                RecordingOrder::Duration,
                true,
                10,
                None,
            )
            .await
            .unwrap();
        assert_eq!(desc.rows[0].duration_ms, 400);
        assert!(matches!(
            store
                .list_recordings(
                    RecordingFilter::default(),
                    RecordingOrder::Size,
                    false,
                    2,
                    Some("zz".into())
                )
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(store.delete_recording(&ids[0]).await.unwrap().is_some());
        assert!(store.get_recording(&ids[0]).await.unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Rows of `recording_parts` for `id`, whatever their upload.
    async fn stored_parts(store: &Store, id: &str) -> i64 {
        let id = id.to_owned();
        store
            .call(move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM recording_parts WHERE recording_id = ?1",
                    params![id],
                    |r| r.get::<i64>(0),
                )
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn upload_flow_parts_attempts_and_cleanup() {
        let dir = std::env::temp_dir().join(format!("ms-rec-{}", random_id("", 6)));
        let store = Store::open(&dir).await.unwrap();
        let r = store
            .create_recording("str_a", "n1", Some(640), Some(360), "avc1.64001f")
            .await
            .unwrap();
        assert_eq!(r.storage, "local");
        assert_eq!(store.get_recording(&r.id).await.unwrap(), Some(r.clone()));

        // Finished: uploading, with its size, duration, end and VOD index.
        let up = store
            .set_recording_uploading(&r.id, 3000, 1500, "v1;100;")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(up.status, "uploading");
        assert_eq!((up.size_bytes, up.duration_ms), (3000, 1500));
        assert!(up.ended_at.is_some() && up.reason.is_none());
        assert_eq!((up.upload_id.as_deref(), up.uploaded_bytes), (None, 0));
        assert!(store
            .set_recording_uploading("rec_missing", 1, 1, "")
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            store.recording_vod_index(&r.id).await.unwrap().as_deref(),
            Some("v1;100;")
        );
        store
            .set_recording_vod_index(&r.id, "v1;200;")
            .await
            .unwrap();
        assert_eq!(
            store.recording_vod_index(&r.id).await.unwrap().as_deref(),
            Some("v1;200;")
        );
        assert_eq!(
            store.recording_vod_index("rec_missing").await.unwrap(),
            None
        );
        // Pending uploads, by node; no longer an unfinished recording.
        assert_eq!(store.pending_uploads(None).await.unwrap(), vec![up.clone()]);
        assert_eq!(
            store.pending_uploads(Some("n1")).await.unwrap(),
            vec![up.clone()]
        );
        assert!(store.pending_uploads(Some("n2")).await.unwrap().is_empty());
        assert!(store.pending_uploads(Some("")).await.unwrap().is_empty());
        assert!(store.unfinished_recordings(None).await.unwrap().is_empty());

        // An upload and its parts; only the current upload's parts are taken.
        let key = format!("recordings/{}.mp4", r.id);
        assert!(store
            .start_recording_upload(&r.id, "up1", &key)
            .await
            .unwrap());
        assert!(!store
            .start_recording_upload("rec_missing", "up1", &key)
            .await
            .unwrap());
        assert!(store
            .add_recording_part(&r.id, "up1", 1, "\"e1\"", 500)
            .await
            .unwrap());
        assert!(store
            .add_recording_part(&r.id, "up1", 0, "\"e0\"", 1000)
            .await
            .unwrap());
        assert!(!store
            .add_recording_part(&r.id, "up0", 2, "\"x\"", 1)
            .await
            .unwrap());
        assert!(!store
            .add_recording_part("rec_missing", "up1", 0, "\"x\"", 1)
            .await
            .unwrap());
        // A part sent again replaces the first.
        assert!(store
            .add_recording_part(&r.id, "up1", 1, "\"e1b\"", 600)
            .await
            .unwrap());
        assert_eq!(
            store.recording_parts(&r.id).await.unwrap(),
            vec![
                RecordingPart {
                    part: 0,
                    etag: "\"e0\"".into(),
                    size: 1000
                },
                RecordingPart {
                    part: 1,
                    etag: "\"e1b\"".into(),
                    size: 600
                },
            ]
        );
        let row = store.get_recording(&r.id).await.unwrap().unwrap();
        assert_eq!(row.upload_id.as_deref(), Some("up1"));
        assert_eq!(row.object_key.as_deref(), Some(key.as_str()));
        assert_eq!(row.uploaded_bytes, 1600);

        // Starting over forgets the parts; so does clearing after an abort.
        assert!(store
            .start_recording_upload(&r.id, "up2", &key)
            .await
            .unwrap());
        assert!(store.recording_parts(&r.id).await.unwrap().is_empty());
        assert_eq!(stored_parts(&store, &r.id).await, 0);
        assert!(!store
            .add_recording_part(&r.id, "up1", 2, "\"x\"", 1)
            .await
            .unwrap());
        assert!(store
            .add_recording_part(&r.id, "up2", 0, "\"f0\"", 1000)
            .await
            .unwrap());
        assert_eq!(
            store
                .get_recording(&r.id)
                .await
                .unwrap()
                .unwrap()
                .uploaded_bytes,
            1000
        );
        store.clear_recording_upload(&r.id).await.unwrap();
        let row = store.get_recording(&r.id).await.unwrap().unwrap();
        assert_eq!((row.upload_id, row.uploaded_bytes), (None, 0));
        assert_eq!(stored_parts(&store, &r.id).await, 0);
        assert!(!store
            .add_recording_part(&r.id, "up2", 1, "\"x\"", 1)
            .await
            .unwrap());
        assert!(store
            .start_recording_upload(&r.id, "up3", &key)
            .await
            .unwrap());
        assert!(store
            .add_recording_part(&r.id, "up3", 0, "\"g0\"", 3000)
            .await
            .unwrap());

        // Failures: only permanent ones count; the status stays.
        assert_eq!(
            store
                .note_upload_failure(&r.id, "retrying: unreachable (attempt 1)", false)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .note_upload_failure(&r.id, "retrying: denied (attempt 1)", true)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .note_upload_failure(&r.id, "retrying: denied (attempt 2)", true)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .note_upload_failure("rec_missing", "x", true)
                .await
                .unwrap(),
            0
        );
        let row = store.get_recording(&r.id).await.unwrap().unwrap();
        assert_eq!(row.status, "uploading");
        assert_eq!(row.upload_attempts, 2);
        assert_eq!(row.reason.as_deref(), Some("retrying: denied (attempt 2)"));

        // Done: ready in S3, the upload state gone, the end time kept.
        let done = store
            .finish_recording_upload(&r.id, "\"abc-1\"", "00ff")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.status, "ready");
        assert_eq!(done.storage, "s3");
        assert_eq!(done.etag.as_deref(), Some("\"abc-1\""));
        assert_eq!(done.sha256.as_deref(), Some("00ff"));
        assert_eq!(done.object_key.as_deref(), Some(key.as_str()));
        assert_eq!(
            (done.upload_id.as_deref(), done.reason.as_deref()),
            (None, None)
        );
        assert_eq!(done.uploaded_bytes, 0);
        assert_eq!(done.ended_at, up.ended_at);
        assert_eq!(stored_parts(&store, &r.id).await, 0);
        assert!(store.pending_uploads(None).await.unwrap().is_empty());
        assert!(store
            .finish_recording_upload("rec_missing", "e", "s")
            .await
            .unwrap()
            .is_none());
        // A finished row is not set back to uploading.
        let again = store
            .set_recording_uploading(&r.id, 1, 1, "")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.status.as_str(), again.size_bytes), ("ready", 3000));

        // Another node's upload; deleting the row deletes its parts.
        let other = store
            .create_recording("str_b", "n2", None, None, "opus")
            .await
            .unwrap();
        let other = store
            .set_recording_uploading(&other.id, 10, 10, "v1;1;")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.pending_uploads(Some("n2")).await.unwrap(),
            vec![other.clone()]
        );
        assert!(store.pending_uploads(Some("n1")).await.unwrap().is_empty());
        assert!(store
            .start_recording_upload(&other.id, "u", "k")
            .await
            .unwrap());
        assert!(store
            .add_recording_part(&other.id, "u", 0, "\"h0\"", 10)
            .await
            .unwrap());
        assert_eq!(stored_parts(&store, &other.id).await, 1);
        assert!(store.delete_recording(&other.id).await.unwrap().is_some());
        assert_eq!(stored_parts(&store, &other.id).await, 0);
        assert!(!store
            .add_recording_part(&other.id, "u", 1, "\"h1\"", 10)
            .await
            .unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
