//! The fingerprint scanner, the classifier, the tenant guard and the small SQL readers.
//! Asserts: no panic; literal and statement ranges inside the text; where sqlparser parses the
//! text, the scanner finds as many statements as it does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsidecar::sql::classify::{classify, Classification, Options};
use pgsidecar::sql::fingerprint::scan;

fuzz_target!(|data: &[u8]| {
    let scanned = scan(data);
    for l in &scanned.literals {
        assert!(l.span.start <= l.span.end && l.span.end <= data.len());
        let _ = l.value(data);
    }
    for r in &scanned.statements {
        assert!(r.start <= r.end && r.end <= data.len());
    }
    let options = Options::default();
    let classification = classify(data, &scanned, &options);
    // Where sqlparser parsed the text (the classifier's statements are its statements), the
    // scanner finds as many. sqlparser takes a vertical tab for whitespace (Postgres 16 does;
    // 15 does not, and the scanner keeps such a statement, the cautious side): not compared.
    if let Classification::Parsed(statements) = &classification {
        if !data.contains(&b'\x0b') {
            assert_eq!(
                scanned.statements.len(),
                statements.len(),
                "scanner and sqlparser disagree on statements in {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = pgsidecar::sql::signal::signal_call(text);
    let _ = pgsidecar::sql::rename::execute_target(text, "s", "pgsc_x");
    let classified = pgsidecar::sql::cache::Classified {
        scan: scanned,
        classification: std::sync::Arc::new(classification),
        hit: false,
    };
    let reserved =
        std::collections::BTreeMap::from([("pgsidecar.tenant".to_owned(), "v1:x".to_owned())]);
    let _ = pgsidecar::session::guard::check(data, &classified, &reserved);
});
