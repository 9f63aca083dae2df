//! `COPY table (columns) FROM STDIN` into a sharded table, split by each row's key, all or none:
//! every shard starts `BEGIN` and the same COPY; the client gets the CopyInResponse and its
//! CopyData is cut into rows (`protocol::copy`: text, CSV or binary), each row streamed to its
//! shard (headers to every shard); at CopyDone each shard ends its COPY and prepares, and the
//! two-phase commit of `relay/shard_write.rs` finishes it with one `COPY n` for the client. A
//! row without a valid key, a CopyFail or a message that does not belong in COPY ends it with
//! an error and the shards' connections are closed (their transactions roll back).

use super::fanout::{Asked, Failure};
use super::*;
use crate::protocol::copy::{CopyError, Piece, Splitter};
use crate::route::shard::ShardedTable;

/// Past this much, rows for a shard are written to it while the client still sends.
const SHARD_CHUNK: usize = 64 * 1024;

/// How the client's data ended.
enum Ended {
    Done,
    Failed(ErrorReport),
}

impl Relay {
    /// Runs a COPY FROM STDIN (the held request in `frames`) on every shard, split by key.
    pub(super) async fn copy_shards(
        &mut self,
        classified: &Classified,
        asked: Asked,
        coordinator: Arc<crate::pool::twophase::Coordinator>,
    ) -> Result<(), RelayError> {
        let refused = |this: &mut Relay, state: SqlState, message: String| {
            this.answer_in_turn(queue::LocalReply::Failed(ErrorReport::error(
                state, message,
            )));
            Ok(())
        };
        // Extended protocol: the Sync sent with the Execute is ignored during COPY (as by
        // Postgres); the client's next Sync, after CopyDone, gets the ReadyForQuery.
        let extended = asked.bind.is_some();
        let plan = match crate::sql::split::copy_from(&asked.text) {
            Ok(plan) => plan,
            Err(message) => return refused(self, SqlState::FEATURE_NOT_SUPPORTED, message),
        };
        let Some((table, key)) = self.copy_table(&asked.text, classified, &plan) else {
            return refused(
                self,
                SqlState::FEATURE_NOT_SUPPORTED,
                "the column list of a COPY into a sharded table must include its shard key column"
                    .into(),
            );
        };
        let count = self.shards.as_ref().map_or(0, |s| s.databases.len());
        let gid = coordinator.gid();
        let mut started = Vec::with_capacity(count);
        for n in 0..count {
            let Some((_, attached)) = self.attach_shard(n).await else {
                continue;
            };
            match attached {
                Ok(mut att) => {
                    frontend::append_query(&mut att.wbuf, "BEGIN");
                    copy_request(&mut att.wbuf, &asked);
                    started.push(att);
                }
                Err(report) => return self.end_copy(Err(Failure::Sidecar(report)), false).await,
            }
        }
        let mut shards = Vec::with_capacity(count);
        let mut copy_in = None;
        for att in started {
            match start_copy(att).await {
                Ok((att, response)) => {
                    copy_in.get_or_insert(response);
                    shards.push(att);
                }
                Err(failure) => return self.end_copy(Err(failure), false).await,
            }
        }
        let Some(copy_in) = copy_in else {
            let report = ErrorReport::error(SqlState::INTERNAL_ERROR, "no shard");
            return self.end_copy(Err(Failure::Sidecar(report)), false).await;
        };
        if asked.parse {
            self.client.wbuf.extend_from_slice(backend::PARSE_COMPLETE);
        }
        if extended {
            self.client.wbuf.extend_from_slice(backend::BIND_COMPLETE);
        }
        frontend::append_message(
            &mut self.client.wbuf,
            backend::COPY_IN_RESPONSE_TAG,
            &[&copy_in],
        );
        self.write_client().await?;
        match self
            .stream_rows(&mut shards, &table, key, plan.format)
            .await?
        {
            Ended::Failed(report) => self.end_copy(Err(Failure::Sidecar(report)), extended).await,
            Ended::Done => {
                let attachments = shards
                    .into_iter()
                    .enumerate()
                    .map(|(n, mut att)| {
                        let shard_gid = super::shard_write::shard_gid(&gid, n);
                        att.wbuf
                            .extend_from_slice(&[frontend::COPY_DONE_TAG, 0, 0, 0, 4]);
                        if extended {
                            frontend::append_sync(&mut att.wbuf);
                        }
                        super::shard_write::append_prepare(&mut att.wbuf, &shard_gid);
                        (shard_gid, att)
                    })
                    .collect();
                let reply = self
                    .run_two_phase(
                        &coordinator,
                        &gid,
                        attachments,
                        super::shard_write::Shape::Copy,
                    )
                    .await;
                self.end_copy(reply.map(|(_, _, tag)| tag), extended).await
            }
        }
    }

