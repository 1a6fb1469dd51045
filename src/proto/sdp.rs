//! The SDP checks we do ourselves before an offer reaches the `webrtc` crate: structure, ICE
//! and DTLS attributes, and which of our codecs each media section offers. A malformed or
//! codec-less offer is refused here with a message a person can act on, so no peer
//! connection (sockets, tasks) is ever created for it.
//!
//! Sans-IO and panic-free on any input (fuzzed as `sdp_offer`).

/// Largest offer accepted, in bytes (browser offers are 3-10 KB).
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Most media sections accepted in one offer.
pub const MAX_MEDIA_SECTIONS: usize = 16;

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Empty, too large, not UTF-8 or not SDP at all.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// Well-formed but lacking something WebRTC needs.
    #[error("invalid WebRTC offer: {0}")]
    Invalid(String),
    /// No media section offers a codec we take.
    #[error("{0}")]
    UnsupportedCodec(String),
}

/// Media kinds we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `m=audio`.
    Audio,
    /// `m=video`.
    Video,
    /// `m=application` (data channels) or anything else.
    Other,
}

/// One offered codec (`a=rtpmap` plus its `a=fmtp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedCodec {
    /// RTP payload type.
    pub payload_type: u8,
    /// Encoding name, lower-case (`h264`, `opus`, `vp8`).
    pub name: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// The `a=fmtp` parameters, as written.
    pub fmtp: String,
}

impl OfferedCodec {
    /// H.264 in packetization mode 1 (the mode WebRTC uses and we depacketize).
    pub fn is_h264_mode1(&self) -> bool {
        self.name == "h264"
            && self
                .fmtp
                .split(';')
                .any(|p| p.trim().eq_ignore_ascii_case("packetization-mode=1"))
    }

    /// VP9 profile 0 (no `profile-id`, or `profile-id=0`).
    pub fn is_vp9_profile0(&self) -> bool {
        self.name == "vp9"
            && self.fmtp.split(';').all(|p| {
                let p = p.trim();
                !p.starts_with("profile-id=") || p == "profile-id=0"
            })
    }

    /// AV1 (any profile the browser offers decodes main-profile streams).
    pub fn is_av1(&self) -> bool {
        self.name == "av1"
    }

    /// Opus at 48 kHz.
    pub fn is_opus(&self) -> bool {
        self.name == "opus" && self.clock_rate == 48_000
    }
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// Audio, video or other.
    pub kind: MediaKind,
    /// Port 0 means the section is rejected/disabled.
    pub port: u16,
    /// Codecs in the section's preference order.
    pub codecs: Vec<OfferedCodec>,
    /// `sendonly`, `recvonly`, `sendrecv` or `inactive` (default `sendrecv`).
    pub direction: String,
}

impl MediaSection {
    /// Whether the section is in use.
    pub fn active(&self) -> bool {
        self.port != 0 && self.direction != "inactive"
    }

    /// Whether it offers a codec of ours for its kind.
    pub fn has_supported_codec(&self) -> bool {
        match self.kind {
            MediaKind::Video => self.codecs.iter().any(OfferedCodec::is_h264_mode1),
            MediaKind::Audio => self.codecs.iter().any(OfferedCodec::is_opus),
            MediaKind::Other => false,
        }
    }

    fn codec_names(&self) -> String {
        let mut names: Vec<String> = self.codecs.iter().map(|c| c.name.to_uppercase()).collect();
        names.dedup();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// What an offer holds, as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Media sections in order.
    pub media: Vec<MediaSection>,
}

impl Offer {
    /// Whether an active video section offers H.264 (packetization-mode 1).
    pub fn has_video(&self) -> bool {
        self.media
            .iter()
            .any(|m| m.kind == MediaKind::Video && m.active() && m.has_supported_codec())
    }

    /// Whether an active video section offers a codec `accept` takes (for a viewer: the
    /// stream's own codec).
    pub fn has_video_codec(&self, accept: impl Fn(&OfferedCodec) -> bool) -> bool {
        self.media
            .iter()
            .any(|m| m.kind == MediaKind::Video && m.active() && m.codecs.iter().any(&accept))
    }

    /// Whether an active audio section offers Opus.
    pub fn has_audio(&self) -> bool {
        self.media
            .iter()
            .any(|m| m.kind == MediaKind::Audio && m.active() && m.has_supported_codec())
    }

