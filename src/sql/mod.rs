//! SQL understanding, pure (no I/O): a one-pass fingerprinting scanner, the sqlparser-based
//! classifier, and the classification cache keyed by fingerprint.

pub mod cache;
pub mod cacheable;
pub mod class;
pub mod classify;
pub mod fanout;
pub mod fingerprint;
pub mod functions;
pub mod quote;
pub mod rename;
pub mod rescan;
pub mod settings;
pub mod signal;
pub mod split;
mod walk;
