//! Ownership of a live stream across nodes: a lease in Redis with a fencing epoch.
//!
//! A node that takes a publisher claims the stream: `SET owner NX PX ttl` in one Lua script
//! with `INCR epoch`, so every successful claim gets an epoch higher than every claim before
//! it (floored by the epoch the caller last saw in PostgreSQL, so a Redis that lost its data
//! can never hand out an old epoch again). The owner renews the lease well within its TTL;
//! renewal and release compare the holder first, so a node whose lease expired (paused, cut
//! off) can neither renew nor delete the lease a successor now holds. Whatever the owner
//! writes carries its epoch, and writes with an older epoch than the stored one are refused
//! (fencing), so a stale owner cannot overwrite its successor.
//!
//! Keys: `{prefix}:stream:{id}:owner` (the holder's token, `{node}/{random}`, with the TTL)
//! and `{prefix}:stream:{id}:epoch` (a counter, never expiring).

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::ClusterError;

/// Claims: `{1, epoch}` when won (or already ours), `{0, holder}` when held by another
/// node. A lease held by this node under another token (left by a process of this node that
/// died, or not yet released by a publisher that just left) is taken over: the caller has
/// checked that no publisher of the stream is live here.
const CLAIM: &str = r"
local function won()
  local e = redis.call('INCR', KEYS[2])
  local floor = tonumber(ARGV[3])
  if e <= floor then
    e = floor + 1
    redis.call('SET', KEYS[2], e)
  end
  return {1, tostring(e)}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return won()
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tostring(redis.call('GET', KEYS[2]) or '0')}
end
if holder and string.sub(holder, 1, string.len(ARGV[4])) == ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return won()
end
return {0, holder or ''}
";

/// Renews when still the holder: 1, else 0.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Releases when still the holder: 1, else 0.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Leases of one node.
#[derive(Clone)]
pub struct Leases {
    conn: ConnectionManager,
    prefix: String,
    node: String,
    ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The stream.
    pub stream_id: String,
    /// Its fencing epoch: higher than any earlier claim's.
    pub epoch: u64,
    token: String,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node owns the stream now.
    Won(Lease),
    /// Another node does (its node id).
    Held(String),
}

impl Leases {
    /// Connects to Redis (`redis://…`); the connection reconnects by itself afterwards.
    /// `timeout` bounds every call, so an unreachable Redis is an error, not a hang.
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        node: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Leases, ClusterError> {
        let client = redis::Client::open(redis_url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = bounded(
            timeout,
            redis::aio::ConnectionManager::new_with_config(client, config),
        )
        .await?;
        Ok(Leases {
            conn,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            ttl,
            timeout,
        })
    }

    /// A handle on the same Redis connection (it reconnects by itself).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn owner_key(&self, stream_id: &str) -> String {
        format!("{}:stream:{stream_id}:owner", self.prefix)
    }

    fn epoch_key(&self, stream_id: &str) -> String {
        format!("{}:stream:{stream_id}:epoch", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Claims `stream_id` for this node. `floor` is the highest epoch known from elsewhere
    /// (PostgreSQL): a won claim's epoch is above it.
    pub async fn claim(&self, stream_id: &str, floor: u64) -> Result<Claim, ClusterError> {
        let token = format!("{}/{}", self.node, crate::store::random_id("", 8));
        let mut conn = self.conn.clone();
        let script = redis::Script::new(CLAIM);
        let mut call = script.key(self.owner_key(stream_id));
        call.key(self.epoch_key(stream_id))
            .arg(&token)
            .arg(self.ttl_ms())
            .arg(floor)
            .arg(format!("{}/", self.node));
        let (won, value): (i64, String) =
            bounded(self.timeout, call.invoke_async(&mut conn)).await?;
        if won == 1 {
            let epoch = value
                .parse()
                .map_err(|_| ClusterError::Protocol(format!("epoch {value:?}")))?;
            return Ok(Claim::Won(Lease {
                stream_id: stream_id.to_owned(),
                epoch,
                token,
            }));
        }
        let node = value.rsplit_once('/').map_or(value.as_str(), |(n, _)| n);
        Ok(Claim::Held(node.to_owned()))
    }

    /// Extends a lease; `false` when it is no longer this node's (it expired and another
    /// node claimed the stream): the caller must stop acting as the owner.
    pub async fn renew(&self, lease: &Lease) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(RENEW);
        let mut call = script.key(self.owner_key(&lease.stream_id));
        call.arg(&lease.token).arg(self.ttl_ms());
        let n: i64 = bounded(self.timeout, call.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    /// Gives a lease up (the publisher left); `false` when it was no longer this node's.
    pub async fn release(&self, lease: &Lease) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(RELEASE);
        let mut call = script.key(self.owner_key(&lease.stream_id));
        call.arg(&lease.token);
        let n: i64 = bounded(self.timeout, call.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    /// The node that owns `stream_id` now, if any.
    pub async fn owner(&self, stream_id: &str) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn.clone();
        let holder: Option<String> = bounded(
            self.timeout,
            redis::cmd("GET")
                .arg(self.owner_key(stream_id))
                .query_async(&mut conn),
        )
        .await?;
        Ok(holder.map(|h| h.rsplit_once('/').map_or(h.clone(), |(n, _)| n.to_owned())))
    }
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Timeout(timeout.as_millis() as u64)),
    }
}
