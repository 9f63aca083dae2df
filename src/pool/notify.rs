//! LISTEN/NOTIFY across transaction pooling: one dedicated upstream listener connection per
//! database (opened on first use, outside the pool's size), LISTENing on the union of the
//! channels its clients listen on, and fanning each notification out to those clients. The
//! sender's backend PID is translated to the sidecar-issued PID of the client that sent it,
//! so clients that ignore their own notifications keep working.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::server::{ConnectOptions, ServerConn};
use crate::config::UpstreamUrl;
use crate::metrics::Metrics;
use crate::protocol::backend::{
    ErrorFields, ERROR_RESPONSE_TAG, NOTIFICATION_RESPONSE_TAG, READY_FOR_QUERY_TAG,
};
use crate::protocol::frame::try_frame;
use crate::protocol::frontend::append_query;
use crate::sql::quote::quote_ident;

/// Notifications waiting for one client before newer ones are dropped (and counted).
pub const CLIENT_QUEUE: usize = 4096;
/// Longest wait before the listener connection is opened again after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest message the listener accepts from the server.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Server PIDs remembered for translating sender PIDs.
const PID_LIMIT: usize = 65_536;

/// Where a client's notifications go: ready-made NotificationResponse messages.
pub type Sink = mpsc::Sender<Bytes>;

/// What the listener task is asked to do.
enum Command {
    /// The client now listens on exactly these channels (empty: none); `done` fires once the
    /// listener connection listens on all of them.
    Listen {
        client: i32,
        channels: BTreeSet<String>,
        sink: Sink,
        done: Option<oneshot::Sender<()>>,
    },
    /// Fires once every notification committed before the request has been handed to the
    /// clients' sinks (a query sent now has been answered).
    Barrier(oneshot::Sender<()>),
}

/// The listeners' state inside the listener task.
#[derive(Default)]
struct Listeners {
    clients: HashMap<i32, (BTreeSet<String>, Sink)>,
    /// Waiting for the LISTEN statements that are about to be sent.
    unsent: Vec<oneshot::Sender<()>>,
    /// Waiting for a query sent after they asked (barriers).
    barriers: Vec<oneshot::Sender<()>>,
    /// Waiting for the ReadyForQuery of each LISTEN query in flight, in order.
    in_flight: VecDeque<Vec<oneshot::Sender<()>>>,
}

/// The listener of one database.
pub struct Notifier {
    url: UpstreamUrl,
    options: ConnectOptions,
    metrics: Arc<Metrics>,
    commands: OnceLock<mpsc::UnboundedSender<Command>>,
    /// Server backend PID → the sidecar-issued PID of the client that last sent a
    /// notification through it.
    senders: Mutex<HashMap<i32, i32>>,
    /// Odd while the listener connection is open and listening (its first query after
    /// connecting answered), even while it is down; a new value for every connection, so
    /// whoever relies on not missing a notification can tell a gap happened.
    link: AtomicU64,
}

impl Notifier {
    /// A notifier for the database at `url`; nothing is opened until a client listens.
    pub fn new(url: UpstreamUrl, options: ConnectOptions, metrics: Arc<Metrics>) -> Notifier {
        Notifier {
            url,
            options,
            metrics,
            commands: OnceLock::new(),
            senders: Mutex::new(HashMap::new()),
            link: AtomicU64::new(0),
        }
    }

