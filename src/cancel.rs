//! Cancel requests: the BackendKeyData the sidecar issues to each client, what each key
//! currently points at (nothing, a request waiting in a pool queue, or a server connection
//! running the client's statement), and delivering a CancelRequest upstream.
//!
//! A server connection is not returned to its pool while a cancel for it is being delivered,
//! so a late cancel can never hit the next client's statement.
//!
//! `pg_cancel_backend` / `pg_terminate_backend` of an issued PID act here too ([`CancelRegistry::signal`]),
//! for clients of the same owner (user and tenant) only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::pool::server::BackendKey;
use crate::sql::signal::SignalKind;

/// How long delivering one CancelRequest upstream may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A server connection running a client's statement: where to send its CancelRequest.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub host: Arc<str>,
    pub port: u16,
    pub key: BackendKey,
    /// How the connection was opened (the cancel goes the same way).
    pub dialer: crate::stream::Dialer,
}

/// What a client's key points at right now.
#[derive(Debug, Clone)]
enum CancelState {
    /// No request in progress.
    Idle,
    /// A request waits for a server connection; notifying it ends the wait with 57014.
    Waiting(Arc<Notify>),
    /// A server connection serves the client.
    Running(CancelTarget),
}

/// Who a client is, for the admin console (SHOW CLIENTS, KILL).
#[derive(Debug, Clone)]
pub struct ClientFacts {
    pub user: String,
    pub tenant: Option<String>,
    pub database: String,
    pub application_name: String,
    pub addr: Option<std::net::SocketAddr>,
    pub tls: bool,
    pub connected: std::time::SystemTime,
}

/// One issued client as the admin console lists it.
#[derive(Debug, Clone)]
pub struct ClientRow {
    pub process_id: i32,
    pub facts: ClientFacts,
    /// `active` (idle or running), `waiting` (for a server connection).
    pub state: &'static str,
    /// The server connection running its request: host, port, backend process ID.
    pub server: Option<(Arc<str>, u16, i32)>,
}

struct Slot {
    secret_key: i32,
    facts: ClientFacts,
    /// Who may signal this client by PID (its user and tenant).
    owner: String,
    /// Fired by `pg_terminate_backend` of this client's PID, or by the sidecar's shutdown (one
    /// future for the relay to poll): its session ends.
    terminate: tokio_util::sync::CancellationToken,
    state: Mutex<Cancelling>,
    /// Fired when the last cancel on its way to the client's server has been delivered (a
    /// detach waits for it).
    delivered: Notify,
}

/// What a client's key points at, and how many cancels are on their way to its server.
struct Cancelling {
    now: CancelState,
    /// The server connection is not released while this is above zero.
    delivering: usize,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cancelling> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: CancelState) {
        self.lock().now = state;
    }

    /// The target a cancel goes to now, counted as on its way until the returned guard is
    /// dropped (delivered, failed, or abandoned). Otherwise (one look at the state): the wait
    /// for a connection to end, or nothing — no request, or (with `alone`) a cancel already on
    /// its way.
    fn start_delivery(
        self: &Arc<Self>,
        alone: bool,
    ) -> Result<(CancelTarget, Delivering), Option<Arc<Notify>>> {
        let mut state = self.lock();
        let target = match &state.now {
            CancelState::Running(_) if alone && state.delivering > 0 => return Err(None),
            CancelState::Running(target) => target.clone(),
            CancelState::Waiting(notify) => return Err(Some(Arc::clone(notify))),
            CancelState::Idle => return Err(None),
        };
        state.delivering += 1;
        Ok((target, Delivering(Arc::clone(self))))
    }
}

/// A cancel on its way to a client's server (see [`Slot::start_delivery`]).
struct Delivering(Arc<Slot>);

impl Drop for Delivering {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.delivering -= 1;
        if state.delivering == 0 {
            self.0.delivered.notify_waiters();
        }
    }
}

type Registry = Arc<Mutex<HashMap<i32, Arc<Slot>>>>;

/// Issued process IDs start above Linux's largest possible `pid_max` (2^22), so one can never
/// name a real backend: `pg_terminate_backend` of an issued PID touches nothing.
pub const FIRST_ISSUED_PID: i32 = (1 << 22) + 1;

/// Issues keys and answers CancelRequests.
pub struct CancelRegistry {
    keys: Registry,
    next_process_id: AtomicI32,
}

impl Default for CancelRegistry {
    fn default() -> CancelRegistry {
        CancelRegistry {
            keys: Arc::new(Mutex::new(HashMap::new())),
            next_process_id: AtomicI32::new(0),
        }
    }
}

