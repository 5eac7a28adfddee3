//! The consensus engine: one task that owns block agreement (Tendermint-style rounds over TSDC
//! slots), drives Snowball polls, answers peers, sends heartbeats and syncs missing blocks.
//! Everything that changes consensus state happens here, in order, so there are no races
//! between a commit and a vote.

use super::{now_ms, Shared, Submission};
use crate::chain::block::verify_cert;
use crate::chain::validate::{Signatures, TxError};
use crate::chain::{Block, CommitCert, Transaction, Txid, ValidatorIndex};
use crate::consensus::bft::{Action, Bft, BftParams, TimeoutKind};
use crate::consensus::messages::{Attestation, Heartbeat, Preference, Proposal, Vote, VoteKind, MAX_POLL_TXIDS};
use crate::mempool::{Added, TxStatus};
use crate::p2p::message::{ChainStatus, Message, MAX_BLOCKS_PER_REPLY, MAX_TXS_PER_MESSAGE};
use crate::p2p::Inbound;
use rand::seq::SliceRandom;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
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
    /// Transactions whose parent is still undecided here, by parent txid, with their signature
    /// verdict: they are submitted again when the parent becomes final instead of being
    /// refused for missing inputs.
    orphans: HashMap<Txid, Vec<(Transaction, bool)>>,
    orphan_count: usize,
    /// Transactions to relay, each with the peer it came from (None: a client, or re-sent).
    /// Flushed as `Txs` batches whenever the engine's queues run dry.
    relay: Vec<(Transaction, Option<ValidatorIndex>)>,
    /// Peer transactions whose signatures the worker pool checked come back through here.
    verified: mpsc::UnboundedSender<(ValidatorIndex, Vec<(Transaction, bool)>)>,
    /// One verification job per core at a time.
    verify_gate: Arc<tokio::sync::Semaphore>,
    /// Peer transactions on the worker pool now: the same transaction relayed by several peers
    /// is verified once, not once per copy. With the time each went in: a job that never came
    /// back (a panic) must not bar its transactions for good.
    verifying: HashMap<Txid, Instant>,
}

pub fn restore_finalized(s: &Shared) -> anyhow::Result<()> {
    let pending = s.ledger.store.finalized_pending()?;
    let (tip, _) = s.ledger.store.tip()?;
    let mut st = s.state();
    for (tx, at_ms) in pending {
        let txid = tx.txid();
        match st.mempool.add(
            tx,
            s.ledger.store.as_ref(),
            false,
            s.chain_id(),
            s.ledger.genesis.network_byte(),
            tip + 1,
            at_ms,
        ) {
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
        orphans: HashMap::new(),
        orphan_count: 0,
        relay: Vec::new(),
        verified: verified_tx,
        verifying: HashMap::new(),
        verify_gate: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        )),
        s,
    };
    if e.parent.height() > 0 {
        e.last_commit = e.s.ledger.store.cert_at(e.parent.height())?;
    }
    e.schedule_height()?;
    let poll_every = Duration::from_millis(e.s.cfg.avalanche.poll_interval_ms.max(5));
    let mut poll_tick = tokio::time::interval(poll_every);
    poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hb_tick = tokio::time::interval(Duration::from_millis(e.s.cfg.heartbeat_ms));
    let mut status_tick = tokio::time::interval(Duration::from_millis((bt / 2).clamp(500, 3000)));
    loop {
        let next_timer = e.timers.peek().map(|Reverse((at, _))| *at);
        let sleep = async {
            match next_timer {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            ev = inbound.recv() => match ev {
                Some(ev) => e.on_inbound(ev)?,
                None => break,
            },
            Some(sub) = submissions.recv() => e.on_submission(sub),
            Some((from, txs)) = verified_rx.recv() => e.on_verified_txs(from, txs),
            _ = sleep => e.fire_timers()?,
            _ = poll_tick.tick() => e.poll_round(),
            _ = hb_tick.tick() => e.send_heartbeat(),
            _ = status_tick.tick() => e.status_round(),
        }
        // Relay once the queues run dry (or a batch is full): one message per peer carries
        // everything that arrived meanwhile, without holding anything back on a quiet node.
        let idle = inbound.is_empty() && submissions.is_empty() && verified_rx.is_empty();
        if !e.relay.is_empty() && (idle || e.relay.len() >= MAX_TXS_PER_MESSAGE) {
            e.flush_relay();
        }
    }
    Ok(())
}

