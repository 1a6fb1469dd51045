//! The `restreams` table: destinations a live stream is pushed to. The destination URL and
//! stream key are needed in plain form to connect, so they are sealed with the
//! [`SecretBox`](super::secret_box::SecretBox) (key file outside the database); the table also
//! keeps a masked URL and a key hint for display. Rows go with their stream
//! (`ON DELETE CASCADE`).

use super::sql::{params, Row};
use serde::{Deserialize, Serialize};

use super::{now_rfc3339, random_id, Store, StoreError};

/// A stored destination. `url` and `key` are the plain secrets: never log or serialise them
/// (`Debug` masks them).
#[derive(Clone, PartialEq, Eq)]
pub struct RestreamRow {
    /// `rst_…`
    pub id: String,
    /// The stream pushed.
    pub stream_id: String,
    /// `youtube`, `twitch`, `facebook` or `custom`.
    pub platform: String,
    /// Display name.
    pub name: String,
    /// Server URL (`rtmp://` or `rtmps://`), possibly with credentials. Secret.
    pub url: String,
    /// Stream key. Secret.
    pub key: String,
    /// `url` with credentials masked, for display.
    pub url_masked: String,
    /// The key's last characters, for display (`****abcd`).
    pub key_hint: String,
    /// Whether it follows the stream.
    pub enabled: bool,
    /// It may push a private stream (the owner said so explicitly).
    pub allow_private_source: bool,
    /// False when the sealed secrets could not be opened (key file replaced).
    pub secrets_ok: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl std::fmt::Debug for RestreamRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestreamRow")
            .field("id", &self.id)
            .field("stream_id", &self.stream_id)
            .field("platform", &self.platform)
            .field("url", &self.url_masked)
            .field("key", &self.key_hint)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// A destination to create.
#[derive(Debug, Clone)]
pub struct NewRestream {
    /// The stream.
    pub stream_id: String,
    /// Platform preset.
    pub platform: String,
    /// Display name.
    pub name: String,
    /// Server URL (secret).
    pub url: String,
    /// Stream key (secret).
    pub key: String,
    /// Masked URL.
    pub url_masked: String,
    /// Key hint.
    pub key_hint: String,
    /// Follows the stream.
    pub enabled: bool,
    /// May push a private stream.
    pub allow_private_source: bool,
}

/// Fields a PATCH may change.
#[derive(Debug, Clone, Default)]
pub struct RestreamPatch {
    /// New display name.
    pub name: Option<String>,
    /// Enable/disable.
    pub enabled: Option<bool>,
    /// New URL with its mask.
    pub url: Option<(String, String)>,
    /// New key with its hint.
    pub key: Option<(String, String)>,
    /// May push a private stream.
    pub allow_private_source: Option<bool>,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    url: String,
    key: String,
}

const COLUMNS: &str = "rowid, id, stream_id, platform, name, secret, url_masked, key_hint, \
                       enabled, created_at, updated_at, allow_private_source";

impl Store {
    fn row_from(&self, r: &Row) -> Result<(i64, RestreamRow), StoreError> {
        let sealed: String = r.get(5)?;
        let opened = self
            .secrets
            .open(&sealed)
            .and_then(|plain| serde_json::from_str::<Sealed>(&plain).ok());
        let secrets_ok = opened.is_some();
        let Sealed { url, key } = opened.unwrap_or(Sealed {
            url: String::new(),
            key: String::new(),
        });
        Ok((
            r.get(0)?,
            RestreamRow {
                id: r.get(1)?,
                stream_id: r.get(2)?,
                platform: r.get(3)?,
                name: r.get(4)?,
                url,
                key,
                url_masked: r.get(6)?,
                key_hint: r.get(7)?,
                enabled: r.get(8)?,
                allow_private_source: r.get(11)?,
                secrets_ok,
                created_at: r.get(9)?,
                updated_at: r.get(10)?,
            },
        ))
    }

    fn seal(&self, url: &str, key: &str) -> Result<String, StoreError> {
        let plain = serde_json::to_string(&Sealed {
            url: url.to_owned(),
            key: key.to_owned(),
        })
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
        self.secrets
            .seal(&plain)
            .ok_or_else(|| StoreError::Io(std::io::Error::other("cannot encrypt the secret")))
    }

