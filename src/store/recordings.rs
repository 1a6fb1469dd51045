//! Recordings: one row per file under `data_dir/recordings/`, its status
//! (`recording` → `finalizing` → `ready`, or `failed` with a reason) and what the API lists
//! (size, duration, resolution, codecs).

use super::sql::{args, params, Arg, Db, Row};

use super::{now_rfc3339, random_id, Store, StoreError};

/// A stored recording.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingRow {
    /// `rec_…`.
    pub id: String,
    /// The stream recorded.
    pub stream_id: String,
    /// `recording`, `finalizing`, `ready` or `failed`.
    pub status: String,
    /// Why it failed (`disk_full`, `write_error: …`, `nothing recoverable: …`).
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

const COLUMNS: &str = "rowid, id, stream_id, status, reason, file, started_at, ended_at, \
                       duration_ms, size_bytes, width, height, codecs, privacy, \
                       token_generation";

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
        self.call(move |c| {
            let open = "status IN ('recording', 'finalizing')";
            match node {
                None => c.query_map(
                    &format!("SELECT {COLUMNS} FROM recordings WHERE {open}"),
                    params![],
                    |r| row_to_recording(r).map(|(_, row)| row),
                ),
                Some(node) if node.is_empty() => c.query_map(
                    &format!("SELECT {COLUMNS} FROM recordings WHERE {open} AND node IS NULL"),
                    params![],
                    |r| row_to_recording(r).map(|(_, row)| row),
                ),
                Some(node) => c.query_map(
                    &format!("SELECT {COLUMNS} FROM recordings WHERE {open} AND node = ?1"),
                    params![node],
                    |r| row_to_recording(r).map(|(_, row)| row),
                ),
            }
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

    /// Removes a row; returns it.
    pub async fn delete_recording(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let row = by_id(c, &id)?;
            c.execute("DELETE FROM recordings WHERE id = ?1", params![id])?;
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
}
