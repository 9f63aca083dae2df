//! The plan for one client request (a simple Query, or extended messages up to their Sync or
//! Flush): answer it in the sidecar, send it to one target, continue where the client is
//! pinned, or wait for the attached server connection to finish. Pure: the relay gathers the
//! request's facts from its one classification and a view of the session, and acts on the plan.

use super::replica::{RoutePreference, Routing, Target, Upstream};
use crate::sql::cache::Classified;
use crate::sql::class::{Classification, Isolation, Kind, SettingName};

/// The session setting by which a client states where its reads go; never sent upstream.
pub const ROUTE_SETTING: &str = "pgsidecar.route";

/// What a request of one simple-Query statement is, where that matters to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sole {
    /// BEGIN / START TRANSACTION with no access mode and not SERIALIZABLE: where it runs is
    /// decided by the statement after it.
    BareBegin,
    Commit,
    Rollback,
    /// `SET TRANSACTION READ ONLY` (not SERIALIZABLE, which a hot standby refuses).
    SetReadOnly,
    /// `SET [LOCAL] pgsidecar.route = value` (`Some(value)`) or `RESET pgsidecar.route`.
    RouteSetting(Option<String>),
    /// Anything else, or more than one statement, or not a simple Query.
    Other,
}

impl Sole {
    /// What a simple Query's text (classified) is.
    pub fn of(sql: &[u8], classified: &Classified) -> Sole {
        let Classification::Parsed(statements) = classified.classification.as_ref() else {
            return Sole::Other;
        };
        let [statement] = statements.as_slice() else {
            return Sole::Other;
        };
        match &statement.kind {
            Kind::Begin {
                read_only: None,
                isolation,
            } if *isolation != Some(Isolation::Serializable) => Sole::BareBegin,
            Kind::Commit => Sole::Commit,
            Kind::Rollback => Sole::Rollback,
            Kind::SetTransaction {
                read_only: Some(true),
                isolation,
            } if *isolation != Some(Isolation::Serializable) => Sole::SetReadOnly,
            Kind::Set | Kind::SetLocal | Kind::Reset => {
                let [change] = statement.settings.as_slice() else {
                    return Sole::Other;
                };
                let named = matches!(&change.name,
                    SettingName::Fixed(n) if n.eq_ignore_ascii_case(ROUTE_SETTING));
                if !named {
                    return Sole::Other;
                }
                Sole::RouteSetting(
                    change
                        .value
                        .as_ref()
                        .map(|value| classified.setting_value(sql, value)),
                )
            }
            _ => Sole::Other,
        }
    }
}

/// What the plan needs to know of a request, gathered once from its classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// How its statements bear on primary/replica routing.
    pub routing: Routing,
    pub sole: Sole,
    /// A simple Query, or extended messages through a Sync: the whole request is known (one
    /// ending in a Flush may continue).
    pub synced: bool,
}

/// Where the client's transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPin {
    /// Outside a transaction, no server connection attached.
    None,
    /// The sidecar answered a bare BEGIN; it goes upstream with the next statement.
    HeldBegin,
    /// A server connection of this upstream is attached outside a transaction (replies to
    /// earlier requests may still be coming on it).
    Attached(Upstream),
    /// Inside a transaction (or an open extended batch, or COPY) on this upstream: everything
    /// continues there.
    Pinned(Upstream),
}

/// The session as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    pub pin: TxPin,
    /// The client's `SET pgsidecar.route`.
    pub preference: RoutePreference,
    /// The database routes between a primary and replicas (transaction mode with replicas).
    /// Without routing every request runs on the primary as it is.
    pub routes: bool,
    /// A server connection the client moved on from is still answering requests before this
    /// one.
    pub earlier: bool,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Continues on the server connection the client is pinned to.
    Continue,
    /// Answered by the sidecar, in its turn, with no server.
    Answer(Local),
    /// Runs on this target (a server connection is attached first when none is).
    Send(Target),
    /// Runs on this target on a server connection of its own while the attached one (outside
    /// a transaction) finishes the replies it owes; those come first.
    MoveOn(Target),
    /// Must wait until the attached server connection has answered what is in flight, then
    /// be planned again.
    Wait,
}

