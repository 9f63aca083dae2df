//! Renaming the prepared statement a SQL `EXECUTE name [(args)]` runs: a client's
//! protocol-level statement lives under its proxy-wide name on the servers. Pure text work on a
//! statement the classifier already recognised as one `EXECUTE`.

/// `sql` (a single `EXECUTE name …` statement) with the name replaced by `new_name`; `None`
/// when the text does not start that way or names another statement than `name`.
pub fn execute_target(sql: &str, name: &str, new_name: &str) -> Option<String> {
    let start = skip_blank(sql, 0)?;
    let keyword = sql.get(start..start + 7)?;
    if !keyword.eq_ignore_ascii_case("execute") {
        return None;
    }
    let at = skip_blank(sql, start + 7)?;
    if at == start + 7 {
        return None; // `EXECUTEx`: not the keyword
    }
    let (found, end) = identifier(sql, at)?;
    (found == name).then(|| {
        format!(
            "{}\"{}\"{}",
            &sql[..at],
            new_name.replace('"', "\"\""),
            &sql[end..]
        )
    })
}

/// The position of the first character at or after `at` that is not whitespace or inside a
/// comment.
fn skip_blank(sql: &str, mut at: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    loop {
        match bytes.get(at..)? {
            [b' ' | b'\t' | b'\n' | b'\r' | b'\x0c', ..] => at += 1,
            [b'-', b'-', ..] => {
                at += bytes[at..].iter().position(|&b| b == b'\n')? + 1;
            }
            [b'/', b'*', ..] => {
                // Block comments nest in Postgres.
                let mut depth = 0usize;
                loop {
                    match bytes.get(at..)? {
                        [b'/', b'*', ..] => {
                            depth += 1;
                            at += 2;
                        }
                        [b'*', b'/', ..] => {
                            depth -= 1;
                            at += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        [] => return None,
                        _ => at += 1,
                    }
                }
            }
            _ => return Some(at),
        }
    }
}

/// The identifier at `at` as Postgres resolves it (unquoted: lower-cased) and where it ends.
fn identifier(sql: &str, at: usize) -> Option<(String, usize)> {
    let rest = sql.get(at..)?;
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, c)| *c) == Some('"') {
                    chars.next();
                    out.push('"');
                    continue;
                }
                return Some((out, at + 1 + i + 1));
            }
            out.push(c);
        }
        return None;
    }
    let len = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '$'))
        .map_or(rest.len(), |(i, _)| i);
    (len > 0).then(|| (rest[..len].to_lowercase(), at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_the_executed_statement_only() {
        assert_eq!(
            execute_target("EXECUTE _pg3_0(1, 'a')", "_pg3_0", "pgsc_x").as_deref(),
            Some("EXECUTE \"pgsc_x\"(1, 'a')")
        );
        assert_eq!(
            execute_target(" /* c /* n */ */ execute\n\"S 1\" ;", "S 1", "p").as_deref(),
            Some(" /* c /* n */ */ execute\n\"p\" ;")
        );
        assert_eq!(
            execute_target("-- x\nEXECUTE Stmt", "stmt", "p").as_deref(),
            Some("-- x\nEXECUTE \"p\"")
        );
        assert_eq!(execute_target("EXECUTE other", "stmt", "p"), None);
        assert_eq!(execute_target("EXPLAIN EXECUTE stmt", "stmt", "p"), None);
        assert_eq!(execute_target("EXECUTEstmt", "stmt", "p"), None);
        assert_eq!(execute_target("EXECUTE \"unterminated", "x", "p"), None);
        assert_eq!(execute_target("/* open", "x", "p"), None);
    }
}
