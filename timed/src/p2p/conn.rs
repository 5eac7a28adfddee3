//! One TCP connection: handshake, registration, then a reader loop (this task) and a writer
//! task fed by the peer's bounded send queue.

use super::ban::BanKey;
use super::message::{handshake_payload, Hello, HelloAck, Message, MAX_FRAME_BYTES, PROTOCOL_VERSION};
use super::{Inbound, Inner, MAX_PEERS_PER_MESSAGE};
use crate::api::PeerInfo;
use crate::chain::block::ValidatorIndex;
use crate::chain::crypto::{self, Domain, Hash256, PublicKey};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Bytes of the length prefix in front of every frame (LengthDelimitedCodec's default).
const FRAME_HEADER: u64 = 4;
/// Frames written before one flush, so a busy writer still flushes regularly.
const WRITE_BATCH: usize = 64;
/// A frame larger than this grew the connection's write buffer (FramedWrite flushes at 8 KiB,
/// so a buffer holds at most one frame more than that).
const LARGE_FRAME: u64 = 16 * 1024;
/// Flushes in a row without a large frame before a grown write buffer is given back, so it is
/// not given back in the middle of a burst.
const SMALL_FLUSHES: u32 = 32;

type Reader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;
type Writer = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_codec()
}

/// Which end opened the connection.
pub(super) enum Side {
    Inbound,
    Outbound { target: String },
}

/// The admission slot a connection holds until its handshake ends.
pub(super) enum Slot {
    Inbound(super::admission::Ticket),
    /// Held for its drop: frees the outbound handshake slot.
    Outbound {
        _permit: OwnedSemaphorePermit,
    },
}

/// How a connection ended, for the dialer's schedule.
pub(super) enum Outcome {
    /// The handshake failed.
    Refused,
    /// We dialled ourselves.
    Ourselves,
    /// The handshake succeeded; the connection has since closed (or lost a duplicate race).
    Ended,
}

/// Why a connection is refused or closed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("protocol version {0} (ours is {PROTOCOL_VERSION})")]
    Version(u32),
    #[error("chain id {0:?} is not ours")]
    ChainId(String),
    #[error("genesis hash {0} is not ours")]
    Genesis(Hash256),
    #[error("validator index {0} is not in the genesis")]
    UnknownValidator(ValidatorIndex),
    #[error("public key does not match genesis validator {0}")]
    KeyMismatch(ValidatorIndex),
    #[error("bad handshake signature")]
    BadSignature,
    #[error("connection to ourselves")]
    Ourselves,
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("undecodable frame: {0}")]
    Garbage(String),
    #[error("bad framing: {0}")]
    Framing(std::io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("peer is banned")]
    Banned,
    #[error("another handshake as validator {0} is in progress")]
    ClaimTaken(ValidatorIndex),
    #[error("closed to make room for other handshakes")]
    Evicted,
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

impl Refusal {
    /// Protocol violations count toward a ban; closed sockets, bans and self-dials do not.
    fn is_offence(&self) -> bool {
        !matches!(
            self,
            Refusal::Ourselves
                | Refusal::Banned
                | Refusal::Closed
                | Refusal::Io(_)
                | Refusal::ClaimTaken(_)
                | Refusal::Evicted
        )
    }
}

/// Who the peer claimed to be, once its Hello was read.
#[derive(Clone, Copy)]
struct Claimed {
    pubkey: PublicKey,
    /// Observed IP + announced listen port.
    listen: SocketAddr,
}

/// Byte counters of one connection, also feeding the node totals.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    recv: AtomicU64,
}

