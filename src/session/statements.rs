//! Prepared statements that survive transaction pooling. A client's named statements get
//! proxy-wide names derived from their text and parameter types (`pgsc_` + 128 bits of
//! SHA-256), so two clients using the same driver-generated name never collide and identical
//! statements are prepared once per server connection. The client's unnamed statement is kept
//! too, so a Bind that lands on another server connection than its Parse still works. This
//! module only keeps the client's view and builds the messages; the relay decides when to send.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::effects::Effects;
use crate::protocol::frontend::{message, PARSE_TAG};
use crate::route::replica::Routing;

/// Prefix of every proxy-wide statement name.
pub const PROXY_PREFIX: &[u8] = b"pgsc_";

/// One statement as the server should know it.
#[derive(Debug)]
pub struct Prepared {
    /// The proxy-wide name.
    pub proxy: Bytes,
    /// The whole Parse message that creates it under that name.
    pub parse: Bytes,
    /// What running it does to the session.
    pub effects: Arc<Effects>,
    /// Where running it may go.
    pub routing: Routing,
}

/// The statements one client has prepared.
#[derive(Debug, Default)]
pub struct ClientStatements {
    /// By name, hashed with aHash (randomly seeded): looked up several times per request,
    /// where SipHash cost a tenth of the relay's own work.
    named: HashMap<Vec<u8>, Arc<Prepared>, ahash::RandomState>,
    /// The Parse message of the client's unnamed statement, as it sent it.
    pub unnamed: Option<Bytes>,
    /// What running the unnamed statement does to the session, and where it may go.
    pub unnamed_effects: Arc<Effects>,
    pub unnamed_routing: Option<Routing>,
}

impl ClientStatements {
    /// The client parsed its unnamed statement (`parse`: the whole Parse message).
    pub fn set_unnamed(&mut self, parse: Bytes, effects: Arc<Effects>, routing: Routing) {
        self.unnamed = Some(parse);
        self.unnamed_effects = effects;
        self.unnamed_routing = Some(routing);
    }

    /// Records a Parse of `name` with the body `rest` (everything after the name) and returns
    /// the statement under its proxy-wide name.
    pub fn register(
        &mut self,
        name: &[u8],
        rest: &[u8],
        effects: Arc<Effects>,
        routing: Routing,
    ) -> Arc<Prepared> {
        let proxy = proxy_name(rest);
        let parse = message(PARSE_TAG, &[&proxy, &[0], rest]);
        let prepared = Arc::new(Prepared {
            proxy,
            parse,
            effects,
            routing,
        });
        self.named.insert(name.to_vec(), Arc::clone(&prepared));
        prepared
    }

    /// The statement a client name refers to.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Prepared>> {
        self.named.get(name)
    }

    /// What running the statement `name` (empty: unnamed) does to the session.
    pub fn effects_of(&self, name: &[u8]) -> Option<Arc<Effects>> {
        match name {
            [] => self
                .unnamed
                .is_some()
                .then(|| Arc::clone(&self.unnamed_effects)),
            _ => self.named.get(name).map(|p| Arc::clone(&p.effects)),
        }
    }

    /// Where running the statement `name` (empty: unnamed) may go; unknown ones: the primary.
    pub fn routing_of(&self, name: &[u8]) -> Routing {
        match name {
            [] => self.unnamed_routing,
            _ => self.named.get(name).map(|p| p.routing),
        }
        .unwrap_or(Routing::PRIMARY)
    }

    /// Forgets a named statement (Close or a failed Parse); true if it existed.
    pub fn forget(&mut self, name: &[u8]) -> bool {
        self.named.remove(name).is_some()
    }

    /// Takes a named statement out (a DEALLOCATE that may yet be refused).
    pub fn take(&mut self, name: &[u8]) -> Option<Arc<Prepared>> {
        self.named.remove(name)
    }

    /// Puts back a statement [`ClientStatements::take`] took out.
    pub fn restore(&mut self, name: &[u8], prepared: Arc<Prepared>) {
        self.named.insert(name.to_vec(), prepared);
    }

    /// Forgets everything (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = None;
        self.unnamed_routing = None;
    }
}

/// `pgsc_` + 32 hex digits of SHA-256 over the query text and parameter types.
pub fn proxy_name(query_and_types: &[u8]) -> Bytes {
    let digest = ring::digest::digest(&ring::digest::SHA256, query_and_types);
    let mut name = BytesMut::with_capacity(PROXY_PREFIX.len() + 32);
    name.put_slice(PROXY_PREFIX);
    for b in &digest.as_ref()[..16] {
        name.put_slice(format!("{b:02x}").as_bytes());
    }
    name.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend::split_cstr;

    #[test]
    fn proxy_names_depend_on_text_and_types_only() {
        let a = proxy_name(b"SELECT $1\0\0\x01\0\0\0\x17");
        let b = proxy_name(b"SELECT $1\0\0\x01\0\0\0\x17");
        let c = proxy_name(b"SELECT $1\0\0\x01\0\0\0\x14");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 37);
        assert!(a.starts_with(PROXY_PREFIX));
    }

    #[test]
    fn register_builds_a_renamed_parse() {
        let mut s = ClientStatements::default();
        let rest = b"SELECT 1\0\0\0";
        let p = s.register(b"s0", rest, Effects::none(), Routing::PRIMARY);
        assert_eq!(p.parse[0], PARSE_TAG);
        let body = &p.parse[5..];
        let (name, after) = split_cstr(body).unwrap();
        assert_eq!(name, &p.proxy[..]);
        assert_eq!(after, rest);
        assert!(s.get(b"s0").is_some());
        assert!(s.forget(b"s0"));
        assert!(!s.forget(b"s0"));
    }
}
