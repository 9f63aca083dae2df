//! The cache key of a request: who asks (database, verified tenant, the token's role and
//! claims), every session setting in force (search_path, TimeZone, DateStyle, … — the client's
//! whole settings), and the request itself (the statement text, parameter types, parameter
//! values with their formats, result formats, and which replies it asks for: a Parse, a
//! Describe). Each part is length-prefixed, so no two different requests share a key. Pure.

use crate::sql::settings::Settings;

/// Who asks, and with which settings.
pub struct Asker<'a> {
    pub database: &'a str,
    pub tenant: Option<&'a str>,
    /// The signed token's role and claims, when they are set.
    pub role: Option<&'a str>,
    pub claims: Option<&'a str>,
    pub settings: &'a Settings,
}

/// A key being built, part by part, in request order.
pub struct KeyBuilder {
    bytes: Vec<u8>,
}

impl KeyBuilder {
    pub fn new(asker: &Asker<'_>) -> KeyBuilder {
        KeyBuilder::resume(&KeyBuilder::asker(asker))
    }

    /// The part of every key that says who asks (a session keeps it while its settings stay).
    pub fn asker(asker: &Asker<'_>) -> Box<[u8]> {
        let mut key = KeyBuilder {
            bytes: Vec::with_capacity(256),
        };
        key.part(b'd', asker.database.as_bytes());
        for (tag, value) in [
            (b't', asker.tenant),
            (b'r', asker.role),
            (b'c', asker.claims),
        ] {
            if let Some(value) = value {
                key.part(tag, value.as_bytes());
            }
        }
        for (name, value) in asker.settings {
            key.part(b's', name.as_bytes());
            key.part(b'v', value.as_bytes());
        }
        key.finish()
    }

    /// A key that starts with an asker's part.
    pub fn resume(asker: &[u8]) -> KeyBuilder {
        let mut bytes = Vec::with_capacity(asker.len() + 128);
        bytes.extend_from_slice(asker);
        KeyBuilder { bytes }
    }

    fn part(&mut self, tag: u8, data: &[u8]) {
        self.bytes.push(tag);
        self.bytes
            .extend_from_slice(&(data.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(data);
    }

    /// A simple Query's text.
    pub fn query(&mut self, text: &[u8]) {
        self.part(b'Q', text);
    }

    /// A Parse in the request: its text and parameter types (the statement's name does not
    /// change the reply), answered by ParseComplete.
    pub fn parse(&mut self, text_and_types: &[u8]) {
        self.part(b'P', text_and_types);
    }

    /// A Bind of the statement with this text and parameter types: its parameter formats and
    /// values and result formats (what follows the names in its body).
    pub fn bind(&mut self, statement: &[u8], parameters: &[u8]) {
        self.part(b'S', statement);
        self.part(b'B', parameters);
    }

    /// A Describe of the portal.
    pub fn describe(&mut self) {
        self.part(b'D', b"");
    }

    /// The Execute (without a row limit) and the Sync.
    pub fn execute(&mut self) {
        self.part(b'E', b"");
    }

    pub fn finish(self) -> Box<[u8]> {
        self.bytes.into_boxed_slice()
    }

    /// The key as built (boxed when an entry is stored under it).
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, settings: &[(&str, &str)], text: &str) -> Box<[u8]> {
        let settings: Settings = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut k = KeyBuilder::new(&Asker {
            database: "app",
            tenant: Some(tenant),
            role: None,
            claims: None,
            settings: &settings,
        });
        k.query(text.as_bytes());
        k.finish()
    }

    #[test]
    fn tenants_settings_and_texts_make_different_keys() {
        let base = key("acme", &[("TimeZone", "UTC")], "SELECT 1");
        assert_eq!(base, key("acme", &[("TimeZone", "UTC")], "SELECT 1"));
        assert_ne!(base, key("globex", &[("TimeZone", "UTC")], "SELECT 1"));
        assert_ne!(base, key("acme", &[("TimeZone", "CET")], "SELECT 1"));
        assert_ne!(base, key("acme", &[("TimeZone", "UTC")], "SELECT 2"));
        // Length prefixes: moving bytes between parts changes the key.
        assert_ne!(key("ab", &[], "c"), key("a", &[], "bc"));
    }
}
