//! PostgreSQL, the store's engine in cluster mode (`[store] url = "postgres://…"`): every
//! node shares one database.
//!
//! The execution model is SQLite's: closures run on database threads and callers await the
//! result, so a transaction is plain sequential code and the media path never waits on the
//! database. Here there are `[store] pool_size` threads, each with its own connection
//! (the synchronous `postgres` client), reconnecting when a connection breaks; a job that
//! finds PostgreSQL unreachable fails with [`StoreError::Unavailable`] (the API answers 503)
//! instead of waiting.
//!
//! Why `postgres` (the blocking client over `tokio-postgres`) and not `sqlx`: it keeps the
//! SQLite thread model (one closure per call, transactions without async borrows), needs no
//! database at compile time and no proc macros, and does not link a second SQLite next to
//! rusqlite's bundled one.
//!
//! Migrations run once however many nodes start together: each node applies them in one
//! transaction that first takes a transaction-scoped advisory lock, so the others wait,
//! then find nothing left to do. DDL is transactional in PostgreSQL: a crash leaves the
//! schema as it was. A database migrated by a newer binary is refused.

use std::str::FromStr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::StoreError;
use crate::config::StoreConfig;

/// The advisory lock migrations hold (any constant every node agrees on: "msmigrat").
const MIGRATION_LOCK: i64 = 0x6d73_6d69_6772_6174;

