//! Transactions: admission (the one place that writes the mempool and Snowball), gossip in
//! and out, signature checks on the worker pool, orphans, and finality.

use super::*;

/// Peers known to hold a transaction (it came from them), one bit per validator index below
/// 64. A higher index is not recorded, so it is sent the transaction again: a wasted copy,
/// never a missing one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Holders(u64);

impl Holders {
    pub(super) fn of(peer: ValidatorIndex) -> Self {
        let mut h = Holders::default();
        h.add(peer);
        h
    }

    pub(super) fn add(&mut self, peer: ValidatorIndex) {
        if peer < 64 {
            self.0 |= 1 << peer;
        }
    }

    pub(super) fn has(self, peer: ValidatorIndex) -> bool {
        peer < 64 && self.0 & (1 << peer) != 0
    }

    fn merge(&mut self, other: Holders) {
        self.0 |= other.0;
    }
}

/// How long a transaction to relay waits for others to share its `Txs` message. Flushed
/// whenever the engine's queues ran dry, a message carried 1.7 transactions at 1,500 tx/s, and
/// each message costs the receiver a wake-up and a verification job (docs/benchmarks.md, run
/// AA). Half the default poll tick: polls skip what still waits here, so it delays a
/// transaction's first poll by at most one tick.
pub(super) const RELAY_WINDOW: Duration = Duration::from_millis(10);

/// Transactions waiting to be relayed, encoded (once for all peers), each with the peers known
/// to hold it already (it came from them; none for a client's or a re-sent one).
#[derive(Default)]
pub(super) struct Relay {
    txs: Vec<(Vec<u8>, Holders)>,
    index: HashMap<Txid, usize>,
    /// When the oldest waiting transaction is to be sent.
    due: Option<Instant>,
}

impl Relay {
    pub(super) fn push(&mut self, txid: Txid, tx: &Transaction, holders: Holders) {
        if let Some(&i) = self.index.get(&txid) {
            self.txs[i].1.merge(holders);
            return;
        }
        self.due.get_or_insert_with(|| Instant::now() + RELAY_WINDOW);
        self.index.insert(txid, self.txs.len());
        self.txs.push((tx.to_bytes(), holders));
    }

    /// Records that `peer` sent `txid` too, if it still waits here: that peer is not sent it.
    pub(super) fn held_by(&mut self, txid: &Txid, peer: ValidatorIndex) {
        if let Some(&i) = self.index.get(txid) {
            self.txs[i].1.add(peer);
        }
    }

    pub(super) fn contains(&self, txid: &Txid) -> bool {
        self.index.contains_key(txid)
    }

    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// A whole message's worth waits: no reason to wait longer.
    pub(super) fn is_full(&self) -> bool {
        self.txs.len() >= MAX_TXS_PER_MESSAGE
    }

    fn take(&mut self) -> Vec<(Vec<u8>, Holders)> {
        self.index.clear();
        self.due = None;
        std::mem::take(&mut self.txs)
    }
}

impl Engine {
    /// A client transaction (RPC), signatures already checked: admitted here, the one place
    /// that writes the mempool and Snowball, then answered, relayed and polled.
    pub(super) fn on_submission(&mut self, sub: Submission) {
        let Submission { tx, signatures_ok, reply } = sub;
        let result = self.admit(tx.clone(), self.s.cfg.max_pending_txs, Signatures::Verified(signatures_ok));
        let fresh = matches!(result, Ok((_, added)) if added != Added::Known);
        let txid = result.as_ref().ok().map(|(t, _)| *t);
        // The client hears first: its answer does not wait for relaying or finality.
        let _ = reply.send(result);
        if fresh {
            if let Some(txid) = txid {
                self.relay.push(txid, tx.tx(), Holders::default());
            }
            if self.n() == 1 {
                // The only validator's own view is the whole network's.
                self.accept(&txid.into_iter().collect::<Vec<_>>());
            }
        }
    }

