//! The consensus engine: one task that owns block agreement (Tendermint-style rounds over TSDC
//! slots), drives Snowball polls, answers peers, sends heartbeats and syncs missing blocks.
//! Everything that changes consensus state happens here, in order, so there are no races
//! between a commit and a vote; it is also the only writer of the mempool and Snowball.
//!
//! One [`Engine`] value, one task; its methods are grouped by concern in the submodules:
//! `agreement` (heights, rounds, proposals, votes, commits), `sync` (fetching blocks),
//! `txs` (admission, relay, verification, finality), `polls` (Snowball sampling and answers),
//! `heartbeats` (liveness). This file has the state, the task loop and the dispatch.

mod agreement;
mod heartbeats;
mod polls;
mod sync;
mod txs;

pub use polls::Answerer;
use txs::{Holders, Relay};

use super::{now_ms, Shared, Submission};
use crate::chain::block::verify_cert;
use crate::chain::validate::{Signatures, TxError};
use crate::chain::{Block, CommitCert, IdentifiedTx, Transaction, Txid, ValidatorIndex};
use crate::consensus::bft::{Action, Bft, BftParams, TimeoutKind};
use crate::consensus::messages::{Attestation, Heartbeat, Preference, Proposal, Vote, VoteKind, MAX_POLL_TXIDS};
use crate::mempool::{Added, TxStatus};
use crate::p2p::message::{ChainStatus, Message, MAX_BLOCKS_PER_REPLY, MAX_TXS_PER_MESSAGE};
use crate::p2p::Inbound;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use rand::seq::SliceRandom;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long a block request may stay unanswered before another peer is asked.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Most consensus messages kept for the next height while this node is still finishing one.
const MAX_BUFFERED: usize = 1024;
/// Most transactions held back waiting for an undecided parent.
const MAX_ORPHANS: usize = 10_000;
/// Most transactions re-sent at once (to a new peer, or to all when they linger).
const MAX_REGOSSIP: usize = 256;
/// Finality latencies kept for p50/p99.
const LATENCY_WINDOW: usize = 1000;
/// Accepted transactions that make a finality write due even while events keep coming.
const FINALITY_BATCH: usize = 4096;
/// Longest an accepted transaction waits for its finality write while events keep coming.
const FINALITY_LINGER: Duration = Duration::from_millis(10);
/// A status tick announces the tip only when nothing did for this long: every commit already
/// announces it, so on a moving chain the tick's status only repeated what peers knew.
const STATUS_KEEPALIVE: Duration = Duration::from_millis(2500);

/// The kinds of work the engine task does, for `timed_engine_busy_seconds_total`: the task is
/// one serial loop, so where its time goes is where the node's consensus ceiling comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Submission,
    PeerTxs,
    VerifiedTxs,
    PollQuery,
    PollReply,
    Consensus,
    Blocks,
    Heartbeat,
    OtherMessage,
    Connection,
    Timers,
    PollRound,
    HeartbeatTick,
    StatusTick,
    Relay,
    /// The durable write of what polls accepted, one per batch (group commit).
    FinalityWrite,
}

impl Stage {
    const ALL: [Stage; 16] = [
        Stage::Submission,
        Stage::PeerTxs,
        Stage::VerifiedTxs,
        Stage::PollQuery,
        Stage::PollReply,
        Stage::Consensus,
        Stage::Blocks,
        Stage::Heartbeat,
        Stage::OtherMessage,
        Stage::Connection,
        Stage::Timers,
        Stage::PollRound,
        Stage::HeartbeatTick,
        Stage::StatusTick,
        Stage::Relay,
        Stage::FinalityWrite,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Submission => "submission",
            Stage::PeerTxs => "peer_txs",
            Stage::VerifiedTxs => "verified_txs",
            Stage::PollQuery => "poll_query",
            Stage::PollReply => "poll_reply",
            Stage::Consensus => "consensus",
            Stage::Blocks => "blocks",
            Stage::Heartbeat => "heartbeat",
            Stage::OtherMessage => "other_message",
            Stage::Connection => "connection",
            Stage::Timers => "timers",
            Stage::PollRound => "poll_round",
            Stage::HeartbeatTick => "heartbeat_tick",
            Stage::StatusTick => "status_tick",
            Stage::Relay => "relay",
            Stage::FinalityWrite => "finality_write",
        }
    }

    fn of(ev: &Inbound) -> Stage {
        match ev {
            Inbound::Connected { .. } | Inbound::Disconnected { .. } => Stage::Connection,
            Inbound::Message { msg, .. } => match msg {
                Message::Tx(_) | Message::Txs(_) => Stage::PeerTxs,
                Message::Proposal(_) | Message::Vote(_) => Stage::Consensus,
                Message::GetBlocks { .. } | Message::Blocks(_) => Stage::Blocks,
                Message::PollQuery { .. } => Stage::PollQuery,
                Message::PollReply { .. } => Stage::PollReply,
                Message::Heartbeat(_) | Message::Attestation(_) => Stage::Heartbeat,
                _ => Stage::OtherMessage,
            },
        }
    }
}

