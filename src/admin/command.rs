//! The admin console's commands, parsed from their text: PgBouncer's (`SHOW POOLS`, `PAUSE`,
//! `KILL_CLIENT 42`, `RELOAD`, …) and the sidecar's own (`SHOW TENANTS`, `SHOW REPLICAS`,
//! `SHOW SHARDS`). Pure; case does not matter; one trailing semicolon is allowed.

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Stats,
    StatsTotals,
    StatsAverages,
    Clients,
    Servers,
    Databases,
    Config,
    Lists,
    Version,
    Tenants,
    Replicas,
    Prepared,
    Shards,
    Help,
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// `PAUSE [db]`: wait until the servers are released, then hold new requests.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `RECONNECT [db]`: close server connections as they are released.
    Reconnect(Option<String>),
    /// `KILL [db]`: end its clients and close its server connections.
    Kill(Option<String>),
    /// `KILL_CLIENT id`: end one client (its issued process ID).
    KillClient(i32),
    Reload,
    /// `SHUTDOWN` (now) or `SHUTDOWN WAIT_FOR_CLIENTS` (drain first).
    Shutdown {
        wait_for_clients: bool,
    },
    /// An empty query string.
    Empty,
}

/// Why a command was not understood: the console answers 42601 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown admin command \"{0}\"; SHOW HELP lists the commands")]
    Unknown(String),
    #[error("unknown SHOW item \"{0}\"; SHOW HELP lists them")]
    UnknownShow(String),
    #[error("{0} takes {1}")]
    Arguments(&'static str, &'static str),
}

/// Parses one command.
pub fn parse(text: &str) -> Result<Command, CommandError> {
    let text = text.trim();
    let text = text.strip_suffix(';').unwrap_or(text).trim();
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some((first, rest)) = words.split_first() else {
        return Ok(Command::Empty);
    };
    let keyword = first.to_ascii_uppercase();
    let database = |name: &'static str| match rest {
        [] => Ok(None),
        [db] => Ok(Some(unquote(db))),
        _ => Err(CommandError::Arguments(name, "at most one database name")),
    };
    match keyword.as_str() {
        "SHOW" => match rest {
            [item] => show(item).map(Command::Show),
            _ => Err(CommandError::Arguments("SHOW", "one item, e.g. SHOW POOLS")),
        },
        "PAUSE" => database("PAUSE").map(Command::Pause),
        "RESUME" => database("RESUME").map(Command::Resume),
        "RECONNECT" => database("RECONNECT").map(Command::Reconnect),
        "KILL" => database("KILL").map(Command::Kill),
        "KILL_CLIENT" => match rest {
            [id] => id
                .parse()
                .map(Command::KillClient)
                .map_err(|_| CommandError::Arguments("KILL_CLIENT", "a client id (SHOW CLIENTS)")),
            _ => Err(CommandError::Arguments(
                "KILL_CLIENT",
                "a client id (SHOW CLIENTS)",
            )),
        },
        "RELOAD" if rest.is_empty() => Ok(Command::Reload),
        "RELOAD" => Err(CommandError::Arguments("RELOAD", "no arguments")),
        "SHUTDOWN" => match rest {
            [] => Ok(Command::Shutdown {
                wait_for_clients: false,
            }),
            [w] if w.eq_ignore_ascii_case("WAIT_FOR_CLIENTS") => Ok(Command::Shutdown {
                wait_for_clients: true,
            }),
            _ => Err(CommandError::Arguments(
                "SHUTDOWN",
                "nothing or WAIT_FOR_CLIENTS",
            )),
        },
        _ => Err(CommandError::Unknown(text.chars().take(64).collect())),
    }
}

fn show(item: &str) -> Result<Show, CommandError> {
    Ok(match item.to_ascii_uppercase().as_str() {
        "POOLS" => Show::Pools,
        "STATS" => Show::Stats,
        "STATS_TOTALS" => Show::StatsTotals,
        "STATS_AVERAGES" => Show::StatsAverages,
        "CLIENTS" => Show::Clients,
        "SERVERS" => Show::Servers,
        "DATABASES" => Show::Databases,
        "CONFIG" => Show::Config,
        "LISTS" => Show::Lists,
        "VERSION" => Show::Version,
        "TENANTS" => Show::Tenants,
        "REPLICAS" => Show::Replicas,
        "PREPARED" | "PREPARED_STATEMENTS" => Show::Prepared,
        "SHARDS" => Show::Shards,
        "HELP" => Show::Help,
        _ => return Err(CommandError::UnknownShow(item.chars().take(64).collect())),
    })
}

/// A database name as written: double quotes removed (as an identifier), else as is.
fn unquote(word: &str) -> String {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .map_or_else(|| word.to_owned(), |w| w.replace("\"\"", "\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_as_pgbouncer_spells_them() {
        assert_eq!(parse("SHOW POOLS"), Ok(Command::Show(Show::Pools)));
        assert_eq!(
            parse("show stats_totals;"),
            Ok(Command::Show(Show::StatsTotals))
        );
        assert_eq!(parse("  "), Ok(Command::Empty));
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(parse("pause app"), Ok(Command::Pause(Some("app".into()))));
        assert_eq!(
            parse("RECONNECT \"My\"\"Db\""),
            Ok(Command::Reconnect(Some("My\"Db".into())))
        );
        assert_eq!(
            parse("KILL_CLIENT 4194305"),
            Ok(Command::KillClient(4194305))
        );
        assert_eq!(
            parse("shutdown wait_for_clients"),
            Ok(Command::Shutdown {
                wait_for_clients: true
            })
        );
        assert!(matches!(
            parse("SHOW FOO"),
            Err(CommandError::UnknownShow(_))
        ));
        assert!(matches!(parse("SELECT 1"), Err(CommandError::Unknown(_))));
        assert!(matches!(
            parse("KILL_CLIENT x"),
            Err(CommandError::Arguments(..))
        ));
        assert!(matches!(
            parse("PAUSE a b"),
            Err(CommandError::Arguments(..))
        ));
        assert!(matches!(
            parse("RELOAD now"),
            Err(CommandError::Arguments(..))
        ));
    }
}
