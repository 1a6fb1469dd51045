//! External authentication: a platform authorises publish and play itself, next to our own
//! stream keys and play tokens (MediaMTX's `authHTTPAddress` / JWT auth and
//! OvenMediaEngine's admission webhooks are what its users know).
//!
//! - **JWT**: a credential shaped like a JWT is verified with the keys of
//!   `external_auth.jwks_url` (RS*, PS*, ES* and EdDSA; never HMAC, whose "key" would be
//!   public), with `exp` required, `iss`/`aud` checked when configured, the stream claim
//!   naming the stream (`str_…`, `app/name` or `*`) and the actions claim including the
//!   action.
//! - **HTTP callback**: any other credential is POSTed with the request to
//!   `external_auth.callback_url`; a 2xx answer allows it unless its JSON body says
//!   `"allow": false`. No answer in time is a refusal (fail closed). Answers are reused for
//!   `callback_cache_secs`.
//!
//! Both URLs are the operator's (configuration, not tenants), so the outbound policy does
//! not apply to them. Credentials are never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use crate::config::ExternalAuthConfig;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a stream.
    Publish,
    /// Play a (private) stream.
    Play,
}

impl Action {
    /// `publish` or `play`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }
}

/// One publish or play to authorise.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuthRequest<'a> {
    /// `publish` or `play`.
    pub action: &'static str,
    /// `rtmp`, `whip`, `hls`, `whep`, `mjpeg`, `vod`, `page`.
    pub protocol: &'static str,
    /// The stream's application.
    pub app: &'a str,
    /// The stream's name.
    pub name: &'a str,
    /// The stream's id.
    pub stream_id: &'a str,
    /// The client, when known.
    pub client_ip: Option<IpAddr>,
    /// What the client presented (a key, token or JWT).
    pub credential: &'a str,
}

/// Least time between two fetches of the key set.
const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// The configured external authorisers.
pub struct ExternalAuth {
    cfg: ExternalAuthConfig,
    client: reqwest::Client,
    answers: Mutex<HashMap<[u8; 32], (Instant, bool)>>,
    keys: tokio::sync::Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
    tried: Option<Instant>,
}

impl std::fmt::Debug for ExternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuth")
            .field("callback", &!self.cfg.callback_url.is_empty())
            .field("jwks", &!self.cfg.jwks_url.is_empty())
            .finish()
    }
}