/// The engine's handles on its stage counters, looked up once.
struct StageClock {
    busy: Vec<prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>>,
    events: Vec<prometheus_client::metrics::counter::Counter>,
}

impl StageClock {
    fn new(m: &crate::metrics::Metrics) -> Self {
        let label = |s: Stage| crate::metrics::StageLabel { stage: s.name() };
        StageClock {
            busy: Stage::ALL.iter().map(|s| m.engine_busy.get_or_create(&label(*s)).clone()).collect(),
            events: Stage::ALL.iter().map(|s| m.engine_events.get_or_create(&label(*s)).clone()).collect(),
        }
    }

    fn record(&self, stage: Stage, since: Instant) {
        let i = stage as usize;
        self.busy[i].inc_by(since.elapsed().as_secs_f64());
        self.events[i].inc();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Bft(TimeoutKind, u64, u32),
    StartHeight(u64),
}

struct Poll {
    txids: Vec<Txid>,
    asked: Vec<ValidatorIndex>,
    replies: HashMap<ValidatorIndex, Vec<Preference>>,
    deadline: Instant,
    sent_at: Instant,
    k: usize,
}

struct Engine {
    s: Arc<Shared>,
    bft: Bft,
    /// Height the state machine works on (tip + 1), and whether it has started.
    height: u64,
    started: bool,
    parent: Block,
    ranking: Vec<ValidatorIndex>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    buffered: Vec<(ValidatorIndex, Message)>,
    /// Precommits for the last committed block, growing as late ones arrive: the next block
    /// carries them as its last commit.
    last_commit: Option<CommitCert>,
    polls: HashMap<u64, Poll>,
    next_poll_id: u64,
    in_flight: HashSet<Txid>,
    sync_inflight: Option<(ValidatorIndex, Instant)>,
    peer_heights: HashMap<ValidatorIndex, u64>,
    last_heartbeat: Option<Heartbeat>,
    /// This node's latest proposal at the current height. With its latest votes it is sent
    /// again to peers that connect later and re-broadcast while the height is undecided:
    /// agreement assumes every message eventually arrives, and a peer that was not yet
    /// connected would otherwise never see them.
    own_proposal: Option<Message>,
    height_started_at: Instant,
    /// Digests of proposals and votes already handled at this height, so the re-broadcasts
    /// cost a hash, not a signature check.
    seen: HashSet<crate::chain::Hash256>,
    /// Status ticks left during which our last heartbeat is sent again. A connection can be
    /// replaced silently when two nodes dial each other, and a heartbeat sent on the losing one
    /// is lost: without it the peer would not sample us for a whole heartbeat interval.
    heartbeat_resends: u32,
    /// Whether the poll tick may have work: set when a transaction enters Snowball, cleared by
    /// a tick that found nothing undecided and no poll in flight. A flag, not a look at
    /// Snowball, because the task loop asks on every event.
    poll_work: bool,
    /// When the tip was last announced (by a commit or a status tick).
    status_sent: Instant,
    /// The tip at the last status tick, if a peer was one block ahead of it then.
    one_behind_at: Option<u64>,
    /// Transactions whose parent is still undecided here, by parent txid, with their signature
    /// verdict: they are submitted again when the parent becomes final instead of being
    /// refused for missing inputs.
    orphans: HashMap<Txid, Vec<(IdentifiedTx, bool)>>,
    orphan_count: usize,
    /// Transactions to relay, sent as `Txs` batches once the oldest has waited `RELAY_WINDOW`
    /// or a message is full.
    relay: Relay,
    /// Peer transactions whose signatures the worker pool checked come back through here.
    verified: mpsc::UnboundedSender<(ValidatorIndex, Vec<(IdentifiedTx, bool)>)>,
    /// One verification job per core at a time.
    verify_gate: Arc<tokio::sync::Semaphore>,
    /// Peer transactions on the worker pool now: the same transaction relayed by several peers
    /// is verified once, not once per copy. With the time each went in (a job that never came
    /// back, a panic, must not bar its transactions for good) and every peer that sent a copy
    /// meanwhile: none of them is sent it again.
    verifying: HashMap<Txid, (Instant, Holders)>,
    /// Accepted by Snowball, waiting for the finality write: every poll reply that arrives
    /// while the engine is busy shares one fsync instead of paying its own.
    finalizing: Vec<Txid>,
    finalizing_since: Instant,
    clock: StageClock,
}

pub fn restore_finalized(s: &Shared) -> anyhow::Result<()> {
    let pending = s.ledger.store.finalized_pending()?;
    let (tip, _) = s.ledger.store.tip()?;
    let mut st = s.state();
    for (tx, at_ms) in pending {
        let tx = IdentifiedTx::new(tx);
        let txid = tx.txid();
        match s.pool_add(&mut st.mempool, tx, crate::chain::validate::Signatures::Verify, &|| false, tip + 1, at_ms) {
            Ok(_) => {
                st.mempool.mark_finalized(&txid, at_ms);
            }
            Err(e) => tracing::warn!(%txid, "finalized transaction from the store no longer applies: {e}"),
        }
    }
    Ok(())
}

pub async fn run(
    s: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut submissions: mpsc::Receiver<Submission>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let n = s.ledger.genesis.validators.len();
    let bt = s.ledger.genesis.block_time_secs * 1000;
    let params = BftParams {
        n,
        quorum: s.ledger.genesis.quorum(),
        me: Some(s.me),
        timeout_propose_ms: s.cfg.propose_timeout_ms,
        timeout_prevote_ms: (bt / 5).clamp(200, 2000),
        timeout_precommit_ms: (bt / 5).clamp(200, 2000),
        timeout_delta_ms: (bt / 10).clamp(100, 1000),
    };
    let parent = s.ledger.tip_block()?;
    let (verified_tx, mut verified_rx) = mpsc::unbounded_channel();
    let mut e = Engine {
        bft: Bft::new(params),
        height: parent.height() + 1,
        started: false,
        ranking: vec![],
        parent,
        timers: BinaryHeap::new(),
        buffered: vec![],
        last_commit: None,
        polls: HashMap::new(),
        next_poll_id: 1,
        in_flight: HashSet::new(),
        sync_inflight: None,
        peer_heights: HashMap::new(),
        last_heartbeat: None,
        own_proposal: None,
        height_started_at: Instant::now(),
        seen: HashSet::new(),
        heartbeat_resends: 3,
        poll_work: true,
        status_sent: Instant::now(),
        one_behind_at: None,
        orphans: HashMap::new(),
        orphan_count: 0,
        relay: Relay::default(),
        verified: verified_tx,
        verifying: HashMap::new(),
        finalizing: Vec::new(),
        finalizing_since: Instant::now(),
        // Not `--threads`: with one runtime worker, one check at a time left gossip waiting
        // behind it (docs/benchmarks.md, run S).
        verify_gate: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        )),
        clock: StageClock::new(&s.metrics),
        s,
    };
    if e.parent.height() > 0 {
        e.last_commit = e.s.ledger.store.cert_at(e.parent.height())?;
    }
    e.schedule_height()?;
    let poll_every = Duration::from_millis(e.s.cfg.avalanche.poll_interval_ms.max(5));
    let mut poll_tick = tokio::time::interval(poll_every);
    poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let poll_grid = tokio::time::Instant::now();
    let mut polling = true;
    let mut hb_tick = tokio::time::interval(Duration::from_millis(e.s.cfg.heartbeat_ms));
    let mut status_tick = tokio::time::interval(Duration::from_millis((bt / 2).clamp(500, 3000)));
    loop {
        if e.poll_work && !polling {
            // Back on the tick's own grid, as if it had ticked all along: the first transaction
            // after a quiet spell waits for the tick like the others, and polls batch as before.
            let period = poll_every.as_nanos().max(1);
            let next = (poll_grid.elapsed().as_nanos() / period + 1) * period;
            poll_tick.reset_at(poll_grid + Duration::from_nanos(next as u64));
        }
        polling = e.poll_work;
        let sleep = sleep_until_or_never(e.timers.peek().map(|Reverse((at, _))| *at));
        let relay_wait = sleep_until_or_never(e.relay.due());
        // The clock starts once an event is in hand: waiting is not work.
        let stage = tokio::select! {
            _ = stop.changed() => break,
            ev = inbound.recv() => match ev {
                Some(ev) => {
                    let (stage, t) = (Stage::of(&ev), Instant::now());
                    e.on_inbound(ev)?;
                    (stage, t)
                }
                None => break,
            },
            Some(sub) = submissions.recv() => {
                let t = Instant::now();
                e.on_submission(sub);
                (Stage::Submission, t)
            }
            Some((from, txs)) = verified_rx.recv() => {
                let t = Instant::now();
                e.on_verified_txs(from, txs);
                (Stage::VerifiedTxs, t)
            }
            _ = sleep => {
                let t = Instant::now();
                e.fire_timers()?;
                (Stage::Timers, t)
            }
            _ = relay_wait => {
                let t = Instant::now();
                e.flush_relay();
                (Stage::Relay, t)
            }
            // Off while nothing is undecided and no poll waits for answers: an idle node
            // then wakes for its timers and its peers only, not 50 times a second.
            _ = poll_tick.tick(), if polling => {
                let t = Instant::now();
                e.poll_round();
                (Stage::PollRound, t)
            }
            _ = hb_tick.tick() => {
                let t = Instant::now();
                e.send_heartbeat();
                (Stage::HeartbeatTick, t)
            }
            _ = status_tick.tick() => {
                let t = Instant::now();
                e.status_round();
                (Stage::StatusTick, t)
            }
        };
        e.clock.record(stage.0, stage.1);
        let idle = inbound.is_empty() && submissions.is_empty() && verified_rx.is_empty();
        if e.finality_due(idle) {
            e.flush_finality();
        }
        if e.relay.is_full() {
            let t = Instant::now();
            e.flush_relay();
            e.clock.record(Stage::Relay, t);
        }
    }
    // Accepted but not yet written: write them, so they are not polled again after a restart.
    e.flush_finality();
    Ok(())
}

