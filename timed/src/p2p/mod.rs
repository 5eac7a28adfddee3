//! Peer-to-peer networking between validators.
//!
//! One TCP connection per genesis validator, each frame a length-delimited [`Message`].
//! Connections authenticate both ways (signed nonces against the genesis keys) before any
//! application message flows. The transport also does peer exchange, reconnects with backoff,
//! pings, and bans repeat offenders for a while; the application only sees [`Inbound`].
//!
//! Policies worth knowing:
//! - Duplicate connections to one validator (simultaneous dials): both sides keep the one
//!   dialled by the lower validator index; if both were dialled by the same side, the newer
//!   one wins (its dialer only redials once it believes the old one is dead).
//! - Backpressure: every connection has a bounded send queue drained by its own writer task.
//!   `send`/`broadcast` never wait; a peer whose queue is full is not keeping up with the
//!   network and is disconnected (it reconnects and resyncs) rather than slowing everyone.
//! - Bans: `Tuning::ban_threshold` offences within `ban_window` ban the offender for
//!   `ban_duration`, keyed as described in `ban.rs`.

mod admission;
mod ban;
mod book;
mod conn;
pub mod message;
#[cfg(test)]
mod tests;

use crate::api::PeerInfo;
use crate::chain::block::ValidatorIndex;
use crate::chain::crypto::{Hash256, Keypair, PublicKey};
use crate::metrics::MessageTraffic;
use crate::ratelog::RateLimited;
use ban::{BanKey, BanList, BanPolicy};
use book::{AddrBook, Backoff};
use bytes::Bytes;
use conn::{PeerHandle, Side, Slot};
use message::{Message, KINDS, MAX_FRAME_BYTES};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

/// Events delivered to the application.
#[derive(Debug)]
pub enum Inbound {
    Connected { peer: ValidatorIndex, best_height: u64 },
    Disconnected { peer: ValidatorIndex },
    Message { from: ValidatorIndex, msg: Message },
}

pub struct P2pConfig {
    /// May use port 0; [`P2p::local_addr`] reports the bound address.
    pub listen: SocketAddr,
    /// "host:port" to dial; unreachable ones are retried with backoff.
    pub seeds: Vec<String>,
    pub identity: Keypair,
    pub validator_index: ValidatorIndex,
    pub validator_id: String,
    pub chain_id: String,
    pub genesis_hash: Hash256,
    /// The genesis validator set, by index.
    pub validators: Vec<(String, PublicKey)>,
    pub user_agent: String,
}

/// Timings and limits. [`Tuning::default`] is what nodes run with; tests shorten them.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    /// A peer whose pong is this many ping intervals late is dropped.
    pub missed_pongs: u32,
    pub peer_exchange_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Frames queued per peer before it counts as too slow and is disconnected.
    pub send_queue: usize,
    pub ban_threshold: usize,
    pub ban_window: Duration,
    pub ban_duration: Duration,
    /// Inbound handshakes in progress at once (see `admission.rs`).
    pub max_pending: usize,
    /// Inbound handshakes in progress from one non-loopback IP.
    pub max_pending_per_ip: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            // A validator finishes its handshake in a few round trips; strangers that send
            // nothing should not hold a pending slot for long.
            handshake_timeout: Duration::from_secs(3),
            ping_interval: Duration::from_secs(5),
            missed_pongs: 3,
            peer_exchange_interval: Duration::from_secs(10),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            send_queue: 1024,
            ban_threshold: 3,
            ban_window: Duration::from_secs(600),
            ban_duration: Duration::from_secs(60),
            max_pending: 64,
            max_pending_per_ip: 4,
        }
    }
}

impl Tuning {
    fn backoff(&self) -> Backoff {
        Backoff { base: self.backoff_base, max: self.backoff_max }
    }

    fn ban_policy(&self) -> BanPolicy {
        BanPolicy { threshold: self.ban_threshold.max(1), window: self.ban_window, duration: self.ban_duration }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("validator index {index} is not in the genesis ({count} validators)")]
    UnknownIndex { index: ValidatorIndex, count: usize },
    #[error("identity key does not match genesis validator {0}")]
    IdentityMismatch(ValidatorIndex),
}

/// Application events waiting to be read; readers stall (TCP backpressure) beyond this.
const INBOUND_QUEUE: usize = 1024;
/// Outbound handshakes in progress at once. Kept apart from the inbound budget so that our
/// own dials to validators never wait behind strangers.
const MAX_OUTBOUND_HANDSHAKES: usize = 128;
/// One log line per this interval for a repeated event, with its count.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Most addresses sent or read in one `Peers` message.
const MAX_PEERS_PER_MESSAGE: usize = 1000;
/// How often the dialer looks for due addresses (it is also woken on news).
const DIAL_TICK: Duration = Duration::from_millis(100);

