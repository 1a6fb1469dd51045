//! Ingest: turns what publishers send into hub frames. Each driver sees only the hub's
//! publish interface ([`crate::hub::Publisher`]).

pub mod camera;
pub mod rtmp;
pub mod whip;
