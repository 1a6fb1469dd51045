//! The `streams` table: creation with a fresh stream key (returned once, stored hashed),
//! lookups by id and by (app, key), filtered cursor-paginated listing, updates, key rotation,
//! deletion and state changes.
//!
//! Pagination follows the insertion order (`rowid`), so a page boundary is stable even while
//! streams are being created: every stream is listed exactly once, new ones at the end.

use super::sql::{args, params, Arg, Db, Row};
use serde::{Deserialize, Serialize};

use super::{hash_secret, now_rfc3339, random_id, Store, StoreError};

/// Stored lifecycle of a stream (`scheduled` is derived from `scheduled_at`, see
/// [`StreamRow::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// Who may watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    /// Anyone with the URL.
    Public,
    /// Only with a signed play token.
    Private,
}

impl Privacy {
    /// `public` or `private`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Privacy::Public => "public",
            Privacy::Private => "private",
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
    /// Free text.
    pub description: String,
    /// Category slug.
    pub category: Option<String>,
    /// Who may watch.
    pub privacy: Privacy,
    /// When the stream is planned to start (RFC 3339).
    pub scheduled_at: Option<String>,
    /// Record whenever it goes live.
    pub record: bool,
    /// Last ingest protocol (`rtmp`).
    pub protocol: Option<String>,
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
    /// Part of every play token's MAC: bumped on key rotation, privacy change and an explicit
    /// revoke, which invalidates every token minted before.
    pub token_generation: u64,
    /// The node holding the live publisher (cluster mode), while live.
    pub owner_node: Option<String>,
}

impl StreamRow {
    /// `idle`, `scheduled`, `live` or `ended`: an idle stream whose `scheduled_at` is in the
    /// future is `scheduled`.
    pub fn status(&self, now_rfc3339: &str) -> &'static str {
        match self.state {
            StreamState::Idle
                if self
                    .scheduled_at
                    .as_deref()
                    .is_some_and(|at| at > now_rfc3339) =>
            {
                "scheduled"
            }
            s => s.as_str(),
        }
    }
}

/// Fields of a new stream.
#[derive(Debug, Clone)]
pub struct NewStream {
    /// Application.
    pub app: String,
    /// Unique name within the app.
    pub name: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Category slug.
    pub category: Option<String>,
    /// Privacy.
    pub privacy: Privacy,
    /// Planned start.
    pub scheduled_at: Option<String>,
    /// Record flag.
    pub record: bool,
}

impl NewStream {
    /// A public stream with just a name and title.
    pub fn named(app: &str, name: &str, title: &str) -> Self {
        NewStream {
            app: app.to_owned(),
            name: name.to_owned(),
            title: title.to_owned(),
            description: String::new(),
            category: None,
            privacy: Privacy::Public,
            scheduled_at: None,
            record: false,
        }
    }
}

/// Fields a PATCH may change; `None` leaves a field as it is. For the nullable fields,
/// `Some(None)` clears them.
#[derive(Debug, Clone, Default)]
pub struct StreamPatch {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New category (or cleared).
    pub category: Option<Option<String>>,
    /// New privacy.
    pub privacy: Option<Privacy>,
    /// New planned start (or cleared).
    pub scheduled_at: Option<Option<String>>,
    /// New record flag.
    pub record: Option<bool>,
}

/// List filters.
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    /// `idle`, `scheduled`, `live` or `ended`.
    pub status: Option<String>,
    /// Application.
    pub app: Option<String>,
    /// Category slug.
    pub category: Option<String>,
    /// Last ingest protocol.
    pub protocol: Option<String>,
}

const COLUMNS: &str = "rowid, id, app, name, title, description, category, privacy, scheduled_at, \
                       record, protocol, state, created_at, updated_at, started_at, ended_at, \
                       token_generation, owner_node";

fn row_to_stream(r: &Row) -> Result<(i64, StreamRow), StoreError> {
    Ok((
        r.get(0)?,
        StreamRow {
            id: r.get(1)?,
            app: r.get(2)?,
            name: r.get(3)?,
            title: r.get(4)?,
            description: r.get(5)?,
            category: r.get(6)?,
            privacy: if r.get::<String>(7)? == "private" {
                Privacy::Private
            } else {
                Privacy::Public
            },
            scheduled_at: r.get(8)?,
            record: r.get(9)?,
            protocol: r.get(10)?,
            state: StreamState::parse(&r.get::<String>(11)?),
            created_at: r.get(12)?,
            updated_at: r.get(13)?,
            started_at: r.get(14)?,
            ended_at: r.get(15)?,
            token_generation: r.get::<i64>(16)?.max(0) as u64,
            owner_node: r.get(17)?,
        },
    ))
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

use super::sql::is_unique_violation;

fn select_by(
    c: &mut Db<'_>,
    clause: &str,
    args: &[super::sql::P<'_>],
) -> Result<Option<StreamRow>, StoreError> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM streams WHERE {clause}"),
        args,
        row_to_stream,
    )
    .map(|r| r.map(|(_, row)| row))
}

