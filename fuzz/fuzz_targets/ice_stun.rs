//! What the shared WebRTC port reads before any session sees a datagram: STUN detection, the
//! ufrag a binding request names, a binding response's mapped address, and RFC 4571 framing
//! on ICE-TCP. Never panic; a named ufrag is a non-empty part of the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::proto::ice;

fuzz_target!(|data: &[u8]| {
    if let Some(ufrag) = ice::local_ufrag(data) {
        assert!(ice::is_stun(data));
        assert!(!ufrag.is_empty() && ufrag.len() < data.len());
    }
    let _ = ice::integrity_ok(data, "a-session-password");
    if data.len() >= 20 {
        let mut tx = [0u8; 12];
        tx.copy_from_slice(&data[8..20]);
        let _ = ice::mapped_address(data, tx);
    }
    let mut reader = ice::FrameReader::default();
    let (a, b) = data.split_at(data.len() / 2);
    reader.push(a);
    let mut total = 0;
    while let Some(f) = reader.next_frame() {
        total += f.len() + 2;
    }
    reader.push(b);
    while let Some(f) = reader.next_frame() {
        assert!(f.len() <= ice::MAX_FRAME);
        total += f.len() + 2;
    }
    assert!(total + reader.buffered() <= data.len());
});
