//! The embedded database: SQLite (bundled) in WAL mode on its own thread, behind a cheap,
//! cloneable async handle.
//!
//! Callers send closures to the database thread and await the result; the media path never
//! touches the store. Schema changes are numbered migrations applied in one transaction each
//! (tracked in `PRAGMA user_version`), so a crash never leaves a half-migrated database.
//! Secrets are stored only as SHA-256 hashes: stream keys and API tokens are random 128-bit+
//! values, so a fast hash is enough, and the plain value is returned once, at creation.
//! Restream keys must be sent to the platform later, so they are encrypted instead
//! ([`secret_box`]).

pub mod pg;
mod recordings;
mod restreams;
pub mod secret_box;
pub mod sql;
mod streams;
mod tokens;
mod webhooks;

use std::path::Path;

use rand::RngCore;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use sql::{params, Db};

pub use recordings::{
    RecordingFilter, RecordingOrder, RecordingPage, RecordingPart, RecordingRow, BAD_CURSOR,
};
pub use restreams::{NewRestream, RestreamPatch, RestreamRow};
pub use streams::{
    decode_cursor, encode_cursor, NewStream, Privacy, StreamFilter, StreamPage, StreamPatch,
    StreamRow, StreamState,
};
pub use tokens::TokenRow;
pub use webhooks::{DeliveryRow, OutboxRow, WebhookRow};

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database thread is gone (shutdown or a crash of that thread).
    #[error("database thread stopped")]
    Closed,
    /// The database directory could not be created.
    #[error("cannot create data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A unique value (app/name, key) is taken.
    #[error("{0}")]
    Conflict(String),
    /// PostgreSQL reported an error (with the server's message: `db error` alone says
    /// nothing).
    #[error("database: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// The database cannot be used now (PostgreSQL unreachable, or newer than this binary).
    #[error("{0}")]
    Unavailable(String),
    /// A row did not have the shape the code expects.
    #[error("database: {0}")]
    Schema(String),
}

fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// Whether the database could not be reached (as opposed to a bad query or row): the
    /// API answers 503 and the caller may retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Closed => true,
            // An error without a SQLSTATE is the connection's, not the statement's.
            StoreError::Postgres(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle on the database: the SQLite thread or the PostgreSQL pool.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Engine,
    secrets: std::sync::Arc<secret_box::SecretBox>,
}

#[derive(Clone, Debug)]
enum Engine {
    Sqlite(mpsc::Sender<Job>),
    Pg(pg::PgPool),
}

