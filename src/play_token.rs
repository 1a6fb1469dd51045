//! Signed, short-lived play tokens for private streams: `{expires}.{hmac}` where the HMAC
//! (SHA-256, keyed with the server's secret) covers the stream id and the expiry. Sans-IO:
//! the current time is passed in.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a play token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlayTokenError {
    /// Not a token we issued (bad shape or signature, or another stream's).
    #[error("invalid play token")]
    Invalid,
    /// Valid but past its expiry.
    #[error("play token expired")]
    Expired,
}

/// Signs and verifies play tokens.
#[derive(Clone)]
pub struct PlaySigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for PlaySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlaySigner(..)")
    }
}

impl PlaySigner {
    /// A signer with this secret key.
    pub fn new(key: &[u8]) -> Self {
        PlaySigner { key: key.to_vec() }
    }

    fn mac(&self, stream_id: &str, expires: u64) -> HmacSha256 {
        // new_from_slice accepts keys of any length for HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(stream_id.as_bytes());
        mac.update(b".");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// A token for `stream_id` valid until `expires` (Unix seconds).
    pub fn sign(&self, stream_id: &str, expires: u64) -> String {
        let tag = self.mac(stream_id, expires).finalize().into_bytes();
        format!("{expires}.{}", hex::encode(tag))
    }

    /// Checks `token` for `stream_id` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, stream_id: &str, now: u64) -> Result<(), PlayTokenError> {
        let (expires, tag) = token.split_once('.').ok_or(PlayTokenError::Invalid)?;
        let expires: u64 = expires.parse().map_err(|_| PlayTokenError::Invalid)?;
        let tag = hex::decode(tag).map_err(|_| PlayTokenError::Invalid)?;
        self.mac(stream_id, expires)
            .verify_slice(&tag)
            .map_err(|_| PlayTokenError::Invalid)?;
        if now >= expires {
            return Err(PlayTokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_stream_and_expiry() {
        let s = PlaySigner::new(b"secret");
        let t = s.sign("str_a", 1000);
        assert_eq!(s.verify(&t, "str_a", 999), Ok(()));
        assert_eq!(s.verify(&t, "str_a", 1000), Err(PlayTokenError::Expired));
        assert_eq!(s.verify(&t, "str_b", 999), Err(PlayTokenError::Invalid));
        let forged = t.replacen("1000", "9999", 1);
        assert_eq!(
            s.verify(&forged, "str_a", 999),
            Err(PlayTokenError::Invalid)
        );
        for bad in ["", ".", "x.y", "1000", "1000.zz", "-1.00"] {
            assert_eq!(
                s.verify(bad, "str_a", 0),
                Err(PlayTokenError::Invalid),
                "{bad}"
            );
        }
        assert_eq!(
            PlaySigner::new(b"other").verify(&t, "str_a", 999),
            Err(PlayTokenError::Invalid)
        );
    }
}