    /// The listener connection's link value: odd while it listens, even while it is down;
    /// it changes whenever the connection is lost or opened again.
    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Acquire)
    }

    /// The listener connection answered a query: it listens (odd).
    fn link_up(&self) {
        let _ = self
            .link
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l % 2 == 0).then_some(l + 1)
            });
    }

    /// The listener connection is gone (even): notifications may be missed until it is back.
    fn link_down(&self) {
        let _ = self
            .link
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l % 2 == 1).then_some(l + 1)
            });
    }

    /// Says that `client` now listens on `channels` (empty: on none), delivering to `sink`.
    pub fn listen(self: &Arc<Self>, client: i32, channels: BTreeSet<String>, sink: Sink) {
        self.send(Command::Listen {
            client,
            channels,
            sink,
            done: None,
        });
    }

    /// Like [`Notifier::listen`], and waits (at most `timeout`) until the listener connection
    /// listens on every channel; false if it could not.
    pub async fn listen_and_wait(
        self: &Arc<Self>,
        client: i32,
        channels: BTreeSet<String>,
        sink: Sink,
        timeout: Duration,
    ) -> bool {
        let (done, listening) = oneshot::channel();
        self.send(Command::Listen {
            client,
            channels,
            sink,
            done: Some(done),
        });
        matches!(tokio::time::timeout(timeout, listening).await, Ok(Ok(())))
    }

    /// Waits (at most `timeout`) until every notification committed before this call has been
    /// handed to the listening clients' sinks: the listener connection answers a query sent
    /// after it, and Postgres delivers pending notifications before that ReadyForQuery. False
    /// if there is no listener connection or it did not answer in time.
    pub async fn barrier(self: &Arc<Self>, timeout: Duration) -> bool {
        let (done, answered) = oneshot::channel();
        self.send(Command::Barrier(done));
        matches!(tokio::time::timeout(timeout, answered).await, Ok(Ok(())))
    }

    fn send(self: &Arc<Self>, command: Command) {
        let commands = self.commands.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(Arc::clone(self).run(rx));
            tx
        });
        let _ = commands.send(command);
    }

    /// Records that the client with issued PID `client` sends notifications through the
    /// server backend `server_pid`.
    pub fn note_sender(&self, server_pid: i32, client: i32) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders.len() >= PID_LIMIT {
            senders.clear();
        }
        senders.insert(server_pid, client);
    }

    /// A NotificationResponse with the sender's PID translated to the issued PID of the client
    /// that sent it (unchanged when the sender is not a client of this sidecar); `None` when
    /// the body is malformed.
    pub fn translate(&self, body: &[u8]) -> Option<(Bytes, String)> {
        let (pid, channel, _) = parse_notification(body)?;
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let pid = senders.get(&pid).copied().unwrap_or(pid);
        drop(senders);
        let mut out = BytesMut::with_capacity(body.len() + 5);
        out.put_u8(NOTIFICATION_RESPONSE_TAG);
        out.put_i32(body.len() as i32 + 4);
        out.put_i32(pid);
        out.put_slice(&body[4..]);
        Some((out.freeze(), channel.to_owned()))
    }

    async fn run(self: Arc<Self>, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut listeners = Listeners::default();
        let mut conn: Option<ServerConn> = None;
        let mut listening: BTreeSet<String> = BTreeSet::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let wanted: BTreeSet<String> = listeners
                .clients
                .values()
                .flat_map(|(channels, _)| channels.iter().cloned())
                .collect();
            if conn.is_none() && !wanted.is_empty() {
                // Whoever waits for a connection that was lost learns it did not work.
                listeners.in_flight.clear();
                match ServerConn::connect(0, &self.url, &[], &self.options).await {
                    Ok(c) => {
                        tracing::debug!("opened the LISTEN connection");
                        self.metrics.server_connects.inc();
                        conn = Some(c);
                        listening.clear();
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not open the LISTEN connection");
                        listeners.unsent.clear();
                        listeners.barriers.clear();
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            command = commands.recv() => match command {
                                Some(c) => listeners.apply(c),
                                None => return,
                            },
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            if conn.is_none() {
                // Nothing is delivered without a connection: barriers do not wait for one.
                listeners.barriers.clear();
            }
            // Barriers need a query of their own: an empty one when no LISTEN is due.
            let sql = sync_sql(&listening, &wanted)
                .or_else(|| (!listeners.barriers.is_empty()).then(String::new));
            match (conn.as_mut(), sql) {
                (Some(c), Some(sql)) => {
                    let mut out = BytesMut::new();
                    append_query(&mut out, &sql);
                    if c.write_all(&out).await.is_err() {
                        self.link_down();
                        conn = None;
                        continue;
                    }
                    listening = wanted;
                    let mut waiting = std::mem::take(&mut listeners.unsent);
                    waiting.append(&mut listeners.barriers);
                    listeners.in_flight.push_back(waiting);
                }
                // Nothing to send: whoever waits is served already (or when the query in
                // flight completes).
                _ => match listeners.in_flight.back_mut() {
                    Some(last) => last.append(&mut listeners.unsent),
                    None => {
                        for done in listeners.unsent.drain(..) {
                            let _ = done.send(());
                        }
                    }
                },
            }
            let read = async {
                match conn.as_mut() {
                    Some(c) => c.read_more().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => listeners.apply(c),
                    None => return,
                },
                read = read => {
                    if let Err(e) = read {
                        tracing::warn!(error = %e, "the LISTEN connection was lost; notifications sent until it is back are missed");
                        self.link_down();
                        conn = None;
                        continue;
                    }
                    if let Some(c) = conn.as_mut() {
                        if !self.dispatch(c, &mut listeners) {
                            self.link_down();
                            conn = None;
                        }
                    }
                }
            }
        }
    }

    /// Handles every complete message the listener connection received; false when the
    /// connection must be dropped.
    fn dispatch(&self, conn: &mut ServerConn, listeners: &mut Listeners) -> bool {
        loop {
            let frame = match try_frame(&mut conn.rbuf, MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "the LISTEN connection sent a malformed message");
                    return false;
                }
            };
            match frame.tag() {
                NOTIFICATION_RESPONSE_TAG => {
                    let Some((message, channel)) = self.translate(frame.body()) else {
                        continue;
                    };
                    listeners.clients.retain(|_, (channels, sink)| {
                        if !channels.contains(&channel) {
                            return true;
                        }
                        match sink.try_send(message.clone()) {
                            Ok(()) => {
                                self.metrics.notifications_delivered.inc();
                                true
                            }
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                self.metrics.notifications_dropped.inc();
                                true
                            }
                            // The client is gone.
                            Err(mpsc::error::TrySendError::Closed(_)) => false,
                        }
                    });
                }
                ERROR_RESPONSE_TAG => {
                    let fields = ErrorFields::parse(frame.body());
                    tracing::warn!(code = %fields.code, message = %fields.message, "LISTEN failed upstream");
                    // Its waiters are told it did not work (their senders are dropped).
                    if let Some(waiting) = listeners.in_flight.front_mut() {
                        waiting.clear();
                    }
                }
                READY_FOR_QUERY_TAG => {
                    self.link_up();
                    for done in listeners.in_flight.pop_front().unwrap_or_default() {
                        let _ = done.send(());
                    }
                }
                _ => {}
            }
        }
    }
}