impl CancelRegistry {
    /// Issues a unique BackendKeyData for a new client, whose session also ends when `ends`
    /// fires (the sidecar's shutdown).
    pub fn issue(
        &self,
        rng: &SystemRandom,
        owner: String,
        facts: ClientFacts,
        ends: &tokio_util::sync::CancellationToken,
    ) -> IssuedKey {
        let mut secret = [0u8; 4];
        // SystemRandom only fails when the OS has no randomness; a zero secret still works.
        let _ = rng.fill(&mut secret);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let process_id = loop {
            let n = self.next_process_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
            let id = FIRST_ISSUED_PID + n % (i32::MAX - FIRST_ISSUED_PID);
            if !keys.contains_key(&id) {
                break id;
            }
        };
        let slot = Arc::new(Slot {
            secret_key: i32::from_be_bytes(secret),
            facts,
            owner,
            terminate: ends.child_token(),
            state: Mutex::new(Cancelling {
                now: CancelState::Idle,
                delivering: 0,
            }),
            delivered: Notify::new(),
        });
        keys.insert(process_id, Arc::clone(&slot));
        IssuedKey {
            process_id,
            slot,
            registry: Arc::clone(&self.keys),
        }
    }

    /// Handles a CancelRequest: ends the client's wait for a connection, or forwards the cancel
    /// to the server running its statement. Unknown keys and wrong secrets do nothing, as in
    /// Postgres.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        let slot = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.get(&process_id)
                .filter(|s| s.secret_key == secret_key)
                .cloned()
        };
        let Some(slot) = slot else {
            tracing::debug!("cancel request matched no client");
            return;
        };
        deliver(&slot).await;
    }

    /// `pg_cancel_backend(process_id)` / `pg_terminate_backend(process_id)` from a client of
    /// `owner`: cancels the running request of, or ends the session of, the client with that
    /// issued PID, if it has the same owner. False (nothing done) for unknown PIDs and for
    /// other owners' clients, which a client cannot tell apart.
    pub async fn signal(&self, process_id: i32, owner: &str, kind: SignalKind) -> bool {
        let slot = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.get(&process_id).filter(|s| s.owner == owner).cloned()
        };
        let Some(slot) = slot else {
            return false;
        };
        match kind {
            SignalKind::Cancel => deliver(&slot).await,
            SignalKind::Terminate => slot.terminate.cancel(),
        }
        true
    }
}

impl CancelRegistry {
    /// Every issued client, by process ID.
    pub fn clients(&self) -> Vec<ClientRow> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<ClientRow> = keys
            .iter()
            .map(|(&process_id, slot)| {
                let (state, server) = match &slot.lock().now {
                    CancelState::Waiting(_) => ("waiting", None),
                    CancelState::Idle => ("active", None),
                    CancelState::Running(t) => (
                        "active",
                        Some((Arc::clone(&t.host), t.port, t.key.process_id)),
                    ),
                };
                ClientRow {
                    process_id,
                    facts: slot.facts.clone(),
                    state,
                    server,
                }
            })
            .collect();
        rows.sort_by_key(|r| r.process_id);
        rows
    }

    /// Ends the sessions of the clients `which` picks (admin KILL, KILL_CLIENT); how many.
    pub fn terminate_where(&self, which: impl Fn(i32, &ClientFacts) -> bool) -> usize {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (&pid, slot) in keys.iter() {
            if which(pid, &slot.facts) {
                slot.terminate.cancel();
                n += 1;
            }
        }
        n
    }
}

/// Cancels what the slot's client waits for or runs.
async fn deliver(slot: &Arc<Slot>) {
    match slot.start_delivery(false) {
        Ok((target, _delivering)) => send_cancel(&target).await,
        Err(Some(waiting)) => waiting.notify_one(),
        Err(None) => tracing::debug!("cancel request for an idle client"),
    }
}