/// Migrations, in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: streams, tokens, settings.
    "CREATE TABLE streams (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        name TEXT NOT NULL,
        title TEXT NOT NULL,
        stream_key_hash TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL DEFAULT 'idle',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        ended_at TEXT,
        UNIQUE (app, name)
    );
    CREATE INDEX streams_created ON streams (created_at, id);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 2: the control API: stream metadata, webhooks and their delivery log.
    "ALTER TABLE streams ADD COLUMN description TEXT NOT NULL DEFAULT '';
    ALTER TABLE streams ADD COLUMN category TEXT;
    ALTER TABLE streams ADD COLUMN privacy TEXT NOT NULL DEFAULT 'public';
    ALTER TABLE streams ADD COLUMN scheduled_at TEXT;
    ALTER TABLE streams ADD COLUMN record INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE streams ADD COLUMN protocol TEXT;
    CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        secret TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        success INTEGER NOT NULL,
        status_code INTEGER,
        error TEXT,
        duration_ms INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id);",
    // 3: recordings.
    "CREATE TABLE recordings (
        id TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        file TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        width INTEGER,
        height INTEGER,
        codecs TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX recordings_by_stream ON recordings (stream_id, started_at);
    CREATE INDEX recordings_by_status ON recordings (status);",
    // 4: restream destinations (URL and key sealed, see secret_box).
    "CREATE TABLE restreams (
        id TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
        platform TEXT NOT NULL,
        name TEXT NOT NULL,
        secret TEXT NOT NULL,
        url_masked TEXT NOT NULL,
        key_hint TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX restreams_by_stream ON restreams (stream_id);",
    // 5: a restream of a private stream must say so.
    "ALTER TABLE restreams ADD COLUMN allow_private_source INTEGER NOT NULL DEFAULT 0;",
    // 6: each recording keeps its stream's privacy (recordings outlive their stream; one
    // whose stream is gone is served only with a token). Existing recordings of a deleted
    // stream fail closed.
    "ALTER TABLE recordings ADD COLUMN privacy TEXT NOT NULL DEFAULT 'private';
    ALTER TABLE recordings ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
    UPDATE recordings SET privacy = COALESCE(
        (SELECT privacy FROM streams WHERE streams.id = recordings.stream_id), 'private');",
    // 7: play tokens carry the stream's generation; bumping it revokes them all.
    "ALTER TABLE streams ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;",
    // 8: the node that holds a live stream's publisher and the fencing epoch of its claim
    // (cluster mode; on one node the epoch stays 0).
    "ALTER TABLE streams ADD COLUMN owner_node TEXT;
    ALTER TABLE streams ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0;",
    // 9: the webhook outbox: one row per event and webhook until delivered or given up.
    "CREATE TABLE webhook_outbox (
        id TEXT PRIMARY KEY,
        webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        claimed_by TEXT,
        claimed_until INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at);",
    // 10: the node writing a recording (its file is on that node's disk): a node that
    // starts after a crash recovers its own open recordings, not those other nodes write.
    "ALTER TABLE recordings ADD COLUMN node TEXT;",
    // 11: recordings in object storage (S3): where the finished file lives, the object and
    // its checksums, the multipart upload in progress (its parts below), the VOD index an
    // object's playlist is rendered from, and the permanent upload failures so far.
    "ALTER TABLE recordings ADD COLUMN storage TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE recordings ADD COLUMN object_key TEXT;
    ALTER TABLE recordings ADD COLUMN etag TEXT;
    ALTER TABLE recordings ADD COLUMN sha256 TEXT;
    ALTER TABLE recordings ADD COLUMN upload_id TEXT;
    ALTER TABLE recordings ADD COLUMN vod_index TEXT;
    ALTER TABLE recordings ADD COLUMN upload_attempts INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE recording_parts (
        recording_id TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        part INTEGER NOT NULL,
        etag TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (recording_id, part)
    );",
];

