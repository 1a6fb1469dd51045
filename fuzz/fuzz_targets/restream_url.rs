//! Restream destination URLs and keys as the API receives them: `parse_target`, the masking
//! shown in responses and logs, and the key hint. No panic; a parsed target's pieces are
//! non-empty; the mask never contains the URL's password.
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
    if let Ok(u) = url::Url::parse(url) {
        if let Some(p) = u.password().filter(|p| p.len() >= 4) {
            assert!(!masked.contains(&format!(":{p}@")), "{masked}");
        }
    }
    let _ = key_hint(key);
});
