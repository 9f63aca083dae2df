//! A write on several shards, in the relay, all or none: on a connection of each shard (prepared
//! for the client like any checkout) `BEGIN`, the statement (a multi-row INSERT split so each
//! shard gets its own rows, `sql::split`), `PREPARE TRANSACTION`; when every shard prepared,
//! the decision is logged durably (`pool::twophase`) and `COMMIT PREPARED` sent to each, else
//! the prepared ones are rolled back and the client gets the first error. The client's reply
//! is one: RowDescription and rows of RETURNING from every shard, one command tag with the
//! summed count. Runs only between transactions with nothing in flight.

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::fanout::{lost_body, Asked, Failure};
use super::*;
use crate::protocol::bind::Bind;

/// What one shard did in phase one.
struct Phase1 {
    att: Box<Attachment>,
    prepared: bool,
    /// Every reply read and the connection idle.
    clean: bool,
    out: Output,
}

/// What one shard answered the statement.
#[derive(Default)]
struct Output {
    error: Option<Bytes>,
    tag: Option<String>,
    described: Option<Bytes>,
    rows: Vec<Bytes>,
}

impl Relay {
    /// Runs the first `len` held frames (one write) on shards `on`, atomically.
    pub(super) async fn write_shards(
        &mut self,
        len: usize,
        on: &[usize],
    ) -> Result<(), RelayError> {
        let frames: Vec<(Frame, Option<Classified>)> =
            (0..len).filter_map(|_| self.held.pop_front()).collect();
        let refuse = |this: &mut Relay, report: ErrorReport| {
            this.answer_in_turn(queue::LocalReply::Failed(report));
            Ok(())
        };
        let asked = match self.asked(&frames) {
            Ok(asked) => asked,
            Err(report) => return refuse(self, report),
        };
        let (Some(coordinator), Some(shards)) = (self.app.two_phase.clone(), self.shards.as_ref())
        else {
            return refuse(
                self,
                ErrorReport::error(SqlState::FEATURE_NOT_SUPPORTED, "two-phase commit is off"),
            );
        };
        let classified = self.live.classifier.classify(asked.text.as_bytes());
        if let Classification::Parsed(parsed) = classified.classification.as_ref() {
            if parsed
                .first()
                .is_some_and(|c| c.kind == crate::sql::class::Kind::CopyFrom)
            {
                self.adopt_request(&frames);
                return self.copy_shards(&classified, asked, coordinator).await;
            }
        }
        if !matches!(classified.classification.as_ref(), Classification::Parsed(p) if p.len() == 1)
        {
            return refuse(
                self,
                ErrorReport::error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "a write across shards must be one statement per request",
                ),
            );
        }
        let bind = asked.bind.as_deref().and_then(Bind::parse);
        let statement = crate::route::shard_key::Statement {
            sql: asked.text.as_bytes(),
            classified: &classified,
            bind: bind.as_ref(),
            search_path: None,
        };
        let parts = match crate::route::shard_key::insert_rows(
            &statement,
            &shards.tables,
            shards.databases.len(),
        ) {
            Some(rows) => match crate::sql::split::split_insert(&asked.text, &rows) {
                Ok(parts) => parts,
                Err(message) => {
                    return refuse(
                        self,
                        ErrorReport::error(SqlState::FEATURE_NOT_SUPPORTED, message),
                    )
                }
            },
            // The same statement on every shard.
            None => on
                .iter()
                .map(|&shard| crate::sql::split::Part {
                    shard,
                    sql: asked.text.clone(),
                    params: (0..bind.as_ref().map_or(0, Bind::param_count)).collect(),
                })
                .collect(),
        };
        let gid = coordinator.gid();
        let client_formats: Vec<i16> = bind
            .as_ref()
            .map(|b| b.result_formats().collect())
            .unwrap_or_default();
        let mut attachments = Vec::with_capacity(parts.len());
        for part in &parts {
            let Some((_, attached)) = self.attach_shard(part.shard).await else {
                continue;
            };
            match attached {
                Ok(mut att) => {
                    let shard_gid = shard_gid(&gid, part.shard);
                    phase1_request(&mut att.wbuf, &asked, part, &client_formats, &shard_gid);
                    attachments.push((shard_gid, att));
                }
                Err(report) => {
                    // Nothing was sent: the connections checked out so far close unused.
                    self.info.key.detach().await;
                    self.app.metrics.error("shard_unavailable");
                    return refuse(
                        self,
                        ErrorReport::error(
                            SqlState::CANNOT_CONNECT_NOW,
                            format!(
                                "shard {} is not available ({}): the write was not run",
                                part.shard, report.message
                            ),
                        ),
                    );
                }
            }
        }
        let reply = self
            .run_two_phase(&coordinator, &gid, attachments, Shape::Write)
            .await;
        self.info.key.detach().await;
        self.adopt_request(&frames);
        self.app.metrics.shards.ran("write", reply.is_ok());
        let out = &mut self.client.wbuf;
        if asked.parse {
            out.extend_from_slice(backend::PARSE_COMPLETE);
        }
        if asked.bind.is_some() {
            out.extend_from_slice(backend::BIND_COMPLETE);
        }
        let outcome = reply.map(|(described, rows, tag)| {
            match described {
                Some(body) if asked.describe => {
                    frontend::append_message(out, backend::ROW_DESCRIPTION_TAG, &[&body])
                }
                None if asked.describe && asked.bind.is_some() => {
                    out.extend_from_slice(backend::NO_DATA)
                }
                _ => {}
            }
            for row in rows {
                frontend::append_message(out, backend::DATA_ROW_TAG, &[&row]);
            }
            tag
        });
        self.end_across(outcome).await
    }

    /// A request that ran on several shards: its Parse is the client's statement (as after a
    /// server's Parse) and its statements count.
    pub(super) fn adopt_request(&mut self, frames: &[(Frame, Option<Classified>)]) {
        for (frame, classified) in frames {
            match frame.tag() {
                frontend::PARSE_TAG => self.adopt_parse(frame, classified.as_ref()),
                frontend::QUERY_TAG => {
                    self.statements.unnamed = None;
                    self.count_query();
                }
                frontend::EXECUTE_TAG => self.count_query(),
                _ => {}
            }
        }
    }

    /// Phase one on every shard, the decision, phase two. The reply's RowDescription, rows
    /// and command tag, or why the write failed (then it committed nowhere).
    pub(super) async fn run_two_phase(
        &mut self,
        coordinator: &Arc<crate::pool::twophase::Coordinator>,
        gid: &str,
        attachments: Vec<(String, Box<Attachment>)>,
        shape: Shape,
    ) -> Result<(Option<Bytes>, Vec<Bytes>, String), Failure> {
        let mut running: FuturesUnordered<_> = attachments
            .into_iter()
            .map(|(shard_gid, att)| async move {
                let (before, statement) = match shape {
                    // The checkout's statements and BEGIN come before the statement.
                    Shape::Write => (att.expect.len() + 1, true),
                    // The connection is past them (in COPY, or inside the transaction).
                    Shape::Copy => (0, true),
                    Shape::Commit => (0, false),
                };
                (shard_gid, phase_one(att, before, statement).await)
            })
            .collect();
        let mut done = Vec::new();
        while let Some(finished) = running.next().await {
            done.push(finished);
        }
        let failed = done.iter().find_map(|(_, p)| p.out.error.clone());
        let all_prepared = failed.is_none() && done.iter().all(|(_, p)| p.prepared);
        let decided = match all_prepared {
            true => coordinator.decide_commit(gid).await.map_err(|e| {
                tracing::error!(error = %e, %gid, "two-phase commit decision not logged: rolling back");
                Failure::Sidecar(ErrorReport::error(SqlState("58030"), e.to_string()))
            }),
            false => Err(match failed {
                Some(body) => Failure::Shard(body),
                None => Failure::Sidecar(ErrorReport::error(
                    SqlState::INTERNAL_ERROR,
                    "a shard did not prepare the transaction; it was rolled back everywhere",
                )),
            }),
        };
        let verb = if decided.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let mut finishing: FuturesUnordered<_> = done
            .into_iter()
            .map(|(shard_gid, p)| phase_two(p, verb, shard_gid))
            .collect();
        let mut outcomes = Vec::new();
        let mut all_done = true;
        while let Some((p, finished)) = finishing.next().await {
            all_done &= finished;
            outcomes.push(p);
        }
        let outcome = match (&decided, all_done) {
            (Err(_), _) => "rolled_back",
            (Ok(()), true) => "committed",
            (Ok(()), false) => "in_doubt",
        };
        self.app
            .metrics
            .shards
            .two_phase
            .with_label_values(&[outcome])
            .inc();
        decided?;
        if all_done {
            coordinator.finished(gid);
        } else {
            tracing::warn!(%gid, "a shard did not confirm COMMIT PREPARED: the sidecar's next start resolves it");
        }
        let described = outcomes.iter().find_map(|p| p.described.clone());
        let rows = outcomes
            .iter()
            .flat_map(|p| p.rows.iter().cloned())
            .collect();
        let tag = summed_tag(outcomes.iter().filter_map(|p| p.tag.as_deref()));
        Ok((described, rows, tag))
    }
}