impl Engine {
    fn n(&self) -> usize {
        self.s.ledger.genesis.validators.len()
    }

    fn on_inbound(&mut self, ev: Inbound) -> anyhow::Result<()> {
        match ev {
            Inbound::Connected { peer, best_height } => {
                self.peer_heights.insert(peer, best_height);
                self.heartbeat_resends = 3;
                if let Some(hb) = &self.last_heartbeat {
                    self.s.p2p.send(peer, Message::Heartbeat(hb.clone()));
                }
                for m in self.own_consensus_msgs() {
                    self.s.p2p.send(peer, m);
                }
                // Transactions gossiped before this peer was connected would never reach it,
                // and polls would count it as not knowing them.
                let pooled = self.pooled_txs(MAX_REGOSSIP, Duration::ZERO);
                if !pooled.is_empty() {
                    self.s.p2p.send_gossip(peer, Message::Txs(pooled));
                }
                if best_height > self.parent.height() {
                    self.request_sync();
                }
            }
            Inbound::Disconnected { peer } => {
                if self.sync_inflight.is_some_and(|(p, _)| p == peer) {
                    self.sync_inflight = None;
                }
            }
            Inbound::Message { from, msg } => match msg {
                Message::Status(st) => {
                    self.peer_heights.insert(from, st.height);
                    // One ahead is what every commit looks like from a node whose last
                    // precommit is still on its way: it fetched a block it then committed
                    // itself (about one sync in two seconds, idle, at 1 s blocks). A node
                    // really one behind catches up at the status ticks.
                    if st.height > self.parent.height() + 1 {
                        self.request_sync();
                    }
                }
                Message::Tx(tx) => self.on_peer_txs(from, vec![*tx]),
                Message::Txs(txs) => self.on_peer_txs(from, txs),
                Message::Proposal(_) | Message::Vote(_) => self.on_consensus(from, msg)?,
                Message::GetBlocks { from: a, to } => {
                    let to = to.min(a.saturating_add(MAX_BLOCKS_PER_REPLY - 1));
                    if a <= to {
                        let blocks = self.s.ledger.store.blocks_range(a, to)?;
                        self.s.p2p.send(from, Message::Blocks(blocks));
                    }
                }
                Message::Blocks(blocks) => self.on_blocks(from, blocks)?,
                Message::PollQuery { id, txids } => self.answer_poll(from, id, txids),
                Message::PollReply { id, prefs } => self.on_poll_reply(from, id, prefs),
                Message::Heartbeat(hb) => self.on_heartbeat(hb),
                Message::Attestation(a) => self.on_attestation(a),
                _ => {}
            },
        }
        Ok(())
    }

