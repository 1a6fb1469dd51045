//! RTMP server session after the handshake: chunk layer, AMF0 commands,
//! connect/createStream/publish/play handling, acknowledgements, pings and
//! the response writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::proto::rtmp::server::ServerSession;

fuzz_target!(|data: &[u8]| {
    let mut session = ServerSession::new(1 << 20, 4096);
    session.push(data);
    loop {
        match session.poll_event() {
            Ok(Some(_event)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = session.take_output();
});
