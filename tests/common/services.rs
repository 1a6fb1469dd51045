//! The shared services cluster tests use: PostgreSQL and Redis on this machine (started by
//! `tests/run.sh` where they are missing). Every test gets a database of its own, dropped
//! at the end, so no test depends on another's leftovers.

/// The PostgreSQL database tests create theirs from (`MS_TEST_PG_URL` overrides).
pub fn pg_admin_url() -> String {
    std::env::var("MS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// A fresh, empty PostgreSQL database for one test; dropped (connections cut) on drop.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates `ms_{tag}_{random}`. Panics with the reason when PostgreSQL is unreachable:
    /// these tests need it (`tests/run.sh` starts one).
    pub fn create(tag: &str) -> TestDb {
        let name = format!(
            "ms_{}_{}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            media_server::store::random_id("", 6)
        );
        let admin = pg_admin_url();
        let sql = format!("CREATE DATABASE {name}");
        on_thread(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} is unreachable ({e}); tests/run.sh starts one")
            });
            c.batch_execute(&sql).expect("CREATE DATABASE");
        });
        let mut url = url::Url::parse(&pg_admin_url()).expect("MS_TEST_PG_URL");
        url.set_path(&name);
        TestDb {
            url: url.to_string(),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, sql) = (
            pg_admin_url(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        on_thread(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&sql);
            }
        });
    }
}

/// Runs blocking client code on a plain thread (the blocking client has its own runtime and
/// must not run on a tokio worker).
pub fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs SQL on `url` and returns the first column of each row as text.
pub fn pg_query(url: &str, sql: &str) -> Vec<String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    on_thread(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        c.query(&sql, &[])
            .expect("query")
            .iter()
            .map(|r| {
                r.try_get::<_, String>(0)
                    .or_else(|_| r.try_get::<_, i64>(0).map(|v| v.to_string()))
                    .unwrap_or_default()
            })
            .collect()
    })
}

/// A TCP forwarder on loopback that a test can cut and restore: the service behind it
/// "goes away" (open connections reset, new ones closed at once) without stopping the
/// shared server other tests use.
pub struct Cuttable {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    /// Forwards a new loopback port to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                k.lock().unwrap().push(task);
            }
        });
        Cuttable {
            addr,
            cut,
            conns,
            accept,
        }
    }

    /// The service goes away: open connections are dropped, new ones closed.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// The service comes back.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The Redis tests use (`MS_TEST_REDIS_URL` overrides).
pub fn redis_url() -> String {
    std::env::var("MS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix of one test's own: nothing another test (or an earlier run) wrote is seen.
pub fn redis_prefix(tag: &str) -> String {
    format!("mstest:{tag}:{}", media_server::store::random_id("", 6))
}

/// Deletes every key under `prefix` (a test's own).
pub async fn redis_cleanup(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}
