//! moto's S3-compatible server (`moto[server]`, installed by `tests/run.sh` into
//! `target/moto-venv`) for the object-storage recording tests: each test starts its own on a
//! free loopback port. moto keeps everything in memory, so a restart loses buckets, objects and
//! multipart uploads. With authentication off (the default) it accepts any keys and checks no
//! signature. Under `CI` a missing moto fails the test.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, temp_dir};

/// The access key id tests give the server (moto accepts any with authentication off).
pub const ACCESS_KEY: &str = "test-access-key";
/// The secret access key tests give the server; a test looks for it in logs, API bodies and
/// webhooks to prove it never leaks.
pub const SECRET_KEY: &str = "test-secret-key-do-not-log-0123456789";
/// moto's minimum size of a non-last multipart part (`S3_UPLOAD_PART_MIN_SIZE`, default
/// 5242880) as [`Moto::start`] sets it: 1 MiB, so tests can use `part_size_mb = 1`.
pub const PART_MIN_SIZE: &str = "1048576";

/// A running moto server on `127.0.0.1:port`.
pub struct Moto {
    /// Holds `moto.log` (moto's stdout and stderr, appended across restarts).
    pub dir: PathBuf,
    program: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    client: reqwest::Client,
}

/// `$MS_TEST_MOTO`, else `target/moto-venv/bin/moto_server` (made by `tests/run.sh`). Under
/// `CI` a missing one fails the test; locally it is reported and `None` returned.
pub fn moto_program() -> Option<PathBuf> {
    let path = std::env::var_os("MS_TEST_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server")
        });
    if !path.is_file() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "moto_server is required under CI at {} (bash tests/run.sh installs it)",
                path.display()
            );
        }
        eprintln!("SKIPPED LOCALLY: no moto_server at {}", path.display());
        return None;
    }
    Some(path)
}

/// An `Authorization` header in SigV4's shape for the helper's own requests. moto (auth off)
/// answers an unsigned GET of an existing object with 403 (private ACL) but never checks the
/// signature; the key id maps to moto's default account, the same one the server's signed
/// requests land in. With `INITIAL_NO_AUTH_ACTION_COUNT=0` it gets 403 `InvalidAccessKeyId`
/// (an unsigned request would get a 500 from a moto bug).
fn authorization() -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

impl Moto {
    /// Starts moto with `S3_UPLOAD_PART_MIN_SIZE` = [`PART_MIN_SIZE`] plus `env` (which may
    /// override it; `INITIAL_NO_AUTH_ACTION_COUNT=0` makes a server that answers every signed
    /// request with 403 `InvalidAccessKeyId`) and waits until it answers HTTP. `None` when moto
    /// is not installed (see [`moto_program`]).
    pub async fn start(env: &[(&str, &str)]) -> Option<Moto> {
        let program = moto_program()?;
        let mut all = vec![(
            "S3_UPLOAD_PART_MIN_SIZE".to_owned(),
            PART_MIN_SIZE.to_owned(),
        )];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut moto = Moto {
            dir: temp_dir("moto"),
            program,
            port: free_port(),
            env: all,
            child: None,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        };
        moto.spawn();
        moto.wait_ready().await;
        Some(moto)
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("moto.log"))
            .expect("moto log");
        let err: File = log.try_clone().unwrap();
        let child = Command::new(&self.program)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// Polls `GET /` until moto answers with any status (it is 500 with authentication on).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.client.get(self.endpoint()).send().await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "moto exited ({status}) on port {}:\n{}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer on port {} within 30 s:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`, the endpoint for path-style requests
    /// (`{endpoint}/{bucket}/{key}`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The loopback port moto listens on (kept across [`Moto::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// moto's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.endpoint()))
            .header("authorization", authorization())
    }

    /// Creates `bucket` (`PUT /{bucket}`; the server under test never creates one). Panics
    /// unless moto answers 200 (it does for an existing bucket too).
    pub async fn create_bucket(&self, bucket: &str) {
        let resp = self
            .request(reqwest::Method::PUT, &format!("/{bucket}"))
            .send()
            .await
            .expect("moto: create bucket");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "moto: PUT /{bucket}: {body}");
    }

    /// The keys in `bucket` that start with `prefix`, in moto's (lexicographic) order
    /// (`GET /{bucket}?list-type=2&prefix=`). Panics on any answer but 200 (404
    /// `NoSuchBucket` after a restart) and on a truncated listing (over 1000 keys).
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/{bucket}"))
            .query(&[("list-type", "2"), ("prefix", prefix)])
            .send()
            .await
            .expect("moto: list objects");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "moto: list {bucket}/{prefix}: {body}");
        assert!(
            !body.contains("<IsTruncated>true</IsTruncated>"),
            "moto: listing of {bucket}/{prefix} is truncated"
        );
        let mut keys = vec![];
        let mut rest = body.as_str();
        while let Some(start) = rest.find("<Key>") {
            rest = &rest[start + "<Key>".len()..];
            let end = rest.find("</Key>").expect("moto: <Key> without </Key>");
            keys.push(unescape_xml(&rest[..end]));
            rest = &rest[end..];
        }
        keys
    }

    /// The bytes of `bucket/key`, or `None` when moto answers 404 (no such key or bucket).
    /// Panics on any other status.
    pub async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/{bucket}/{key}"))
            .send()
            .await
            .expect("moto: get object");
        match resp.status().as_u16() {
            200 => Some(resp.bytes().await.expect("moto: object body").to_vec()),
            404 => None,
            status => panic!(
                "moto: GET {bucket}/{key}: {status} {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    /// Kills moto with SIGKILL and reaps it: an outage (connections refused) until
    /// [`Moto::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills moto if it runs and starts it again on the same port with the same environment.
    /// Everything is lost (moto is in-memory): create the bucket again.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The five predefined XML entities (`&amp;` last, so `&amp;lt;` stays `&lt;`).
fn unescape_xml(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}
