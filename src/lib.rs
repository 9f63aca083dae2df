//! pgsidecar: a Postgres wire-protocol proxy that runs beside an application — pooling,
//! tenant context for Row-Level Security, routing and caching (see `DESIGN.md`).
//!
//! # Layout
//!
//! - [`config`]: the TOML/env/CLI configuration contract, validated once.
//! - [`app`]: the [`app::App`] bundle (pools, credentials, metrics, shutdown) and the listener.
//! - [`cancel`]: issued BackendKeyData and CancelRequest delivery.
//! - [`protocol`]: the wire format, pure: framing, frontend/backend messages, startup, SQLSTATEs.
//! - [`sql`]: SQL understanding, pure: fingerprinting scanner, classifier, classification cache.
//! - [`session`]: one client connection as typed phases: handshake, auth, relay.
//! - [`cache`]: the result cache (entries, table generations, invalidation across sidecars).
//! - [`pool`]: upstream server connections and the pools that lend them; replica health.
//! - [`route`]: pure routing decisions (primary or replica).
//! - [`metrics`]: the typed Prometheus metrics; [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`stream`]: plain or TLS connections; [`tls`]: certificates, acceptor, upstream connector.
//! - [`token`]: the signed tenant token and the SQL that verifies it inside Postgres.
//! - [`localpg`]: throwaway local PostgreSQL servers for the demo and the tests.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cache;
pub mod cancel;
pub mod config;
pub mod demo;
pub mod http;
pub mod listener;
pub mod live;
pub mod localpg;
pub mod merge;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod route;
pub mod session;
pub mod sql;
pub mod stream;
pub mod tls;
pub mod token;