    /// For a publisher (WHIP): every active audio/video section must carry a codec we take
    /// (a VP8-only video section would otherwise silently publish audio only).
    pub fn check_publishable(&self) -> Result<(), SdpError> {
        let mut any = false;
        for m in self.media.iter().filter(|m| m.active()) {
            match m.kind {
                MediaKind::Other => continue,
                MediaKind::Video if !m.has_supported_codec() => {
                    return Err(SdpError::UnsupportedCodec(format!(
                        "no supported video codec offered ({}); offer H.264 with packetization-mode=1",
                        m.codec_names()
                    )))
                }
                MediaKind::Audio if !m.has_supported_codec() => {
                    return Err(SdpError::UnsupportedCodec(format!(
                        "no supported audio codec offered ({}); offer Opus/48000",
                        m.codec_names()
                    )))
                }
                _ => any = true,
            }
        }
        if any {
            Ok(())
        } else {
            Err(SdpError::UnsupportedCodec(
                "the offer has no audio or video to publish".into(),
            ))
        }
    }
}

/// Parses and checks an offer: `v=0` first, `key=value` lines, at most
/// [`MAX_MEDIA_SECTIONS`] media sections, ICE credentials and a DTLS fingerprint (session or
/// media level), and every `m=` line well-formed.
pub fn parse_offer(raw: &[u8]) -> Result<Offer, SdpError> {
    if raw.is_empty() {
        return Err(SdpError::Malformed("empty body".into()));
    }
    if raw.len() > MAX_SDP_BYTES {
        return Err(SdpError::Malformed(format!(
            "{} bytes (limit {MAX_SDP_BYTES})",
            raw.len()
        )));
    }
    let text = std::str::from_utf8(raw).map_err(|_| SdpError::Malformed("not UTF-8".into()))?;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    if lines.next() != Some("v=0") {
        return Err(SdpError::Malformed("the first line must be v=0".into()));
    }
    let mut media: Vec<MediaSection> = Vec::new();
    let (mut ufrag, mut pwd, mut fingerprint) = (false, false, false);
    for (n, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) if k.len() == 1 && k.bytes().all(|b| b.is_ascii_lowercase()) => (k, v),
            _ => {
                return Err(SdpError::Malformed(format!(
                    "line {} is not `x=value`: {:?}",
                    n + 2,
                    truncate(line)
                )))
            }
        };
        match key {
            "m" => {
                if media.len() >= MAX_MEDIA_SECTIONS {
                    return Err(SdpError::Invalid(format!(
                        "more than {MAX_MEDIA_SECTIONS} media sections"
                    )));
                }
                media.push(parse_m_line(value)?);
            }
            "a" => {
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                match name {
                    "ice-ufrag" => ufrag |= !arg.is_empty(),
                    "ice-pwd" => pwd |= !arg.is_empty(),
                    "fingerprint" => fingerprint |= !arg.is_empty(),
                    _ => {}
                }
                if let Some(m) = media.last_mut() {
                    media_attribute(m, name, arg)?;
                }
            }
            _ => {}
        }
    }
    if media.is_empty() {
        return Err(SdpError::Invalid("no media sections (m=)".into()));
    }
    if !(ufrag && pwd) {
        return Err(SdpError::Invalid("missing a=ice-ufrag / a=ice-pwd".into()));
    }
    if !fingerprint {
        return Err(SdpError::Invalid("missing a=fingerprint (DTLS)".into()));
    }
    Ok(Offer { media })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

fn parse_m_line(value: &str) -> Result<MediaSection, SdpError> {
    let mut parts = value.split_ascii_whitespace();
    let bad = || SdpError::Malformed(format!("bad m= line: {:?}", truncate(value)));
    let kind = match parts.next().ok_or_else(bad)? {
        "audio" => MediaKind::Audio,
        "video" => MediaKind::Video,
        _ => MediaKind::Other,
    };
    let port_field = parts.next().ok_or_else(bad)?;
    let port: u16 = port_field
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    let _proto = parts.next().ok_or_else(bad)?;
    let mut codecs = Vec::new();
    for f in parts {
        if kind == MediaKind::Other {
            break;
        }
        let payload_type: u8 = f.parse().map_err(|_| bad())?;
        if payload_type > 127 {
            return Err(bad());
        }
        codecs.push(OfferedCodec {
            payload_type,
            name: String::new(),
            clock_rate: 0,
            fmtp: String::new(),
        });
    }
    Ok(MediaSection {
        kind,
        port,
        codecs,
        direction: "sendrecv".into(),
    })
}

fn media_attribute(m: &mut MediaSection, name: &str, arg: &str) -> Result<(), SdpError> {
    match name {
        "sendonly" | "recvonly" | "sendrecv" | "inactive" => m.direction = name.into(),
        "rtpmap" | "fmtp" => {
            let (pt, rest) = arg.split_once(' ').unwrap_or((arg, ""));
            let Ok(pt) = pt.parse::<u8>() else {
                return Err(SdpError::Malformed(format!(
                    "bad a={name} payload type: {:?}",
                    truncate(arg)
                )));
            };
            let Some(codec) = m.codecs.iter_mut().find(|c| c.payload_type == pt) else {
                return Ok(());
            };
            if name == "rtpmap" {
                let mut enc = rest.trim().split('/');
                codec.name = enc.next().unwrap_or_default().to_ascii_lowercase();
                codec.clock_rate = enc.next().and_then(|r| r.parse().ok()).unwrap_or(0);
            } else {
                codec.fmtp = rest.trim().to_owned();
            }
        }
        _ => {}
    }
    Ok(())
}

