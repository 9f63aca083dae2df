//! Cleaning a server connection after its client left: end any COPY, extended batch and
//! transaction (and, in session mode, the session state with DISCARD ALL), then return it to
//! the pool — or close it if that does not finish cleanly in time.

use std::time::Duration;

use bytes::BufMut;

use super::attachment::Attachment;
use crate::config::PoolMode;
use crate::pool::server::AppliedSettings;
use crate::protocol::backend::{
    parse_parameter_status, TransactionStatus, DATA_ROW_TAG, PARAMETER_STATUS_TAG,
    READY_FOR_QUERY_TAG,
};
use crate::protocol::frame::{peek_header, HEADER_LEN};
use crate::protocol::frontend::{self, append_query};

/// Why a server connection could not be cleaned (it is closed then).
#[derive(Debug, thiserror::Error)]
enum CleanupError {
    #[error(transparent)]
    Server(#[from] crate::pool::ServerError),
    #[error("the server sent a message the sidecar cannot frame: {0}")]
    Frame(#[from] crate::protocol::frame::FrameError),
    #[error("the client left inside a CopyData message too large to complete")]
    CopyTooLarge,
}

/// Up to this many filler bytes are sent to finish a CopyData the client abandoned; past that
/// the server connection is closed instead.
const MAX_PADDING: usize = 16 * 1024 * 1024;
/// Replies longer than this are skipped unread: the marker row and the ParameterStatus and
/// ReadyForQuery messages the cleanup reads are all shorter.
const MAX_INSPECTED: usize = 256;
/// How long cleaning a server connection after its client vanished may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// After the client left: end any COPY, batch and transaction on the server connection (and,
/// in session mode or when the client left session state behind, the session state with
/// DISCARD ALL), then return it to the pool — or close it if that does not finish cleanly in
/// time.
pub(super) async fn clean_and_release(mut att: Attachment, mode: PoolMode) {
    // In transaction mode the session state is clean unless the client changed it and left
    // before the sidecar caught up (or holds what pinned it).
    if att.uncertain {
        // Which replies are still to come is not known: never reused, never waited on.
        return;
    }
    let discard =
        mode == PoolMode::Session || att.server.conn_mut().applied == AppliedSettings::Unknown;
    if !discard && att.is_quiet() {
        att.server.release();
        return;
    }
    let outcome = tokio::time::timeout(CLEANUP_TIMEOUT, clean(&mut att, discard)).await;
    match outcome {
        Ok(Ok(())) if att.status == TransactionStatus::Idle => {
            if discard {
                // DISCARD ALL dropped the session's settings and prepared statements.
                att.server.conn_mut().discarded();
            }
            att.server.release();
        }
        other => {
            let why = match &other {
                Ok(Ok(())) => "still in a transaction".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            tracing::debug!(why, "closing server connection that could not be cleaned");
        }
    }
}

/// A value no client can have predicted, to recognise the end of the cleanup's replies.
fn marker() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on Linux; if it did, the marker would only be predictable.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("pgsidecar-cleanup-{}", crate::token::hex(&bytes))
}

async fn clean(att: &mut Attachment, discard: bool) -> Result<(), CleanupError> {
    if att.client_stream > MAX_PADDING {
        return Err(CleanupError::CopyTooLarge);
    }
    // The client left inside a streamed CopyData: complete the message with filler so the
    // CopyFail below is read as a message, not as row data.
    att.wbuf.resize(att.wbuf.len() + att.client_stream, 0);
    att.streamed(att.client_stream);
    // CopyFail ends a COPY FROM STDIN (and is ignored otherwise); Sync ends an open batch (and
    // a skip to Sync after an error); ROLLBACK ends a transaction. Then a query whose answer
    // carries a random marker: everything before it is the departed client's, however many
    // replies the server chose to send, and the connection is clean once the marker's
    // ReadyForQuery arrives.
    att.wbuf.put_u8(frontend::COPY_FAIL_TAG);
    let reason = b"client disconnected\0";
    att.wbuf.put_i32(4 + reason.len() as i32);
    att.wbuf.put_slice(reason);
    frontend::append_sync(&mut att.wbuf);
    append_query(&mut att.wbuf, "ROLLBACK");
    if discard {
        append_query(&mut att.wbuf, "DISCARD ALL");
    }
    let marker = marker();
    append_query(&mut att.wbuf, &format!("SELECT '{marker}'"));
    if !att.wbuf.is_empty() {
        att.server.conn_mut().write_all(&att.wbuf).await?;
        att.wbuf.clear();
    }
    let mut skip = att.passthrough.take().map_or(0, |p| p.remaining);
    let conn = att.server.conn_mut();
    let mut marker_seen = false;
    loop {
        if skip > 0 {
            let n = skip.min(conn.rbuf.len());
            conn.consume(n);
            skip -= n;
            if skip > 0 {
                conn.read_more().await?;
                continue;
            }
        }
        let Some(header) = peek_header(&conn.rbuf)? else {
            conn.read_more().await?;
            continue;
        };
        let inspected = matches!(
            header.tag,
            READY_FOR_QUERY_TAG | DATA_ROW_TAG | PARAMETER_STATUS_TAG
        ) && header.frame_len <= MAX_INSPECTED;
        if inspected && conn.rbuf.len() < header.frame_len {
            conn.read_more().await?;
            continue;
        }
        tracing::debug!(tag = %char::from(header.tag), marker_seen, "cleanup reply");
        if inspected && header.tag == PARAMETER_STATUS_TAG {
            // What DISCARD ALL (or the client's last SET) changed: the next client to log in
            // on this connection is told the connection's real values.
            let body = &conn.rbuf[HEADER_LEN..header.frame_len];
            if let Some((name, value)) = parse_parameter_status(body) {
                let (name, value) = (name.to_owned(), value.to_owned());
                conn.note_parameter(&name, &value);
            }
        }
        if inspected && header.tag == DATA_ROW_TAG {
            let body = &conn.rbuf[HEADER_LEN..header.frame_len];
            marker_seen |= body.windows(marker.len()).any(|w| w == marker.as_bytes());
        }
        if inspected && header.tag == READY_FOR_QUERY_TAG && marker_seen {
            if let Some(s) = TransactionStatus::from_byte(conn.rbuf[HEADER_LEN]) {
                att.status = s;
            }
            conn.consume(header.frame_len);
            break;
        }
        skip = header.frame_len;
    }
    att.expect.clear();
    att.batch = None;
    Ok(())
}