impl Store {
    /// Creates a stream with a new key; returns the row and the key (shown once).
    pub async fn create_stream(&self, new: NewStream) -> Result<(StreamRow, String), StoreError> {
        let key = new_stream_key();
        let hash = hash_secret(&key);
        let row = self
            .call(move |c| {
                let id = random_id("str_", 8);
                let now = now_rfc3339();
                let res = c.execute(
                    "INSERT INTO streams (id, app, name, title, description, category, privacy,
                        scheduled_at, record, stream_key_hash, state, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'idle', ?11, ?11)",
                    params![
                        id,
                        new.app,
                        new.name,
                        new.title,
                        new.description,
                        new.category,
                        new.privacy.as_str(),
                        new.scheduled_at,
                        new.record,
                        hash,
                        now
                    ],
                );
                match res {
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::Conflict(format!(
                            "a stream named {} already exists in app {}",
                            new.name, new.app
                        )))
                    }
                    other => other?,
                };
                select_by(c, "id = ?1", params![id])?.ok_or(StoreError::Closed)
            })
            .await?;
        Ok((row, key))
    }

    /// The stream with this id.
    pub async fn get_stream(&self, id: &str) -> Result<Option<StreamRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| select_by(c, "id = ?1", params![id]))
            .await
    }

    /// The stream that `key` publishes to in `app`.
    pub async fn find_stream_by_key(
        &self,
        app: &str,
        key: &str,
    ) -> Result<Option<StreamRow>, StoreError> {
        let (app, hash) = (app.to_owned(), hash_secret(key));
        self.call(move |c| select_by(c, "app = ?1 AND stream_key_hash = ?2", params![app, hash]))
            .await
    }

    /// The stream `name` in `app`.
    pub async fn find_stream_by_name(
        &self,
        app: &str,
        name: &str,
    ) -> Result<Option<StreamRow>, StoreError> {
        let (app, name) = (app.to_owned(), name.to_owned());
        self.call(move |c| select_by(c, "app = ?1 AND name = ?2", params![app, name]))
            .await
    }

    /// The stream `key` publishes to, in any app (cameras have no app in their URL).
    pub async fn find_stream_by_any_app_key(
        &self,
        key: &str,
    ) -> Result<Option<StreamRow>, StoreError> {
        let hash = hash_secret(key);
        self.call(move |c| select_by(c, "stream_key_hash = ?1", params![hash]))
            .await
    }

    /// Streams in creation order, `limit` per page, after `cursor`, filtered.
    pub async fn list_streams(
        &self,
        limit: usize,
        cursor: Option<i64>,
        filter: StreamFilter,
    ) -> Result<StreamPage, StoreError> {
        self.call(move |c| {
            let now = now_rfc3339();
            let mut sql = format!("SELECT {COLUMNS} FROM streams WHERE rowid > ?1");
            let mut list: Vec<Arg> = vec![cursor.unwrap_or(0).into()];
            let mut bind = |sql: &mut String, clause: &str, value: String| {
                list.push(value.into());
                sql.push_str(&clause.replace('?', &format!("?{}", list.len())));
            };
            match filter.status.as_deref() {
                Some("scheduled") => {
                    bind(&mut sql, " AND state = 'idle' AND scheduled_at > ?", now)
                }
                Some("idle") => bind(
                    &mut sql,
                    " AND state = 'idle' AND (scheduled_at IS NULL OR scheduled_at <= ?)",
                    now,
                ),
                Some(s) => bind(&mut sql, " AND state = ?", s.to_owned()),
                None => {}
            }
            if let Some(app) = filter.app {
                bind(&mut sql, " AND app = ?", app);
            }
            if let Some(category) = filter.category {
                bind(&mut sql, " AND category = ?", category);
            }
            if let Some(protocol) = filter.protocol {
                bind(&mut sql, " AND protocol = ?", protocol);
            }
            sql.push_str(&format!(" ORDER BY rowid LIMIT {}", limit + 1));
            let rows = c.query_map(&sql, &args(&list), row_to_stream)?;
            let (rows, next_cursor) = super::into_page(rows, limit);
            Ok(StreamPage { rows, next_cursor })
        })
        .await
    }

    /// Applies a PATCH; returns the updated row, `None` if there is no such stream.
    pub async fn update_stream(
        &self,
        id: &str,
        patch: StreamPatch,
    ) -> Result<Option<StreamRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            let now = now_rfc3339();
            let old_privacy: Option<String> = tx.query_opt(
                "SELECT privacy FROM streams WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            let n = tx.execute(
                "UPDATE streams SET
                    title = COALESCE(?2, title),
                    description = COALESCE(?3, description),
                    category = CASE WHEN ?4 = 1 THEN ?5 ELSE category END,
                    privacy = COALESCE(?6, privacy),
                    scheduled_at = CASE WHEN ?7 = 1 THEN ?8 ELSE scheduled_at END,
                    record = COALESCE(?9, record),
                    updated_at = ?10
                 WHERE id = ?1",
                params![
                    id,
                    patch.title,
                    patch.description,
                    patch.category.is_some(),
                    patch.category.flatten(),
                    patch.privacy.map(Privacy::as_str),
                    patch.scheduled_at.is_some(),
                    patch.scheduled_at.flatten(),
                    patch.record,
                    now
                ],
            )?;
            let row = if n == 0 {
                None
            } else {
                select_by(&mut tx, "id = ?1", params![id])?
            };
            if let (Some(p), Some(_)) = (patch.privacy, &row) {
                // A privacy change revokes the play tokens minted so far and goes to the
                // stream's recordings (which keep it when the stream is deleted). Only for a
                // stream that exists: a PATCH of a deleted stream changes nothing.
                if old_privacy.as_deref() != Some(p.as_str()) {
                    tx.execute(
                        "UPDATE streams SET token_generation = token_generation + 1 WHERE id = ?1",
                        params![id],
                    )?;
                }
                tx.execute(
                    "UPDATE recordings SET privacy = ?2 WHERE stream_id = ?1",
                    params![id, p.as_str()],
                )?;
            }
            let row = match row {
                Some(_) => select_by(&mut tx, "id = ?1", params![id])?,
                None => None,
            };
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Replaces the stream key; returns the new key, `None` if there is no such stream.
    pub async fn rotate_stream_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        let (id, key) = (id.to_owned(), new_stream_key());
        let hash = hash_secret(&key);
        let n = self
            .call(move |c| {
                c.execute(
                    "UPDATE streams SET stream_key_hash = ?2, updated_at = ?3, \
                     token_generation = token_generation + 1 WHERE id = ?1",
                    params![id, hash, now_rfc3339()],
                )
            })
            .await?;
        Ok((n > 0).then_some(key))
    }

    /// How many streams an application has.
    pub async fn count_streams_in_app(&self, app: &str) -> Result<u64, StoreError> {
        let app = app.to_owned();
        self.call(move |c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM streams WHERE app = ?1",
                params![app],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// Revokes every play token of a stream (bumps its token generation); false if there
    /// is no such stream.
    pub async fn revoke_play_tokens(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE streams SET token_generation = token_generation + 1, updated_at = ?2 \
                 WHERE id = ?1",
                params![id, now_rfc3339()],
            )? > 0)
        })
        .await
    }

    /// Deletes a stream; false if there was none.
    pub async fn delete_stream(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            // Recordings outlive the stream: they keep its token generation, so play
            // tokens minted before still play them (and revoked ones still do not).
            tx.execute(
                "UPDATE recordings SET token_generation = COALESCE( \
                 (SELECT token_generation FROM streams WHERE id = ?1), token_generation) \
                 WHERE stream_id = ?1",
                params![id],
            )?;
            let n = tx.execute("DELETE FROM streams WHERE id = ?1", params![id])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    /// Records a state change (`live` sets `started_at`, the protocol and the owner, `ended`
    /// sets `ended_at`). Fenced: a write from an owner whose epoch is older than the stored
    /// one (a node that lost the stream to another) changes nothing and answers `false`.
    pub async fn set_stream_state(
        &self,
        id: &str,
        state: StreamState,
        protocol: Option<&str>,
        owner: Option<(&str, u64)>,
    ) -> Result<bool, StoreError> {
        let (id, protocol) = (id.to_owned(), protocol.map(str::to_owned));
        let (node, epoch) = owner.map_or((None, 0), |(n, e)| (Some(n.to_owned()), e as i64));
        self.call(move |c| {
            let now = now_rfc3339();
            let sql = match state {
                StreamState::Live => {
                    "UPDATE streams SET state = ?2, updated_at = ?3, started_at = ?3,
                        protocol = COALESCE(?4, protocol), owner_node = ?5, owner_epoch = ?6
                        WHERE id = ?1 AND owner_epoch <= ?6"
                }
                StreamState::Ended => {
                    "UPDATE streams SET state = ?2, updated_at = ?3, ended_at = ?3,
                        protocol = COALESCE(?4, protocol), owner_node = NULL
                        WHERE id = ?1 AND owner_epoch <= ?6 AND (CAST(?5 AS TEXT) IS NULL OR owner_node = ?5
                            OR owner_node IS NULL)"
                }
                StreamState::Idle => {
                    "UPDATE streams SET state = ?2, updated_at = ?3,
                        protocol = COALESCE(?4, protocol)
                        WHERE id = ?1 AND owner_epoch <= ?6 AND (CAST(?5 AS TEXT) IS NULL OR owner_node = ?5
                            OR owner_node IS NULL)"
                }
            };
            let n = c.execute(sql, params![id, state.as_str(), now, protocol, node, epoch])?;
            Ok(n > 0)
        })
        .await
    }

    /// Streams stored as live with an owner: `(id, owner node, epoch, protocol)` (the
    /// cluster's janitor looks for owners that are gone).
    pub async fn live_stream_owners(
        &self,
    ) -> Result<Vec<(String, String, u64, Option<String>)>, StoreError> {
        self.call(|c| {
            c.query_map(
                "SELECT id, owner_node, owner_epoch, protocol FROM streams
                 WHERE state = 'live' AND owner_node IS NOT NULL",
                params![],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<i64>(2)?.max(0) as u64,
                        r.get(3)?,
                    ))
                },
            )
        })
        .await
    }

    /// Ends a live stream whose owner is gone, if it is still the one stored (same node, same
    /// epoch, still live): `true` for exactly one caller however many nodes try.
    pub async fn end_abandoned_stream(
        &self,
        id: &str,
        node: &str,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let (id, node) = (id.to_owned(), node.to_owned());
        self.call(move |c| {
            let n = c.execute(
                "UPDATE streams SET state = 'ended', ended_at = ?4, updated_at = ?4,
                    owner_node = NULL
                 WHERE id = ?1 AND state = 'live' AND owner_node = ?2 AND owner_epoch = ?3",
                params![id, node, epoch as i64, now_rfc3339()],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// The highest fencing epoch stored for a stream (0 when none or no such stream): a new
    /// claim must be above it.
    pub async fn stream_owner_epoch(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let e: Option<i64> = c.query_opt(
                "SELECT owner_epoch FROM streams WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            Ok(e.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    /// After a crash, streams recorded as live have no publisher: mark them ended. `node`
    /// limits this to the streams that node held (cluster mode: the others are another
    /// node's to end).
    pub async fn end_stale_live_streams(&self, node: Option<&str>) -> Result<usize, StoreError> {
        let node = node.map(str::to_owned);
        self.call(move |c| {
            c.execute(
                "UPDATE streams SET state = 'ended', ended_at = ?1, updated_at = ?1,
                    owner_node = NULL
                    WHERE state = 'live' AND (CAST(?2 AS TEXT) IS NULL OR owner_node = ?2 OR owner_node IS NULL)",
                params![now_rfc3339(), node],
            )
        })
        .await
    }

    /// Streams per stored state, for server stats.
    pub async fn count_streams(&self) -> Result<i64, StoreError> {
        self.call(|c| c.query_row("SELECT COUNT(*) FROM streams", params![], |r| r.get(0)))
            .await
    }
}

/// Encodes a pagination position as an opaque string.
pub fn encode_cursor(position: i64) -> String {
    hex::encode(format!("c1:{position}"))
}

/// Decodes [`encode_cursor`]'s output; `None` for anything else.
pub fn decode_cursor(cursor: &str) -> Option<i64> {
    let raw = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    raw.strip_prefix("c1:")?.parse().ok().filter(|p| *p >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::tempdir;

    #[tokio::test]
    async fn create_find_by_key_and_paginate() {
        let store = Store::open(&tempdir()).await.unwrap();
        let (row, key) = store
            .create_stream(NewStream::named("live", "demo", "Demo"))
            .await
            .unwrap();
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
            store
                .create_stream(NewStream::named("live", "demo", "again"))
                .await,
            Err(StoreError::Conflict(_))
        ));
        for i in 0..4 {
            store
                .create_stream(NewStream::named("live", &format!("s{i}"), "t"))
                .await
                .unwrap();
        }
        let all = StreamFilter::default();
        let p1 = store.list_streams(2, None, all.clone()).await.unwrap();
        assert_eq!(p1.rows.len(), 2);
        let c = decode_cursor(p1.next_cursor.as_deref().unwrap());
        let p2 = store.list_streams(2, c, all.clone()).await.unwrap();
        let c = decode_cursor(p2.next_cursor.as_deref().unwrap());
        let p3 = store.list_streams(2, c, all).await.unwrap();
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
            .set_stream_state(&row.id, StreamState::Live, Some("rtmp"), Some(("n1", 0)))
            .await
            .unwrap();
        let live = StreamFilter {
            status: Some("live".into()),
            protocol: Some("rtmp".into()),
            ..Default::default()
        };
        assert_eq!(
            store.list_streams(10, None, live).await.unwrap().rows.len(),
            1
        );
        assert_eq!(store.end_stale_live_streams(None).await.unwrap(), 1);
        let r = store.get_stream(&row.id).await.unwrap().unwrap();
        assert_eq!(r.state, StreamState::Ended);
        assert!(r.started_at.is_some() && r.ended_at.is_some());
    }

    #[tokio::test]
    async fn state_writes_are_fenced_by_the_owners_epoch() {
        let store = Store::open(&tempdir()).await.unwrap();
        let (row, _) = store
            .create_stream(NewStream::named("live", "f", "F"))
            .await
            .unwrap();
        let id = row.id.as_str();
        let live = |node, epoch| {
            store.set_stream_state(id, StreamState::Live, Some("rtmp"), Some((node, epoch)))
        };
        assert!(live("a", 5).await.unwrap());
        assert_eq!(store.stream_owner_epoch(id).await.unwrap(), 5);
        // An older claim (a stale owner) changes nothing.
        assert!(!live("b", 4).await.unwrap());
        assert!(!store
            .set_stream_state(id, StreamState::Ended, None, Some(("b", 4)))
            .await
            .unwrap());
        // A newer one takes over; the old owner's late "ended" is ignored.
        assert!(live("b", 6).await.unwrap());
        assert!(!store
            .set_stream_state(id, StreamState::Ended, None, Some(("a", 5)))
            .await
            .unwrap());
        let r = store.get_stream(id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.owner_node.as_deref()),
            (StreamState::Live, Some("b"))
        );
        // A restarted node ends only the streams it held.
        assert_eq!(store.end_stale_live_streams(Some("a")).await.unwrap(), 0);
        assert_eq!(store.end_stale_live_streams(Some("b")).await.unwrap(), 1);
        let r = store.get_stream(id).await.unwrap().unwrap();
        assert_eq!((r.state, r.owner_node), (StreamState::Ended, None));
        assert_eq!(store.stream_owner_epoch(id).await.unwrap(), 6);
    }

    #[tokio::test]
    async fn patch_rotate_delete_and_scheduled_status() {
        let store = Store::open(&tempdir()).await.unwrap();
        let mut new = NewStream::named("live", "a", "A");
        new.category = Some("music".into());
        new.scheduled_at = Some("2999-01-01T00:00:00.000Z".into());
        let (row, key) = store.create_stream(new).await.unwrap();
        assert_eq!(row.status(&now_rfc3339()), "scheduled");
        let scheduled = StreamFilter {
            status: Some("scheduled".into()),
            ..Default::default()
        };
        assert_eq!(
            store
                .list_streams(10, None, scheduled)
                .await
                .unwrap()
                .rows
                .len(),
            1
        );
        let patched = store
            .update_stream(
                &row.id,
                StreamPatch {
                    title: Some("B".into()),
                    category: Some(None),
                    scheduled_at: Some(None),
                    privacy: Some(Privacy::Private),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(patched.title, "B");
        assert_eq!(patched.category, None);
        assert_eq!(patched.privacy, Privacy::Private);
        assert_eq!(patched.status(&now_rfc3339()), "idle");
        assert!(store
            .update_stream("str_x", StreamPatch::default())
            .await
            .unwrap()
            .is_none());
        let new_key = store.rotate_stream_key(&row.id).await.unwrap().unwrap();
        assert!(store
            .find_stream_by_key("live", &key)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .find_stream_by_key("live", &new_key)
            .await
            .unwrap()
            .is_some());
        assert!(store.delete_stream(&row.id).await.unwrap());
        assert!(!store.delete_stream(&row.id).await.unwrap());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor(&hex::encode("c1:-3")), None);
        assert_eq!(decode_cursor(&hex::encode("no")), None);
    }
}
