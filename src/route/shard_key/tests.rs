//! Unit tests of shard routing: keys, hints, settings, refusals, search paths.
use super::*;
use crate::route::shard::{KeyType, Placement};
use crate::sql::cache::ClassificationCache;

fn tables() -> Vec<ShardedTable> {
    vec![
        ShardedTable {
            database: "app".into(),
            schema: None,
            table: "orders".into(),
            column: "customer_id".into(),
            key_type: KeyType::Bigint,
            placement: Placement::Hash,
        },
        ShardedTable {
            database: "app".into(),
            schema: Some("public".into()),
            table: "customers".into(),
            column: "id".into(),
            key_type: KeyType::Bigint,
            placement: Placement::Hash,
        },
    ]
}

fn route_of(sql: &str) -> ShardRoute {
    let cache = ClassificationCache::new(1 << 20, Default::default());
    let classified = cache.classify(sql.as_bytes());
    let statement = Statement {
        sql: sql.as_bytes(),
        classified: &classified,
        bind: None,
        search_path: None,
    };
    route(&statement, &tables(), 3, None)
}

fn shard_number(key: i64) -> usize {
    crate::route::shard::hash_shard(Key::Int(key), 3)
}

/// Every one of the 3 shards.
fn all() -> ShardRoute {
    ShardRoute::Shards(vec![0, 1, 2])
}

fn shard(key: i64) -> ShardRoute {
    ShardRoute::Shard(crate::route::shard::hash_shard(Key::Int(key), 3))
}

