//! SQL understanding, pure (no I/O): a one-pass fingerprinting scanner; the classifier and its
//! cache come next (see the classifier issue).

pub mod classify;
pub mod fingerprint;
