use super::*;
use crate::merge::aggregate::Func;

fn shard_sql(sql: &str) -> String {
    plan(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).sql
}

#[test]
fn plain_reads_keep_their_text() {
    let sql = "SELECT id, note FROM orders WHERE note <> 'x'";
    let p = plan(sql).unwrap();
    assert_eq!(p.sql, sql);
    assert_eq!(p.spec.outputs, Outputs::Leading { hidden: 0 });
    assert!(p.spec.order.is_empty());
}

#[test]
fn order_and_limit_are_pushed_down() {
    let p = plan("SELECT id FROM orders ORDER BY note DESC, 1 LIMIT 10 OFFSET 5").unwrap();
    assert_eq!(
        p.sql,
        "SELECT id, note AS pgsc_sort_0 FROM orders ORDER BY note DESC, 1 LIMIT 15"
    );
    assert_eq!(p.spec.outputs, Outputs::Leading { hidden: 1 });
    assert_eq!(
        p.spec.order,
        vec![
            SortKey {
                item: Item::Named("pgsc_sort_0".into()),
                descending: true,
                nulls_first: true
            },
            SortKey {
                item: Item::Shard(0),
                descending: false,
                nulls_first: false
            },
        ]
    );
    assert_eq!((p.spec.limit, p.spec.offset), (Some(10), 5));
    assert_eq!(
        shard_sql("SELECT id AS k FROM orders ORDER BY k LIMIT 3"),
        "SELECT id AS k FROM orders ORDER BY k LIMIT 3"
    );
    assert_eq!(
        plan("SELECT * FROM orders ORDER BY Note")
            .unwrap()
            .spec
            .order[0]
            .item,
        Item::Named("note".into())
    );
}

#[test]
fn aggregates_become_partials() {
    let p = plan(
        "SELECT region, avg(amount), count(*) AS n FROM orders GROUP BY region HAVING count(*) > 2 ORDER BY 2 DESC LIMIT 5",
    )
    .unwrap();
    assert_eq!(
        p.sql,
        "SELECT region, sum(amount), count(amount), count(*) FROM orders GROUP BY region"
    );
    let g = p.spec.grouping.unwrap();
    assert_eq!(g.keys, vec![0]);
    assert_eq!(g.aggs[0].func, Func::Avg);
    assert_eq!((g.aggs[0].column, g.aggs[0].count_column), (1, Some(2)));
    assert_eq!(g.aggs[1].name, "n");
    assert_eq!(
        p.spec.outputs,
        Outputs::Items(vec![Item::Shard(0), Item::Agg(0), Item::Agg(1)])
    );
    assert!(matches!(
        g.having,
        Some(Having::Cmp(Operand::Item(Item::Agg(1)), CmpOp::Gt, _))
    ));
    assert_eq!(p.spec.order[0].item, Item::Agg(0));
    assert_eq!(p.spec.limit, Some(5));
}

#[test]
fn count_distinct_groups_by_its_value() {
    let p = plan("SELECT count(DISTINCT customer), sum(amount) FROM orders").unwrap();
    assert_eq!(
        p.sql,
        "SELECT customer, sum(amount) FROM orders GROUP BY customer"
    );
    let g = p.spec.grouping.unwrap();
    assert_eq!(g.distinct, Some(0));
    assert!(g.keys.is_empty());
    // Grouped by key, with the key not selected and ORDER BY an aggregate not selected.
    let p = plan("SELECT count(*) FROM orders GROUP BY 1 + 1, region ORDER BY max(amount)");
    assert!(p.is_ok(), "{p:?}");
    let p = plan("SELECT count(*) FROM orders GROUP BY region ORDER BY max(amount)").unwrap();
    assert_eq!(
        p.sql,
        "SELECT count(*), region, max(amount) FROM orders GROUP BY region"
    );
}

#[test]
fn what_cannot_be_merged_is_refused_with_a_reason() {
    for (sql, says) in [
        (
            "SELECT sum(amount) / count(*) FROM orders",
            "compute the rest",
        ),
        ("SELECT string_agg(note, ',') FROM orders", "cannot merge"),
        ("SELECT id, row_number() OVER () FROM orders", "window"),
        (
            "SELECT * FROM orders WHERE id IN (SELECT id FROM other)",
            "subqueries",
        ),
        (
            "SELECT region, note, count(*) FROM orders GROUP BY region",
            "neither grouped",
        ),
        ("SELECT * FROM orders LIMIT $1", "numbers"),
        ("SELECT id FROM orders FOR UPDATE", "lock"),
        ("SELECT id FROM a UNION SELECT id FROM b", "UNION"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
        ("SELECT DISTINCT ON (id) id FROM orders", "DISTINCT ON"),
        (
            "SELECT sum(DISTINCT amount) FROM orders",
            "only count(DISTINCT",
        ),
        (
            "SELECT note FROM orders ORDER BY note COLLATE \"de_DE\"",
            "COLLATE",
        ),
        (
            "SELECT count(*) FROM orders HAVING count(*) + 1 > 2",
            "HAVING",
        ),
        ("SELECT * FROM generate_series(1, 3)", "only tables"),
    ] {
        let e = plan(sql).expect_err(sql);
        assert!(e.contains(says), "{sql}: {e}");
    }
}
