//! The `streams` table: creation with a fresh stream key (returned once, stored hashed),
//! lookups by id and by (app, key), cursor-paginated listing, and state changes.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{hash_secret, now_rfc3339, random_id, Store, StoreError};

/// Lifecycle of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Created, no publisher yet.
    Idle,
    /// A publisher is connected.
    Live,
    /// The publisher left; the same key can go live again.
    Ended,
}

impl StreamState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Idle => "idle",
            StreamState::Live => "live",
            StreamState::Ended => "ended",
        }
    }

    fn parse(s: &str) -> StreamState {
        match s {
            "live" => StreamState::Live,
            "ended" => StreamState::Ended,
            _ => StreamState::Idle,
        }
    }
}

/// A stream as stored (the key only as its hash, which never leaves this module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    /// `str_…`
    pub id: String,
    /// RTMP application (`live`).
    pub app: String,
    /// Unique name within the app.
    pub name: String,
    /// Display title.
    pub title: String,
    /// Stored state.
    pub state: StreamState,
    /// RFC 3339 timestamps.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Last time it went live.
    pub started_at: Option<String>,
    /// Last time it ended.
    pub ended_at: Option<String>,
}

const COLUMNS: &str = "id, app, name, title, state, created_at, updated_at, started_at, ended_at";

fn row_to_stream(r: &Row<'_>) -> rusqlite::Result<StreamRow> {
    Ok(StreamRow {
        id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        title: r.get(3)?,
        state: StreamState::parse(&r.get::<_, String>(4)?),
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
    })
}

/// A page of streams and the cursor of the next page.
#[derive(Debug, Clone)]
pub struct StreamPage {
    /// The rows.
    pub rows: Vec<StreamRow>,
    /// Opaque cursor for the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// A fresh stream key: `sk_` and 128 random bits.
pub fn new_stream_key() -> String {
    random_id("sk_", 16)
}

impl Store {
    /// Creates a stream with a new key; returns the row and the key (shown once).
    pub async fn create_stream(
        &self,
        app: &str,
        name: &str,
        title: &str,
    ) -> Result<(StreamRow, String), StoreError> {
        let key = new_stream_key();
        let (app, name, title, hash) = (
            app.to_owned(),
            name.to_owned(),
            title.to_owned(),
            hash_secret(&key),
        );
        let row = self
            .call(move |c| {
                let id = random_id("str_", 8);
                let now = now_rfc3339();
                let res = c.execute(
                    "INSERT INTO streams (id, app, name, title, stream_key_hash, state, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'idle', ?6, ?6)",
                    params![id, app, name, title, hash, now],
                );
                match res {
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        return Err(StoreError::Conflict(format!(
                            "a stream named {name} already exists in app {app}"
                        )))
                    }
                    other => other?,
                };
                Ok(c.query_row(
                    &format!("SELECT {COLUMNS} FROM streams WHERE id = ?1"),
                    [&id],
                    row_to_stream,
                )?)
            })
            .await?;
        Ok((row, key))
    }

