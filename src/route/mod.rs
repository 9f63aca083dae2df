//! Pure routing decisions, no I/O: where a request may run ([`replica`]).

pub mod replica;