    /// The sharded table a COPY names and the position of its key in the column list.
    fn copy_table(
        &self,
        sql: &str,
        classified: &Classified,
        plan: &crate::sql::split::CopyFrom,
    ) -> Option<(ShardedTable, usize)> {
        let shards = self.shards.as_ref()?;
        let statement = crate::route::shard_key::Statement {
            sql: sql.as_bytes(),
            classified,
            bind: None,
            search_path: None,
        };
        let table = crate::route::shard_key::sharded_table(&statement, &shards.tables)?;
        let key = plan.columns.iter().position(|c| *c == table.column)?;
        Some((table.clone(), key))
    }

    /// Reads the client's COPY messages (held ones first) and streams each row to its shard.
    async fn stream_rows(
        &mut self,
        shards: &mut [Box<Attachment>],
        table: &ShardedTable,
        key: usize,
        format: crate::protocol::copy::CopyFormat,
    ) -> Result<Ended, RelayError> {
        let mut splitter = Splitter::new(format, key);
        let mut failed: Option<ErrorReport> = None;
        let count = shards.len();
        loop {
            let frame = self.next_client_frame().await?;
            let last = match frame.tag() {
                frontend::COPY_DATA_TAG => {
                    splitter.push(frame.body());
                    false
                }
                frontend::COPY_DONE_TAG => true,
                frontend::COPY_FAIL_TAG => {
                    let message = frontend::query_text(frame.body())
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    return Ok(Ended::Failed(failed.unwrap_or_else(|| {
                        ErrorReport::error(
                            SqlState::QUERY_CANCELED,
                            format!("COPY from stdin failed: {message}"),
                        )
                    })));
                }
                frontend::FLUSH_TAG | frontend::SYNC_TAG => continue,
                other => {
                    return Ok(Ended::Failed(ErrorReport::error(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                    )))
                }
            };
            // After an error the rest of the data is read and dropped, as Postgres does.
            if failed.is_none() {
                let routed = route_pieces(&mut splitter, last, table, count, shards);
                if let Err(report) = routed {
                    failed = Some(report);
                }
                // The last rows stay in the buffers: phase one sends them with CopyDone.
                if !last {
                    for att in shards.iter_mut().filter(|a| a.wbuf.len() >= SHARD_CHUNK) {
                        let out = std::mem::take(&mut att.wbuf);
                        if att.server.conn_mut().write_all(&out).await.is_err() {
                            failed.get_or_insert_with(|| {
                                ErrorReport::error(
                                    SqlState::CONNECTION_FAILURE,
                                    "a shard's connection was lost during COPY",
                                )
                            });
                        }
                    }
                }
            }
            if last {
                return Ok(match failed {
                    Some(report) => Ended::Failed(report),
                    None => Ended::Done,
                });
            }
        }
    }

    /// The client's next message during COPY: one the intake held already, else read.
    async fn next_client_frame(&mut self) -> Result<Frame, RelayError> {
        match self.held.pop_front() {
            Some((frame, _)) => Ok(frame),
            None => Ok(self.client.read_frame().await?),
        }
    }

    /// The client's reply to a COPY across shards (`Err`: nothing committed; the shards'
    /// connections were closed or rolled back). After an extended-protocol COPY the
    /// ReadyForQuery answers the client's Sync (read here; anything before it is dropped, as
    /// Postgres drops it after a failed COPY).
    async fn end_copy(
        &mut self,
        outcome: Result<String, Failure>,
        extended: bool,
    ) -> Result<(), RelayError> {
        self.info.key.detach().await;
        self.app.metrics.shards.ran("copy", outcome.is_ok());
        if extended {
            loop {
                let frame = self.next_client_frame().await?;
                if frame.tag() == frontend::SYNC_TAG {
                    break;
                }
            }
        }
        self.end_across(outcome).await
    }
}

