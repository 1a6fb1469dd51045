//! Object storage for recordings (`[recording.storage] kind = "s3"`): any S3-compatible
//! store through the `object_store` crate (request signing, multipart uploads, presigned
//! URLs). This module owns the client and turns the crate's errors into what the uploader
//! decides on ([`StorageError::is_transient`]) and what users may read (messages with the
//! credentials cut out). The uploader is [`super::upload`]; VOD and downloads presign or
//! proxy through [`ObjectStorage::presign`] and [`ObjectStorage::get`].
//!
//! Credentials come from the config or from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (and `AWS_SESSION_TOKEN`); nothing else of the environment is read, and there is no
//! fallback to an instance metadata service.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt,
    PutPayload, RetryConfig,
};

use crate::config::StorageConfig;

/// Why a storage call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The store could not be reached or answered with a server error: try again later.
    #[error("object store unreachable: {0}")]
    Unreachable(String),
    /// The store refused (credentials, permissions, no bucket): counts as a failed attempt.
    #[error("object store refused: {0}")]
    Refused(String),
    /// No such object or upload.
    #[error("not found: {0}")]
    NotFound(String),
    /// The stored object is not what was uploaded.
    #[error("upload verification failed: {0}")]
    Mismatch(String),
}

impl StorageError {
    /// Whether waiting may be enough (an outage), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unreachable(_))
    }
}

