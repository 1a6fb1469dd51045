//! Signed, short-lived play tokens for private streams: `{expires}.{hmac}` where the HMAC
//! (SHA-256, keyed with the server's secret) covers the stream id, the stream's token
//! generation and the expiry. Bumping a stream's generation (key rotation, privacy change,
//! an explicit revoke) invalidates every token minted before. Sans-IO: the current time is
//! passed in.

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

    fn mac(&self, stream_id: &str, generation: u64, expires: u64) -> HmacSha256 {
        // new_from_slice accepts keys of any length for HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(stream_id.as_bytes());
        mac.update(b".");
        mac.update(expires.to_string().as_bytes());
        // Generation 0 signs as tokens did before generations existed.
        if generation > 0 {
            mac.update(b".g");
            mac.update(generation.to_string().as_bytes());
        }
        mac
    }

    /// A token for `stream_id` valid until `expires` (Unix seconds), generation 0.
    pub fn sign(&self, stream_id: &str, expires: u64) -> String {
        self.sign_generation(stream_id, 0, expires)
    }

    /// A token for `stream_id` at its token `generation`, valid until `expires`.
    pub fn sign_generation(&self, stream_id: &str, generation: u64, expires: u64) -> String {
        let tag = self
            .mac(stream_id, generation, expires)
            .finalize()
            .into_bytes();
        format!("{expires}.{}", hex::encode(tag))
    }

    /// Checks `token` for `stream_id` (generation 0) at `now` (Unix seconds).
    pub fn verify(&self, token: &str, stream_id: &str, now: u64) -> Result<(), PlayTokenError> {
        self.verify_generation(token, stream_id, 0, now)
    }

    /// Checks `token` for `stream_id` at its current token `generation` at `now`.
    pub fn verify_generation(
        &self,
        token: &str,
        stream_id: &str,
        generation: u64,
        now: u64,
    ) -> Result<(), PlayTokenError> {
        let (expires, tag) = token.split_once('.').ok_or(PlayTokenError::Invalid)?;
        let expires: u64 = expires.parse().map_err(|_| PlayTokenError::Invalid)?;
        let tag = hex::decode(tag).map_err(|_| PlayTokenError::Invalid)?;
        self.mac(stream_id, generation, expires)
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
    fn a_new_generation_revokes_older_tokens() {
        let s = PlaySigner::new(b"k");
        let t1 = s.sign_generation("str_a", 1, 100);
        assert_eq!(s.verify_generation(&t1, "str_a", 1, 50), Ok(()));
        assert_eq!(
            s.verify_generation(&t1, "str_a", 2, 50),
            Err(PlayTokenError::Invalid)
        );
        assert_eq!(
            s.verify_generation(&t1, "str_a", 0, 50),
            Err(PlayTokenError::Invalid)
        );
        // Generation 0 is the token format from before generations.
        assert_eq!(s.sign_generation("str_a", 0, 100), s.sign("str_a", 100));
    }

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