    /// The stream with this id.
    pub async fn get_stream(&self, id: &str) -> Result<Option<StreamRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM streams WHERE id = ?1"),
                [id],
                row_to_stream,
            )
            .optional()?)
        })
        .await
    }

    /// The stream that `key` publishes to in `app`.
    pub async fn find_stream_by_key(
        &self,
        app: &str,
        key: &str,
    ) -> Result<Option<StreamRow>, StoreError> {
        let (app, hash) = (app.to_owned(), hash_secret(key));
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM streams WHERE app = ?1 AND stream_key_hash = ?2"),
                [app, hash],
                row_to_stream,
            )
            .optional()?)
        })
        .await
    }

    /// Streams ordered by creation, `limit` per page, after `cursor`.
    pub async fn list_streams(
        &self,
        limit: usize,
        cursor: Option<(String, String)>,
    ) -> Result<StreamPage, StoreError> {
        self.call(move |c| {
            let (after_created, after_id) = cursor.unwrap_or_default();
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM streams WHERE (created_at, id) > (?1, ?2)
                 ORDER BY created_at, id LIMIT ?3"
            ))?;
            let mut rows = stmt
                .query_map(
                    params![after_created, after_id, limit as i64 + 1],
                    row_to_stream,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|r| encode_cursor(&r.created_at, &r.id))
            } else {
                None
            };
            Ok(StreamPage { rows, next_cursor })
        })
        .await
    }

    /// Records a state change (`live` sets `started_at`, `ended` sets `ended_at`).
    pub async fn set_stream_state(&self, id: &str, state: StreamState) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let now = now_rfc3339();
            let sql = match state {
                StreamState::Live => {
                    "UPDATE streams SET state = ?2, updated_at = ?3, started_at = ?3 WHERE id = ?1"
                }
                StreamState::Ended => {
                    "UPDATE streams SET state = ?2, updated_at = ?3, ended_at = ?3 WHERE id = ?1"
                }
                StreamState::Idle => "UPDATE streams SET state = ?2, updated_at = ?3 WHERE id = ?1",
            };
            c.execute(sql, params![id, state.as_str(), now])?;
            Ok(())
        })
        .await
    }

    /// After a crash, streams recorded as live have no publisher: mark them ended.
    pub async fn end_stale_live_streams(&self) -> Result<usize, StoreError> {
        self.call(|c| {
            Ok(c.execute(
                "UPDATE streams SET state = 'ended', ended_at = ?1, updated_at = ?1 WHERE state = 'live'",
                [now_rfc3339()],
            )?)
        })
        .await
    }
}

/// Encodes a pagination position as an opaque string.
pub fn encode_cursor(created_at: &str, id: &str) -> String {
    hex::encode(format!("{created_at}\u{1f}{id}"))
}

/// Decodes [`encode_cursor`]'s output; `None` for anything else.
pub fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    let raw = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let (a, b) = raw.split_once('\u{1f}')?;
    Some((a.to_owned(), b.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::tempdir;

    #[tokio::test]
    async fn create_find_by_key_and_paginate() {
        let store = Store::open(&tempdir()).await.unwrap();
        let (row, key) = store.create_stream("live", "demo", "Demo").await.unwrap();
        assert!(row.id.starts_with("str_"));
        assert!(key.starts_with("sk_"));
        assert_eq!(row.state, StreamState::Idle);
        let found = store
            .find_stream_by_key("live", &key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, row.id);
        assert!(store
            .find_stream_by_key("other", &key)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .find_stream_by_key("live", "sk_wrong")
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            store.create_stream("live", "demo", "again").await,
            Err(StoreError::Conflict(_))
        ));
        for i in 0..4 {
            store
                .create_stream("live", &format!("s{i}"), "t")
                .await
                .unwrap();
        }
        let p1 = store.list_streams(2, None).await.unwrap();
        assert_eq!(p1.rows.len(), 2);
        let c = decode_cursor(p1.next_cursor.as_deref().unwrap()).unwrap();
        let p2 = store.list_streams(2, Some(c)).await.unwrap();
        let c = decode_cursor(p2.next_cursor.as_deref().unwrap()).unwrap();
        let p3 = store.list_streams(2, Some(c)).await.unwrap();
        assert_eq!(p3.rows.len(), 1);
        assert!(p3.next_cursor.is_none());
        let mut ids: Vec<_> = [p1.rows, p2.rows, p3.rows]
            .concat()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), 5);
        store
            .set_stream_state(&row.id, StreamState::Live)
            .await
            .unwrap();
        assert_eq!(store.end_stale_live_streams().await.unwrap(), 1);
        let r = store.get_stream(&row.id).await.unwrap().unwrap();
        assert_eq!(r.state, StreamState::Ended);
        assert!(r.started_at.is_some() && r.ended_at.is_some());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor("2026-01-01T00:00:00.000Z", "str_1");
        assert_eq!(
            decode_cursor(&c),
            Some(("2026-01-01T00:00:00.000Z".into(), "str_1".into()))
        );
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor(&hex::encode("no-separator")), None);
    }
}
