//! Restream destination URLs and keys as the API receives them: `parse_target`, the masking
//! shown in responses, logs, webhooks and the database, the outbound policy's host check,
//! the key hint, and external auth's reading of a publish name's query and of a
//! credential's JWT shape. No panic; a parsed target's pieces are non-empty; the masked URL
//! carries no user info; with no key, the stream name taken from the path is not shown.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::egress::restream::{key_hint, parse_target};
use media_server::outbound::OutboundPolicy;
use media_server::redact::{mask_destination, mask_url};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (url, key) = text.split_once('\n').unwrap_or((&text, ""));
    let policy = OutboundPolicy::default();
    if let Ok(t) = parse_target(url, key) {
        assert!(!t.host.is_empty() && !t.app.is_empty() && !t.stream_name.is_empty());
        let _ = policy.check_host(&t.host, t.port);
        let masked = mask_destination(url, key);
        if key.is_empty() && t.stream_name.len() >= 8 && !t.host.contains(&t.stream_name) {
            // The key written into the path ends the path; the masked form ends in ***.
            let path = masked.split('?').next().unwrap_or("");
            assert!(path.ends_with("/***"), "{masked}");
        }
    }
    let masked = mask_url(url);
    if let Ok(m) = url::Url::parse(&masked.replacen("://***@", "://", 1)) {
        assert!(
            m.username().is_empty() && m.password().is_none(),
            "{masked}"
        );
    }
    let _ = key_hint(key);
    // External auth: the credential is a substring of the query; a JWT shape has 3 parts.
    let cred = media_server::extauth::credential_of(key);
    assert!(key.contains(cred));
    if media_server::extauth::looks_like_jwt(cred) {
        assert_eq!(cred.split('.').count(), 3);
    }
});