impl Counts {
    fn add_sent(&self, inner: &Inner, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        inner.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
    fn add_recv(&self, inner: &Inner, n: u64) {
        self.recv.fetch_add(n, Ordering::Relaxed);
        inner.bytes_recv.fetch_add(n, Ordering::Relaxed);
    }
}

/// What `peer_info` reports about a connection.
pub(super) struct PeerStats {
    pub(super) id: u64,
    addr: SocketAddr,
    listen: SocketAddr,
    inbound: bool,
    validator_id: String,
    conntime: u64,
    version: u32,
    counts: Counts,
    best_height: AtomicU64,
    /// Last round trip in microseconds; `u64::MAX` until the first pong.
    ping_micros: AtomicU64,
    #[cfg(test)]
    pub(super) local: SocketAddr,
}

impl PeerStats {
    pub(super) fn info(&self) -> PeerInfo {
        let ping = self.ping_micros.load(Ordering::Relaxed);
        PeerInfo {
            id: self.id,
            addr: self.addr.to_string(),
            listen_addr: self.listen.to_string(),
            inbound: self.inbound,
            validator_id: self.validator_id.clone(),
            bytessent: self.counts.sent.load(Ordering::Relaxed),
            bytesrecv: self.counts.recv.load(Ordering::Relaxed),
            pingtime: (ping != u64::MAX).then(|| ping as f64 / 1e6),
            conntime: self.conntime,
            version: self.version,
            best_height: self.best_height.load(Ordering::Relaxed),
        }
    }
}

/// A registered connection, as the rest of the transport sees it.
pub(super) struct PeerHandle {
    pub(super) stats: Arc<PeerStats>,
    queue: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
    /// Validator index of the side that dialled: decides which duplicate survives.
    dialer: ValidatorIndex,
    peer: ValidatorIndex,
}

impl PeerHandle {
    /// Queues a frame without waiting. See the module docs: a full queue disconnects.
    pub(super) fn push(&self, frame: Bytes) -> bool {
        push(&self.queue, &self.cancel, self.peer, frame)
    }