/// A reply the sidecar gives itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// A bare BEGIN outside a transaction: "BEGIN", in transaction; the BEGIN is held.
    HoldBegin,
    /// COMMIT or ROLLBACK of a held BEGIN with nothing in it: this tag, idle.
    EndHeldBegin(&'static str),
    /// `SET` / `RESET pgsidecar.route`: the new preference and the command tag.
    Route(RoutePreference, &'static str),
    /// A value `pgsidecar.route` does not take.
    BadRoute(String),
}

/// The plan for `request` in `session`.
pub fn plan(request: &RequestFacts, session: &SessionView) -> Plan {
    if let TxPin::Pinned(_) = session.pin {
        return Plan::Continue;
    }
    if !session.routes {
        return Plan::Send(Target::Primary);
    }
    match (&request.sole, session.pin) {
        // Answered in its turn, after the replies in flight.
        (Sole::RouteSetting(value), _) => return Plan::Answer(route_setting(value.as_deref())),
        (Sole::BareBegin, TxPin::None) => return Plan::Answer(Local::HoldBegin),
        (Sole::Commit, TxPin::HeldBegin) => return Plan::Answer(Local::EndHeldBegin("COMMIT")),
        (Sole::Rollback, TxPin::HeldBegin) => return Plan::Answer(Local::EndHeldBegin("ROLLBACK")),
        _ => {}
    }
    let target = match session.pin {
        // The statement after a held BEGIN decides where the transaction runs.
        TxPin::HeldBegin if request.sole == Sole::SetReadOnly => Target::Replica,
        TxPin::HeldBegin => Target::Primary,
        _ => request.routing.target(session.preference),
    };
    match (session.pin, target) {
        // Behind a replica's replies: a whole request moves on to the primary at once; one
        // that may continue (ended by a Flush), or a second move, waits for the replica.
        (TxPin::Attached(Upstream::Replica(_)), Target::Primary)
            if request.synced && !session.earlier =>
        {
            Plan::MoveOn(Target::Primary)
        }
        (TxPin::Attached(Upstream::Replica(_)), Target::Primary) => Plan::Wait,
        // Reads behind requests in flight on the primary stay there, in order.
        (TxPin::Attached(Upstream::Primary), _) => Plan::Send(Target::Primary),
        _ => Plan::Send(target),
    }
}

/// The answer to `SET pgsidecar.route = value` (`None`: RESET).
fn route_setting(value: Option<&str>) -> Local {
    match value {
        None => Local::Route(RoutePreference::Auto, "RESET"),
        Some(value) => match RoutePreference::parse(value) {
            Some(preference) => Local::Route(preference, "SET"),
            None => Local::BadRoute(value.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::replica::RequestKind;
    use crate::sql::cache::ClassificationCache;

    fn facts(sql: &str) -> RequestFacts {
        let cache = ClassificationCache::new(1 << 20, Default::default());
        let classified = cache.classify(sql.as_bytes());
        RequestFacts {
            routing: Routing::of(&classified),
            sole: Sole::of(sql.as_bytes(), &classified),
            synced: true,
        }
    }

    fn session(pin: TxPin) -> SessionView {
        SessionView {
            pin,
            preference: RoutePreference::Auto,
            routes: true,
            earlier: false,
        }
    }

    const PRIMARY: TxPin = TxPin::Attached(Upstream::Primary);
    const REPLICA: TxPin = TxPin::Attached(Upstream::Replica(1));

    #[test]
    fn sole_statements() {
        let cases: &[(&str, Sole)] = &[
            ("BEGIN", Sole::BareBegin),
            (
                "start transaction isolation level repeatable read",
                Sole::BareBegin,
            ),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE", Sole::Other),
            ("BEGIN READ ONLY", Sole::Other),
            ("COMMIT", Sole::Commit),
            ("ROLLBACK", Sole::Rollback),
            ("SET TRANSACTION READ ONLY", Sole::SetReadOnly),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
                Sole::Other,
            ),
            ("SET TRANSACTION READ WRITE", Sole::Other),
            // The session default is not this transaction's mode.
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                Sole::Other,
            ),
            (
                "SET pgsidecar.route = replica",
                Sole::RouteSetting(Some("replica".into())),
            ),
            (
                "set local PGSIDECAR.ROUTE to 'primary'",
                Sole::RouteSetting(Some("primary".into())),
            ),
            ("RESET pgsidecar.route", Sole::RouteSetting(None)),
            ("SET pgsidecar.tenant = 'x'", Sole::Other),
            ("BEGIN; SELECT 1", Sole::Other),
            ("SELECT 1", Sole::Other),
        ];
        for (sql, sole) in cases {
            assert_eq!(&facts(sql).sole, sole, "{sql}");
        }
    }

    #[test]
    fn plans() {
        use Plan::*;
        let replica = Target::Replica;
        let primary = Target::Primary;
        let cases: &[(&str, TxPin, Plan)] = &[
            ("SELECT 1", TxPin::None, Send(replica)),
            ("UPDATE t SET a = 1", TxPin::None, Send(primary)),
            (
                "/* pgsidecar: route=primary */ SELECT 1",
                TxPin::None,
                Send(primary),
            ),
            // Pinned: whatever it is, it continues.
            ("SELECT 1", TxPin::Pinned(Upstream::Replica(0)), Continue),
            (
                "SET pgsidecar.route = replica",
                TxPin::Pinned(Upstream::Primary),
                Continue,
            ),
            // Behind the primary's replies in flight, reads stay on the primary.
            ("SELECT 1", PRIMARY, Send(primary)),
            // A write behind a replica's replies moves on to the primary, a read joins them.
            ("UPDATE t SET a = 1", REPLICA, MoveOn(primary)),
            ("SELECT 1", REPLICA, Send(replica)),
            // Held BEGIN.
            ("BEGIN", TxPin::None, Answer(Local::HoldBegin)),
            ("BEGIN", PRIMARY, Send(primary)),
            ("BEGIN", REPLICA, MoveOn(primary)),
            (
                "COMMIT",
                TxPin::HeldBegin,
                Answer(Local::EndHeldBegin("COMMIT")),
            ),
            (
                "ROLLBACK",
                TxPin::HeldBegin,
                Answer(Local::EndHeldBegin("ROLLBACK")),
            ),
            ("SET TRANSACTION READ ONLY", TxPin::HeldBegin, Send(replica)),
            ("SELECT 1", TxPin::HeldBegin, Send(primary)),
            // The route setting is the sidecar's, answered in its turn.
            (
                "SET pgsidecar.route = primary",
                TxPin::None,
                Answer(Local::Route(RoutePreference::Primary, "SET")),
            ),
            (
                "RESET pgsidecar.route",
                TxPin::HeldBegin,
                Answer(Local::Route(RoutePreference::Auto, "RESET")),
            ),
            // Behind replies in flight too: the answer keeps its place in the client's queue.
            (
                "SET pgsidecar.route = primary",
                REPLICA,
                Answer(Local::Route(RoutePreference::Primary, "SET")),
            ),
            (
                "SET pgsidecar.route = elsewhere",
                PRIMARY,
                Answer(Local::BadRoute("elsewhere".into())),
            ),
        ];
        for (sql, pin, expected) in cases {
            assert_eq!(
                &plan(&facts(sql), &session(*pin)),
                expected,
                "{sql} {pin:?}"
            );
        }
    }

    #[test]
    fn moving_on_once_and_only_for_whole_requests() {
        let write = facts("UPDATE t SET a = 1");
        let mut view = session(REPLICA);
        assert_eq!(plan(&write, &view), Plan::MoveOn(Target::Primary));
        // A second connection is already finishing: wait for it.
        view.earlier = true;
        assert_eq!(plan(&write, &view), Plan::Wait);
        // A batch ended by a Flush may go on: it waits for the replica.
        view.earlier = false;
        let flushed = RequestFacts {
            synced: false,
            ..write
        };
        assert_eq!(plan(&flushed, &view), Plan::Wait);
    }

    #[test]
    fn preference_and_no_routing() {
        let read = facts("SELECT 1");
        let mut view = session(TxPin::None);
        view.preference = RoutePreference::Primary;
        assert_eq!(plan(&read, &view), Plan::Send(Target::Primary));
        // A hint wins over the setting.
        let hinted = facts("/* pgsidecar: route=replica */ SELECT 1");
        assert_eq!(plan(&hinted, &view), Plan::Send(Target::Replica));
        // Without replicas (or in session mode) nothing is answered here or held.
        view.routes = false;
        for sql in ["BEGIN", "SET pgsidecar.route = replica", "SELECT 1"] {
            assert_eq!(
                plan(&facts(sql), &view),
                Plan::Send(Target::Primary),
                "{sql}"
            );
        }
        assert_eq!(read.routing.kind, RequestKind::Read);
    }
}
