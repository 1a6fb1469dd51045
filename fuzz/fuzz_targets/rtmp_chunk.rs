//! RTMP chunk stream reassembly (`ChunkReader`) plus message parsing
//! (`RtmpMessage::parse`), with the input delivered in several pieces so
//! partial headers / payloads at every boundary are exercised.
//!
//! Input layout: byte 0 = number of split points (mod 8), then that many
//! bytes giving split offsets (scaled into the remaining data), then the
//! RTMP byte stream itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::proto::rtmp::chunk::ChunkReader;
use media_server::proto::rtmp::message::RtmpMessage;

fn drain(reader: &mut ChunkReader) -> bool {
    loop {
        match reader.read_message() {
            Ok(Some(msg)) => {
                let _ = RtmpMessage::parse(&msg);
            }
            Ok(None) => return true,
            // The reader's state is unspecified after an error: stop.
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (splits, stream) = rest.split_at(n);
    let mut cuts: Vec<usize> = splits
        .iter()
        .map(|&b| usize::from(b) * stream.len() / 256)
        .collect();
    cuts.push(stream.len());
    cuts.sort_unstable();

    let mut reader = ChunkReader::new(1 << 20);
    let mut start = 0;
    for cut in cuts {
        reader.push(&stream[start..cut]);
        start = cut;
        if !drain(&mut reader) {
            return;
        }
    }
});