impl Engine {
    fn n(&self) -> usize {
        self.s.ledger.genesis.validators.len()
    }

    // ---------- block agreement ----------

    /// Prepares the next height: its slot's ranking, and when round 0 may begin.
    fn schedule_height(&mut self) -> anyhow::Result<()> {
        self.started = false;
        self.own_proposal = None;
        self.seen.clear();
        self.height = self.parent.height() + 1;
        self.ranking = self.s.ledger.ranking_after(&self.parent)?;
        let slot = self.s.ledger.slot_after(&self.parent.header);
        let start_ms = self.s.ledger.genesis.slot_start_ms(slot);
        let now = now_ms();
        {
            let mut st = self.s.state();
            st.view.height = self.height;
            st.view.round = 0;
            st.view.slot = slot;
            st.view.leader = self.ranking.first().copied();
            st.view.step = "waiting-for-slot".into();
        }
        let at = Instant::now() + Duration::from_millis(start_ms.saturating_sub(now));
        self.timers.push(Reverse((at, Timer::StartHeight(self.height))));
        Ok(())
    }

    fn start_height(&mut self) -> anyhow::Result<()> {
        self.started = true;
        self.height_started_at = Instant::now();
        let ranking = self.ranking.clone();
        let actions = self.bft.start_height(self.height, move |r| ranking[r as usize % ranking.len()]);
        self.apply(actions)?;
        // Messages that arrived early for this height.
        let buffered = std::mem::take(&mut self.buffered);
        for (from, msg) in buffered {
            self.on_consensus(from, msg)?;
        }
        Ok(())
    }