    /// Creates a destination; `Conflict` when the stream already has `max` of them.
    pub async fn create_restream(
        &self,
        new: NewRestream,
        max: u32,
    ) -> Result<RestreamRow, StoreError> {
        let secret = self.seal(&new.url, &new.key)?;
        let now = now_rfc3339();
        let row = RestreamRow {
            id: random_id("rst_", 8),
            stream_id: new.stream_id,
            platform: new.platform,
            name: new.name,
            url: new.url,
            key: new.key,
            url_masked: new.url_masked,
            key_hint: new.key_hint,
            enabled: new.enabled,
            allow_private_source: new.allow_private_source,
            secrets_ok: true,
            created_at: now.clone(),
            updated_at: now,
        };
        let r = row.clone();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            let count: u32 = tx.query_row(
                "SELECT COUNT(*) FROM restreams WHERE stream_id = ?1",
                params![r.stream_id],
                |x| x.get(0),
            )?;
            if count >= max {
                return Err(StoreError::Conflict(format!(
                    "this stream already has {count} restream destinations (limit {max})"
                )));
            }
            tx.execute(
                "INSERT INTO restreams (id, stream_id, platform, name, secret, url_masked, \
                 key_hint, enabled, created_at, updated_at, allow_private_source) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    r.id,
                    r.stream_id,
                    r.platform,
                    r.name,
                    secret,
                    r.url_masked,
                    r.key_hint,
                    r.enabled,
                    r.created_at,
                    r.updated_at,
                    r.allow_private_source
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        Ok(row)
    }

    /// A page of a stream's destinations, oldest first.
    pub async fn list_restreams(
        &self,
        stream_id: &str,
        limit: usize,
        after: Option<i64>,
    ) -> Result<(Vec<RestreamRow>, Option<String>), StoreError> {
        let (stream_id, this) = (stream_id.to_owned(), self.clone());
        self.call(move |c| {
            let rows = c.query_map(
                &format!(
                    "SELECT {COLUMNS} FROM restreams WHERE stream_id = ?1 AND rowid > ?2 \
                     ORDER BY rowid LIMIT ?3"
                ),
                params![stream_id, after.unwrap_or(0), limit as i64 + 1],
                |r| this.row_from(r),
            )?;
            Ok(super::into_page(rows, limit))
        })
        .await
    }

    /// Every destination of a stream.
    pub async fn restreams_of(&self, stream_id: &str) -> Result<Vec<RestreamRow>, StoreError> {
        Ok(self.list_restreams(stream_id, 10_000, None).await?.0)
    }

    /// One destination of a stream.
    pub async fn get_restream(
        &self,
        stream_id: &str,
        id: &str,
    ) -> Result<Option<RestreamRow>, StoreError> {
        let (stream_id, id, this) = (stream_id.to_owned(), id.to_owned(), self.clone());
        self.call(move |c| {
            Ok(c.query_opt(
                &format!("SELECT {COLUMNS} FROM restreams WHERE stream_id = ?1 AND id = ?2"),
                params![stream_id, id],
                |r| this.row_from(r),
            )?
            .map(|(_, row)| row))
        })
        .await
    }

    /// Applies a patch; `None` if there is no such destination.
    pub async fn update_restream(
        &self,
        stream_id: &str,
        id: &str,
        patch: RestreamPatch,
    ) -> Result<Option<RestreamRow>, StoreError> {
        let Some(current) = self.get_restream(stream_id, id).await? else {
            return Ok(None);
        };
        let (url, _) = patch
            .url
            .unwrap_or((current.url.clone(), current.url_masked.clone()));
        let (key, key_hint) = patch
            .key
            .unwrap_or((current.key.clone(), current.key_hint.clone()));
        // The masked URL depends on both (a key in the path is hidden only without a key).
        let url_masked = crate::redact::mask_destination(&url, &key);
        let secret = self.seal(&url, &key)?;
        let name = patch.name.unwrap_or(current.name.clone());
        let enabled = patch.enabled.unwrap_or(current.enabled);
        let allow_private = patch
            .allow_private_source
            .unwrap_or(current.allow_private_source);
        let now = now_rfc3339();
        let (sid, rid) = (stream_id.to_owned(), id.to_owned());
        let (n, m, h, t) = (
            name.clone(),
            url_masked.clone(),
            key_hint.clone(),
            now.clone(),
        );
        self.call(move |c| {
            c.execute(
                "UPDATE restreams SET name = ?1, secret = ?2, url_masked = ?3, key_hint = ?4, \
                 enabled = ?5, updated_at = ?6, allow_private_source = ?9 \
                 WHERE stream_id = ?7 AND id = ?8",
                params![n, secret, m, h, enabled, t, sid, rid, allow_private],
            )?;
            Ok(())
        })
        .await?;
        Ok(Some(RestreamRow {
            name,
            url,
            key,
            url_masked,
            key_hint,
            enabled,
            allow_private_source: allow_private,
            secrets_ok: true,
            updated_at: now,
            ..current
        }))
    }

    /// Recomputes every stored masked URL with the current masking (rows written by an
    /// older version may show a key in the path); returns how many changed.
    pub async fn remask_restreams(&self) -> Result<usize, StoreError> {
        let this = self.clone();
        let rows = self
            .call(move |c| {
                c.query_map(
                    &format!("SELECT {COLUMNS} FROM restreams"),
                    params![],
                    |r| this.row_from(r),
                )
            })
            .await?;
        let changes: Vec<(String, String)> = rows
            .into_iter()
            .filter(|(_, r)| r.secrets_ok)
            .filter_map(|(_, r)| {
                let masked = crate::redact::mask_destination(&r.url, &r.key);
                (masked != r.url_masked).then_some((r.id, masked))
            })
            .collect();
        let n = changes.len();
        if n > 0 {
            self.call(move |c| {
                let mut tx = c.transaction()?;
                for (id, masked) in &changes {
                    tx.execute(
                        "UPDATE restreams SET url_masked = ?1 WHERE id = ?2",
                        params![masked, id],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        }
        Ok(n)
    }

    /// Deletes a destination; false if there was none.
    pub async fn delete_restream(&self, stream_id: &str, id: &str) -> Result<bool, StoreError> {
        let (stream_id, id) = (stream_id.to_owned(), id.to_owned());
        self.call(move |c| {
            Ok(c.execute(
                "DELETE FROM restreams WHERE stream_id = ?1 AND id = ?2",
                params![stream_id, id],
            )? > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::tempdir;
    use crate::store::NewStream;

    fn new(stream_id: &str) -> NewRestream {
        NewRestream {
            stream_id: stream_id.into(),
            platform: "custom".into(),
            name: "n".into(),
            url: "rtmp://u:p@h/app".into(),
            key: "sk_live_abcdef123456".into(),
            url_masked: "rtmp://***@h/app".into(),
            key_hint: "****3456".into(),
            enabled: true,
            allow_private_source: false,
        }
    }

    #[tokio::test]
    async fn secrets_are_sealed_at_rest_and_rows_follow_their_stream() {
        let dir = tempdir();
        let store = Store::open(&dir).await.unwrap();
        let (s, _) = store
            .create_stream(NewStream::named("live", "a", "A"))
            .await
            .unwrap();
        let r = store.create_restream(new(&s.id), 2).await.unwrap();
        store.create_restream(new(&s.id), 2).await.unwrap();
        assert!(matches!(
            store.create_restream(new(&s.id), 2).await,
            Err(StoreError::Conflict(_))
        ));
        let got = store.get_restream(&s.id, &r.id).await.unwrap().unwrap();
        assert_eq!(got.key, "sk_live_abcdef123456");
        assert_eq!(got.url, "rtmp://u:p@h/app");
        assert!(!format!("{got:?}").contains("abcdef"));
        let patched = store
            .update_restream(
                &s.id,
                &r.id,
                RestreamPatch {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert!(!patched.enabled);
        assert_eq!(patched.key, "sk_live_abcdef123456");
        let (page, next) = store.list_restreams(&s.id, 1, None).await.unwrap();
        assert_eq!(page.len(), 1);
        let after = crate::store::decode_cursor(&next.unwrap());
        let (page2, next2) = store.list_restreams(&s.id, 1, after).await.unwrap();
        assert_eq!(page2.len(), 1);
        assert!(next2.is_none());
        store.flush().await.unwrap();
        drop(store);
        // Neither secret is in the database file in plain text.
        let mut raw = std::fs::read(dir.join("media-server.db")).unwrap();
        if let Ok(wal) = std::fs::read(dir.join("media-server.db-wal")) {
            raw.extend(wal);
        }
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("abcdef123456") && !text.contains("u:p@h"));
        let store = Store::open(&dir).await.unwrap();
        assert!(store.delete_stream(&s.id).await.unwrap());
        assert!(store.restreams_of(&s.id).await.unwrap().is_empty());
    }
}