/// What phase one sends each shard before PREPARE TRANSACTION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// The checkout's statements, BEGIN and the statement.
    Write,
    /// The end of a COPY (its connection began already).
    Copy,
    /// Nothing: the transaction's statements ran (a spread transaction's COMMIT).
    Commit,
}

/// BEGIN, the statement, PREPARE TRANSACTION — after what prepares the connection.
fn phase1_request(
    out: &mut BytesMut,
    asked: &Asked,
    part: &crate::sql::split::Part,
    formats: &[i16],
    gid: &str,
) {
    frontend::append_query(out, "BEGIN");
    match (&asked.bind, &asked.parameter_types) {
        (Some(bind), Some(types)) => {
            let types = parameter_types_subset(types, &part.params);
            frontend::append_message(
                out,
                frontend::PARSE_TAG,
                &[b"\0", part.sql.as_bytes(), b"\0", &types],
            );
            if let Some(bind) = Bind::parse(bind) {
                out.extend_from_slice(&bind.encode_subset(&part.params, formats));
            }
            frontend::append_message(out, frontend::DESCRIBE_TAG, &[b"P\0"]);
            frontend::append_message(out, frontend::EXECUTE_TAG, &[b"\0\0\0\0\0"]);
            frontend::append_sync(out);
        }
        _ => frontend::append_query(out, &part.sql),
    }
    append_prepare(out, gid);
}

