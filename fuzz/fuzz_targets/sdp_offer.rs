//! Our SDP offer checks and trickle-ICE fragment parser on arbitrary bytes: never panic, and
//! an accepted offer's summary is consistent; str0m negotiates what our checks pass, and an
//! ICE restart of it (`restart_offer`) answers with credentials.
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
    // What our checks pass reaches str0m: its parse and negotiation must not panic either
    // (the server also contains a panic there, but a crash found here is a bug to fix).
    if let (Ok(_), Ok(text)) = (sdp::parse_offer(data), std::str::from_utf8(data)) {
        if let Ok(offer) = str0m::change::SdpOffer::from_sdp_string(text) {
            str0m::crypto::from_feature_flags().install_process_default();
            let mut rtc = str0m::Rtc::builder()
                .set_ice_lite(true)
                .build(std::time::Instant::now());
            if rtc.sdp_api().accept_offer(offer).is_ok() {
                // An ICE restart renegotiates the same offer with new credentials: it must
                // not panic, and a fragment made of its answer carries our new ones.
                let again = media_server::net::webrtc::restart_offer(
                    text,
                    "fuzzufrag",
                    "fuzzpassword0123456789",
                );
                if let Ok(offer) = str0m::change::SdpOffer::from_sdp_string(&again) {
                    // An answer that rejects every m-line carries no credentials: the
                    // server then ends the session, so `None` is fine here.
                    if let Ok(answer) = rtc.sdp_api().accept_offer(offer) {
                        let answer = answer.to_sdp_string();
                        if let Some((fragment, ufrag, pwd)) =
                            media_server::net::webrtc::restart_fragment(&answer)
                        {
                            assert!(fragment.contains(&format!("a=ice-ufrag:{ufrag}\r\n")));
                            assert!(fragment.contains(&format!("a=ice-pwd:{pwd}\r\n")));
                        }
                    }
                }
            }
        }
    }
    let _ = sdp::parse_trickle_fragment(data);
    let _ = media_server::net::webrtc::announce_public_ips(
        &String::from_utf8_lossy(data),
        &["203.0.113.1".to_owned()],
    );
});