/// Whether `s` has the shape of a JWS compact serialisation (`xxx.yyy.zzz`, base64url).
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && s.starts_with("eyJ")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl ExternalAuth {
    /// The authorisers, or `None` when neither is configured.
    pub fn new(cfg: &ExternalAuthConfig) -> Option<Arc<Self>> {
        if cfg.callback_url.is_empty() && cfg.jwks_url.is_empty() {
            return None;
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.callback_timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("media-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok()?;
        Some(Arc::new(ExternalAuth {
            cfg: cfg.clone(),
            client,
            answers: Mutex::new(HashMap::new()),
            keys: tokio::sync::Mutex::new(Keys::default()),
        }))
    }

    /// Whether the platform allows `req`.
    pub async fn allows(&self, req: &AuthRequest<'_>) -> bool {
        if req.credential.is_empty() {
            return false;
        }
        if !self.cfg.jwks_url.is_empty() && looks_like_jwt(req.credential) {
            return match self.jwt_allows(req).await {
                Ok(()) => true,
                Err(why) => {
                    tracing::info!(stream = %req.stream_id, action = req.action, protocol = req.protocol, "external auth: JWT refused: {why}");
                    false
                }
            };
        }
        if !self.cfg.callback_url.is_empty() {
            return self.callback_allows(req).await;
        }
        false
    }

    async fn jwt_allows(&self, req: &AuthRequest<'_>) -> Result<(), String> {
        let header = jsonwebtoken::decode_header(req.credential).map_err(|e| e.to_string())?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err("HMAC-signed JWTs are not accepted".into());
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut v = Validation::new(header.alg);
        v.set_required_spec_claims(&["exp"]);
        if !self.cfg.jwt_issuer.is_empty() {
            v.set_issuer(&[&self.cfg.jwt_issuer]);
        }
        if self.cfg.jwt_audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.cfg.jwt_audience]);
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(req.credential, &key, &v)
            .map_err(|e| e.to_string())?;
        let claims = data.claims;
        let stream = claims
            .get(&self.cfg.jwt_stream_claim)
            .and_then(|s| s.as_str())
            .ok_or("no stream claim")?;
        let full = format!("{}/{}", req.app, req.name);
        if stream != "*" && stream != req.stream_id && stream != full {
            return Err("the stream claim names another stream".into());
        }
        let allowed = match claims.get(&self.cfg.jwt_actions_claim) {
            Some(serde_json::Value::String(a)) => a.split([' ', ',']).any(|a| a == req.action),
            Some(serde_json::Value::Array(list)) => {
                list.iter().any(|a| a.as_str() == Some(req.action))
            }
            _ => false,
        };
        if !allowed {
            return Err(format!("the actions claim does not include {}", req.action));
        }
        Ok(())
    }

    /// The decoding key with this `kid` (or the only key), fetching the set when it is
    /// missing, stale, or lacks the `kid` (at most every 10 s).
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, String> {
        let mut keys = self.keys.lock().await;
        let stale = keys
            .fetched
            .is_none_or(|at| at.elapsed() > Duration::from_secs(self.cfg.jwks_refresh_secs));
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let known = keys.set.as_ref().and_then(find);
        if stale || known.is_none() {
            let may_try = keys
                .tried
                .is_none_or(|at| at.elapsed() >= JWKS_MIN_INTERVAL);
            if may_try {
                keys.tried = Some(Instant::now());
                match self.fetch_keys().await {
                    Ok(set) => {
                        keys.set = Some(set);
                        keys.fetched = Some(Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(url = %self.cfg.jwks_url, "external auth: cannot fetch the JWKS: {e}")
                    }
                }
            }
        }
        let jwk = keys
            .set
            .as_ref()
            .and_then(find)
            .ok_or("no key for the JWT's kid")?;
        DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())
    }

    async fn fetch_keys(&self) -> Result<JwkSet, String> {
        let resp = self
            .client
            .get(&self.cfg.jwks_url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        resp.json::<JwkSet>()
            .await
            .map_err(|e| e.without_url().to_string())
    }

    async fn callback_allows(&self, req: &AuthRequest<'_>) -> bool {
        let Ok(body) = serde_json::to_vec(req) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let ttl = Duration::from_secs(self.cfg.callback_cache_secs);
        {
            let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, allow)) = answers.get(&digest) {
                if at.elapsed() < ttl {
                    return *allow;
                }
            }
        }
        let allow = match self
            .client
            .post(&self.cfg.callback_url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                let said_no = resp
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .is_some_and(|v| v.get("allow") == Some(&serde_json::Value::Bool(false)));
                !said_no
            }
            Ok(resp) => {
                tracing::info!(stream = %req.stream_id, action = req.action, protocol = req.protocol, status = %resp.status(), "external auth: refused by the callback");
                false
            }
            Err(e) => {
                let e = e.without_url();
                tracing::warn!(stream = %req.stream_id, action = req.action, "external auth: the callback did not answer ({e}); refused");
                false
            }
        };
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if answers.len() > 10_000 {
            answers.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        answers.insert(digest, (Instant::now(), allow));
        allow
    }
}

/// The credential in an RTMP publish name's query (`name?token=…`): the `token` or `jwt`
/// value, else the whole query.
pub fn credential_of(query: &str) -> &str {
    query
        .split('&')
        .find_map(|kv| {
            kv.strip_prefix("token=")
                .or_else(|| kv.strip_prefix("jwt="))
        })
        .unwrap_or(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shapes_and_publish_names() {
        assert!(looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.eyJzIjoxfQ.c2ln"));
        assert!(!looks_like_jwt("sk_0123456789abcdef"));
        assert!(!looks_like_jwt("eyJ.a b.c"));
        assert!(!looks_like_jwt("1700000000.abcdef"));
        assert_eq!(credential_of("token=abc&x=1"), "abc");
        assert_eq!(credential_of("x=1&jwt=e.y.j"), "e.y.j");
        assert_eq!(credential_of("user=a"), "user=a");
        assert_eq!(credential_of(""), "");
    }
}