    /// Queues a frame that may be lost (transaction gossip: re-gossip and polls repair it),
    /// only while more than a quarter of the queue is free. Under load, gossip is dropped
    /// instead of filling the queue, and the room left keeps consensus and poll frames going:
    /// a busy peer is not disconnected for being slow.
    pub(super) fn push_droppable(&self, frame: Bytes) -> bool {
        if self.queue.capacity() <= self.queue.max_capacity() / 4 {
            tracing::trace!(peer = self.peer, "send queue three quarters full: gossip dropped");
            return false;
        }
        push(&self.queue, &self.cancel, self.peer, frame)
    }
}

fn push(queue: &mpsc::Sender<Bytes>, cancel: &CancellationToken, peer: ValidatorIndex, frame: Bytes) -> bool {
    match queue.try_send(frame) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            if !cancel.is_cancelled() {
                warn!(peer, capacity = queue.max_capacity(), "send queue full: peer too slow, disconnecting");
            }
            cancel.cancel();
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs a connection from the first byte to the end.
pub(super) async fn run(inner: Arc<Inner>, stream: TcpStream, side: Side, slot: Slot) -> Outcome {
    let (Ok(observed), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return Outcome::Refused;
    };
    // Consensus messages are small and latency-bound.
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut reader = FramedRead::new(rd, codec());
    let mut writer = FramedWrite::new(wr, codec());
    let conn_id = inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let inbound = matches!(side, Side::Inbound);
    let counts = Counts::default();
    let mut claimed = None;

    let ticket = match &slot {
        Slot::Inbound(t) => Some(t),
        Slot::Outbound { .. } => None,
    };
    let shake = handshake(&inner, &mut reader, &mut writer, observed, ticket, &counts, &mut claimed);
    let evicted = async {
        match ticket {
            Some(t) => t.evicted().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = inner.cancel.cancelled() => return Outcome::Refused,
        _ = evicted => Err(Refusal::Evicted),
        r = tokio::time::timeout(inner.tuning.handshake_timeout, shake) => r.unwrap_or(Err(Refusal::Timeout)),
    };
    drop(slot);
    let hello = match result {
        Ok(h) => h,
        Err(refusal) => {
            refused(&inner, observed, inbound, claimed, &refusal);
            return match refusal {
                Refusal::Ourselves => Outcome::Ourselves,
                _ => Outcome::Refused,
            };
        }
    };

    let peer = hello.validator_index;
    let listen = SocketAddr::new(observed.ip(), hello.listen_port);
    let validator_id = inner.validators[peer as usize].0.clone();
    let token = inner.cancel.child_token();
    let (queue_tx, queue_rx) = mpsc::channel(inner.tuning.send_queue.max(1));
    let stats = Arc::new(PeerStats {
        id: conn_id,
        addr: observed,
        listen,
        inbound,
        validator_id: validator_id.clone(),
        conntime: unix_now(),
        version: hello.protocol_version,
        counts,
        best_height: AtomicU64::new(hello.best_height),
        ping_micros: AtomicU64::new(u64::MAX),
        #[cfg(test)]
        local,
    });
    #[cfg(not(test))]
    let _ = local;
    let handle = PeerHandle {
        stats: stats.clone(),
        queue: queue_tx.clone(),
        cancel: token.clone(),
        dialer: if inbound { peer } else { inner.me },
        peer,
    };
    // The address others can dial this peer at.
    let dialable = if inbound { listen } else { observed };

    // Reserve the event slot before taking the lock, so that Connected/Disconnected of one
    // validator reach the application in the order the peer table changed.
    let permit = reserve(&inner).await;
    if token.is_cancelled() {
        return Outcome::Ended;
    }
    let registration = {
        let mut st = inner.state();
        st.book.bind(&dialable.to_string(), peer);
        if let Side::Outbound { target } = &side {
            st.book.bind(target, peer);
        }
        match st.peers.get(&peer) {
            Some(existing) if !keep_new(&inner, existing, handle.dialer) => Registration::Lost,
            Some(existing) => {
                existing.cancel.cancel();
                st.peers.insert(peer, handle);
                Registration::Replaced
            }
            None => {
                st.peers.insert(peer, handle);
                if let Some(p) = permit {
                    p.send(Inbound::Connected { peer, best_height: hello.best_height });
                }
                Registration::New
            }
        }
    };
    match registration {
        Registration::Lost => {
            debug!(peer, conn = conn_id, inbound, "duplicate connection; keeping the other one");
            return Outcome::Ended;
        }
        Registration::Replaced => {
            debug!(peer, conn = conn_id, inbound, "duplicate connection; this one replaces the other");
        }
        Registration::New => {
            info!(peer, id = %validator_id, addr = %observed, inbound, agent = %hello.user_agent, "peer connected");
            // Tell the others right away, so the mesh closes without waiting for their next
            // peer exchange round.
            if let Some(frame) = super::encode(&Message::Peers(vec![dialable.to_string()])) {
                inner.enqueue_all(&frame, Some(peer));
            }
        }
    }

    tokio::spawn(write_loop(writer, queue_rx, token.clone(), stats.clone(), inner.clone()));
    let keys = BanKey::for_offence(observed, Some(hello.pubkey), Some(listen));
    let end = session(&inner, &mut reader, &queue_tx, &token, &stats, peer).await;
    token.cancel();
    match &end {
        End::Refused(r) => {
            warn!(peer, addr = %observed, reason = %r, "disconnecting peer");
            inner.offence(&keys, &r.to_string());
        }
        End::PingTimeout => {
            warn!(peer, addr = %observed, "peer stopped answering pings; disconnecting")
        }
        End::Closed | End::Cancelled => {}
    }

    let permit = reserve(&inner).await;
    let mut st = inner.state();
    if st.peers.get(&peer).is_some_and(|h| h.stats.id == conn_id) {
        st.peers.remove(&peer);
        st.book.validator_lost(peer, inner.backoff());
        if let Some(p) = permit {
            p.send(Inbound::Disconnected { peer });
        }
        drop(st);
        info!(peer, id = %validator_id, addr = %observed, "peer disconnected");
        inner.dial_wakeup.notify_one();
    }
    Outcome::Ended
}

enum Registration {
    New,
    Replaced,
    Lost,
}

/// Whether a new connection to a validator replaces the registered one. Both ends must pick
/// the same survivor: the connection dialled by the lower validator index. When both were
/// dialled by the same side, that side only redials once it thinks the old one is dead, so
/// the new one wins.
fn keep_new(inner: &Inner, existing: &PeerHandle, new_dialer: ValidatorIndex) -> bool {
    if existing.dialer == new_dialer {
        return true;
    }
    new_dialer == inner.me.min(existing.peer)
}

/// A slot in the application's event queue; `None` if nobody listens or we are shutting down.
async fn reserve(inner: &Inner) -> Option<mpsc::Permit<'_, Inbound>> {
    tokio::select! {
        biased;
        _ = inner.cancel.cancelled() => None,
        p = inner.events.reserve() => p.ok(),
    }
}

/// Logs a failed handshake and counts it against the peer if it broke the protocol.
fn refused(inner: &Inner, observed: SocketAddr, inbound: bool, claimed: Option<Claimed>, refusal: &Refusal) {
    match refusal {
        Refusal::Ourselves => {
            warn!(addr = %observed, "refusing connection to ourselves; forgetting that address");
            let own = if inbound { claimed.map(|c| c.listen) } else { Some(observed) };
            if let Some(a) = own {
                inner.state().book.mark_self(a);
            }
        }
        r if r.is_offence() => {
            // Strangers can repeat this as fast as they can connect: one line per interval.
            if let Some(n) = inner.log_refused.hit() {
                warn!(addr = %observed, inbound, reason = %r, events = n, "refusing peer");
            }
            // A dialled address is dialable whatever the peer said; an inbound peer is only
            // identifiable on loopback once its Hello was read.
            let listen = if inbound { claimed.map(|c| c.listen) } else { Some(observed) };
            let keys = BanKey::for_offence(observed, claimed.map(|c| c.pubkey), listen);
            inner.offence(&keys, &r.to_string());
        }
        r => debug!(addr = %observed, inbound, reason = %r, "handshake aborted"),
    }
}

async fn read_frame(inner: &Inner, reader: &mut Reader, counts: &Counts) -> Result<Message, Refusal> {
    match reader.next().await {
        None => Err(Refusal::Closed),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(Refusal::Framing(e)),
        Some(Err(e)) => Err(Refusal::Io(e)),
        Some(Ok(frame)) => {
            let n = frame.len() as u64 + FRAME_HEADER;
            counts.add_recv(inner, n);
            let msg = Message::decode(&frame).map_err(|e| Refusal::Garbage(e.to_string()))?;
            inner.kinds.add(msg.kind_index(), super::RECEIVED_BYTES, n);
            Ok(msg)
        }
    }
}

async fn write_now(inner: &Inner, writer: &mut Writer, counts: &Counts, msg: &Message) -> Result<(), Refusal> {
    let frame = Bytes::from(msg.encode());
    let n = frame.len() as u64 + FRAME_HEADER;
    writer.send(frame).await.map_err(Refusal::Io)?;
    counts.add_sent(inner, n);
    inner.kinds.add(msg.kind_index(), super::SENT_BYTES, n);
    Ok(())
}

/// Both sides send Hello at once, check the other's, then prove their key by signing the
/// other's nonce.
async fn handshake(
    inner: &Inner,
    reader: &mut Reader,
    writer: &mut Writer,
    observed: SocketAddr,
    ticket: Option<&super::admission::Ticket>,
    counts: &Counts,
    claimed: &mut Option<Claimed>,
) -> Result<Hello, Refusal> {
    let inbound = ticket.is_some();
    let my_key = inner.identity.public();
    let nonce: [u8; 32] = rand::random();
    let mine = Hello {
        protocol_version: PROTOCOL_VERSION,
        chain_id: inner.chain_id.clone(),
        genesis_hash: inner.genesis_hash,
        validator_index: inner.me,
        validator_id: inner.my_id.clone(),
        pubkey: my_key,
        nonce,
        listen_port: inner.local_addr.port(),
        best_height: *inner.best_height.borrow(),
        user_agent: inner.user_agent.clone(),
    };
    write_now(inner, writer, counts, &Message::Hello(Box::new(mine))).await?;

    let hello = match read_frame(inner, reader, counts).await? {
        Message::Hello(h) => *h,
        other => return Err(Refusal::Unexpected { expected: "hello", got: other.kind() }),
    };
    let listen = SocketAddr::new(observed.ip(), hello.listen_port);
    *claimed = Some(Claimed { pubkey: hello.pubkey, listen });
    let ban_addr = if inbound { listen } else { observed };
    if inner.state().bans.refuses_node(&hello.pubkey, ban_addr, Instant::now()) {
        return Err(Refusal::Banned);
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Refusal::Version(hello.protocol_version));
    }
    if hello.chain_id != inner.chain_id {
        return Err(Refusal::ChainId(hello.chain_id));
    }
    if hello.genesis_hash != inner.genesis_hash {
        return Err(Refusal::Genesis(hello.genesis_hash));
    }
    let idx = hello.validator_index;
    if idx == inner.me && hello.pubkey == my_key {
        return Err(Refusal::Ourselves);
    }
    let Some((_, genesis_key)) = inner.validators.get(idx as usize) else {
        return Err(Refusal::UnknownValidator(idx));
    };
    if *genesis_key != hello.pubkey || idx == inner.me {
        return Err(Refusal::KeyMismatch(idx));
    }
    if ticket.is_some_and(|t| !t.claim(idx)) {
        return Err(Refusal::ClaimTaken(idx));
    }

    let signature = inner.identity.sign(
        Domain::Handshake,
        &inner.chain_id,
        &handshake_payload(&hello.nonce, &my_key, &hello.pubkey),
    );
    write_now(inner, writer, counts, &Message::HelloAck(HelloAck { signature })).await?;
    let ack = match read_frame(inner, reader, counts).await? {
        Message::HelloAck(a) => a,
        other => return Err(Refusal::Unexpected { expected: "hello_ack", got: other.kind() }),
    };
    let payload = handshake_payload(&nonce, &hello.pubkey, &my_key);
    if !crypto::verify(&hello.pubkey, Domain::Handshake, &inner.chain_id, &payload, &ack.signature) {
        return Err(Refusal::BadSignature);
    }
    Ok(hello)
}

/// Why an established connection ended.
enum End {
    /// The peer closed it (or the socket failed).
    Closed,
    /// We closed it: shutdown, replaced by a duplicate, or too slow.
    Cancelled,
    PingTimeout,
    /// The peer broke the protocol.
    Refused(Refusal),
}

/// Reads frames until the connection ends; answers transport messages itself and passes
/// application messages on.
async fn session(
    inner: &Inner,
    reader: &mut Reader,
    queue: &mpsc::Sender<Bytes>,
    token: &CancellationToken,
    stats: &PeerStats,
    peer: ValidatorIndex,
) -> End {
    let tuning = &inner.tuning;
    // Intervals must not be zero (tokio panics on that).
    let ping_every = tuning.ping_interval.max(Duration::from_millis(1));
    let exchange_every = tuning.peer_exchange_interval.max(Duration::from_millis(1));
    let send = |msg: &Message| super::encode(msg).is_some_and(|f| push(queue, token, peer, f));
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first exchange happens right away; the interval only drives the later ones.
    let start = tokio::time::Instant::now() + exchange_every;
    let mut exchange = tokio::time::interval_at(start, exchange_every);
    exchange.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    send(&Message::GetPeers);
    let pong_deadline = tuning.ping_interval.saturating_mul(tuning.missed_pongs.max(1));
    // One ping in flight at a time: (nonce, sent at).
    let mut pending: Option<(u64, Instant)> = None;

    loop {
        let frame = tokio::select! {
            biased;
            _ = token.cancelled() => return End::Cancelled,
            _ = ping.tick() => {
                match pending {
                    Some((_, at)) if at.elapsed() >= pong_deadline => return End::PingTimeout,
                    Some(_) => {}
                    None => {
                        let nonce = rand::random();
                        pending = Some((nonce, Instant::now()));
                        send(&Message::Ping(nonce));
                    }
                }
                continue;
            }
            _ = exchange.tick() => {
                send(&Message::GetPeers);
                continue;
            }
            f = read_frame(inner, reader, &stats.counts) => f,
        };
        let msg = match frame {
            Ok(m) => m,
            Err(Refusal::Closed) | Err(Refusal::Io(_)) => return End::Closed,
            Err(r) => return End::Refused(r),
        };
        match msg {
            Message::Ping(n) => {
                send(&Message::Pong(n));
            }
            Message::Pong(n) => {
                if let Some((expected, at)) = pending {
                    if n == expected {
                        let rtt = at.elapsed().as_micros().min(u64::MAX as u128 - 1) as u64;
                        stats.ping_micros.store(rtt, Ordering::Relaxed);
                        pending = None;
                    }
                }
            }
            Message::GetPeers => {
                let addrs = inner.state().book.shareable(MAX_PEERS_PER_MESSAGE);
                send(&Message::Peers(addrs));
            }
            Message::Peers(addrs) => learn(inner, &addrs),
            Message::PollQuery { id, txids } if inner.poll_answerer.get().is_some() => {
                // Oversized queries get no answer, as from the engine.
                if let (Some(answerer), true) =
                    (inner.poll_answerer.get(), txids.len() <= crate::consensus::messages::MAX_POLL_TXIDS)
                {
                    let prefs = answerer.answer(peer, &txids);
                    send(&Message::PollReply { id, prefs });
                }
            }
            m @ (Message::Hello(_) | Message::HelloAck(_)) => {
                return End::Refused(Refusal::Unexpected { expected: "no handshake message", got: m.kind() });
            }
            msg => {
                if let Message::Status(s) = &msg {
                    stats.best_height.store(s.height, Ordering::Relaxed);
                }
                tokio::select! {
                    biased;
                    _ = token.cancelled() => return End::Cancelled,
                    // If the application dropped its receiver there is nobody to tell.
                    _ = inner.events.send(Inbound::Message { from: peer, msg }) => {}
                }
            }
        }
    }
}

/// Adds gossiped addresses to the book; wakes the dialer if any is new.
fn learn(inner: &Inner, addrs: &[String]) {
    let mut new = 0usize;
    {
        let mut st = inner.state();
        for a in addrs.iter().take(MAX_PEERS_PER_MESSAGE) {
            if let Ok(addr) = a.parse::<SocketAddr>() {
                if st.book.learn(addr) {
                    new += 1;
                }
            }
        }
    }
    if new > 0 {
        debug!(new, "learned peer addresses");
        inner.dial_wakeup.notify_one();
    }
}

/// When a connection's write buffer is given back. It grows to hold the largest frame written
/// and keeps that size for good otherwise: after a burst of relayed transactions, hundreds of
/// kilobytes per connection, about half of a node's heap (docs/benchmarks.md, run AF).
#[derive(Debug, Default)]
struct BufferKeeper {
    grown: bool,
    small: u32,
}

impl BufferKeeper {
    /// After a flush whose largest frame was `largest` bytes: true when the buffer is to be
    /// replaced by an empty one.
    fn release_after(&mut self, largest: u64) -> bool {
        if largest > LARGE_FRAME {
            (self.grown, self.small) = (true, 0);
            return false;
        }
        if !self.grown {
            return false;
        }
        self.small += 1;
        if self.small < SMALL_FLUSHES {
            return false;
        }
        self.grown = false;
        true
    }
}

/// Drains the send queue into the socket until the connection is cancelled or fails.
async fn write_loop(
    mut sink: Writer,
    mut rx: mpsc::Receiver<Bytes>,
    token: CancellationToken,
    stats: Arc<PeerStats>,
    inner: Arc<Inner>,
) {
    let work = async {
        // Queued frames are already encoded: their tag names the kind. Counted once written,
        // like the totals.
        let mut sent: Vec<(Option<usize>, u64)> = Vec::with_capacity(WRITE_BATCH);
        let kind_and_size = |frame: &Bytes| (Message::frame_kind(frame), frame.len() as u64 + FRAME_HEADER);
        let mut keeper = BufferKeeper::default();
        while let Some(first) = rx.recv().await {
            sent.push(kind_and_size(&first));
            sink.feed(first).await?;
            for _ in 1..WRITE_BATCH {
                let Ok(more) = rx.try_recv() else { break };
                sent.push(kind_and_size(&more));
                sink.feed(more).await?;
            }
            SinkExt::<Bytes>::flush(&mut sink).await?;
            if keeper.release_after(sent.iter().map(|(_, bytes)| *bytes).max().unwrap_or(0)) {
                // Flushed, so empty: a new buffer drops the burst's allocation.
                *sink.write_buffer_mut() = BytesMut::new();
            }
            // Totals first: a scrape reads the kinds first, so they never exceed the totals.
            stats.counts.add_sent(&inner, sent.iter().map(|(_, bytes)| bytes).sum());
            for (kind, bytes) in sent.drain(..) {
                if let Some(kind) = kind {
                    inner.kinds.add(kind, super::SENT_BYTES, bytes);
                }
            }
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        _ = token.cancelled() => {}
        r = work => {
            if let Err(e) = r {
                debug!(conn = stats.id, error = %e, "write failed");
            }
        }
    }
    // Make the reader stop too.
    token.cancel();
    // Give a peer being closed on purpose a moment to receive what was already queued.
    let _ = tokio::time::timeout(Duration::from_millis(100), SinkExt::<Bytes>::close(&mut sink)).await;
}

#[cfg(test)]
mod tests {
    use super::{BufferKeeper, LARGE_FRAME, SMALL_FLUSHES};

    #[test]
    fn a_grown_write_buffer_is_given_back_once_after_a_quiet_spell() {
        let mut k = BufferKeeper::default();
        // Small frames never grew it: nothing to give back, however long.
        assert!((0..3 * SMALL_FLUSHES).all(|_| !k.release_after(LARGE_FRAME)));
        // A large frame, then a large one in the middle of the quiet spell starts it again.
        assert!(!k.release_after(LARGE_FRAME + 1));
        assert!((1..SMALL_FLUSHES).all(|_| !k.release_after(100)));
        assert!(!k.release_after(10 * LARGE_FRAME));
        assert!((1..SMALL_FLUSHES).all(|_| !k.release_after(100)));
        assert!(k.release_after(100), "given back after {SMALL_FLUSHES} flushes without a large frame");
        // Once: the new buffer has not grown.
        assert!((0..3 * SMALL_FLUSHES).all(|_| !k.release_after(100)));
    }
}
