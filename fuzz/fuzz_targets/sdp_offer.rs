//! Our SDP offer checks and trickle-ICE fragment parser on arbitrary bytes: never panic, and
//! an accepted offer's summary is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::proto::sdp;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = sdp::parse_offer(data) {
        assert!(!offer.media.is_empty());
        assert!(offer.media.len() <= sdp::MAX_MEDIA_SECTIONS);
        if offer.check_publishable().is_ok() {
            assert!(offer.has_video() || offer.has_audio());
        }
    }
    let _ = sdp::parse_trickle_fragment(data);
    let _ = media_server::net::webrtc::announce_public_ips(
        &String::from_utf8_lossy(data),
        &["203.0.113.1".to_owned()],
    );
});