/// Shard `n`'s transaction id within the two-phase transaction `gid`.
pub(super) fn shard_gid(gid: &str, n: usize) -> String {
    format!("{gid}:s{n}")
}

/// Appends `PREPARE TRANSACTION '<shard_gid>'`.
pub(super) fn append_prepare(out: &mut BytesMut, shard_gid: &str) {
    let sql = format!(
        "PREPARE TRANSACTION {}",
        crate::sql::quote::quote_literal(shard_gid)
    );
    frontend::append_query(out, &sql);
}

/// A Parse's parameter types (count and OIDs) for the parameters `params` (0-based).
fn parameter_types_subset(types: &[u8], params: &[usize]) -> Vec<u8> {
    let count = types
        .get(..2)
        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]) as usize);
    if count == 0 {
        return vec![0, 0];
    }
    let mut out = Vec::with_capacity(2 + 4 * params.len());
    out.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for &i in params {
        let oid = types.get(2 + 4 * i..6 + 4 * i).unwrap_or(&[0, 0, 0, 0]);
        out.extend_from_slice(oid);
    }
    out
}

/// Sends the rest of phase one and reads every reply: prepared, or the shard's error. `before`
/// ReadyForQuery messages come before the statement's (the checkout's statements, BEGIN);
/// then the statement's (when there is one) and PREPARE's.
async fn phase_one(mut att: Box<Attachment>, before: usize, statement: bool) -> Phase1 {
    let last = before + usize::from(statement);
    let request = std::mem::take(&mut att.wbuf);
    let mut p = Phase1 {
        att,
        prepared: false,
        clean: false,
        out: Output::default(),
    };
    let lost = lost_body;
    let conn = p.att.server.conn_mut();
    if conn.write_all(&request).await.is_err() {
        p.out.error = Some(lost("a shard's connection was lost"));
        return p;
    }
    let mut readies: usize = 0;
    let status = loop {
        let frame = match conn.next_frame(1 << 30).await {
            Ok(frame) => frame,
            Err(_) => {
                p.out
                    .error
                    .get_or_insert_with(|| lost("a shard's connection was lost during the write"));
                return p;
            }
        };
        let body = || frame.as_bytes().slice(HEADER_LEN..);
        match (frame.tag(), readies.checked_sub(before)) {
            (backend::READY_FOR_QUERY_TAG, _) => {
                readies += 1;
                if readies == last + 1 {
                    break frame.body().first().copied();
                }
            }
            (backend::ERROR_RESPONSE_TAG, _) => {
                p.out.error.get_or_insert_with(body);
            }
            // COPY is never sent here; a connection in COPY is given up (closed).
            (
                backend::COPY_IN_RESPONSE_TAG
                | backend::COPY_OUT_RESPONSE_TAG
                | backend::COPY_BOTH_RESPONSE_TAG,
                _,
            ) => {
                p.out
                    .error
                    .get_or_insert_with(|| lost("COPY is not run across shards"));
                return p;
            }
            // The statement's replies, then PREPARE's.
            (backend::ROW_DESCRIPTION_TAG, Some(0)) if statement => p.out.described = Some(body()),
            (backend::DATA_ROW_TAG, Some(0)) if statement => p.out.rows.push(body()),
            (backend::COMMAND_COMPLETE_TAG, Some(0)) if statement => {
                p.out.tag = frontend::query_text(frame.body())
                    .map(|t| String::from_utf8_lossy(t).into_owned())
            }
            (backend::COMMAND_COMPLETE_TAG, Some(n)) if n == usize::from(statement) => {
                p.prepared = frame.body().starts_with(b"PREPARE TRANSACTION")
            }
            _ => {}
        }
    };
    if status != Some(TransactionStatus::Idle.as_byte()) {
        // PREPARE failed inside a transaction still open: it ends here.
        let conn = p.att.server.conn_mut();
        if conn.run_internal("ROLLBACK").await.is_err() {
            return p;
        }
    }
    p.clean = true;
    p
}