/// Answers Snowball polls where they arrive, in the connection's reader task. An answer only
/// reads the node's state, so it need not wait in line behind the engine's other work (block
/// checks, fsyncs, gossip): the poll's round trip, and so finality, no longer depends on how
/// busy the answering engine is. Without one, queries go to the application like any message.
pub trait PollAnswerer: Send + Sync {
    /// One preference per txid, in order.
    fn answer(&self, from: ValidatorIndex, txids: &[crate::chain::Txid])
        -> Vec<crate::consensus::messages::Preference>;
}

/// A cheap handle to the running transport. Dropping the last handle shuts it down.
#[derive(Clone)]
pub struct P2p {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

struct Inner {
    me: ValidatorIndex,
    my_id: String,
    identity: Keypair,
    chain_id: String,
    genesis_hash: Hash256,
    validators: Vec<(String, PublicKey)>,
    user_agent: String,
    local_addr: SocketAddr,
    tuning: Tuning,
    best_height: watch::Receiver<u64>,
    events: mpsc::Sender<Inbound>,
    state: Mutex<State>,
    dial_wakeup: Notify,
    cancel: CancellationToken,
    next_conn_id: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_recv: AtomicU64,
    kinds: KindCounts,
    outbound: Arc<Semaphore>,
    admission: Arc<admission::Admission>,
    /// Rate limits for lines that a flood would repeat.
    log_admission: RateLimited,
    log_refused: RateLimited,
    /// Set once by the node after start-up (the node holds the transport, so it cannot exist
    /// before it).
    poll_answerer: std::sync::OnceLock<Arc<dyn PollAnswerer>>,
}

const SENT_BYTES: usize = 0;
const RECEIVED_BYTES: usize = 2;

/// Per kind: bytes sent, frames sent, bytes received, frames received. Where the bandwidth
/// goes is otherwise only visible to a packet capture.
struct KindCounts([[AtomicU64; 4]; KINDS.len()]);

impl Default for KindCounts {
    fn default() -> Self {
        KindCounts(std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

impl KindCounts {
    /// One frame of `bytes` (header included) in direction `slot` ([`SENT_BYTES`] or
    /// [`RECEIVED_BYTES`]).
    fn add(&self, kind: usize, slot: usize, bytes: u64) {
        if let Some(c) = self.0.get(kind) {
            c[slot].fetch_add(bytes, Ordering::Relaxed);
            c[slot + 1].fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct State {
    peers: HashMap<ValidatorIndex, PeerHandle>,
    book: AddrBook,
    bans: BanList,
}

impl P2p {
    pub async fn start(
        cfg: P2pConfig,
        best_height: watch::Receiver<u64>,
    ) -> Result<(P2p, mpsc::Receiver<Inbound>), P2pError> {
        Self::start_tuned(cfg, Tuning::default(), best_height).await
    }

    /// [`P2p::start`] with non-default timings.
    pub async fn start_tuned(
        cfg: P2pConfig,
        tuning: Tuning,
        best_height: watch::Receiver<u64>,
    ) -> Result<(P2p, mpsc::Receiver<Inbound>), P2pError> {
        let me = cfg.validator_index;
        let Some((_, genesis_key)) = cfg.validators.get(me as usize) else {
            return Err(P2pError::UnknownIndex { index: me, count: cfg.validators.len() });
        };
        if *genesis_key != cfg.identity.public() {
            return Err(P2pError::IdentityMismatch(me));
        }
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| P2pError::Bind { addr: cfg.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| P2pError::Bind { addr: cfg.listen, source })?;
        let mut book = AddrBook::new(local_addr);
        for seed in &cfg.seeds {
            book.add_seed(seed.trim());
        }
        let (events, rx) = mpsc::channel(INBOUND_QUEUE);
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            me,
            my_id: cfg.validator_id.clone(),
            identity: cfg.identity,
            chain_id: cfg.chain_id,
            genesis_hash: cfg.genesis_hash,
            validators: cfg.validators,
            user_agent: cfg.user_agent,
            local_addr,
            tuning: tuning.clone(),
            best_height,
            events,
            state: Mutex::new(State { peers: HashMap::new(), book, bans: BanList::default() }),
            dial_wakeup: Notify::new(),
            cancel: cancel.clone(),
            next_conn_id: AtomicU64::new(1),
            bytes_sent: AtomicU64::new(0),
            bytes_recv: AtomicU64::new(0),
            kinds: KindCounts::default(),
            outbound: Arc::new(Semaphore::new(MAX_OUTBOUND_HANDSHAKES)),
            admission: Arc::new(admission::Admission::new(tuning.max_pending, tuning.max_pending_per_ip)),
            log_admission: RateLimited::new(LOG_EVERY),
            log_refused: RateLimited::new(LOG_EVERY),
            poll_answerer: std::sync::OnceLock::new(),
        });
        info!(%local_addr, validator = me, id = %cfg.validator_id, seeds = cfg.seeds.len(), "p2p listening");
        tokio::spawn(accept_loop(inner.clone(), listener));
        tokio::spawn(dial_loop(inner.clone()));
        Ok((P2p { inner, _guard: Arc::new(cancel.drop_guard()) }, rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// From now on, polls are answered by `answerer` in the reader tasks. Only the first call
    /// counts.
    pub fn set_poll_answerer(&self, answerer: Arc<dyn PollAnswerer>) {
        let _ = self.inner.poll_answerer.set(answerer);
    }

    /// Sends to every connected validator.
    pub fn broadcast(&self, msg: Message) {
        if let Some(frame) = encode(&msg) {
            self.inner.enqueue_all(&frame, None);
        }
    }

    pub fn broadcast_except(&self, msg: Message, except: ValidatorIndex) {
        if let Some(frame) = encode(&msg) {
            self.inner.enqueue_all(&frame, Some(except));
        }
    }

    /// Transaction gossip to every connected validator, each copy droppable (see `send_gossip`).
    pub fn broadcast_gossip(&self, msg: Message) {
        if let Some(frame) = encode(&msg) {
            let st = self.inner.state();
            for p in st.peers.values() {
                p.push_droppable(frame.clone());
            }
        }
    }

    /// Queues transaction gossip for `to`, or drops it if `to`'s queue is filling up (see
    /// `PeerHandle::push_droppable`); false if not queued.
    pub fn send_gossip(&self, to: ValidatorIndex, msg: Message) -> bool {
        encode(&msg).is_some_and(|frame| self.push_gossip(to, frame))
    }

    /// [`P2p::send_gossip`] for a frame encoded already ([`Message::txs_frame`]).
    pub fn send_gossip_frame(&self, to: ValidatorIndex, frame: Vec<u8>) -> bool {
        checked_frame("txs", frame).is_some_and(|frame| self.push_gossip(to, frame))
    }

    fn push_gossip(&self, to: ValidatorIndex, frame: Bytes) -> bool {
        self.inner.state().peers.get(&to).is_some_and(|p| p.push_droppable(frame))
    }

    /// Queues `msg` for `to`; false if it is not connected (or was just dropped as too slow).
    pub fn send(&self, to: ValidatorIndex, msg: Message) -> bool {
        match encode(&msg) {
            Some(frame) => self.inner.enqueue(to, frame),
            None => false,
        }
    }

    /// Queues one message for each of `to`, encoded once (a poll goes to `k` validators with
    /// the same up to 1,024 txids); how many were queued.
    pub fn send_to_each(&self, to: &[ValidatorIndex], msg: &Message) -> usize {
        let Some(frame) = encode(msg) else { return 0 };
        to.iter().filter(|v| self.inner.enqueue(**v, frame.clone())).count()
    }

    pub fn connected(&self) -> Vec<ValidatorIndex> {
        let mut v: Vec<ValidatorIndex> = self.inner.state().peers.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn peer_info(&self) -> Vec<PeerInfo> {
        let st = self.inner.state();
        let mut v: Vec<PeerInfo> = st.peers.values().map(|p| p.stats.info()).collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// Addresses in the address book.
    pub fn known_addresses(&self) -> usize {
        self.inner.state().book.len()
    }

    /// Total bytes written to peers, handshakes included.
    pub fn bytes_sent(&self) -> u64 {
        self.inner.bytes_sent.load(Ordering::Relaxed)
    }

    /// Total bytes read from peers, handshakes included.
    pub fn bytes_received(&self) -> u64 {
        self.inner.bytes_recv.load(Ordering::Relaxed)
    }

    /// Frames and bytes per message kind, in [`KINDS`] order, handshakes included.
    pub fn message_counts(&self) -> Vec<MessageTraffic> {
        KINDS
            .iter()
            .zip(&self.inner.kinds.0)
            .map(|(kind, c)| {
                let get = |slot: usize| c[slot].load(Ordering::Relaxed);
                MessageTraffic {
                    kind,
                    sent_bytes: get(SENT_BYTES),
                    sent: get(SENT_BYTES + 1),
                    received_bytes: get(RECEIVED_BYTES),
                    received: get(RECEIVED_BYTES + 1),
                }
            })
            .collect()
    }

    /// Adds a "host:port" to dial and keep dialling, like a seed.
    pub fn add_address(&self, target: &str) {
        if self.inner.state().book.add_seed(target.trim()) {
            self.inner.dial_wakeup.notify_one();
        }
    }

    /// Closes the listener and every connection; all transport tasks end.
    pub fn shutdown(&self) {
        if !self.inner.cancel.is_cancelled() {
            info!("p2p shutting down");
        }
        self.inner.cancel.cancel();
    }
}

/// Encodes once for any number of peers; refuses what no peer would accept.
fn encode(msg: &Message) -> Option<Bytes> {
    checked_frame(msg.kind(), msg.encode())
}

fn checked_frame(kind: &str, bytes: Vec<u8>) -> Option<Bytes> {
    if bytes.len() > MAX_FRAME_BYTES {
        warn!(kind, size = bytes.len(), "message exceeds the frame limit; not sent");
        return None;
    }
    Some(Bytes::from(bytes))
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(&self, to: ValidatorIndex, frame: Bytes) -> bool {
        let st = self.state();
        match st.peers.get(&to) {
            Some(p) => p.push(frame),
            None => false,
        }
    }

    fn enqueue_all(&self, frame: &Bytes, except: Option<ValidatorIndex>) {
        let st = self.state();
        for (idx, p) in &st.peers {
            if Some(*idx) != except {
                p.push(frame.clone());
            }
        }
    }

    /// Records an offence; bans (and says so) once the threshold is reached.
    fn offence(&self, keys: &[BanKey], reason: &str) {
        if keys.is_empty() {
            return;
        }
        let policy = self.tuning.ban_policy();
        let banned = self.state().bans.offence(keys, policy, Instant::now());
        for key in banned {
            warn!(?key, secs = policy.duration.as_secs_f64(), reason, "banning repeat offender");
        }
    }

    fn backoff(&self) -> Backoff {
        self.tuning.backoff()
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: pause instead of spinning.
                if let Some(n) = inner.log_admission.hit() {
                    warn!(error = %e, events = n, "accept failed");
                }
                tokio::select! {
                    _ = inner.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        if inner.state().bans.refuses_connection(addr, Instant::now()) {
            debug!(%addr, "refusing connection from banned address");
            continue;
        }
        let ticket = match inner.admission.admit(addr.ip(), Instant::now()) {
            Ok((ticket, evicted)) => {
                if evicted {
                    if let Some(n) = inner.log_admission.hit() {
                        warn!(
                            limit = inner.tuning.max_pending,
                            events = n,
                            "too many inbound handshakes in progress; closing the oldest unidentified ones"
                        );
                    }
                }
                ticket
            }
            Err(admission::Denied::PerIp) => {
                if let Some(n) = inner.log_admission.hit() {
                    warn!(ip = %addr.ip(), limit = inner.tuning.max_pending_per_ip, events = n, "too many handshakes from one address; dropping connections");
                }
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            conn::run(inner, stream, Side::Inbound, Slot::Inbound(ticket)).await;
        });
    }
    debug!("p2p listener closed");
}

async fn dial_loop(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            _ = inner.dial_wakeup.notified() => {}
            _ = tokio::time::sleep(DIAL_TICK) => {}
        }
        let targets = {
            let mut guard = inner.state();
            let st = &mut *guard;
            let now = Instant::now();
            let (peers, bans) = (&st.peers, &st.bans);
            st.book.due(
                now,
                |v| peers.contains_key(&v),
                |t| t.parse::<SocketAddr>().is_ok_and(|a| bans.refuses_dial(a, now)),
            )
        };
        for target in targets {
            tokio::spawn(dial(inner.clone(), target));
        }
    }
    debug!("p2p dialer stopped");
}

/// Dials one address and, if that works, runs the connection until it ends; then updates
/// the address book's schedule for that address.
async fn dial(inner: Arc<Inner>, target: String) {
    let backoff = inner.backoff();
    let connected = tokio::select! {
        _ = inner.cancel.cancelled() => return,
        r = tokio::time::timeout(inner.tuning.handshake_timeout, connect(&inner, &target)) => r,
    };
    let stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%target, error = %e, "dial failed");
            inner.state().book.dial_failed(&target, backoff);
            return;
        }
        Err(_) => {
            debug!(%target, "dial timed out");
            inner.state().book.dial_failed(&target, backoff);
            return;
        }
    };
    let Ok(slot) = inner.outbound.clone().try_acquire_owned() else {
        inner.state().book.dial_failed(&target, backoff);
        return;
    };
    let started = Instant::now();
    let outcome =
        conn::run(inner.clone(), stream, Side::Outbound { target: target.clone() }, Slot::Outbound { _permit: slot })
            .await;
    let mut st = inner.state();
    match outcome {
        conn::Outcome::Refused => st.book.dial_failed(&target, backoff),
        conn::Outcome::Ourselves => st.book.forget(&target),
        conn::Outcome::Ended => st.book.session_ended(&target, started.elapsed(), backoff),
    }
}

/// Resolves `target` and connects to the first address that is not banned and answers.
async fn connect(inner: &Inner, target: &str) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no usable address");
    for addr in tokio::net::lookup_host(target).await? {
        if inner.state().bans.refuses_dial(addr, Instant::now()) {
            last = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "address is banned");
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}