    fn announce_tip(&mut self) {
        self.s.broadcast(Message::Status(ChainStatus { height: self.parent.height(), tip: self.parent.hash() }));
        self.status_sent = Instant::now();
    }

    fn status_round(&mut self) {
        if self.started && self.height_started_at.elapsed() > Duration::from_secs(1) {
            for m in self.own_consensus_msgs() {
                self.s.broadcast(m);
            }
        }
        if self.heartbeat_resends > 0 {
            self.heartbeat_resends -= 1;
            if let Some(hb) = &self.last_heartbeat {
                self.s.broadcast(Message::Heartbeat(hb.clone()));
            }
        }
        // Undecided transactions that have waited a while are gossiped again, in case a peer
        // missed them (a dropped connection, a full send queue).
        let lingering = self.pooled_txs(MAX_REGOSSIP, Duration::from_secs(3));
        if !lingering.is_empty() {
            self.s.p2p.broadcast_gossip(Message::Txs(lingering));
        }
        let tip = self.parent.height();
        if self.status_sent.elapsed() >= STATUS_KEEPALIVE {
            self.announce_tip();
        }
        // Two ahead is behind; one ahead only when it was so at the last tick as well, with
        // no commit since: otherwise the commit is most likely a precommit away.
        let best = self.peer_heights.values().copied().max().unwrap_or(0);
        let one_behind = (best == tip + 1).then_some(tip);
        if best > tip + 1 || (one_behind.is_some() && one_behind == self.one_behind_at) {
            self.request_sync();
        }
        self.one_behind_at = one_behind;
        // Polls past their deadline are finished by `poll_round`; here only transactions expire.
        let expired_txs = self.s.state().snowball.expire(Instant::now());
        if !expired_txs.is_empty() {
            let mut st = self.s.state();
            for t in &expired_txs {
                st.mempool.reject(t, TxError::Expired);
            }
            drop(st);
            self.s.metrics.tx_rejected.inc_by(expired_txs.len() as u64);
            self.drop_orphans(&expired_txs);
            self.s.finality_changed.notify_waiters();
        }
        if let Some(stale) = Instant::now().checked_sub(Duration::from_secs(10)) {
            self.verifying.retain(|_, (since, _)| *since > stale);
        }
        self.release_memory();
    }

