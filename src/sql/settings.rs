//! Client settings as SQL: the statements that move a server connection from the settings it
//! has to the ones a client wants. Pure.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use super::quote::{quote_ident, quote_literal};

/// Settings by name (as a client's startup packet and SET statements give them).
pub type Settings = BTreeMap<String, String>;

/// Settings shared between a session and the server connections it leaves them on: a clone is
/// a reference count, and two that differ compare as one integer (a digest kept with them) —
/// choosing among idle connections compares them many times per checkout.
#[derive(Debug, Clone)]
pub struct Shared {
    map: Arc<Settings>,
    digest: u64,
}

impl Shared {
    pub fn new(map: Settings) -> Shared {
        // Fixed keys: equal settings get equal digests in every session. A collision costs
        // only the full comparison below, never a wrong answer.
        let mut hasher = std::hash::DefaultHasher::new();
        map.hash(&mut hasher);
        let digest = hasher.finish();
        Shared {
            map: interned(map, digest),
            digest,
        }
    }
}

/// Equal settings of different sessions share one allocation, so comparing them (at every
/// checkout) compares two pointers, not two maps. Entries whose settings are gone are swept
/// when the table has doubled since the last sweep; a digest collision is simply not shared.
fn interned(map: Settings, digest: u64) -> Arc<Settings> {
    static TABLE: std::sync::LazyLock<std::sync::Mutex<Interned>> =
        std::sync::LazyLock::new(Default::default);
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = table.entries.get(&digest).and_then(Weak::upgrade) {
        return match *existing == map {
            true => existing,
            false => Arc::new(map),
        };
    }
    if table.entries.len() >= table.sweep_at {
        table
            .entries
            .retain(|_, settings| settings.strong_count() > 0);
        table.sweep_at = (2 * table.entries.len()).max(INTERN_SWEEP_AT_LEAST);
    }
    let map = Arc::new(map);
    table.entries.insert(digest, Arc::downgrade(&map));
    map
}

/// The settings sessions use now, by digest.
struct Interned {
    entries: HashMap<u64, Weak<Settings>>,
    /// The size at which dropped settings are swept out.
    sweep_at: usize,
}

impl Default for Interned {
    fn default() -> Interned {
        Interned {
            entries: HashMap::new(),
            sweep_at: INTERN_SWEEP_AT_LEAST,
        }
    }
}

/// The interning table is never swept below this size.
const INTERN_SWEEP_AT_LEAST: usize = 1024;

impl Default for Shared {
    fn default() -> Shared {
        Shared::new(Settings::new())
    }
}

impl std::ops::Deref for Shared {
    type Target = Settings;
    fn deref(&self) -> &Settings {
        &self.map
    }
}

impl PartialEq for Shared {
    fn eq(&self, other: &Shared) -> bool {
        self.digest == other.digest && (Arc::ptr_eq(&self.map, &other.map) || self.map == other.map)
    }
}

impl Eq for Shared {}

/// The schemas a `search_path` value names, in order: identifiers folded to lower case unless
/// double-quoted, `$user` as `user` (the role the server sessions log in as).
pub fn search_path_schemas(value: &str, user: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return out;
        }
        let (schema, after) = match rest.strip_prefix('"') {
            Some(quoted) => {
                // `""` inside quotes is one `"`.
                let mut name = String::new();
                let mut chars = quoted.char_indices().peekable();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    if c == '"' {
                        if chars.peek().is_some_and(|(_, n)| *n == '"') {
                            chars.next();
                            name.push('"');
                            continue;
                        }
                        end = i + 1;
                        break;
                    }
                    name.push(c);
                }
                (name, &quoted[end..])
            }
            None => {
                let end = rest.find(',').unwrap_or(rest.len());
                (rest[..end].trim().to_lowercase(), &rest[end..])
            }
        };
        out.push(if schema == "$user" {
            user.to_owned()
        } else {
            schema
        });
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Settings whose value is a list of identifiers (`GUC_LIST_QUOTE`): `SET name TO 'a, b'` would
/// make one quoted identifier of the string, so these go through `set_config`.
const LIST_QUOTE_SETTINGS: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

/// The settings to set (name, value) and the names to reset that move a server connection
/// from the settings it has to `wanted`.
pub fn diff<'h, 'w>(
    have: &'h Settings,
    wanted: &'w Settings,
) -> (Vec<(&'w str, &'w str)>, Vec<&'h str>) {
    let sets = wanted
        .iter()
        .filter(|(name, value)| have.get(*name) != Some(*value))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let resets = have
        .keys()
        .filter(|name| !wanted.contains_key(*name))
        .map(String::as_str)
        .collect();
    (sets, resets)
}

/// The SQL that moves a server connection from the settings it has to the client's `wanted`
/// settings, or `None` when nothing differs. Each value is one string, as in the startup
/// packet: `SET name TO 'value'` (a utility statement, cheaper for the server than a SELECT),
/// or `set_config` for list-valued settings.
pub fn sql(have: &Settings, wanted: &Settings) -> Option<String> {
    let (sets, resets) = diff(have, wanted);
    let mut sql = String::new();
    for (name, value) in sets {
        if LIST_QUOTE_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
            sql.push_str(&format!(
                "SELECT pg_catalog.set_config({}, {}, false);",
                quote_literal(name),
                quote_literal(value)
            ));
        } else {
            sql.push_str(&format!(
                "SET {} TO {};",
                quote_ident(name),
                quote_literal(value)
            ));
        }
    }
    for name in resets {
        sql.push_str(&format!("RESET {};", quote_ident(name)));
    }
    (!sql.is_empty()).then_some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_settings_share_one_allocation() {
        let map = |v: &str| Settings::from([("application_name".to_owned(), v.to_owned())]);
        let (a, b, c) = (
            Shared::new(map("x")),
            Shared::new(map("x")),
            Shared::new(map("y")),
        );
        assert!(Arc::ptr_eq(&a.map, &b.map) && a == b);
        assert!(!Arc::ptr_eq(&a.map, &c.map) && a != c);
        // Once no session holds them, the next equal settings get a new allocation.
        drop((a, b));
        let again = Shared::new(map("x"));
        assert_eq!(*again, map("x"));
    }

    #[test]
    fn search_path_values() {
        assert_eq!(
            search_path_schemas(r#""$user", Public ,"My""Schema", x"#, "app"),
            vec!["app", "public", "My\"Schema", "x"]
        );
        assert!(search_path_schemas("", "app").is_empty());
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sql_diffs() {
        let have = settings(&[("a", "1"), ("b", "2")]);
        assert_eq!(sql(&have, &settings(&[("a", "1"), ("b", "2")])), None);
        assert_eq!(
            sql(&have, &settings(&[("a", "1"), ("c", "x'y")])).unwrap(),
            "SET \"c\" TO E'x''y';RESET \"b\";"
        );
        assert_eq!(
            sql(
                &have,
                &settings(&[("a", "1"), ("b", "2"), ("search_path", "a, b")])
            )
            .unwrap(),
            "SELECT pg_catalog.set_config(E'search_path', E'a, b', false);"
        );
    }
}
