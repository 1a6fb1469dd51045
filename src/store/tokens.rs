//! The `tokens` table: API tokens with scopes, stored as SHA-256 hashes; the secret is
//! returned once, at creation.

use super::sql::{params, Row};
use super::{hash_secret, now_rfc3339, random_id, Store, StoreError};

/// An API token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// `tok_…`
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Granted scopes (`streams:read`, `*`, ...).
    pub scopes: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Last successful use.
    pub last_used_at: Option<String>,
}

impl TokenRow {
    /// Whether the token grants `scope` (directly or through `*`).
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == scope)
    }
}

/// Reads id, name, scopes, created_at, last_used_at starting at column `at`.
fn token_from(r: &Row, at: usize) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        id: r.get(at)?,
        name: r.get(at + 1)?,
        scopes: super::split_words(&r.get::<String>(at + 2)?),
        created_at: r.get(at + 3)?,
        last_used_at: r.get(at + 4)?,
    })
}

impl Store {
    /// Creates a token; `secret` is generated unless given (the configured admin token).
    /// Returns the row and the secret.
    pub async fn create_token(
        &self,
        name: &str,
        scopes: &[&str],
        secret: Option<String>,
    ) -> Result<(TokenRow, String), StoreError> {
        let secret = secret.unwrap_or_else(|| random_id("ms_", 24));
        let (name, scopes, hash) = (name.to_owned(), scopes.join(" "), hash_secret(&secret));
        let row = self
            .call(move |c| {
                let id = random_id("tok_", 8);
                let now = now_rfc3339();
                c.execute(
                    "INSERT INTO tokens (id, name, token_hash, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, name, hash, scopes, now],
                )?;
                Ok(TokenRow {
                    id,
                    name,
                    scopes: super::split_words(&scopes),
                    created_at: now,
                    last_used_at: None,
                })
            })
            .await?;
        Ok((row, secret))
    }

    /// Tokens in creation order, `limit` per page after `cursor`; returns the next cursor.
    pub async fn list_tokens(
        &self,
        limit: usize,
        cursor: Option<i64>,
    ) -> Result<(Vec<TokenRow>, Option<String>), StoreError> {
        self.call(move |c| {
            let rows = c.query_map(
                "SELECT rowid, id, name, scopes, created_at, last_used_at FROM tokens
                 WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                params![cursor.unwrap_or(0), limit as i64 + 1],
                |r| Ok((r.get::<i64>(0)?, token_from(r, 1)?)),
            )?;
            Ok(super::into_page(rows, limit))
        })
        .await
    }

    /// Revokes a token; false if there was none.
    pub async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| Ok(c.execute("DELETE FROM tokens WHERE id = ?1", params![id])? > 0))
            .await
    }

    /// The token with this secret, recording its use.
    pub async fn verify_token(&self, secret: &str) -> Result<Option<TokenRow>, StoreError> {
        let hash = hash_secret(secret);
        self.call(move |c| {
            let now = now_rfc3339();
            c.query_opt(
                "UPDATE tokens SET last_used_at = ?2 WHERE token_hash = ?1
                 RETURNING id, name, scopes, created_at, last_used_at",
                params![hash, now],
                |r| token_from(r, 0),
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::tempdir;

    #[tokio::test]
    async fn tokens_verify_by_secret_only() {
        let store = Store::open(&tempdir()).await.unwrap();
        let (row, secret) = store
            .create_token("ci", &["streams:read"], None)
            .await
            .unwrap();
        assert!(secret.starts_with("ms_"));
        let got = store.verify_token(&secret).await.unwrap().unwrap();
        assert_eq!(got.id, row.id);
        assert!(got.last_used_at.is_some());
        assert!(got.allows("streams:read"));
        assert!(!got.allows("tokens:admin"));
        assert!(store.verify_token("ms_nope").await.unwrap().is_none());
        let stored: String = store
            .call_sqlite(|c| Ok(c.query_row("SELECT token_hash FROM tokens", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_ne!(stored, secret, "only the hash is stored");
    }
}
