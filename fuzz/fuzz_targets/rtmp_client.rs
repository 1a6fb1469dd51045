//! RTMP client sessions — publishing (the restream pusher's) and playing (the load
//! generator's, second input bit): whatever a remote server sends, from the first byte or
//! after a real server's answers brought the session to publishing/playing (first input
//! bit). Bytes arrive in pieces of varying size; media is sent in between.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::proto::rtmp::client::ClientSession;
use media_server::proto::rtmp::server::{ServerSession, SessionEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let play = mode & 2 == 2;
    let mut client = if play {
        ClientSession::player("live", "rtmp://h/live", "str_1", 1 << 20, 4096)
    } else {
        ClientSession::new("live", "rtmp://h/live", "key", 1 << 20, 4096)
    };
    if mode & 1 == 1 {
        let mut server = ServerSession::new(1 << 20, 4096);
        for _ in 0..8 {
            server.push(&client.take_output());
            while let Ok(Some(ev)) = server.poll_event() {
                match ev {
                    SessionEvent::Publish { .. } => server.accept_publish(),
                    SessionEvent::Play { .. } => server.accept_play(),
                    _ => {}
                }
            }
            client.push(&server.take_output());
            while let Ok(Some(_)) = client.poll_event() {}
        }
        assert!(client.is_publishing());
    }
    let piece = usize::from(mode >> 2).max(1) * 7;
    for part in rest.chunks(piece) {
        client.push(part);
        while let Ok(Some(_)) = client.poll_event() {}
        if client.is_publishing() && !play {
            client.send_media(9, 0, part);
        }
        let _ = client.take_output();
    }
});