/// Sends a CancelRequest to a server and waits until the server closed the connection, which
/// Postgres does after signalling the backend.
pub async fn send_cancel(target: &CancelTarget) {
    let mut packet = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(
        target.key.process_id,
        target.key.secret_key,
        &mut packet,
    );
    let deliver = async {
        let mut stream = match &target.dialer {
            crate::stream::Dialer::Tcp => crate::stream::Stream::Plain(
                TcpStream::connect((&*target.host, target.port)).await?,
            ),
            crate::stream::Dialer::Memory(dial) => {
                crate::stream::Stream::Memory(dial(&target.host, target.port)?)
            }
        };
        stream.write_all(&packet).await?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await?;
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(DELIVERY_TIMEOUT, deliver).await {
        Ok(Ok(())) => tracing::debug!("cancel request delivered upstream"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not deliver cancel request upstream"),
        Err(_) => tracing::warn!("timed out delivering cancel request upstream"),
    }
}

/// The BackendKeyData issued to one client; unregistered on drop.
pub struct IssuedKey {
    process_id: i32,
    slot: Arc<Slot>,
    registry: Registry,
}

impl IssuedKey {
    pub fn process_id(&self) -> i32 {
        self.process_id
    }

    pub fn secret_key(&self) -> i32 {
        self.slot.secret_key
    }

    /// Who may signal this client by PID (and whom it may signal).
    pub fn owner(&self) -> &str {
        &self.slot.owner
    }

    /// Fires when another client of the same owner ran `pg_terminate_backend` of this PID, or
    /// when the sidecar shuts down.
    pub fn terminated(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.slot.terminate.clone().cancelled_owned()
    }

    /// The client waits for a server connection: a cancel now fires the returned notifier.
    pub fn waiting(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.slot.set(CancelState::Waiting(Arc::clone(&notify)));
        notify
    }

    /// A server connection now serves the client.
    pub fn running(&self, target: CancelTarget) {
        self.slot.set(CancelState::Running(target));
    }

    /// Cancels the statement running on the client's server connection (query timeout)
    /// without waiting; the connection is not released before the cancel was delivered.
    pub fn cancel_in_background(&self) {
        // Counted before spawning, so a release that follows waits for the delivery; none
        // when a cancel is already on its way.
        let Ok((target, delivering)) = self.slot.start_delivery(true) else {
            return;
        };
        tokio::spawn(async move {
            send_cancel(&target).await;
            drop(delivering);
        });
    }

    /// The client no longer uses a server connection. Waits for any cancel being delivered
    /// to the old one, so the caller may then return it to the pool.
    pub async fn detach(&self) {
        loop {
            {
                let mut state = self.slot.lock();
                // Almost always no cancel is on its way: then no waiting at all.
                if state.delivering == 0 {
                    state.now = CancelState::Idle;
                    return;
                }
            }
            // Registered before the count is read again, so a delivery that ends in between
            // wakes it.
            let delivered = self.slot.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            if self.slot.lock().delivering > 0 {
                delivered.await;
            }
        }
    }
}

impl Drop for IssuedKey {
    fn drop(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.process_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ClientFacts {
        ClientFacts {
            user: "u".into(),
            tenant: None,
            database: "d".into(),
            application_name: String::new(),
            addr: None,
            tls: false,
            connected: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn issued_pids_can_never_be_real_ones_and_stay_within_int32() {
        let registry = CancelRegistry::default();
        let rng = SystemRandom::new();
        let a = registry.issue(&rng, String::new(), facts(), &Default::default());
        let b = registry.issue(&rng, String::new(), facts(), &Default::default());
        assert_eq!(a.process_id(), FIRST_ISSUED_PID);
        assert_eq!(b.process_id(), FIRST_ISSUED_PID + 1);
        // The counter wraps around i32 and the PIDs stay in range.
        registry.next_process_id.store(i32::MAX, Ordering::Relaxed);
        for _ in 0..3 {
            let key = registry.issue(&rng, String::new(), facts(), &Default::default());
            assert!(key.process_id() >= FIRST_ISSUED_PID, "{}", key.process_id());
        }
    }

    /// A target whose "server" is the far end of an in-process pipe, handed out on `dials`.
    fn piped_target() -> (
        CancelTarget,
        tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>,
    ) {
        let (tx, dials) = tokio::sync::mpsc::unbounded_channel();
        let dial = move |_: &str, _: u16| {
            let (ours, theirs) = tokio::io::duplex(64);
            let _ = tx.send(theirs);
            Ok(ours)
        };
        let target = CancelTarget {
            host: Arc::from("server"),
            port: 5432,
            key: BackendKey {
                process_id: 7,
                secret_key: 8,
            },
            dialer: crate::stream::Dialer::Memory(Arc::new(dial)),
        };
        (target, dials)
    }

    #[tokio::test]
    async fn a_release_waits_for_the_cancel_on_its_way() {
        let registry = CancelRegistry::default();
        let key = registry.issue(
            &SystemRandom::new(),
            String::new(),
            facts(),
            &Default::default(),
        );
        // Idle: nothing to cancel, and a detach does not wait.
        key.cancel_in_background();
        key.detach().await;
        let (target, mut dials) = piped_target();
        key.running(target);
        key.cancel_in_background();
        // A second one while the first is on its way is not sent.
        key.cancel_in_background();
        let mut server = dials.recv().await.expect("the cancel dialed");
        let mut packet = [0u8; 16];
        server.read_exact(&mut packet).await.unwrap();
        assert_eq!(&packet[8..], &[0, 0, 0, 7, 0, 0, 0, 8]);
        // The server has the request but has not closed the connection: not delivered yet.
        let detach = key.detach();
        tokio::pin!(detach);
        assert!(futures_util::poll!(detach.as_mut()).is_pending());
        drop(server);
        detach.await;
        assert!(dials.try_recv().is_err(), "one cancel only");
        // Detached: a cancel finds nothing to send.
        key.cancel_in_background();
        tokio::task::yield_now().await;
        assert!(dials.try_recv().is_err());
    }
}