fn refused_with(sql: &str, needle: &str) {
    match route_of(sql) {
        ShardRoute::Refused(_, message) => {
            assert!(message.contains(needle), "{sql}: {message}")
        }
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn keys_from_where_and_insert() {
    assert_eq!(
        route_of("SELECT * FROM orders WHERE customer_id = 42"),
        shard(42)
    );
    assert_eq!(
        route_of("SELECT * FROM orders o WHERE o.status = 'new' AND o.customer_id = 7"),
        shard(7)
    );
    assert_eq!(
        route_of("UPDATE orders SET status = 'x' WHERE customer_id = 9"),
        shard(9)
    );
    assert_eq!(
        route_of("DELETE FROM public.orders WHERE customer_id = 3"),
        shard(3)
    );
    assert_eq!(
        route_of("INSERT INTO orders (customer_id, note) VALUES (5, 'a'), (5, 'b')"),
        shard(5)
    );
    assert_eq!(route_of("SELECT 1"), ShardRoute::Any);
    assert_eq!(route_of("SELECT * FROM countries"), ShardRoute::Any);
}

/// A Bind body with one parameter in `format`.
fn bind_body(format: i16, value: &[u8]) -> Vec<u8> {
    let mut body = b"\0\0".to_vec();
    body.extend(1i16.to_be_bytes());
    body.extend(format.to_be_bytes());
    body.extend(1i16.to_be_bytes());
    body.extend(i32::try_from(value.len()).unwrap().to_be_bytes());
    body.extend(value);
    body.extend(0i16.to_be_bytes());
    body
}

fn route_bound(sql: &str, format: i16, value: &[u8]) -> ShardRoute {
    let cache = ClassificationCache::new(1 << 20, Default::default());
    let classified = cache.classify(sql.as_bytes());
    let body = bind_body(format, value);
    let bind = Bind::parse(&body).unwrap();
    let statement = Statement {
        sql: sql.as_bytes(),
        classified: &classified,
        bind: Some(&bind),
        search_path: None,
    };
    route(&statement, &tables(), 3, None)
}

/// Two keys on the same shard and one on another.
fn keys() -> (i64, i64, i64) {
    let a = 1;
    let same = (2..100).find(|&k| shard(k) == shard(a)).unwrap();
    let other = (2..100).find(|&k| shard(k) != shard(a)).unwrap();
    (a, same, other)
}

#[test]
fn keys_from_in_lists_and_arrays() {
    let (a, same, other) = keys();
    assert_eq!(
        route_of(&format!(
            "SELECT * FROM orders WHERE customer_id IN ({a}, {same}, NULL)"
        )),
        shard(a)
    );
    assert_eq!(
        route_of(&format!(
            "SELECT * FROM orders WHERE customer_id = ANY('{{{a},{same}}}'::bigint[])"
        )),
        shard(a)
    );
    assert_eq!(
        route_of(&format!(
            "DELETE FROM orders WHERE customer_id = ANY(ARRAY[{a}, {same}])"
        )),
        shard(a)
    );
    // A read of keys on two shards reads those two.
    let mut both = vec![shard_number(a), shard_number(other)];
    both.sort_unstable();
    assert_eq!(
        route_of(&format!(
            "SELECT * FROM orders WHERE customer_id IN ({a}, {other})"
        )),
        ShardRoute::Shards(both)
    );
    let both_writes = match route_of(&format!(
        "SELECT * FROM orders WHERE customer_id IN ({a}, {other})"
    )) {
        ShardRoute::Shards(on) => on,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        route_of(&format!(
            "DELETE FROM orders WHERE customer_id IN ({a}, {other})"
        )),
        ShardRoute::Writes(both_writes)
    );
    refused_with(
        "SELECT * FROM orders WHERE customer_id = ANY('{1,x}')",
        "invalid input syntax",
    );
    refused_with(
        "SELECT * FROM orders WHERE customer_id = ANY('{{1},{2}}')",
        "one-dimensional",
    );
    assert_eq!(
        route_of("SELECT * FROM orders WHERE customer_id NOT IN (1)"),
        all()
    );
    assert_eq!(
        route_of("DELETE FROM orders WHERE customer_id NOT IN (1)"),
        ShardRoute::Writes(vec![0, 1, 2])
    );
    // `= ANY($1)` with the array in text and in binary format.
    let sql = "SELECT * FROM orders WHERE customer_id = ANY($1)";
    assert_eq!(
        route_bound(sql, 0, format!("{{{a}, {same}}}").as_bytes()),
        shard(a)
    );
    let mut binary = Vec::new();
    for v in [1i32, 0, 20, 2, 1] {
        binary.extend(v.to_be_bytes());
    }
    for k in [a, same] {
        binary.extend(8i32.to_be_bytes());
        binary.extend(k.to_be_bytes());
    }
    assert_eq!(route_bound(sql, 1, &binary), shard(a));
    binary.truncate(binary.len() - 12);
    binary[15] = 1;
    binary.extend(8i32.to_be_bytes());
    binary.extend(other.to_be_bytes());
    // Sizes now say 2 elements but one is cut: malformed, or on another shard.
    assert!(matches!(
        route_bound(sql, 1, &binary),
        ShardRoute::Refused(..)
    ));
    assert!(matches!(
        route_bound(sql, 0, b"{1,2"),
        ShardRoute::Refused(s, _) if s == SqlState::INVALID_TEXT_REPRESENTATION
    ));
}

#[test]
fn on_conflict_and_co_located_joins() {
    let (a, _, other) = keys();
    assert_eq!(
        route_of(&format!(
            "INSERT INTO orders (customer_id, note) VALUES ({a}, 'x') \
             ON CONFLICT (customer_id) DO UPDATE SET note = EXCLUDED.note"
        )),
        shard(a)
    );
    refused_with(
        "INSERT INTO orders (customer_id) VALUES (1) ON CONFLICT (id) DO UPDATE SET customer_id = 2",
        "changes the shard key",
    );
    // orders.customer_id and customers.id are co-located (both bigint, hash).
    assert_eq!(
        route_of(&format!(
            "SELECT * FROM orders o JOIN customers c ON o.customer_id = c.id WHERE c.id = {a}"
        )),
        shard(a)
    );
    assert_eq!(
        route_of(&format!(
            "SELECT * FROM orders o LEFT JOIN public.customers c ON c.id = o.customer_id \
             WHERE o.customer_id = {a}"
        )),
        shard(a)
    );
    assert_eq!(
        route_of(&format!(
            "SELECT * FROM orders o, customers c WHERE o.customer_id = c.id AND o.customer_id = {a}"
        )),
        shard(a)
    );
    // Joined on another column: customers needs its own key.
    refused_with(
        &format!(
            "SELECT * FROM orders o JOIN customers c ON o.note = c.id WHERE o.customer_id = {a}"
        ),
        "\"public.customers\" is sharded",
    );
    refused_with(
        &format!(
            "SELECT * FROM orders o JOIN customers c ON o.customer_id = c.id \
             WHERE o.customer_id = {a} AND c.id = {other}"
        ),
        "different shards",
    );
}

#[test]
fn unqualified_names_follow_the_clients_search_path() {
    let cache = ClassificationCache::new(1 << 20, Default::default());
    let sql = "SELECT * FROM customers";
    let classified = cache.classify(sql.as_bytes());
    let of = |path: Option<&[String]>| {
        let statement = Statement {
            sql: sql.as_bytes(),
            classified: &classified,
            bind: None,
            search_path: path,
        };
        route(&statement, &tables(), 3, None)
    };
    // public.customers is sharded; with a search path without public, `customers` is
    // another table (unsharded: any shard reads it).
    assert_eq!(of(Some(&["tenant_a".to_owned()])), ShardRoute::Any);
    let both = ["tenant_a".to_owned(), "public".to_owned()];
    assert_eq!(of(Some(&both)), all());
    assert_eq!(of(None), all(), "the server default");
}

#[test]
fn hints_win() {
    assert_eq!(
        route_of("/* pgsidecar: shard=2 */ SELECT * FROM orders"),
        ShardRoute::Shard(2)
    );
    assert_eq!(
        route_of("SELECT * FROM orders /* pgsidecar: shard_key=42 */"),
        shard(42)
    );
    refused_with("/* pgsidecar: shard=3 */ SELECT 1", "does not exist");
    // Not a hint outside a comment.
    assert_eq!(route_of("SELECT 'pgsidecar: shard=1' FROM orders"), all());
}

#[test]
fn shard_settings_are_recognised() {
    let cache = ClassificationCache::new(1 << 20, Default::default());
    let of = |sql: &str| shard_setting(sql.as_bytes(), &cache.classify(sql.as_bytes()));
    assert_eq!(
        of("SET pgsidecar.shard = 2"),
        Some(Ok(ShardSetting {
            hint: Some(ShardHint::Shard(2)),
            local: false
        }))
    );
    assert_eq!(
        of("SET LOCAL pgsidecar.shard_key = '42'"),
        Some(Ok(ShardSetting {
            hint: Some(ShardHint::Key("42".into())),
            local: true
        }))
    );
    assert_eq!(
        of("RESET pgsidecar.shard"),
        Some(Ok(ShardSetting {
            hint: None,
            local: false
        }))
    );
    assert!(matches!(of("SET pgsidecar.shard = 'x'"), Some(Err(_))));
    assert_eq!(of("SET work_mem = '4MB'"), None);
    let cached = cache.classify(b"SELECT * FROM orders");
    let statement = Statement {
        sql: b"SELECT * FROM orders",
        classified: &cached,
        bind: None,
        search_path: None,
    };
    assert_eq!(
        route(&statement, &tables(), 3, Some(&ShardHint::Shard(1))),
        ShardRoute::Shard(1)
    );
    assert_eq!(
        route(&statement, &tables(), 3, Some(&ShardHint::Key("42".into()))),
        shard(42)
    );
}

#[test]
fn what_cannot_be_placed_is_refused_with_what_to_add() {
    // Reads without a key run on every shard; writes are refused.
    assert_eq!(route_of("SELECT * FROM orders"), all());
    assert_eq!(
        route_of("SELECT * FROM orders WHERE customer_id = 1 OR customer_id = 2"),
        all()
    );
    // Writes without a key run on every shard (all or none); INSERTs must give their key.
    assert_eq!(
        route_of("UPDATE orders SET note = 'x'"),
        ShardRoute::Writes(vec![0, 1, 2])
    );
    refused_with(
        "INSERT INTO orders (note) VALUES ('x')",
        "add \"customer_id = <value>\"",
    );
    refused_with(
        "SELECT * FROM orders WHERE customer_id = 'x'",
        "invalid input syntax",
    );
    // Rows on several shards: split by the rows' shards (all or none).
    assert_eq!(
        route_of("INSERT INTO orders (customer_id) VALUES (1), (2), (3), (4)"),
        ShardRoute::Writes(vec![0, 1, 2])
    );
    // Tables that are not sharded are on every shard: writes and DDL go to them all.
    assert_eq!(
        route_of("INSERT INTO countries (code) VALUES ('fr')"),
        ShardRoute::Writes(vec![0, 1, 2])
    );
    assert_eq!(
        route_of("CREATE TABLE t (a int)"),
        ShardRoute::Writes(vec![0, 1, 2])
    );
    refused_with(
        "UPDATE orders SET customer_id = 8 WHERE customer_id = 7",
        "changes the shard key",
    );
    let two_shards = (0..20)
        .map(|k| (k, shard(k)))
        .find(|(_, s)| *s != shard(0))
        .map(|(k, _)| k)
        .unwrap();
    refused_with(
        &format!("SELECT * FROM orders, customers WHERE orders.customer_id = 0 AND customers.id = {two_shards}"),
        "different shards",
    );
    // `= NULL` is never true: no key there.
    refused_with(
        "INSERT INTO orders (customer_id) SELECT 1",
        "add \"customer_id",
    );
}

#[test]
fn insert_rows_give_each_rows_shard() {
    let cache = ClassificationCache::new(1 << 20, Default::default());
    let sql = "INSERT INTO orders (customer_id, note) VALUES (1, 'a'), (2, 'b'), (3, 'c')";
    let classified = cache.classify(sql.as_bytes());
    let statement = Statement {
        sql: sql.as_bytes(),
        classified: &classified,
        bind: None,
        search_path: None,
    };
    assert_eq!(
        insert_rows(&statement, &tables(), 3),
        Some(vec![shard_number(1), shard_number(2), shard_number(3)])
    );
    // Without columns the key is unknown: never sent to every shard.
    refused_with(
        "INSERT INTO orders VALUES (1, 'a'), (2, 'b')",
        "customer_id",
    );
}

#[test]
fn copy_is_placed_by_hint_only() {
    assert_eq!(
        route_of("COPY orders FROM STDIN"),
        ShardRoute::Writes(vec![0, 1, 2])
    );
    refused_with("COPY orders TO STDOUT", "shard=N");
    refused_with("COPY countries FROM STDIN", "shard=N");
    assert_eq!(route_of("COPY countries TO STDOUT"), ShardRoute::Any);
    assert_eq!(
        route_of("/* pgsidecar: shard=1 */ COPY orders FROM STDIN"),
        ShardRoute::Shard(1)
    );
}