/// COMMIT PREPARED or ROLLBACK PREPARED on a shard that prepared (nothing on one that did not);
/// its connection goes back to the pool when all went well. Whether the shard confirmed; one
/// that did not is tried again in the background ([`finish_later`]).
async fn phase_two(mut p: Phase1, verb: &'static str, gid: String) -> (Output, bool) {
    let mut confirmed = true;
    if p.prepared {
        let sql = format!("{verb} PREPARED {}", crate::sql::quote::quote_literal(&gid));
        if let Err(e) = p.att.server.conn_mut().run_internal(&sql).await {
            tracing::warn!(error = %e, %gid, "{verb} PREPARED failed; trying again in the background");
            confirmed = false;
            p.clean = false;
            tokio::spawn(finish_later(Arc::clone(p.att.server.pool()), sql));
        }
    }
    if p.clean {
        p.att.server.release();
    }
    (p.out, confirmed)
}

/// Sends `COMMIT PREPARED` / `ROLLBACK PREPARED` (`sql`) on a new connection of `pool` every
/// second until the shard confirms, or says the transaction is gone (resolved already), for
/// up to an hour; after that the sidecar's next start resolves it from its log.
async fn finish_later(pool: Arc<crate::pool::Pool>, sql: String) {
    for _ in 0..3600 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Ok(mut checkout) = pool.checkout().await else {
            continue;
        };
        match checkout.conn_mut().run_internal(&sql).await {
            Ok(()) => {
                checkout.release();
                tracing::info!(statement = %sql, "an in-doubt transaction was finished");
                return;
            }
            // 42704: no such prepared transaction (finished by someone else).
            Err(crate::pool::ServerError::Upstream { code, .. }) if code == "42704" => {
                checkout.release();
                return;
            }
            Err(_) => {}
        }
    }
}

/// One command tag for the shards' tags: counts summed (`INSERT 0 n`, `UPDATE n`, `DELETE n`,
/// `MERGE n`), else the first (DDL).
pub(super) fn summed_tag<'a>(tags: impl Iterator<Item = &'a str>) -> String {
    let mut first: Option<&str> = None;
    let mut total: u64 = 0;
    for tag in tags {
        first.get_or_insert(tag);
        if let Some(n) = tag.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) {
            total += n;
        }
    }
    let Some(first) = first else {
        return String::new();
    };
    match first.split(' ').next() {
        Some("INSERT") => format!("INSERT 0 {total}"),
        Some(verb @ ("UPDATE" | "DELETE" | "MERGE" | "COPY")) => format!("{verb} {total}"),
        _ => first.to_owned(),
    }
}