impl Store {
    /// Opens (creating if needed) `dir/media-server.db`, applies migrations, and starts the
    /// database thread.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let secrets = std::sync::Arc::new(secret_box::SecretBox::load_or_create(dir)?);
        let path = dir.join("media-server.db");
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, mut rx) = mpsc::channel::<Job>(256);
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut conn = match open_connection(&path) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
                // All handles dropped: checkpoint the WAL so the file is complete on its own.
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
            })?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Store {
            engine: Engine::Sqlite(tx),
            secrets,
        })
    }

    /// Opens the store the configuration names: PostgreSQL when `[store] url` is set (the
    /// key sealing restream secrets still lives in `data_dir`), else SQLite in `data_dir`.
    pub async fn open_config(config: &crate::config::Config) -> Result<Store, StoreError> {
        if !config.store.is_postgres() {
            return Store::open(&config.server.data_dir).await;
        }
        let dir = &config.server.data_dir;
        std::fs::create_dir_all(dir)?;
        // Every node of a cluster must open what any node sealed (restream keys): the key
        // comes from the cluster secret they share, not from one node's data_dir.
        let secrets = if config.cluster.enabled {
            let key = cluster_derived_key(&config.cluster.secret, "secret-box");
            secret_box::SecretBox::from_key(&key).ok_or_else(|| {
                StoreError::Schema("cannot derive the cluster's secret key".into())
            })?
        } else {
            secret_box::SecretBox::load_or_create(dir)?
        };
        let secrets = std::sync::Arc::new(secrets);
        let pool = pg::PgPool::open(&config.store).await?;
        Ok(Store {
            engine: Engine::Pg(pool),
            secrets,
        })
    }

    /// Whether the store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.engine, Engine::Pg(_))
    }

    /// Runs `f` on a database connection (the SQLite thread or one of PostgreSQL's).
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.engine {
            Engine::Sqlite(_) => self.call_sqlite(move |c| f(&mut Db::Lite(c))).await,
            Engine::Pg(pool) => pool.call(move |c| f(&mut Db::Pg(c))).await,
        }
    }

    /// Runs `f` on the SQLite thread; an error on PostgreSQL.
    pub async fn call_sqlite<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Engine::Sqlite(jobs) = &self.engine else {
            return Err(StoreError::Unavailable("not a SQLite store".into()));
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Checkpoints SQLite's WAL into the main file (called on shutdown); nothing to do on
    /// PostgreSQL.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if self.is_postgres() {
            return Ok(());
        }
        self.call_sqlite(|c| Ok(c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?))
            .await
    }

    /// Reads a setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.call(move |c| {
            c.query_opt(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Reads a setting stored sealed with the secret box (`None` if absent or if it cannot
    /// be opened, e.g. after the key file was replaced).
    pub async fn sealed_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .setting(key)
            .await?
            .and_then(|sealed| self.secrets.open(&sealed)))
    }

    /// Writes a setting sealed with the secret box (key file outside the database).
    pub async fn set_sealed_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let sealed = self
            .secrets
            .seal(value)
            .ok_or_else(|| StoreError::Conflict("cannot seal a setting".into()))?;
        self.set_setting(key, &sealed).await
    }

    /// Deletes a setting.
    pub async fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM settings WHERE key = ?1", params![key])?;
            Ok(())
        })
        .await
    }

    /// Writes a setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, &value],
            )?;
            Ok(())
        })
        .await
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}

/// Space-separated words (scopes, event types) as stored → a list.
pub(crate) fn split_words(stored: &str) -> Vec<String> {
    stored
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Rows fetched with `LIMIT limit + 1`, each with its rowid → the page and the cursor of the
/// next page (the last row's position), if there is one.
pub(crate) fn into_page<T>(mut rows: Vec<(i64, T)>, limit: usize) -> (Vec<T>, Option<String>) {
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(rowid, _)| encode_cursor(*rowid))
    } else {
        None
    };
    (rows.into_iter().map(|(_, r)| r).collect(), next)
}

/// Current time as RFC 3339 with milliseconds, UTC (`2026-11-25T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    crate::proto::playlist::format_pdt(std::time::SystemTime::now())
}

/// A 32-byte key for `purpose`, the same on every node that shares the cluster secret
/// (HMAC-SHA-256 of the purpose under the secret).
pub fn cluster_derived_key(secret: &str, purpose: &str) -> Vec<u8> {
    use hmac::Mac;
    match <hmac::Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(b"media-server cluster key\n");
            mac.update(purpose.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Sha256::digest(format!("{purpose}\n{secret}").as_bytes()).to_vec(),
    }
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `prefix` followed by `bytes` random bytes in hex.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    format!("{prefix}{}", hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrations_run_once_and_settings_persist() {
        let dir = tempdir();
        {
            let store = Store::open(&dir).await.unwrap();
            store.set_setting("a", "1").await.unwrap();
            store.set_setting("a", "2").await.unwrap();
        }
        let store = Store::open(&dir).await.unwrap();
        assert_eq!(store.setting("a").await.unwrap().as_deref(), Some("2"));
        let version: i64 = store
            .call_sqlite(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = store
            .call_sqlite(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    pub(crate) fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(random_id("media-server-test-", 8));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