    /// Once a burst is over, gives its memory back: old finality times are forgotten, maps
    /// that kept their peak capacity shrink, and the allocator returns the freed pages.
    fn release_memory(&mut self) {
        let shrank = {
            let mut st = self.s.state();
            let cutoff = now_ms().saturating_sub(super::FINALITY_KEEP_MS);
            while let Some(old) = st.finality_order.front().copied() {
                if st.finality_ms.get(&old).is_some_and(|t| t.at_ms >= cutoff) {
                    break;
                }
                st.finality_order.pop_front();
                st.finality_ms.remove(&old);
            }
            let mut shrank = st.mempool.shrink_if_sparse();
            shrank |= st.snowball.shrink_if_sparse();
            let cap = st.finality_ms.capacity();
            if cap > 1024 && st.finality_ms.len() < cap / 4 {
                st.finality_ms.shrink_to_fit();
                st.finality_order.shrink_to_fit();
                shrank = true;
            }
            shrank
        };
        if shrank {
            trim_heap();
        }
    }
}

/// Waits until `at`, or for ever when there is nothing to wait for.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Returns free heap pages to the kernel. glibc keeps what a burst freed in its arenas, so
/// without this a node stayed at its peak RSS long after the load ended.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Actions in logs without whole blocks.
struct ActionSummary<'a>(&'a Action);

impl std::fmt::Debug for ActionSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Action::Propose { round, valid_round, valid_block } => {
                write!(f, "propose r{round} valid_round={valid_round:?} reuse={}", valid_block.is_some())
            }
            Action::Vote { kind, round, block_hash } => write!(f, "{kind:?} r{round} {block_hash:?}"),
            Action::ScheduleTimeout { kind, round, after_ms, .. } => {
                write!(f, "timeout {kind:?} r{round} in {after_ms}ms")
            }
            Action::Commit { round, block, .. } => write!(f, "commit r{round} {:?}", block.hash()),
        }
    }
}

/// Median and 99th percentile of recent finality latencies.
pub fn latency_percentiles(samples: &std::collections::VecDeque<u64>) -> (Option<u64>, Option<u64>) {
    if samples.is_empty() {
        return (None, None);
    }
    let mut v: Vec<u64> = samples.iter().copied().collect();
    v.sort_unstable();
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (Some(pick(0.5)), Some(pick(0.99)))
}
