//! A TLS server certificate that follows its files: loaded (and checked) at start, reloaded
//! on SIGHUP and when the certificate or key file changes, so a renewed certificate (certbot,
//! cert-manager) is served without a restart. A reload that fails keeps the certificate in
//! use and says why once. Used by the RTMPS listener.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// How often the files' modification times are checked.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A certificate chain and key read from PEM files, swapped in place on reload.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// What `what` names in error messages (`rtmp.tls_cert`).
    what: &'static str,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads a chain and key; the error is one line naming the file and the problem.
fn load(cert: &PathBuf, key: &PathBuf, what: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{what}: cannot read {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{what}: {} is not a PEM certificate chain: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("{what}: {} holds no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{what}: {} holds no usable private key: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
        format!(
            "{what}: the key in {} does not fit the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

impl ReloadingCert {
    /// Loads the pair; an unreadable file, a file that is not PEM, or a key that does not
    /// match the certificate is an error naming the file.
    pub fn load(cert: &str, key: &str, what: &'static str) -> Result<Arc<Self>, String> {
        let (cert_path, key_path) = (PathBuf::from(cert), PathBuf::from(key));
        let current = load(&cert_path, &key_path, what)?;
        Ok(Arc::new(ReloadingCert {
            stamps: Mutex::new((modified(&cert_path), modified(&key_path))),
            cert_path,
            key_path,
            what,
            current: RwLock::new(current),
        }))
    }

    /// Reads the files again and serves the new pair if it is good.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = load(&self.cert_path, &self.key_path, self.what)?;
        if let Ok(mut cur) = self.current.write() {
            *cur = fresh;
        }
        Ok(())
    }

    /// Reloads if either file's modification time changed since the last look.
    fn reload_if_changed(&self) {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        let changed = match self.stamps.lock() {
            Ok(mut stamps) if *stamps != now => {
                *stamps = now;
                true
            }
            _ => false,
        };
        if changed {
            match self.reload() {
                Ok(()) => tracing::info!(
                    what = self.what,
                    "tls: certificate reloaded (files changed)"
                ),
                Err(err) => {
                    tracing::warn!(%err, "tls: reload failed; the previous certificate stays")
                }
            }
        }
    }

    /// A server config that serves whatever pair is current (TLS 1.2 and 1.3, ring).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }

    /// Watches the files (and SIGHUP) until shutdown.
    pub fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                tokio::select! {
                    _ = tick.tick() => self.reload_if_changed(),
                    _ = hangup => match self.reload() {
                        Ok(()) => tracing::info!(what = self.what, "tls: certificate reloaded (SIGHUP)"),
                        Err(err) => tracing::warn!(%err, "tls: reload on SIGHUP failed; the previous certificate stays"),
                    },
                    _ = crate::shutdown::requested(&mut shutdown) => return,
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    #[test]
    fn bad_files_are_one_clear_line_and_reload_keeps_the_old_pair() {
        let dir = std::env::temp_dir().join(format!("ms-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = write_pair(&dir, "a.test");
        let (_, other_key) = write_pair(&dir, "b.test");
        let loaded = ReloadingCert::load(&cert, &key, "rtmp.tls_cert").unwrap();
        let first = loaded.current.read().unwrap().clone();

        let missing = ReloadingCert::load("/nonexistent.pem", &key, "rtmp.tls_cert").unwrap_err();
        assert!(
            missing.starts_with("rtmp.tls_cert: cannot read /nonexistent.pem"),
            "{missing}"
        );
        assert!(!missing.contains('\n'));
        let swapped = ReloadingCert::load(&cert, &other_key, "rtmp.tls_cert").unwrap_err();
        assert!(swapped.contains("does not fit"), "{swapped}");
        let not_pem = ReloadingCert::load(&key, &key, "rtmp.tls_cert").unwrap_err();
        assert!(
            not_pem.contains("no certificate") || not_pem.contains("PEM"),
            "{not_pem}"
        );

        // A broken file on reload: the old pair stays.
        std::fs::write(&cert, "garbage").unwrap();
        assert!(loaded.reload().is_err());
        assert!(Arc::ptr_eq(&first, &loaded.current.read().unwrap()));
        // A renewed pair: served from now on.
        let (c2, k2) = write_pair(&dir, "a.test");
        assert_eq!((c2, k2), (cert, key));
        loaded.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &loaded.current.read().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