impl Listeners {
    fn apply(&mut self, command: Command) {
        let (client, channels, sink, done) = match command {
            Command::Barrier(done) => return self.barriers.push(done),
            Command::Listen {
                client,
                channels,
                sink,
                done,
            } => (client, channels, sink, done),
        };
        if channels.is_empty() {
            self.clients.remove(&client);
        } else {
            self.clients.insert(client, (channels, sink));
        }
        if let Some(done) = done {
            self.unsent.push(done);
        }
    }
}

/// The LISTEN/UNLISTEN statements that move the listener from `have` to `want`.
fn sync_sql(have: &BTreeSet<String>, want: &BTreeSet<String>) -> Option<String> {
    let mut sql = String::new();
    for channel in want.difference(have) {
        sql.push_str(&format!("LISTEN {};", quote_ident(channel)));
    }
    for channel in have.difference(want) {
        sql.push_str(&format!("UNLISTEN {};", quote_ident(channel)));
    }
    (!sql.is_empty()).then_some(sql)
}

/// A whole NotificationResponse (`message`) with `prefix` taken off its channel, or `None`
/// when the channel does not carry the prefix (another tenant's) or the message is malformed.
pub fn strip_channel_prefix(message: &[u8], prefix: &str) -> Option<Bytes> {
    let (pid, channel, payload) = parse_notification(message.get(5..)?)?;
    let channel = channel.strip_prefix(prefix)?;
    let len = 4 + 4 + channel.len() + 1 + payload.len() + 1;
    let mut out = BytesMut::with_capacity(len + 1);
    out.put_u8(NOTIFICATION_RESPONSE_TAG);
    out.put_i32(len as i32);
    out.put_i32(pid);
    out.put_slice(channel.as_bytes());
    out.put_u8(0);
    out.put_slice(payload.as_bytes());
    out.put_u8(0);
    Some(out.freeze())
}

/// (sender PID, channel, payload) of a NotificationResponse body.
pub fn parse_notification(body: &[u8]) -> Option<(i32, &str, &str)> {
    let mut b = body;
    if b.remaining() < 4 {
        return None;
    }
    let pid = b.get_i32();
    let (channel, rest) = cstr(b)?;
    let (payload, _) = cstr(rest)?;
    Some((pid, channel, payload))
}

fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((std::str::from_utf8(&b[..end]).ok()?, &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pid: i32, channel: &str, payload: &str) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        b.extend_from_slice(channel.as_bytes());
        b.push(0);
        b.extend_from_slice(payload.as_bytes());
        b.push(0);
        b
    }

    #[test]
    fn channel_prefixes_come_off() {
        let mut message = vec![NOTIFICATION_RESPONSE_TAG];
        let b = body(7, "acme.jobs", "x");
        message.extend_from_slice(&(b.len() as i32 + 4).to_be_bytes());
        message.extend_from_slice(&b);
        let stripped = strip_channel_prefix(&message, "acme.").unwrap();
        assert_eq!(parse_notification(&stripped[5..]), Some((7, "jobs", "x")));
        assert_eq!(strip_channel_prefix(&message, "globex."), None);
    }

    #[test]
    fn sync_moves_between_channel_sets() {
        let have: BTreeSet<String> = ["a".into(), "b".into()].into();
        let want: BTreeSet<String> = ["b".into(), "C".into()].into();
        assert_eq!(
            sync_sql(&have, &want).unwrap(),
            "LISTEN \"C\";UNLISTEN \"a\";"
        );
        assert_eq!(sync_sql(&want, &want), None);
    }

    #[test]
    fn notifications_parse_and_malformed_ones_do_not() {
        assert_eq!(
            parse_notification(&body(7, "jobs", "x")),
            Some((7, "jobs", "x"))
        );
        assert_eq!(parse_notification(&[0, 0, 0, 1, b'a']), None);
        assert_eq!(parse_notification(&[0, 0]), None);
    }
}
