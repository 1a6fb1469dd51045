//! What the single WebRTC port needs to know about a datagram before any session sees it:
//! whether it is STUN (RFC 8489) and, for a binding request, which of our sessions it is for
//! (the USERNAME attribute is `{our ufrag}:{their ufrag}`, RFC 8445 §7.2.2), plus the RFC 4571
//! framing ICE-TCP (RFC 6544) puts around every packet. Sans-IO: bytes in, values out.
//!
//! Demultiplexing by the first byte follows RFC 7983: 0–3 STUN, 20–63 DTLS, 128–191 RTP/RTCP.

/// STUN's magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The USERNAME attribute type.
const USERNAME: u16 = 0x0006;
/// Longest packet RFC 4571 framing carries (its length field is 16 bits).
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Whether `packet` is a STUN message: first two bits zero, the magic cookie in place and a
/// length that matches the datagram.
pub fn is_stun(packet: &[u8]) -> bool {
    packet.len() >= 20
        && packet[0] < 4
        && packet[4..8] == MAGIC_COOKIE
        && usize::from(u16::from_be_bytes([packet[2], packet[3]])) + 20 == packet.len()
}

/// For a STUN binding request (type 0x0001), our ICE username fragment from its USERNAME
/// attribute; `None` for anything else or a malformed message.
pub fn local_ufrag(packet: &[u8]) -> Option<&str> {
    if !is_stun(packet) || packet[0..2] != [0x00, 0x01] {
        return None;
    }
    let mut rest = &packet[20..];
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if typ == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let (ours, _theirs) = username.split_once(':')?;
            return (!ours.is_empty()).then_some(ours);
        }
        // Attributes are padded to four bytes.
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// A STUN binding request (RFC 8489 §6) with this transaction id, no attributes: what a
/// server sends a STUN server to learn its public address.
pub fn binding_request(transaction: [u8; 12]) -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x00];
    p.extend_from_slice(&MAGIC_COOKIE);
    p.extend_from_slice(&transaction);
    p
}

/// The address a binding success response (0x0101) to `transaction` reports:
/// XOR-MAPPED-ADDRESS (0x0020), or MAPPED-ADDRESS (0x0001) from an RFC 3489 server.
pub fn mapped_address(packet: &[u8], transaction: [u8; 12]) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    if !is_stun(packet) || packet[0..2] != [0x01, 0x01] || packet[8..20] != transaction {
        return None;
    }
    let mut plain = None;
    let mut rest = &packet[20..];
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let v = rest.get(4..4 + len)?;
        if (typ == 0x0020 || typ == 0x0001) && v.len() >= 8 {
            let xor = typ == 0x0020;
            let mut port = u16::from_be_bytes([v[2], v[3]]);
            if xor {
                port ^= 0x2112;
            }
            let ip = match (v[1], v.len()) {
                (0x01, 8) => {
                    let mut o = [v[4], v[5], v[6], v[7]];
                    if xor {
                        o.iter_mut().zip(MAGIC_COOKIE).for_each(|(b, k)| *b ^= k);
                    }
                    IpAddr::V4(Ipv4Addr::from(o))
                }
                (0x02, 20) => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&v[4..20]);
                    if xor {
                        let key: Vec<u8> =
                            MAGIC_COOKIE.iter().chain(&transaction).copied().collect();
                        o.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
                    }
                    IpAddr::V6(Ipv6Addr::from(o))
                }
                _ => return None,
            };
            let addr = SocketAddr::new(ip, port);
            if xor {
                return Some(addr);
            }
            plain = Some(addr);
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..).unwrap_or(&[]);
    }
    plain
}

/// The MESSAGE-INTEGRITY attribute type.
const MESSAGE_INTEGRITY: u16 = 0x0008;

/// Whether the STUN message carries a MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) made
/// with `password` (ICE's short-term credential: our `ice-pwd` for requests sent to us).
/// Only a message that proves it knows a session's password may move that session's route.
pub fn integrity_ok(packet: &[u8], password: &str) -> bool {
    use hmac::{Hmac, Mac};
    if !is_stun(packet) {
        return false;
    }
    let mut at = 20;
    while at + 4 <= packet.len() {
        let typ = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        if typ == MESSAGE_INTEGRITY {
            let Some(mac) = packet.get(at + 4..at + 4 + 20) else {
                return false;
            };
            if len != 20 {
                return false;
            }
            // The HMAC covers the message up to the attribute, with the header's length
            // set as if the message ended right after it.
            let Ok(covered_len) = u16::try_from(at + 24 - 20) else {
                return false;
            };
            let Ok(mut h) = Hmac::<sha1::Sha1>::new_from_slice(password.as_bytes()) else {
                return false;
            };
            h.update(&packet[..2]);
            h.update(&covered_len.to_be_bytes());
            h.update(&packet[4..at]);
            return h.verify_slice(mac).is_ok();
        }
        at += 4 + ((len + 3) & !3);
    }
    false
}