/// An S3-compatible bucket for recordings.
pub struct ObjectStorage {
    s3: AmazonS3,
    /// The same store without a total request timeout, for streaming whole objects through
    /// this node (a 1-hour recording takes longer than any part).
    s3_stream: AmazonS3,
    prefix: String,
    /// Bytes per multipart part (every part but the last).
    pub part_size: u64,
    /// Lifetime of presigned URLs.
    pub ttl: Duration,
    /// Keep the local file after a verified upload.
    pub keep_local: bool,
    /// Serve downloads through this node instead of redirecting to presigned URLs.
    pub proxy: bool,
    /// Refusals before an upload is given up.
    pub attempts: u32,
    /// Credentials, cut out of every message.
    secrets: Vec<String>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the builder's or the client's Debug: they print the secret.
        f.debug_struct("ObjectStorage")
            .field("prefix", &self.prefix)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// The store `cfg` names, or `None` for local storage. `env` reads the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` only). Sends
    /// nothing; an unusable setting is an error naming the key.
    pub fn from_config(
        cfg: &StorageConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Arc<Self>>, String> {
        if !cfg.is_s3() {
            return Ok(None);
        }
        if let Some((key, problem)) = cfg.problem() {
            return Err(format!("{key}: {problem}"));
        }
        let pick = |configured: &str, var: &str| {
            Some(configured.to_owned())
                .filter(|v| !v.is_empty())
                .or_else(|| env(var).filter(|v| !v.is_empty()))
        };
        let key_id = pick(&cfg.access_key_id, "AWS_ACCESS_KEY_ID").ok_or(
            "recording.storage.access_key_id: s3 storage needs an access key (or AWS_ACCESS_KEY_ID)",
        )?;
        let secret = pick(&cfg.secret_access_key, "AWS_SECRET_ACCESS_KEY").ok_or(
            "recording.storage.secret_access_key: s3 storage needs a secret key (or AWS_SECRET_ACCESS_KEY)",
        )?;
        let token = cfg
            .access_key_id
            .is_empty()
            .then(|| env("AWS_SESSION_TOKEN"))
            .flatten()
            .filter(|t| !t.is_empty());
        let part_size = cfg.part_size_mb * 1024 * 1024;
        // A part must go through in time even on a slow link (1 MiB/s).
        let timeout = Duration::from_secs(30).max(Duration::from_secs(part_size / (1024 * 1024)));
        // Client options first: `with_allow_http` writes into them.
        let options = ClientOptions::new().with_connect_timeout(Duration::from_secs(5));
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options.clone().with_timeout(timeout))
            .with_allow_http(cfg.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_region(cfg.region.clone())
            .with_bucket_name(cfg.bucket.clone())
            .with_access_key_id(key_id.clone())
            .with_secret_access_key(secret.clone())
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(20),
            });
        if !cfg.endpoint.is_empty() {
            builder = builder.with_endpoint(cfg.endpoint.clone());
        }
        let mut secrets = vec![secret, key_id];
        if let Some(t) = token {
            builder = builder.with_token(t.clone());
            secrets.push(t);
        }
        let streaming = builder
            .clone()
            .with_client_options(options.with_timeout_disabled())
            .with_allow_http(cfg.endpoint.starts_with("http://"));
        let build = |b: AmazonS3Builder| {
            b.build()
                .map_err(|e| format!("recording.storage: {}", redact(&e.to_string(), &secrets)))
        };
        let s3 = build(builder)?;
        let s3_stream = build(streaming)?;
        Ok(Some(Arc::new(ObjectStorage {
            s3,
            s3_stream,
            prefix: cfg.prefix.clone(),
            part_size,
            ttl: Duration::from_secs(cfg.presign_ttl_secs),
            keep_local: cfg.keep_local,
            proxy: cfg.download == "proxy",
            attempts: cfg.upload_attempts,
            secrets,
        })))
    }

    /// The object key of a recording.
    pub fn key(&self, recording_id: &str) -> String {
        format!("{}{recording_id}.mp4", self.prefix)
    }

    fn err(&self, e: object_store::Error) -> StorageError {
        classify(&e, &self.secrets)
    }

    /// Starts a multipart upload; its id.
    pub async fn create_upload(&self, key: &str) -> Result<String, StorageError> {
        self.s3
            .create_multipart(&Path::from(key))
            .await
            .map_err(|e| self.err(e))
    }

    /// Uploads part `idx` (0-based); its ETag.
    pub async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        idx: usize,
        data: Bytes,
    ) -> Result<String, StorageError> {
        let id = upload_id.to_owned();
        self.s3
            .put_part(&Path::from(key), &id, idx, PutPayload::from(data))
            .await
            .map(|p| p.content_id)
            .map_err(|e| self.err(e))
    }

    /// Completes an upload from its parts' ETags in order; the object's ETag.
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        etags: Vec<String>,
    ) -> Result<Option<String>, StorageError> {
        let id = upload_id.to_owned();
        let parts = etags
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        self.s3
            .complete_multipart(&Path::from(key), &id, parts)
            .await
            .map(|r| r.e_tag)
            .map_err(|e| self.err(e))
    }

    /// Aborts an upload (an unknown one is fine).
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let id = upload_id.to_owned();
        match self.s3.abort_multipart(&Path::from(key), &id).await {
            Ok(()) => Ok(()),
            Err(e) => match self.err(e) {
                StorageError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// An object's size and ETag.
    pub async fn head(&self, key: &str) -> Result<(u64, Option<String>), StorageError> {
        self.s3
            .head(&Path::from(key))
            .await
            .map(|m| (m.size, m.e_tag))
            .map_err(|e| self.err(e))
    }

    /// Deletes an object (a missing one is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.s3.delete(&Path::from(key)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.err(e) {
                StorageError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Whether the bucket answers (a listing of the prefix).
    pub async fn probe(&self) -> Result<(), StorageError> {
        let prefix = Path::from(self.prefix.trim_end_matches('/'));
        self.s3
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// A presigned `GET` URL of an object and when it expires (computed here; nothing is
    /// sent).
    pub async fn presign(&self, key: &str) -> Result<(String, SystemTime), StorageError> {
        let url = self
            .s3
            .signed_url(reqwest::Method::GET, &Path::from(key), self.ttl)
            .await
            .map_err(|e| self.err(e))?;
        Ok((url.to_string(), SystemTime::now() + self.ttl))
    }

    /// An object, or a range of it (for proxied downloads).
    pub async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<GetResult, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        self.s3_stream
            .get_opts(&Path::from(key), options)
            .await
            .map_err(|e| self.err(e))
    }
}

/// The kind of failure, with a one-line message free of `secrets`.
fn classify(e: &object_store::Error, secrets: &[String]) -> StorageError {
    let msg = one_line(&redact(&e.to_string(), secrets));
    match e {
        // A missing bucket is a 404 too, but no retry brings it back.
        _ if msg.contains("NoSuchBucket") => StorageError::Refused(msg),
        object_store::Error::NotFound { .. } => StorageError::NotFound(msg),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => StorageError::Refused(msg),
        _ if msg.contains("NoSuchUpload") => StorageError::NotFound(msg),
        // S3 answers a slow or broken upload with a 400 too: try again.
        _ if msg.contains("RequestTimeout") || msg.contains("IncompleteBody") => {
            StorageError::Unreachable(msg)
        }
        _ if [
            "ExpiredToken",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ]
        .iter()
        .any(|code| msg.contains(code)) =>
        {
            StorageError::Refused(msg)
        }
        _ if msg.contains("400 Bad Request") || msg.contains("EntityTooSmall") => {
            StorageError::Refused(msg)
        }
        _ => StorageError::Unreachable(msg),
    }
}

/// `text` with every secret (of 4 characters or more) replaced by `***`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

fn one_line(s: &str) -> String {
    let joined: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    // Keep what says why (the error code is near the start of an S3 error body).
    match joined.char_indices().nth(600) {
        Some((at, _)) => format!("{}…", &joined[..at]),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_config() -> StorageConfig {
        StorageConfig {
            kind: "s3".into(),
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "recs".into(),
            ..StorageConfig::default()
        }
    }

    #[test]
    fn local_is_none_and_s3_needs_keys_from_config_or_env() {
        assert!(
            ObjectStorage::from_config(&StorageConfig::default(), |_| None)
                .unwrap()
                .is_none()
        );
        let err = ObjectStorage::from_config(&s3_config(), |_| None).unwrap_err();
        assert!(err.contains("access_key_id"), "{err}");
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI/K7MDENG".to_owned()),
            _ => None,
        };
        let s = ObjectStorage::from_config(&s3_config(), env)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.key("rec_0123456789abcdef"),
            "recordings/rec_0123456789abcdef.mp4"
        );
        assert_eq!(s.part_size, 8 * 1024 * 1024);
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("wJalr") && !debug.contains("AKID"),
            "{debug}"
        );
        let mut bad = s3_config();
        bad.bucket.clear();
        assert!(ObjectStorage::from_config(&bad, env)
            .unwrap_err()
            .contains("bucket"));
    }

    #[test]
    fn errors_are_classified_and_never_carry_secrets() {
        let secrets = vec!["sekrit-value".to_owned(), "AKIDEXAMPLE".to_owned()];
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "403 Forbidden for AKIDEXAMPLE with sekrit-value".into(),
        };
        let e = classify(&denied, &secrets);
        assert!(matches!(e, StorageError::Refused(_)) && !e.is_transient());
        let text = e.to_string();
        assert!(
            !text.contains("sekrit") && !text.contains("AKIDEXAMPLE"),
            "{text}"
        );
        let down = object_store::Error::Generic {
            store: "S3",
            source: "error sending request: connection refused".into(),
        };
        assert!(classify(&down, &secrets).is_transient());
        let no_bucket = object_store::Error::Generic {
            store: "S3",
            source: "404 Not Found: <Code>NoSuchBucket</Code>".into(),
        };
        assert!(matches!(
            classify(&no_bucket, &secrets),
            StorageError::Refused(_)
        ));
        let no_bucket_404 = object_store::Error::NotFound {
            path: "k".into(),
            source: "404 Not Found: <Code>NoSuchBucket</Code>".into(),
        };
        assert!(matches!(
            classify(&no_bucket_404, &secrets),
            StorageError::Refused(_)
        ));
        let slow = object_store::Error::Generic {
            store: "S3",
            source: "400 Bad Request: <Code>RequestTimeout</Code>".into(),
        };
        assert!(classify(&slow, &secrets).is_transient());
        let gone = object_store::Error::NotFound {
            path: "k".into(),
            source: "404".into(),
        };
        assert!(matches!(
            classify(&gone, &secrets),
            StorageError::NotFound(_)
        ));
    }
}