    fn apply(&mut self, actions: Vec<Action>) -> anyhow::Result<()> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            tracing::trace!(height = self.height, action = ?ActionSummary(&a), "bft action");
            let more = match a {
                Action::Propose { round, valid_round, valid_block } => self.propose(round, valid_round, valid_block)?,
                Action::Vote { kind, round, block_hash } => {
                    let vote = Vote::new_signed(
                        kind,
                        self.height,
                        round,
                        block_hash,
                        self.s.me,
                        &self.s.key,
                        self.s.chain_id(),
                    );
                    self.s.broadcast(Message::Vote(vote.clone()));
                    self.bft.on_vote(&vote)
                }
                Action::ScheduleTimeout { kind, height, round, after_ms } => {
                    let at = Instant::now() + Duration::from_millis(after_ms);
                    self.timers.push(Reverse((at, Timer::Bft(kind, height, round))));
                    if kind == TimeoutKind::Propose {
                        let mut st = self.s.state();
                        st.view.round = round;
                        st.view.leader = Some(self.ranking[round as usize % self.ranking.len()]);
                    }
                    vec![]
                }
                Action::Commit { height, round, block, cert_votes } => {
                    let cert = CommitCert {
                        height,
                        round,
                        block_hash: block.hash(),
                        votes: cert_votes.iter().map(|v| (v.validator, v.signature)).collect(),
                    };
                    self.commit(block, cert)?;
                    return Ok(());
                }
            };
            queue.extend(more);
        }
        // Until the next height starts, the machine still holds the finished one's step.
        let step = if self.started { self.bft.step_name() } else { "waiting-for-slot" };
        self.s.state().view.step = step.to_string();
        Ok(())
    }

    fn propose(
        &mut self,
        round: u32,
        valid_round: Option<u32>,
        valid_block: Option<Block>,
    ) -> anyhow::Result<Vec<Action>> {
        let block = match valid_block {
            Some(b) => b,
            None => {
                let candidates = self.s.state().mempool.block_candidates(crate::chain::block::MAX_BLOCK_SIZE / 2);
                self.s.ledger.build_block(
                    &self.parent,
                    round,
                    self.s.me,
                    &self.s.key,
                    candidates,
                    self.last_commit.clone(),
                    now_ms(),
                )?
            }
        };
        tracing::debug!(height = self.height, round, hash = %block.hash(), txs = block.txs.len(), "proposing");
        self.s.state().view.blocks_produced += 1;
        let msg = Message::Proposal(Box::new(Proposal { round, block: block.clone(), valid_round }));
        self.s.broadcast(msg.clone());
        self.own_proposal = Some(msg);
        let hash = block.hash();
        Ok(self.bft.on_proposal(round, hash, block, valid_round, true, self.s.me))
    }

    /// What this node said at the current height and round, for re-sending.
    fn own_consensus_msgs(&self) -> Vec<Message> {
        if !self.started {
            return vec![];
        }
        let current = |m: &Message| matches!(m, Message::Proposal(p) if p.round == self.bft.round());
        let mut v: Vec<Message> = self.own_proposal.iter().filter(|m| current(m)).cloned().collect();
        v.extend(self.bft.own_votes().into_iter().map(Message::Vote));
        v
    }

    /// True the first time a given message is seen at this height.
    fn first_sight(&mut self, msg: &Message) -> bool {
        let digest = match msg {
            Message::Vote(v) => crate::chain::Hash256::digest(&bincode::serialize(v).expect("encodable")),
            Message::Proposal(p) => crate::chain::Hash256::tagged(
                "proposal",
                &[&p.round.to_le_bytes(), &p.block.hash().0, &bincode::serialize(&p.valid_round).expect("encodable")],
            ),
            _ => return true,
        };
        self.seen.insert(digest)
    }

    fn finalized_conflict(&self) -> impl Fn(&Transaction) -> bool + '_ {
        move |tx: &Transaction| {
            let st = self.s.state();
            let txid = tx.txid();
            tx.inputs.iter().any(|i| st.mempool.finalized_spender(&i.prevout).is_some_and(|t| t != txid))
        }
    }

    /// Whether this exact transaction (witnesses included) is pooled here: everything in the
    /// pool had its signatures checked on the way in, so a block need not check them again.
    fn verified_in_pool(&self) -> impl Fn(&Transaction) -> bool + '_ {
        move |tx: &Transaction| self.s.state().mempool.get(&tx.txid()).is_some_and(|e| e.tx == *tx)
    }

    fn on_proposal(&mut self, from: ValidatorIndex, p: Proposal) -> anyhow::Result<()> {
        let h = &p.block.header;
        let round = p.round;
        let expected = self.ranking[round as usize % self.ranking.len()];
        // A fresh block is made in its own round; a re-proposed one in an earlier round.
        if from != expected || h.round > round || (p.valid_round.is_none() && h.round != round) {
            tracing::debug!(
                from,
                producer = h.producer,
                expected,
                round,
                "proposal from a validator that does not lead this round"
            );
            return Ok(());
        }
        let valid = match self.s.ledger.check_block_with(
            &p.block,
            &self.parent,
            Some(now_ms()),
            &self.finalized_conflict(),
            &self.verified_in_pool(),
        ) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(height = h.height, round, producer = h.producer, "invalid proposal: {err}");
                false
            }
        };
        let hash = p.block.hash();
        let actions = self.bft.on_proposal(round, hash, p.block, p.valid_round, valid, from);
        self.apply(actions)
    }

    fn on_vote(&mut self, vote: Vote) -> anyhow::Result<()> {
        let Some(pk) = self.s.ledger.pubkeys.get(vote.validator as usize) else { return Ok(()) };
        if !vote.verify(pk, self.s.chain_id()) {
            self.s.state().counters.invalid_rejected += 1;
            return Ok(());
        }
        // A late precommit for the block just committed strengthens the next last-commit.
        if vote.kind == VoteKind::Precommit && vote.height + 1 == self.height {
            if let Some(cert) = &mut self.last_commit {
                if cert.round == vote.round
                    && vote.block_hash == Some(cert.block_hash)
                    && !cert.votes.iter().any(|(v, _)| *v == vote.validator)
                {
                    cert.votes.push((vote.validator, vote.signature));
                    cert.votes.sort_by_key(|(v, _)| *v);
                }
            }
            return Ok(());
        }
        let actions = self.bft.on_vote(&vote);
        self.apply(actions)
    }

    /// Routes a proposal or vote: now, buffered for the next height, or dropped.
    fn on_consensus(&mut self, from: ValidatorIndex, msg: Message) -> anyhow::Result<()> {
        let height = match &msg {
            Message::Proposal(p) => p.block.header.height,
            Message::Vote(v) => v.height,
            _ => return Ok(()),
        };
        if height == self.height && self.started {
            if !self.first_sight(&msg) {
                return Ok(());
            }
            match msg {
                Message::Proposal(p) => self.on_proposal(from, *p)?,
                Message::Vote(v) => self.on_vote(v)?,
                _ => {}
            }
        } else if height == self.height || (height + 1 == self.height && matches!(msg, Message::Vote(_))) {
            if height + 1 == self.height {
                if let Message::Vote(v) = msg {
                    return self.on_vote(v);
                }
            } else if self.buffered.len() < MAX_BUFFERED {
                self.buffered.push((from, msg));
            }
        } else if height > self.height {
            // Someone is ahead: fetch what we miss instead of guessing.
            self.peer_heights.entry(from).and_modify(|h| *h = (*h).max(height - 1)).or_insert(height - 1);
            self.request_sync();
        }
        Ok(())
    }

    fn commit(&mut self, block: Block, cert: CommitCert) -> anyhow::Result<()> {
        let height = block.height();
        let interval_s = block.header.timestamp_ms.saturating_sub(self.parent.header.timestamp_ms) as f64 / 1000.0;
        self.s.ledger.store.commit_block(&block, &cert)?;
        tracing::info!(height, hash = %block.hash(), round = cert.round, txs = block.txs.len() - 1, "block committed");
        // The genesis time is fixed in the past: the first interval says nothing about pace.
        if self.parent.height() > 0 {
            self.s.metrics.block_interval.observe(interval_s);
        }
        {
            let mut st = self.s.state();
            let txs = &block.txs[1..];
            let conflicted = st.mempool.remove_for_block(txs);
            for tx in txs {
                // A block settles it: Snowball can forget the transaction.
                let txid = tx.txid();
                st.snowball.accept_external(&txid);
                st.snowball.remove(&txid);
            }
            for t in &conflicted {
                st.snowball.remove(t);
            }
            st.view.blocks_committed += 1;
            st.view.last_block_ms = block.header.timestamp_ms;
        }
        for tx in &block.txs[1..] {
            self.adopt_orphans(&tx.txid());
        }
        self.s.finality_changed.notify_waiters();
        let _ = self.s.tip.send_replace(height);
        self.s.broadcast(Message::Status(ChainStatus { height, tip: block.hash() }));
        self.last_commit = Some(cert);
        self.parent = block;
        self.buffered.retain(|(_, m)| match m {
            Message::Proposal(p) => p.block.header.height > height,
            Message::Vote(v) => v.height > height,
            _ => false,
        });
        self.schedule_height()
    }

    fn fire_timers(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::StartHeight(h) if h == self.height && !self.started => self.start_height()?,
                Timer::Bft(kind, h, r) if h == self.height && self.started => {
                    tracing::trace!(height = h, round = r, ?kind, "timeout fired");
                    if kind == TimeoutKind::Propose {
                        self.s.state().view.rounds_timed_out += 1;
                    }
                    let actions = self.bft.on_timeout(kind, h, r);
                    self.apply(actions)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ---------- sync ----------

    fn request_sync(&mut self) {
        if let Some((_, at)) = self.sync_inflight {
            if at.elapsed() < SYNC_TIMEOUT {
                return;
            }
        }
        let tip = self.parent.height();
        let connected: HashSet<ValidatorIndex> = self.s.p2p.connected().into_iter().collect();
        let best = self
            .peer_heights
            .iter()
            .filter(|(p, h)| **h > tip && connected.contains(p))
            .max_by_key(|(_, h)| **h)
            .map(|(p, h)| (*p, *h));
        if let Some((peer, h)) = best {
            let to = h.min(tip + MAX_BLOCKS_PER_REPLY);
            if self.s.p2p.send(peer, Message::GetBlocks { from: tip + 1, to }) {
                self.sync_inflight = Some((peer, Instant::now()));
                tracing::debug!(peer, from = tip + 1, to, "requesting blocks");
            }
        }
    }

    fn on_blocks(&mut self, from: ValidatorIndex, blocks: Vec<(Block, CommitCert)>) -> anyhow::Result<()> {
        if self.sync_inflight.is_some_and(|(p, _)| p == from) {
            self.sync_inflight = None;
        }
        let quorum = self.s.ledger.genesis.quorum();
        for (block, cert) in blocks {
            if block.height() != self.parent.height() + 1 {
                continue;
            }
            let hash = block.hash();
            if cert.height != block.height()
                || cert.block_hash != hash
                || !verify_cert(&cert, &self.s.ledger.pubkeys, quorum, self.s.chain_id())
            {
                tracing::warn!(from, height = block.height(), "synced block without a valid commit certificate");
                return Ok(());
            }
            if let Err(err) = self.s.ledger.check_block(&block, &self.parent, None, &|_| false) {
                tracing::warn!(from, height = block.height(), "synced block is invalid: {err}");
                return Ok(());
            }
            // The certificate proves a quorum committed it; `start_height` of the next height
            // discards whatever this node's own round had.
            self.commit(block, cert)?;
        }
        self.request_sync();
        Ok(())
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
        self.s.broadcast(Message::Status(ChainStatus { height: tip, tip: self.parent.hash() }));
        if self.peer_heights.values().any(|h| *h > tip) {
            self.request_sync();
        }
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
            self.verifying.retain(|_, since| *since > stale);
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

    // ---------- transactions and Snowball ----------

    /// A client transaction (RPC), signatures already checked: admitted here, the one place
    /// that writes the mempool and Snowball, then answered, relayed and polled.
    fn on_submission(&mut self, sub: Submission) {
        let Submission { tx, signatures_ok, reply } = sub;
        let result = self.admit(tx.clone(), self.s.cfg.max_pending_txs, Signatures::Verified(signatures_ok));
        let fresh = matches!(result, Ok((_, added)) if added != Added::Known);
        let txid = result.as_ref().ok().map(|(t, _)| *t);
        // The client hears first: its answer does not wait for relaying or finality.
        let _ = reply.send(result);
        if fresh {
            self.relay.push((tx, None));
            if self.n() == 1 {
                // The only validator's own view is the whole network's.
                self.accept(&txid.into_iter().collect::<Vec<_>>());
            }
        }
    }

    /// Validates a transaction into the mempool and Snowball. Only the engine calls this, so
    /// the checks and the writes see one consistent pool. The cheap answers come first (the
    /// submitter asked them already, but the pool may have changed since).
    fn admit(&mut self, tx: Transaction, pending_limit: usize, sigs: Signatures) -> Result<(Txid, Added), TxError> {
        let txid = tx.txid();
        if let Some(answer) = self.s.precheck(&txid, pending_limit) {
            return answer;
        }
        let s = &self.s;
        let in_chain = s.ledger.store.tx_location(&txid).map(|l| l.is_some()).unwrap_or(false);
        let (tip, _) = s.ledger.store.tip().map_err(|_| TxError::MissingInputs)?;
        let inputs: Vec<_> = tx.inputs.iter().map(|i| i.prevout).collect();
        let mut st = s.state();
        let (txid, added) = st.mempool.add_with(
            tx,
            sigs,
            s.ledger.store.as_ref(),
            in_chain,
            s.chain_id(),
            s.ledger.genesis.network_byte(),
            tip + 1,
            now_ms(),
        )?;
        if added != Added::Known
            && st.snowball.insert(txid, &inputs, Instant::now()) == crate::consensus::snowball::InsertOutcome::Rejected
        {
            // It spends what an accepted transaction spends, or a rejected one's output.
            st.mempool.reject(&txid, TxError::ConflictFinalized);
            return Err(TxError::ConflictFinalized);
        }
        Ok((txid, added))
    }

    /// Pooled transactions still undecided and at least `min_age` old, oldest first.
    fn pooled_txs(&self, max: usize, min_age: Duration) -> Vec<Transaction> {
        let st = self.s.state();
        let now = Instant::now();
        st.snowball
            .batch(max)
            .into_iter()
            .filter(|t| st.snowball.first_seen(t).is_some_and(|at| now.duration_since(at) >= min_age))
            .filter_map(|t| st.mempool.get(&t).map(|e| e.tx.clone()))
            .collect()
    }

    /// Sends the relay buffer: to each peer, everything except what that peer sent us.
    fn flush_relay(&mut self) {
        let relay = std::mem::take(&mut self.relay);
        for peer in self.s.p2p.connected() {
            let txs: Vec<Transaction> =
                relay.iter().filter(|(_, from)| *from != Some(peer)).map(|(tx, _)| tx.clone()).collect();
            for chunk in txs.chunks(MAX_TXS_PER_MESSAGE) {
                self.s.p2p.send_gossip(peer, Message::Txs(chunk.to_vec()));
            }
        }
    }

    /// Transactions from a peer: what is already known or refused is dropped here (a look-up);
    /// the rest has its signatures checked on the worker pool, off this task, and comes back
    /// through `on_verified_txs`.
    fn on_peer_txs(&mut self, from: ValidatorIndex, mut txs: Vec<Transaction>) {
        txs.truncate(MAX_TXS_PER_MESSAGE);
        {
            let st = self.s.state();
            if st.mempool.pending_count() >= self.s.cfg.max_pending_txs * super::PEER_PENDING_FACTOR {
                // Full even for peers: refuse before paying for signatures (they are not
                // remembered as rejected, so a later re-gossip may still bring them in).
                tracing::debug!(from, count = txs.len(), "peer's transactions refused: {}", TxError::MempoolFull);
                return;
            }
            let (verifying, now) = (&mut self.verifying, Instant::now());
            txs.retain(|t| {
                let id = t.txid();
                !st.mempool.contains(&id) && st.mempool.rejection(&id).is_none() && verifying.insert(id, now).is_none()
            });
        }
        if txs.is_empty() {
            return;
        }
        let chain_id = self.s.chain_id().to_string();
        let (back, gate) = (self.verified.clone(), self.verify_gate.clone());
        tokio::spawn(async move {
            let Ok(_permit) = gate.acquire_owned().await else { return };
            // One by one with verify_strict: the exact batch verifier (chain/batch.rs) is slower
            // on this hardware, because agreeing with strict costs a subgroup check per R
            // (docs/benchmarks.md, "Batch verification").
            let checked = tokio::task::spawn_blocking(move || {
                txs.into_iter()
                    .map(|t| {
                        let ok = crate::chain::validate::signatures_valid(&t, &chain_id);
                        (t, ok)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            if let Ok(v) = checked {
                let _ = back.send((from, v));
            }
        });
    }

    fn on_verified_txs(&mut self, from: ValidatorIndex, txs: Vec<(Transaction, bool)>) {
        for (tx, ok) in txs {
            self.verifying.remove(&tx.txid());
            self.on_gossip_tx(from, tx, ok);
        }
    }

    fn on_gossip_tx(&mut self, from: ValidatorIndex, tx: Transaction, signatures_ok: bool) {
        let parents: Vec<Txid> = tx.inputs.iter().map(|i| i.prevout.txid).collect();
        let limit = self.s.cfg.max_pending_txs * super::PEER_PENDING_FACTOR;
        match self.admit(tx.clone(), limit, Signatures::Verified(signatures_ok)) {
            Ok((_, Added::Known)) => {}
            Ok((txid, _)) => {
                tracing::trace!(%txid, from, "transaction from peer");
                // Onwards to the others, never back to the peer it came from.
                self.relay.push((tx, Some(from)));
            }
            Err(TxError::MissingInputs) => {
                // Its parent may be final at the sender but still undecided here.
                let pending_parent = {
                    let st = self.s.state();
                    parents.into_iter().find(|p| st.mempool.get(p).is_some_and(|e| e.status == TxStatus::Pending))
                };
                match pending_parent {
                    Some(parent) if self.orphan_count < MAX_ORPHANS => {
                        self.orphans.entry(parent).or_default().push((tx, signatures_ok));
                        self.orphan_count += 1;
                    }
                    _ => tracing::debug!(from, "peer's transaction refused: {}", TxError::MissingInputs),
                }
            }
            Err(e) => tracing::debug!(from, "peer's transaction refused: {e}"),
        }
    }

    /// Forgets the transactions that waited for a parent that lost.
    fn drop_orphans(&mut self, parents: &[Txid]) {
        for p in parents {
            if let Some(v) = self.orphans.remove(p) {
                self.orphan_count -= v.len();
            }
        }
    }

    /// Submits again the transactions that waited for `parent` to become final.
    fn adopt_orphans(&mut self, parent: &Txid) {
        let limit = self.s.cfg.max_pending_txs * super::PEER_PENDING_FACTOR;
        for (tx, signatures_ok) in self.orphans.remove(parent).unwrap_or_default() {
            self.orphan_count -= 1;
            match self.admit(tx.clone(), limit, Signatures::Verified(signatures_ok)) {
                Ok((_, Added::Known)) => {}
                Ok(_) => self.relay.push((tx, None)),
                Err(e) => tracing::debug!(%parent, "waiting transaction refused once its parent was final: {e}"),
            }
        }
    }

    /// Validators to sample: active by heartbeat, connected, not us, and enough of them that a
    /// poll speaks for more than two thirds of the validators with us.
    fn sampleable(&self) -> Vec<ValidatorIndex> {
        let connected: HashSet<ValidatorIndex> = self.s.p2p.connected().into_iter().collect();
        let active = self.s.state().heartbeats.active_set(now_ms());
        let pool: Vec<ValidatorIndex> =
            active.into_iter().filter(|v| *v != self.s.me && connected.contains(v)).collect();
        if pool.len() + 1 < self.s.ledger.genesis.quorum() {
            return vec![];
        }
        pool
    }

    fn poll_round(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self.polls.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.finish_poll(id);
        }
        if self.n() == 1 {
            return;
        }
        let params = self.s.cfg.avalanche.clone();
        if self.polls.len() >= params.max_concurrent_polls {
            return;
        }
        let pool = self.sampleable();
        if pool.is_empty() {
            return;
        }
        let batch: Vec<Txid> = {
            let st = self.s.state();
            st.snowball
                .batch(params.batch_max.min(MAX_POLL_TXIDS) + self.in_flight.len())
                .into_iter()
                .filter(|t| !self.in_flight.contains(t))
                .take(params.batch_max.min(MAX_POLL_TXIDS))
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        let (k, _, _) = params.effective(pool.len());
        let weights: Vec<(ValidatorIndex, u64)> =
            pool.iter().map(|v| (*v, self.s.ledger.genesis.validators[*v as usize].tier.sampling_weight())).collect();
        let mut rng = rand::thread_rng();
        let asked: Vec<ValidatorIndex> = match weights.choose_multiple_weighted(&mut rng, k, |(_, w)| *w as f64) {
            Ok(it) => it.map(|(v, _)| *v).collect(),
            Err(_) => pool.choose_multiple(&mut rng, k).copied().collect(),
        };
        let id = self.next_poll_id;
        self.next_poll_id += 1;
        let mut sent = 0;
        for v in &asked {
            if self.s.p2p.send(*v, Message::PollQuery { id, txids: batch.clone() }) {
                sent += 1;
            }
        }
        self.s.state().counters.polls_sent += 1;
        if sent == 0 {
            self.s.state().counters.polls_failed += 1;
            return;
        }
        self.in_flight.extend(batch.iter().copied());
        self.polls.insert(
            id,
            Poll {
                txids: batch,
                asked,
                replies: HashMap::new(),
                deadline: now + Duration::from_millis(params.poll_timeout_ms),
                k,
            },
        );
    }

    fn on_poll_reply(&mut self, from: ValidatorIndex, id: u64, prefs: Vec<Preference>) {
        let done = match self.polls.get_mut(&id) {
            Some(p) if p.asked.contains(&from) && prefs.len() == p.txids.len() => {
                p.replies.insert(from, prefs);
                p.replies.len() == p.asked.len()
            }
            _ => false,
        };
        if done {
            self.finish_poll(id);
        }
    }

    fn finish_poll(&mut self, id: u64) {
        let Some(poll) = self.polls.remove(&id) else { return };
        for t in &poll.txids {
            self.in_flight.remove(t);
        }
        if poll.replies.len() < poll.asked.len() {
            self.s.state().counters.polls_failed += 1;
        }
        let results: Vec<(Txid, usize)> = poll
            .txids
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, poll.replies.values().filter(|p| p[i] == Preference::Yes).count()))
            .collect();
        let params = &self.s.cfg.avalanche;
        let (k, ap, ac) = params.effective(poll.k);
        let decisions = self.s.state().snowball.record_poll(&results, k, ap, ac);
        if !decisions.rejected.is_empty() {
            let mut st = self.s.state();
            for t in &decisions.rejected {
                st.mempool.reject(t, TxError::Conflict);
            }
            drop(st);
            self.s.metrics.tx_rejected.inc_by(decisions.rejected.len() as u64);
            self.drop_orphans(&decisions.rejected);
        }
        self.accept(&decisions.accepted);
        if !decisions.rejected.is_empty() {
            self.s.finality_changed.notify_waiters();
        }
    }

    /// Makes accepted transactions final: durable first, then visible.
    fn accept(&mut self, txids: &[Txid]) {
        if txids.is_empty() {
            return;
        }
        let now = now_ms();
        let entries: Vec<crate::mempool::Entry> = {
            let st = self.s.state();
            txids.iter().filter_map(|t| st.mempool.get(t).cloned()).collect()
        };
        let txs: Vec<Transaction> = entries.iter().map(|e| e.tx.clone()).collect();
        if let Err(e) = self.s.ledger.store.put_finalized_many(&txs, now) {
            tracing::error!(count = txs.len(), "cannot persist finalized transactions, not reporting them final: {e}");
            return;
        }
        for entry in entries {
            let txid = &entry.txid;
            let latency = now.saturating_sub(entry.first_seen_ms);
            let mut st = self.s.state();
            st.mempool.mark_finalized(txid, now);
            if self.n() == 1 {
                st.snowball.accept_external(txid);
            }
            st.recent_finality_ms.push_back(latency);
            if st.recent_finality_ms.len() > LATENCY_WINDOW {
                st.recent_finality_ms.pop_front();
            }
            // Oldest first, so a client asking soon after finality still gets its answer even
            // under sustained load (a wholesale clear lost recent ones).
            while st.finality_order.len() >= super::FINALITY_MEMORY {
                if let Some(old) = st.finality_order.pop_front() {
                    st.finality_ms.remove(&old);
                }
            }
            if st.finality_ms.insert(*txid, super::FinalityTime { latency_ms: latency, at_ms: now }).is_none() {
                st.finality_order.push_back(*txid);
            }
            drop(st);
            self.s.metrics.tx_finality.observe(latency as f64 / 1000.0);
            self.s.metrics.tx_finalized.inc();
            tracing::debug!(%txid, latency_ms = latency, "transaction finalized");
            self.adopt_orphans(txid);
        }
        self.s.finality_changed.notify_waiters();
    }

    fn answer_poll(&mut self, from: ValidatorIndex, id: u64, txids: Vec<Txid>) {
        if txids.len() > MAX_POLL_TXIDS {
            return;
        }
        let prefs: Vec<Preference> = {
            let mut st = self.s.state();
            st.counters.queries_answered += 1;
            txids
                .iter()
                .map(|t| {
                    if let Some(e) = st.mempool.get(t) {
                        if matches!(e.status, TxStatus::Finalized { .. }) {
                            return Preference::Yes;
                        }
                    }
                    match st.snowball.preference(t) {
                        Preference::Unknown if st.mempool.rejection(t).is_some() => Preference::No,
                        Preference::Unknown if self.s.ledger.store.tx_location(t).ok().flatten().is_some() => {
                            Preference::Yes
                        }
                        p => p,
                    }
                })
                .collect()
        };
        self.s.p2p.send(from, Message::PollReply { id, prefs });
    }

    // ---------- heartbeats ----------

    fn send_heartbeat(&mut self) {
        let hb = {
            let mut st = self.s.state();
            st.heartbeat_seq += 1;
            st.counters.heartbeats_sent += 1;
            let hb = Heartbeat::new_signed(self.s.me, st.heartbeat_seq, now_ms(), &self.s.key, self.s.chain_id());
            st.heartbeats.on_heartbeat(&hb, now_ms());
            hb
        };
        self.s.broadcast(Message::Heartbeat(hb.clone()));
        self.last_heartbeat = Some(hb);
    }

    fn on_heartbeat(&mut self, hb: Heartbeat) {
        let Some(pk) = self.s.ledger.pubkeys.get(hb.validator as usize) else { return };
        if hb.validator == self.s.me || !hb.verify(pk, self.s.chain_id()) {
            self.s.state().counters.invalid_rejected += 1;
            return;
        }
        let now = now_ms();
        let att = {
            let mut st = self.s.state();
            if !st.heartbeats.on_heartbeat(&hb, now) {
                return;
            }
            let att = Attestation::new_signed(&hb, self.s.me, &self.s.key, self.s.chain_id());
            st.heartbeats.on_attestation(&att, now);
            st.counters.attestations_given += 1;
            att
        };
        self.s.broadcast(Message::Attestation(att));
    }

    fn on_attestation(&mut self, a: Attestation) {
        let Some(pk) = self.s.ledger.pubkeys.get(a.witness as usize) else { return };
        if !a.verify(pk, self.s.chain_id()) {
            self.s.state().counters.invalid_rejected += 1;
            return;
        }
        self.s.state().heartbeats.on_attestation(&a, now_ms());
    }

    // ---------- dispatch ----------

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
                    if st.height > self.parent.height() {
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