/// Splits RFC 4571 frames (a 16-bit big-endian length, then the packet) off a TCP stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived (empty frames are skipped).
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() < 2 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
            if self.buf.len() < 2 + len {
                return None;
            }
            let frame = self.buf[2..2 + len].to_vec();
            self.buf.drain(..2 + len);
            if !frame.is_empty() {
                return Some(frame);
            }
        }
    }

    /// Bytes waiting for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// `packet` with its RFC 4571 length prefix; `None` if it is too long to frame.
pub fn frame(packet: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request as Chromium sends it: USERNAME, then other attributes.
    fn request_with_username(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        // PRIORITY
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x7f, 0x1e, 0xff]);
        let mut p = vec![0x00, 0x01];
        p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[7; 12]);
        p.extend_from_slice(&attrs);
        p
    }

    #[test]
    fn finds_our_ufrag_in_a_binding_request() {
        let p = request_with_username("srvUfrag:cli1");
        assert!(is_stun(&p));
        assert_eq!(local_ufrag(&p), Some("srvUfrag"));
        // A response (0x0101) is STUN but names no session.
        let mut resp = p.clone();
        resp[0..2].copy_from_slice(&[0x01, 0x01]);
        assert!(is_stun(&resp));
        assert_eq!(local_ufrag(&resp), None);
    }

    #[test]
    fn malformed_stun_names_no_session() {
        let p = request_with_username("nocolon");
        assert_eq!(local_ufrag(&p), None);
        assert_eq!(local_ufrag(&request_with_username(":x")), None);
        // Truncated: the length no longer matches.
        assert!(!is_stun(&p[..p.len() - 1]));
        assert_eq!(local_ufrag(&p[..p.len() - 4]), None);
        // An attribute longer than the message.
        let mut long = request_with_username("a:b");
        long[22..24].copy_from_slice(&[0x00, 0xff]);
        assert_eq!(local_ufrag(&long), None);
        // RTP and DTLS are not STUN.
        assert!(!is_stun(&[0x80; 40]));
        assert!(!is_stun(&[22; 40]));
    }

    #[test]
    fn reads_the_mapped_address_of_a_binding_response() {
        let tx = [9u8; 12];
        assert_eq!(binding_request(tx).len(), 20);
        // XOR-MAPPED-ADDRESS 192.0.2.1:32853 (RFC 5769 §2.2's test vector, our own txid).
        let mut p = vec![0x01, 0x01, 0x00, 0x0c];
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&tx);
        p.extend_from_slice(&[
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
        ]);
        assert_eq!(
            mapped_address(&p, tx),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(mapped_address(&p, [0; 12]), None, "another transaction");
        assert_eq!(mapped_address(&p[..p.len() - 2], tx), None);
    }

    #[test]
    fn checks_message_integrity_with_the_password() {
        // RFC 5769 §2.1: a sample request, short-term credential "VOkJxbRl1RmTxUk/WvJxBt".
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
        let p: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert!(is_stun(&p));
        assert_eq!(local_ufrag(&p), Some("evtj"));
        assert!(integrity_ok(&p, "VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!integrity_ok(&p, "another password"));
        let mut forged = p.clone();
        forged[40] ^= 1;
        assert!(!integrity_ok(&forged, "VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(
            !integrity_ok(&request_with_username("a:b"), "x"),
            "no MESSAGE-INTEGRITY"
        );
    }

    #[test]
    fn tcp_frames_split_and_join() {
        let a = frame(&[1, 2, 3]).unwrap();
        let b = frame(&[4]).unwrap();
        let mut r = FrameReader::default();
        let stream = [a, frame(&[]).unwrap(), b].concat();
        r.push(&stream[..4]);
        assert_eq!(r.next_frame(), None);
        r.push(&stream[4..]);
        assert_eq!(r.next_frame(), Some(vec![1, 2, 3]));
        assert_eq!(r.next_frame(), Some(vec![4]));
        assert_eq!(r.next_frame(), None);
        assert_eq!(r.buffered(), 0);
        assert!(frame(&vec![0; MAX_FRAME + 1]).is_none());
    }
}
