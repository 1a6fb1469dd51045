//! Cluster mode (issue 17, in progress): many nodes behind one load balancer, PostgreSQL for
//! durable state (`store::pg`) and Redis for what is shared but short-lived. Built so far:
//! [`lease`], the ownership of a live stream with a fencing epoch. Relays between nodes,
//! shared viewer counts, limits and messages come next; until then `cluster.enabled` is
//! refused at start.

pub mod lease;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    /// Redis answered something the scripts never return.
    #[error("redis: unexpected answer {0}")]
    Protocol(String),
}