/// The `a=candidate` lines and ICE credentials of a trickle-ICE SDP fragment (RFC 8840),
/// as sent in a WHIP/WHEP `PATCH`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrickleFragment {
    /// `a=ice-ufrag` of the fragment, if present (a change means an ICE restart).
    pub ufrag: Option<String>,
    /// `a=ice-pwd` of the fragment (an ICE restart carries the new one).
    pub pwd: Option<String>,
    /// `candidate:…` values (without the `a=`), with the `mid` of their section.
    pub candidates: Vec<(String, Option<String>)>,
    /// `a=end-of-candidates` seen.
    pub end_of_candidates: bool,
}

/// Parses a trickle-ICE fragment; a line that is not `x=value` is an error.
pub fn parse_trickle_fragment(raw: &[u8]) -> Result<TrickleFragment, SdpError> {
    if raw.len() > MAX_SDP_BYTES {
        return Err(SdpError::Malformed("fragment too large".into()));
    }
    let text = std::str::from_utf8(raw).map_err(|_| SdpError::Malformed("not UTF-8".into()))?;
    let mut out = TrickleFragment::default();
    let mut mid = None;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(SdpError::Malformed(format!(
                "not `x=value`: {:?}",
                truncate(line)
            )));
        };
        if key != "a" {
            continue;
        }
        let (name, arg) = value.split_once(':').unwrap_or((value, ""));
        match name {
            "ice-ufrag" => out.ufrag = Some(arg.trim().to_owned()),
            "ice-pwd" => out.pwd = Some(arg.trim().to_owned()),
            "mid" => mid = Some(arg.to_owned()),
            "candidate" => {
                if out.candidates.len() >= 64 {
                    return Err(SdpError::Invalid("more than 64 candidates".into()));
                }
                out.candidates.push((value.to_owned(), mid.clone()));
            }
            "end-of-candidates" => out.end_of_candidates = true,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_LIKE: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
        a=fingerprint:sha-256 AA:BB\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

    #[test]
    fn a_browser_offer_is_accepted() {
        let offer = parse_offer(CHROME_LIKE.as_bytes()).unwrap();
        assert_eq!(offer.media.len(), 2);
        assert!(offer.has_audio() && offer.has_video());
        assert_eq!(offer.media[0].direction, "sendonly");
        assert!(offer.check_publishable().is_ok());
    }

    #[test]
    fn vp8_only_video_is_refused_with_a_reason() {
        let sdp = CHROME_LIKE.replace("a=rtpmap:102 H264/90000", "a=rtpmap:102 VP9/90000");
        let offer = parse_offer(sdp.as_bytes()).unwrap();
        let err = offer.check_publishable().unwrap_err();
        assert!(err.to_string().contains("VP8, VP9"), "{err}");
        // H.264 in packetization mode 0 is not ours either.
        let sdp = CHROME_LIKE.replace("packetization-mode=1", "packetization-mode=0");
        assert!(parse_offer(sdp.as_bytes())
            .unwrap()
            .check_publishable()
            .is_err());
    }

    #[test]
    fn malformed_offers_are_refused() {
        for bad in [
            "",
            "hello",
            "v=0\r\ngarbage line\r\n",
            "v=0\r\ns=-\r\n",
            "v=0\r\nm=video\r\n",
            "v=0\r\nm=video 9 RTP 300\r\n",
            "v=0\r\nm=video x RTP 96\r\n",
        ] {
            assert!(parse_offer(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let no_ice = CHROME_LIKE.replace("a=ice-pwd", "a=x-pwd");
        assert!(matches!(
            parse_offer(no_ice.as_bytes()),
            Err(SdpError::Invalid(_))
        ));
        assert!(parse_offer(&[0xff, 0xfe]).is_err());
        assert!(parse_offer(&vec![b'a'; MAX_SDP_BYTES + 1]).is_err());
    }

    #[test]
    fn trickle_fragments() {
        let f = parse_trickle_fragment(
            b"a=ice-ufrag:abcd\r\na=ice-pwd:x\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
              a=candidate:1 1 UDP 2130706431 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n",
        )
        .unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("abcd"));
        assert_eq!(f.candidates.len(), 1);
        assert_eq!(f.candidates[0].1.as_deref(), Some("0"));
        assert!(f.end_of_candidates);
        assert!(parse_trickle_fragment(b"nonsense").is_err());
    }
}
