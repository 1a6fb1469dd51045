//! Cluster mode (issue 17): many nodes behind one load balancer, PostgreSQL for durable state
//! (`store::pg`) and Redis for what is shared but short-lived.
//!
//! - [`lease`]: the ownership of a live stream, with a fencing epoch.
//! - [`node`]: this node's part — claims for its publishers, the node registry and viewer
//!   counts (heartbeats), control messages between nodes.
//! - [`relay`]: a stream owned by another node, brought here for this node's viewers.

pub mod lease;
pub mod node;
pub mod relay;

pub use node::{ClusterNode, Control, NodeInfo};

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
