//! End to end: FLV tag bodies -> RtmpIngest (sequence headers, codec
//! configs, timestamp unwrapping, pending frames, announcements) -> Hub ->
//! Subscription.
//!
//! Input: a sequence of records `[kind, len_hi, len_lo, body...]`.
//! `kind & 3`: 0 video tag, 1 audio tag, 2 onMetaData (body is AMF0),
//! 3 drain the subscription. `kind >> 2` advances the timestamp by that many
//! 33 ms steps, except 63 which jumps back by 2^31 + 7 ms (wrap-around).
//! The subscription is also drained every 16 records.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_server::hub::Hub;
use media_server::ingest::rtmp::RtmpIngest;
use media_server::proto::rtmp::amf0::decode_all;

fuzz_target!(|data: &[u8]| {
    let hub = Hub::default();
    let Ok(publisher) = hub.publish("s", "rtmp") else {
        return;
    };
    let mut ingest = RtmpIngest::new(publisher);
    let Some(mut sub) = hub.subscribe("s", "rtmp") else {
        return;
    };
    let input = Bytes::copy_from_slice(data);
    let mut pos = 0usize;
    let mut ts: u32 = 0;
    let mut records = 0u32;
    while pos + 3 <= input.len() {
        let kind = input[pos];
        let len = usize::from(u16::from_be_bytes([input[pos + 1], input[pos + 2]]));
        pos += 3;
        let end = (pos + len).min(input.len());
        let body = input.slice(pos..end);
        pos = end;
        ts = match kind >> 2 {
            63 => ts.wrapping_sub(0x8000_0007),
            step => ts.wrapping_add(u32::from(step) * 33),
        };
        match kind & 3 {
            0 => {
                let _ = ingest.on_video(ts, body);
            }
            1 => {
                let _ = ingest.on_audio(ts, body);
            }
            2 => {
                if let Ok(values) = decode_all(&body) {
                    if let Some(meta) = values.last() {
                        ingest.on_metadata(meta);
                    }
                }
            }
            _ => while sub.try_recv().is_some() {},
        }
        records += 1;
        if records % 16 == 0 {
            while sub.try_recv().is_some() {}
        }
    }
    while sub.try_recv().is_some() {}
});
