//! HLS request paths and queries as the fast path and the handlers read them:
//! `split_hls_path`, `parse_resource`, `HlsQuery::parse`. No panic; the pieces found are
//! non-empty parts of the path without `/`; a run is hexadecimal and
//! starts the name; a token has only a play token's characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::egress::hls::http::{parse_resource, split_hls_path, HlsQuery, Resource};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    if let Some((stream_id, session, file)) = split_hls_path(path) {
        for piece in [Some(stream_id), session, Some(file)].into_iter().flatten() {
            assert!(!piece.is_empty() && !piece.contains('/') && !piece.contains('%'));
            assert!(path.contains(piece));
        }
        // The session beacon is the router's (a POST); `/hls/{id}/beacon` is a file name
        // like any other (404).
        assert!(session.is_none() || file != "beacon");
    }
    let file = path.rsplit('/').next().unwrap_or("");
    if let Some(
        Resource::Init(run, _)
        | Resource::Segment(run, _)
        | Resource::Part(run, _, _)
        | Resource::RunMedia(run),
    ) = parse_resource(file)
    {
        assert!(!run.is_empty() && run.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(file.starts_with(run));
    }
    if let Ok(q) = HlsQuery::parse(query) {
        if let Some(t) = q.token {
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')));
        }
    }
});