/// PostgreSQL migrations, in order; `schema_migrations` records which ran. Version 1 is the
/// whole schema of SQLite migrations 1–7, with `rowid` columns (keyset pagination follows
/// insertion order, as SQLite's rowid does) and the live owner's fencing epoch.
pub const PG_MIGRATIONS: &[&str] = &[
    // 1: everything SQLite's migrations 1-7 hold, plus the owner of a live stream.
    "CREATE TABLE streams (
        rowid BIGSERIAL UNIQUE,
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
        description TEXT NOT NULL DEFAULT '',
        category TEXT,
        privacy TEXT NOT NULL DEFAULT 'public',
        scheduled_at TEXT,
        record BIGINT NOT NULL DEFAULT 0,
        protocol TEXT,
        token_generation BIGINT NOT NULL DEFAULT 0,
        owner_node TEXT,
        owner_epoch BIGINT NOT NULL DEFAULT 0,
        UNIQUE (app, name)
    );
    CREATE INDEX streams_created ON streams (created_at, id);
    CREATE TABLE tokens (
        rowid BIGSERIAL UNIQUE,
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE webhooks (
        rowid BIGSERIAL UNIQUE,
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        secret TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        rowid BIGSERIAL UNIQUE,
        id TEXT PRIMARY KEY,
        webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        success BIGINT NOT NULL,
        status_code BIGINT,
        error TEXT,
        duration_ms BIGINT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id);
    CREATE TABLE recordings (
        rowid BIGSERIAL UNIQUE,
        id TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        file TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        duration_ms BIGINT NOT NULL DEFAULT 0,
        size_bytes BIGINT NOT NULL DEFAULT 0,
        width BIGINT,
        height BIGINT,
        codecs TEXT NOT NULL DEFAULT '',
        privacy TEXT NOT NULL DEFAULT 'private',
        token_generation BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX recordings_by_stream ON recordings (stream_id, started_at);
    CREATE INDEX recordings_by_status ON recordings (status);
    CREATE TABLE restreams (
        rowid BIGSERIAL UNIQUE,
        id TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
        platform TEXT NOT NULL,
        name TEXT NOT NULL,
        secret TEXT NOT NULL,
        url_masked TEXT NOT NULL,
        key_hint TEXT NOT NULL,
        enabled BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        allow_private_source BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX restreams_by_stream ON restreams (stream_id);",
    // 2: the webhook outbox (SQLite's 9): claimed by one node at a time.
    "CREATE TABLE webhook_outbox (
        id TEXT PRIMARY KEY,
        webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        attempt BIGINT NOT NULL DEFAULT 0,
        next_at BIGINT NOT NULL,
        claimed_by TEXT,
        claimed_until BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at);",
    // 3: the node writing a recording (SQLite's 10).
    "ALTER TABLE recordings ADD COLUMN node TEXT;",
    // 4: recordings in object storage (SQLite's 11).
    "ALTER TABLE recordings ADD COLUMN storage TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE recordings ADD COLUMN object_key TEXT;
    ALTER TABLE recordings ADD COLUMN etag TEXT;
    ALTER TABLE recordings ADD COLUMN sha256 TEXT;
    ALTER TABLE recordings ADD COLUMN upload_id TEXT;
    ALTER TABLE recordings ADD COLUMN vod_index TEXT;
    ALTER TABLE recordings ADD COLUMN upload_attempts BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE recording_parts (
        recording_id TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        part BIGINT NOT NULL,
        etag TEXT NOT NULL,
        size BIGINT NOT NULL,
        PRIMARY KEY (recording_id, part)
    );",
];

type Job = Box<dyn FnOnce(Option<&mut postgres::Client>) + Send>;

/// Connections to PostgreSQL on their own threads.
#[derive(Clone, Debug)]
pub struct PgPool {
    tx: mpsc::Sender<Job>,
}

impl PgPool {
    /// Connects, applies pending migrations (once for all nodes) and starts the pool's
    /// threads. Fails with one line when PostgreSQL cannot be reached or is newer.
    pub async fn open(cfg: &StoreConfig) -> Result<PgPool, StoreError> {
        let mut pg = postgres::Config::from_str(&cfg.url)
            .map_err(|e| StoreError::Unavailable(format!("store.url: {e}")))?;
        pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("media-server");
        // Migrations first, on a connection of their own.
        // (On a plain thread: the blocking client runs a runtime of its own.)
        let first = pg.clone();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("store-pg-migrate".into())
            .spawn(move || {
                let result = connect(&first).and_then(|mut c| migrate(&mut c).map(|_| ()));
                let _ = done_tx.send(result);
            })?;
        done_rx.await.map_err(|_| StoreError::Closed)??;
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..cfg.pool_size.max(1) {
            let rx = rx.clone();
            let pg = pg.clone();
            std::thread::Builder::new()
                .name(format!("store-pg-{n}"))
                .spawn(move || worker(pg, rx))?;
        }
        Ok(PgPool { tx })
    }

    /// Runs `f` on a connection of the pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |client| {
            let result = match client {
                Some(c) => f(c),
                None => Err(StoreError::Unavailable("PostgreSQL is unreachable".into())),
            };
            let _ = tx.send(result);
        });
        self.tx.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn connect(pg: &postgres::Config) -> Result<postgres::Client, StoreError> {
    pg.connect(postgres::NoTls)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))
}

/// One pool thread: takes jobs until every handle is gone; (re)connects when needed.
fn worker(pg: postgres::Config, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut client: Option<postgres::Client> = None;
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if client.as_ref().is_none_or(postgres::Client::is_closed) {
            client = match connect(&pg) {
                Ok(c) => Some(c),
                Err(err) => {
                    tracing::warn!(%err, "store: PostgreSQL unreachable");
                    None
                }
            };
        }
        job(client.as_mut());
    }
}

/// Applies pending migrations in one transaction under the migration lock; returns the
/// schema version.
pub fn migrate(client: &mut postgres::Client) -> Result<usize, StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    let current = usize::try_from(current).unwrap_or(0);
    if current > PG_MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {current}, newer than this binary's {}: \
             upgrade media-server",
            PG_MIGRATIONS.len()
        )));
    }
    for (i, sql) in PG_MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )?;
        tracing::info!(version = i + 1, "PostgreSQL database migrated");
    }
    tx.commit()?;
    Ok(PG_MIGRATIONS.len())
}