    /// Validates a transaction into the mempool and Snowball. Only the engine calls this, so
    /// the checks and the writes see one consistent pool. The cheap answers come first (the
    /// submitter asked them already, but the pool may have changed since).
    pub(super) fn admit(
        &mut self,
        tx: IdentifiedTx,
        pending_limit: usize,
        sigs: Signatures,
    ) -> Result<(Txid, Added), TxError> {
        let txid = tx.txid();
        if let Some(answer) = self.s.precheck(&txid, pending_limit) {
            return answer;
        }
        let s = &self.s;
        // Read only for a refusal (see `Mempool::add_with`), under the pool's lock then: the
        // index look-up was 3 % of a node at 2,500 tx/s when every admission paid it.
        let in_chain = || s.ledger.store.tx_location(&txid).map(|l| l.is_some()).unwrap_or(false);
        let (tip, _) = s.ledger.store.tip().map_err(|_| TxError::MissingInputs)?;
        let inputs: Vec<_> = tx.tx().inputs.iter().map(|i| i.prevout).collect();
        let mut st = s.state();
        let (txid, added) = s.pool_add(&mut st.mempool, tx, sigs, &in_chain, tip + 1, now_ms())?;
        // The one way into Snowball: the poll tick has work again.
        self.poll_work = true;
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
    pub(super) fn pooled_txs(&self, max: usize, min_age: Duration) -> Vec<Transaction> {
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
    pub(super) fn flush_relay(&mut self) {
        let relay = self.relay.take();
        for peer in self.s.p2p.connected() {
            let txs: Vec<&[u8]> =
                relay.iter().filter(|(_, holders)| !holders.has(peer)).map(|(tx, _)| tx.as_slice()).collect();
            for chunk in txs.chunks(MAX_TXS_PER_MESSAGE) {
                self.s.p2p.send_gossip_frame(peer, Message::txs_frame(chunk));
            }
        }
    }

    /// Transactions from a peer: what is already known or refused is dropped here (a look-up);
    /// the rest has its signatures checked on the worker pool, off this task, and comes back
    /// through `on_verified_txs`.
    pub(super) fn on_peer_txs(&mut self, from: ValidatorIndex, mut txs: Vec<Transaction>) {
        txs.truncate(MAX_TXS_PER_MESSAGE);
        let mut txs: Vec<IdentifiedTx> = txs.into_iter().map(IdentifiedTx::new).collect();
        {
            let st = self.s.state();
            if st.mempool.pending_count() >= self.s.cfg.max_pending_txs * crate::node::PEER_PENDING_FACTOR {
                // Full even for peers: refuse before paying for signatures (they are not
                // remembered as rejected, so a later re-gossip may still bring them in).
                tracing::debug!(from, count = txs.len(), "peer's transactions refused: {}", TxError::MempoolFull);
                return;
            }
            let (verifying, relay, now) = (&mut self.verifying, &mut self.relay, Instant::now());
            txs.retain(|t| {
                let id = t.txid();
                if st.mempool.contains(&id) || st.mempool.rejection(&id).is_some() {
                    // Known here and maybe still waiting to be relayed: not to this peer.
                    relay.held_by(&id, from);
                    return false;
                }
                match verifying.entry(id) {
                    // A copy of one being checked: that peer need not be sent it.
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        e.get_mut().1.add(from);
                        false
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert((now, Holders::of(from)));
                        true
                    }
                }
            });
        }
        if txs.is_empty() {
            return;
        }
        let chain_id = self.s.chain_id().to_string();
        let (back, gate) = (self.verified.clone(), self.verify_gate.clone());
        tokio::spawn(async move {
            let Ok(_permit) = gate.acquire_owned().await else { return };
            // One by one (`crypto::verify_one`, strict's verdicts): the exact batch verifier
            // (chain/batch.rs) is slower on this hardware, because agreeing with strict costs a
            // subgroup check per R (docs/benchmarks.md, "Batch verification").
            let checked = tokio::task::spawn_blocking(move || {
                txs.into_iter()
                    .map(|t| {
                        let ok = crate::chain::validate::signatures_valid_identified(&t, &chain_id);
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

    pub(super) fn on_verified_txs(&mut self, from: ValidatorIndex, txs: Vec<(IdentifiedTx, bool)>) {
        for (tx, ok) in txs {
            let holders = self.verifying.remove(&tx.txid()).map_or(Holders::of(from), |(_, h)| h);
            self.on_gossip_tx(from, holders, tx, ok);
        }
    }

    /// `holders`: `from` and every other peer that sent a copy while it was being checked.
    pub(super) fn on_gossip_tx(
        &mut self,
        from: ValidatorIndex,
        holders: Holders,
        tx: IdentifiedTx,
        signatures_ok: bool,
    ) {
        let parents: Vec<Txid> = tx.tx().inputs.iter().map(|i| i.prevout.txid).collect();
        let limit = self.s.cfg.max_pending_txs * crate::node::PEER_PENDING_FACTOR;
        match self.admit(tx.clone(), limit, Signatures::Verified(signatures_ok)) {
            Ok((_, Added::Known)) => {}
            Ok((txid, _)) => {
                tracing::trace!(%txid, from, "transaction from peer");
                // Onwards to the others, never back to a peer it came from.
                self.relay.push(txid, tx.tx(), holders);
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
    pub(super) fn drop_orphans(&mut self, parents: &[Txid]) {
        for p in parents {
            if let Some(v) = self.orphans.remove(p) {
                self.orphan_count -= v.len();
            }
        }
    }

    /// Submits again the transactions that waited for `parent` to become final.
    pub(super) fn adopt_orphans(&mut self, parent: &Txid) {
        let limit = self.s.cfg.max_pending_txs * crate::node::PEER_PENDING_FACTOR;
        for (tx, signatures_ok) in self.orphans.remove(parent).unwrap_or_default() {
            self.orphan_count -= 1;
            match self.admit(tx.clone(), limit, Signatures::Verified(signatures_ok)) {
                Ok((_, Added::Known)) => {}
                Ok((txid, _)) => self.relay.push(txid, tx.tx(), Holders::default()),
                Err(e) => tracing::debug!(%parent, "waiting transaction refused once its parent was final: {e}"),
            }
        }
    }

    /// Queues transactions Snowball accepted for the next finality write. Peers already hear
    /// "yes" for them (Snowball's preference); clients see them final only after the write.
    pub(super) fn accept(&mut self, txids: &[Txid]) {
        if txids.is_empty() {
            return;
        }
        if self.finalizing.is_empty() {
            self.finalizing_since = Instant::now();
        }
        self.finalizing.extend_from_slice(txids);
    }

    /// Whether the queued finality write is due: the engine's queues ran dry (what arrived
    /// meanwhile shares the write), the batch is large, or it has waited long enough.
    pub(super) fn finality_due(&self, idle: bool) -> bool {
        !self.finalizing.is_empty()
            && (idle || self.finalizing.len() >= FINALITY_BATCH || self.finalizing_since.elapsed() >= FINALITY_LINGER)
    }

    /// Makes the queued accepted transactions final: durable first (one fsync'd write for the
    /// whole batch), then visible.
    pub(super) fn flush_finality(&mut self) {
        let txids = std::mem::take(&mut self.finalizing);
        if txids.is_empty() {
            return;
        }
        let now = now_ms();
        let entries: Vec<crate::mempool::Entry> = {
            let st = self.s.state();
            txids.iter().filter_map(|t| st.mempool.get(t).cloned()).collect()
        };
        let txs: Vec<Transaction> = entries.iter().map(|e| e.tx.clone()).collect();
        let written = Instant::now();
        let stored = self.s.ledger.store.put_finalized_many(&txs, now);
        self.clock.record(Stage::FinalityWrite, written);
        if let Err(e) = stored {
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
            st.remember_finality(*txid, crate::node::FinalityTime { latency_ms: latency, at_ms: now });
            drop(st);
            self.s.metrics.tx_finality.observe(latency as f64 / 1000.0);
            self.s.metrics.tx_finalized.inc();
            tracing::debug!(%txid, latency_ms = latency, "transaction finalized");
            self.adopt_orphans(txid);
        }
        self.s.finality_changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::{Holders, Relay, RELAY_WINDOW};
    use crate::chain::Transaction;
    use std::time::Instant;

    fn tx(lock_time: u64) -> Transaction {
        Transaction { version: 1, inputs: vec![], outputs: vec![], lock_time, memo: None }
    }

    #[test]
    fn relay_waits_one_window_and_gathers_every_holder() {
        let mut r = Relay::default();
        assert_eq!(r.due(), None, "nothing waits, nothing is due");
        let before = Instant::now();
        let (a, b) = (tx(1), tx(2));
        r.push(a.txid(), &a, Holders::of(1));
        let due = r.due().expect("due once something waits");
        assert!(due >= before + RELAY_WINDOW && due <= Instant::now() + RELAY_WINDOW);
        r.push(b.txid(), &b, Holders::default());
        assert_eq!(r.due(), Some(due), "the oldest sets the time");
        // A second copy of `a` and a copy seen as known: both senders are skipped.
        r.push(a.txid(), &a, Holders::of(2));
        r.held_by(&a.txid(), 4);
        r.held_by(&tx(3).txid(), 4);
        assert!(r.contains(&a.txid()) && r.contains(&b.txid()) && !r.contains(&tx(3).txid()));
        let sent = r.take();
        assert_eq!(sent.len(), 2, "one entry per transaction");
        assert!(sent[0].0 == a.to_bytes() && sent[0].1.has(1) && sent[0].1.has(2) && sent[0].1.has(4));
        assert!(sent[1].0 == b.to_bytes() && sent[1].1 == Holders::default());
        assert!(r.due().is_none() && !r.contains(&a.txid()) && !r.is_full());
    }

    #[test]
    fn holders_remember_peers_below_64_and_never_hide_the_rest() {
        let mut h = Holders::of(3);
        h.add(0);
        h.add(63);
        assert!(h.has(0) && h.has(3) && h.has(63));
        assert!(!h.has(1) && !h.has(62));
        // Not representable: such a peer is sent the transaction again, never skipped.
        h.add(64);
        h.add(900);
        assert!(!h.has(64) && !h.has(900));
        assert_eq!(Holders::default(), Holders(0));
    }
}
