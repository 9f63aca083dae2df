//! Pure routing decisions, no I/O: what to do with a request ([`plan`]) and where a request may
//! run, primary or replica ([`replica`]).

pub mod plan;
pub mod replica;
pub mod shard;
pub mod shard_key;