/// Cuts what the splitter holds into rows and appends each as CopyData to its shard's buffer
/// (`last`: the data ended, its last row may lack a newline).
fn route_pieces(
    splitter: &mut Splitter,
    last: bool,
    table: &ShardedTable,
    count: usize,
    shards: &mut [Box<Attachment>],
) -> Result<(), ErrorReport> {
    let bad = |e: CopyError| ErrorReport::error(SqlState("22P04"), e.to_string());
    loop {
        let piece = match splitter.next_piece().map_err(bad)? {
            Some(piece) => piece,
            None if last => match splitter.finish().map_err(bad)? {
                Some(piece) => piece,
                None => return Ok(()),
            },
            None => return Ok(()),
        };
        match piece {
            Piece::Everyone(bytes) => {
                for att in shards.iter_mut() {
                    frontend::append_message(&mut att.wbuf, frontend::COPY_DATA_TAG, &[&bytes]);
                }
            }
            Piece::Row { bytes, key } => {
                let binary = splitter.is_binary();
                let parsed = match (&key, binary) {
                    (None, _) => Ok(None),
                    (Some(k), true) => table.key_type.from_binary(k).map(Some),
                    (Some(k), false) => match std::str::from_utf8(k) {
                        Ok(text) => table.key_type.parse(text).map(Some),
                        Err(_) => {
                            return Err(ErrorReport::error(
                                SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                                "a shard key in the COPY data is not valid UTF-8",
                            ))
                        }
                    },
                };
                let shard = parsed
                    .and_then(|k| table.shard_of(k, count))
                    .map_err(|e| ErrorReport::error(e.sqlstate(), e.to_string()))?;
                if let Some(att) = shards.get_mut(shard) {
                    frontend::append_message(&mut att.wbuf, frontend::COPY_DATA_TAG, &[&bytes]);
                }
            }
            Piece::End => return Ok(()),
        }
    }
}

/// The COPY itself, as the client sent it: a Query, or Parse Bind Execute Sync (the Sync is
/// ignored by the shard during COPY).
fn copy_request(out: &mut bytes::BytesMut, asked: &Asked) {
    match (&asked.bind, &asked.parameter_types) {
        (Some(bind), Some(types)) => {
            frontend::append_message(
                out,
                frontend::PARSE_TAG,
                &[b"\0", asked.text.as_bytes(), b"\0", types],
            );
            if let Some(bind) = crate::protocol::bind::Bind::parse(bind) {
                out.extend_from_slice(&bind.encode_unnamed(&[]));
            }
            frontend::append_message(out, frontend::EXECUTE_TAG, &[b"\0\0\0\0\0"]);
            frontend::append_sync(out);
        }
        _ => frontend::append_query(out, &asked.text),
    }
}

/// Writes BEGIN and the COPY (after what prepares the connection) and reads to the shard's
/// CopyInResponse (its body). An error ends it (the connection is closed with the attachment).
async fn start_copy(mut att: Box<Attachment>) -> Result<(Box<Attachment>, Bytes), Failure> {
    let before = att.expect.len() + 1;
    let request = std::mem::take(&mut att.wbuf);
    let lost = || {
        Failure::Sidecar(ErrorReport::error(
            SqlState::CONNECTION_FAILURE,
            "a shard's connection was lost",
        ))
    };
    let conn = att.server.conn_mut();
    conn.write_all(&request).await.map_err(|_| lost())?;
    let mut readies = 0;
    loop {
        let frame = conn.next_frame(1 << 30).await.map_err(|_| lost())?;
        match frame.tag() {
            backend::READY_FOR_QUERY_TAG => readies += 1,
            backend::ERROR_RESPONSE_TAG => {
                return Err(Failure::Shard(frame.as_bytes().slice(HEADER_LEN..)))
            }
            backend::COPY_IN_RESPONSE_TAG if readies == before => {
                let body = frame.as_bytes().slice(HEADER_LEN..);
                return Ok((att, body));
            }
            _ => {}
        }
    }
}
