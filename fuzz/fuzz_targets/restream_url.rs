//! Restream destination URLs and keys as the API receives them: `parse_target`, the masking
//! shown in responses and logs, and the key hint. No panic; a parsed target's pieces are
//! non-empty; the masked URL carries no user info (its path may repeat the same characters).
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::egress::restream::{key_hint, mask_url, parse_target};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (url, key) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(t) = parse_target(url, key) {
        assert!(!t.host.is_empty() && !t.app.is_empty() && !t.stream_name.is_empty());
    }
    let masked = mask_url(url);
    if let Ok(m) = url::Url::parse(&masked.replacen("://***@", "://", 1)) {
        assert!(
            m.username().is_empty() && m.password().is_none(),
            "{masked}"
        );
    }
    let _ = key_hint(key);
});
