//! SQL understanding, pure (no I/O): a one-pass fingerprinting scanner, the sqlparser-based
//! classifier, and the classification cache keyed by fingerprint.

pub mod cache;
pub mod classify;
pub mod fingerprint;
pub mod functions;
pub mod rename;
pub mod signal;
mod walk;
