//! Encryption at rest for secrets the server must use later in plain form (restream keys and
//! credential-bearing URLs): AES-256-GCM with a random 96-bit nonce per value, under a key kept
//! in `data_dir/secrets.key` (created with mode 0600 on first start), not in the database — so
//! a copied database file alone does not give away anyone's platform keys.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "secrets.key";

/// Seals and opens secrets.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Loads `dir/secrets.key`, creating it (32 random bytes, hex, mode 0600) if missing.
    pub fn load_or_create(dir: &Path) -> std::io::Result<SecretBox> {
        let path = dir.join(KEY_FILE);
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => hex::decode(text.trim()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a hex key", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let mut key = [0u8; 32];
                rng.fill(&mut key)
                    .map_err(|_| std::io::Error::other("no system randomness"))?;
                write_private(&path, hex::encode(key).as_bytes())?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
        Self::from_key(&bytes).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} must hold 32 bytes", path.display()),
            )
        })
    }

    /// A box with this 32-byte key.
    pub fn from_key(key: &[u8]) -> Option<SecretBox> {
        let key = UnboundKey::new(&AES_256_GCM, key).ok()?;
        Some(SecretBox {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// `plain` encrypted: hex of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, plain: &str) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(hex::encode(out))
    }

    /// The plain text of a sealed value; `None` if it was sealed under another key or altered.
    pub fn open(&self, sealed: &str) -> Option<String> {
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_detects_tampering() {
        let dir = std::env::temp_dir().join(format!("ms-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let b = SecretBox::load_or_create(&dir).unwrap();
        let sealed = b.seal("live_123_secret").unwrap();
        assert!(!sealed.contains("secret"));
        assert_ne!(sealed, b.seal("live_123_secret").unwrap(), "fresh nonce");
        assert_eq!(b.open(&sealed).as_deref(), Some("live_123_secret"));
        // The same key file is used again after a restart.
        let again = SecretBox::load_or_create(&dir).unwrap();
        assert_eq!(again.open(&sealed).as_deref(), Some("live_123_secret"));
        let mut bad = sealed.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(b.open(&String::from_utf8(bad).unwrap()), None);
        assert_eq!(b.open("zz"), None);
        let other = SecretBox::from_key(&[7; 32]).unwrap();
        assert_eq!(other.open(&sealed), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
