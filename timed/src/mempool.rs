//! Transactions waiting for finality (pending) or for a block (finalized). Conflicting spends
//! are kept side by side while Snowball decides between them; a transaction that conflicts with
//! a finalized one is refused outright.

use crate::chain::amount::DUST_LIMIT;
use crate::chain::validate::{check_transaction_with, Signatures, TxError, UtxoView};
use crate::chain::{IdentifiedTx, OutPoint, Transaction, TxOut, Txid};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Pending,
    Finalized { at_ms: u64 },
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub tx: Transaction,
    pub txid: Txid,
    pub size: usize,
    pub fee: u64,
    pub first_seen_ms: u64,
    pub status: TxStatus,
}

/// How a submitted transaction was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// New, and it spends nothing another pooled transaction spends.
    New,
    /// New, and it competes with at least one pending transaction.
    Conflicting,
    /// Already in the pool.
    Known,
}

pub struct Mempool {
    entries: HashMap<Txid, Entry>,
    spenders: HashMap<OutPoint, Vec<Txid>>,
    /// Recently refused txids with the reason, so a late duplicate gets the same answer.
    rejected: HashMap<Txid, TxError>,
    rejected_order: VecDeque<Txid>,
    bytes: usize,
    max_bytes: usize,
    /// Entries still waiting for finality. Shared with [`PendingCount`] so that the RPC front
    /// can refuse under overload without the state lock; only the pool writes it.
    pending: Arc<AtomicUsize>,
}

/// A lock-free reading of a pool's pending count (see [`Mempool::pending_counter`]).
#[derive(Clone, Debug)]
pub struct PendingCount(Arc<AtomicUsize>);

impl PendingCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Rejections remembered, so a late copy (re-gossip, a retry) gets the same answer instead of
/// coming back as new. Enough for a minute of refusals at the highest rates measured.
const REJECTED_MEMORY: usize = 200_000;
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The chain's UTXO set seen through the pool: outputs of finalized pool transactions are
/// spendable, and outputs that finalized pool transactions spend are gone.
struct Overlay<'a> {
    chain: &'a dyn UtxoView,
    pool: &'a Mempool,
}

impl UtxoView for Overlay<'_> {
    fn get_utxo(&self, op: &OutPoint) -> Option<TxOut> {
        if self.pool.finalized_spender(op).is_some() {
            return None;
        }
        if let Some(e) = self.pool.entries.get(&op.txid) {
            return match e.status {
                TxStatus::Finalized { .. } => e.tx.outputs.get(op.vout as usize).cloned(),
                TxStatus::Pending => None,
            };
        }
        self.chain.get_utxo(op)
    }
}

impl Mempool {
    pub fn new(max_bytes: usize) -> Self {
        Mempool {
            entries: HashMap::new(),
            spenders: HashMap::new(),
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Transactions waiting for finality.
    pub fn pending_count(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The pending count, readable without the pool (and its lock) at hand.
    pub fn pending_counter(&self) -> PendingCount {
        PendingCount(Arc::clone(&self.pending))
    }

    /// Gives memory back after a burst: maps keep their peak capacity otherwise, which kept a
    /// node at its peak RSS long after the load ended.
    pub fn shrink_if_sparse(&mut self) -> bool {
        let sparse = |len: usize, cap: usize| cap > 1024 && len < cap / 4;
        let mut shrank = false;
        if sparse(self.entries.len(), self.entries.capacity()) {
            self.entries.shrink_to_fit();
            shrank = true;
        }
        if sparse(self.spenders.len(), self.spenders.capacity()) {
            self.spenders.shrink_to_fit();
            shrank = true;
        }
        shrank
    }

    /// The finalized pooled transaction that spends `op`, if any (one index look-up).
    pub fn finalized_spender(&self, op: &OutPoint) -> Option<Txid> {
        self.spenders
            .get(op)?
            .iter()
            .copied()
            .find(|t| self.entries.get(t).is_some_and(|e| matches!(e.status, TxStatus::Finalized { .. })))
    }

    /// A view of spendable outputs for building and checking new transactions.
    pub fn view<'a>(&'a self, chain: &'a dyn UtxoView) -> impl UtxoView + 'a {
        Overlay { chain, pool: self }
    }

    /// Validates and adds a transaction. `in_chain` tells whether a block already holds it.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        tx: Transaction,
        chain: &dyn UtxoView,
        in_chain: bool,
        chain_id: &str,
        network_byte: u8,
        next_height: u64,
        now_ms: u64,
    ) -> Result<(Txid, Added), TxError> {
        self.add_with(
            IdentifiedTx::new(tx),
            Signatures::Verify,
            chain,
            &|| in_chain,
            chain_id,
            network_byte,
            next_height,
            now_ms,
        )
    }

    /// [`Mempool::add`] with the signature verdict possibly already known, so that it can be
    /// computed outside whatever lock guards the pool, and `in_chain` asked only when needed: a
    /// transaction that a block holds has its inputs spent, so one that passes every check is
    /// not in the chain, and the index (a store read) is read only for the other answers,
    /// which "already in the chain" outranks.
    #[allow(clippy::too_many_arguments)]
    pub fn add_with(
        &mut self,
        tx: IdentifiedTx,
        sigs: Signatures,
        chain: &dyn UtxoView,
        in_chain: &dyn Fn() -> bool,
        chain_id: &str,
        network_byte: u8,
        next_height: u64,
        now_ms: u64,
    ) -> Result<(Txid, Added), TxError> {
        let txid = tx.txid();
        let tx = tx.into_tx();
        let refuse = |e: TxError| Err(if in_chain() { TxError::AlreadyInChain } else { e });
        if self.entries.contains_key(&txid) {
            if in_chain() {
                return Err(TxError::AlreadyInChain);
            }
            return Ok((txid, Added::Known));
        }
        if let Some(reason) = self.rejected.get(&txid) {
            return refuse(reason.clone());
        }
        let mut conflicting = false;
        for input in &tx.inputs {
            if self.finalized_spender(&input.prevout).is_some() {
                if in_chain() {
                    return Err(TxError::AlreadyInChain);
                }
                // It lost before it arrived here: answer "rejected" for it from now on.
                self.remember_rejection(txid, TxError::ConflictFinalized);
                return Err(TxError::ConflictFinalized);
            }
            conflicting |= self.spenders.get(&input.prevout).is_some_and(|v| !v.is_empty());
        }
        let fee = {
            let view = Overlay { chain, pool: self };
            match check_transaction_with(&tx, &view, chain_id, network_byte, next_height, sigs) {
                Ok(fee) => fee,
                Err(e) => return refuse(e),
            }
        };
        let size = tx.size();
        if self.bytes + size > self.max_bytes {
            return refuse(TxError::MempoolFull);
        }
        for input in &tx.inputs {
            self.spenders.entry(input.prevout).or_default().push(txid);
        }
        self.bytes += size;
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.entries.insert(txid, Entry { tx, txid, size, fee, first_seen_ms: now_ms, status: TxStatus::Pending });
        Ok((txid, if conflicting { Added::Conflicting } else { Added::New }))
    }

    pub fn get(&self, txid: &Txid) -> Option<&Entry> {
        self.entries.get(txid)
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    pub fn rejection(&self, txid: &Txid) -> Option<&TxError> {
        self.rejected.get(txid)
    }

    /// Marks a transaction final; returns false if it is not pooled.
    pub fn mark_finalized(&mut self, txid: &Txid, now_ms: u64) -> bool {
        match self.entries.get_mut(txid) {
            Some(e) => {
                if e.status == TxStatus::Pending {
                    e.status = TxStatus::Finalized { at_ms: now_ms };
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// Drops a transaction (lost its conflict set, or expired) and remembers why.
    pub fn reject(&mut self, txid: &Txid, reason: TxError) {
        self.remove_entry(txid);
        self.remember_rejection(*txid, reason);
    }

    fn remember_rejection(&mut self, txid: Txid, reason: TxError) {
        if self.rejected.insert(txid, reason).is_none() {
            self.rejected_order.push_back(txid);
            if self.rejected_order.len() > REJECTED_MEMORY {
                if let Some(old) = self.rejected_order.pop_front() {
                    self.rejected.remove(&old);
                }
            }
        }
    }

    fn remove_entry(&mut self, txid: &Txid) -> Option<Entry> {
        let e = self.entries.remove(txid)?;
        self.bytes -= e.size;
        if e.status == TxStatus::Pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        for input in &e.tx.inputs {
            if let Some(v) = self.spenders.get_mut(&input.prevout) {
                v.retain(|t| t != txid);
                if v.is_empty() {
                    self.spenders.remove(&input.prevout);
                }
            }
        }
        Some(e)
    }

    /// Updates the pool for a committed block: its transactions leave, and pooled
    /// transactions that spend what the block spent are rejected. Returns those rejected.
    pub fn remove_for_block(&mut self, txs: &[Transaction]) -> Vec<Txid> {
        let mut conflicted = Vec::new();
        for tx in txs {
            let txid = tx.txid();
            self.remove_entry(&txid);
            for input in &tx.inputs {
                if let Some(others) = self.spenders.get(&input.prevout).cloned() {
                    conflicted.extend(others);
                }
            }
        }
        conflicted.sort_unstable();
        conflicted.dedup();
        for t in &conflicted {
            self.reject(t, TxError::MissingInputs);
        }
        conflicted
    }

    /// Finalized transactions for the next block, parents before children, up to `max_bytes`.
    pub fn block_candidates(&self, max_bytes: usize) -> Vec<Transaction> {
        let mut finalized: Vec<&Entry> =
            self.entries.values().filter(|e| matches!(e.status, TxStatus::Finalized { .. })).collect();
        finalized.sort_by_key(|e| (e.first_seen_ms, e.txid));
        let in_set: HashSet<Txid> = finalized.iter().map(|e| e.txid).collect();
        let mut placed: HashSet<Txid> = HashSet::new();
        let mut out = Vec::new();
        let mut used = 0usize;
        // Repeated passes place a child once its pooled parents are placed; chains are short.
        loop {
            let mut progress = false;
            for e in &finalized {
                if placed.contains(&e.txid) {
                    continue;
                }
                let ready =
                    e.tx.inputs.iter().all(|i| !in_set.contains(&i.prevout.txid) || placed.contains(&i.prevout.txid));
                if ready && used + e.size <= max_bytes {
                    used += e.size;
                    placed.insert(e.txid);
                    out.push(e.tx.clone());
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        out
    }

    /// Outpoints that pooled transactions spend (the wallet avoids them).
    pub fn is_spent(&self, op: &OutPoint) -> bool {
        self.spenders.get(op).is_some_and(|v| !v.is_empty())
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Rough memory use: serialized bytes plus per-entry and index overhead.
    pub fn usage(&self) -> usize {
        self.bytes + self.entries.len() * (std::mem::size_of::<Entry>() + 64) + self.spenders.len() * 96
    }

    pub fn count_finalized(&self) -> usize {
        self.entries.values().filter(|e| matches!(e.status, TxStatus::Finalized { .. })).count()
    }

    /// Number of outpoints that more than one pooled transaction spends.
    pub fn conflict_count(&self) -> usize {
        self.spenders.values().filter(|v| v.len() > 1).count()
    }

    /// Outputs of pooled finalized transactions paying to `address` (spendable change).
    pub fn finalized_outputs_for(&self, address: &crate::chain::Address) -> Vec<(OutPoint, TxOut)> {
        let mut v = Vec::new();
        for e in self.entries.values() {
            if !matches!(e.status, TxStatus::Finalized { .. }) {
                continue;
            }
            for (i, o) in e.tx.outputs.iter().enumerate() {
                let op = OutPoint { txid: e.txid, vout: i as u32 };
                if o.address == *address && o.value >= DUST_LIMIT && !self.is_spent(&op) {
                    v.push((op, o.clone()));
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::address::{Address, Network};
    use crate::chain::amount::COIN;
    use crate::chain::crypto::{Hash256, Keypair};
    use std::collections::HashMap;

    const C: &str = "c";
    const NET: u8 = 0;

    fn fixture() -> (Keypair, Address, HashMap<OutPoint, TxOut>, Vec<OutPoint>) {
        let k = Keypair::insecure_from_label("m");
        let a = Address::from_pubkey(Network::Testnet, &k.public());
        let mut u = HashMap::new();
        let mut ops = vec![];
        for i in 0..3u8 {
            let op = OutPoint { txid: Hash256::digest(&[i]), vout: 0 };
            u.insert(op, TxOut { value: COIN, address: a });
            ops.push(op);
        }
        (k, a, u, ops)
    }

    fn spend(k: &Keypair, to: Address, ins: Vec<OutPoint>, value: u64) -> Transaction {
        let mut tx = Transaction::unsigned(ins, vec![TxOut { value, address: to }], 0, None);
        tx.sign_all(k, C);
        tx
    }

    #[test]
    fn conflicts_are_kept_until_one_is_final() {
        let (k, a, u, ops) = fixture();
        let mut m = Mempool::new(DEFAULT_MAX_BYTES);
        let t1 = spend(&k, a, vec![ops[0]], COIN - 10_000);
        let t2 = spend(&k, a, vec![ops[0]], COIN - 20_000);
        let (id1, r1) = m.add(t1.clone(), &u, false, C, NET, 1, 0).unwrap();
        assert_eq!(r1, Added::New);
        let (id2, r2) = m.add(t2, &u, false, C, NET, 1, 0).unwrap();
        assert_eq!(r2, Added::Conflicting);
        assert_eq!(m.conflict_count(), 1);
        assert_eq!(m.add(t1, &u, false, C, NET, 1, 0).unwrap().1, Added::Known);
        m.mark_finalized(&id1, 5);
        m.reject(&id2, TxError::Conflict);
        let t3 = spend(&k, a, vec![ops[0]], COIN - 30_000);
        assert_eq!(m.add(t3, &u, false, C, NET, 1, 0), Err(TxError::ConflictFinalized));
        assert_eq!(m.rejection(&id2), Some(&TxError::Conflict));
    }

    #[test]
    fn finalized_change_is_spendable_and_ordered_for_blocks() {
        let (k, a, u, ops) = fixture();
        let mut m = Mempool::new(DEFAULT_MAX_BYTES);
        let parent = spend(&k, a, vec![ops[1]], COIN - 10_000);
        let (pid, _) = m.add(parent.clone(), &u, false, C, NET, 1, 10).unwrap();
        let child = spend(&k, a, vec![OutPoint { txid: pid, vout: 0 }], COIN - 20_000);
        // Pending outputs are not spendable.
        assert_eq!(m.add(child.clone(), &u, false, C, NET, 1, 0), Err(TxError::MissingInputs));
        m.mark_finalized(&pid, 11);
        let (cid, _) = m.add(child, &u, false, C, NET, 1, 0).unwrap();
        m.mark_finalized(&cid, 12);
        let order: Vec<Txid> = m.block_candidates(usize::MAX).iter().map(|t| t.txid()).collect();
        assert_eq!(order, vec![pid, cid]);
        let removed = m.remove_for_block(&[parent]);
        assert!(removed.is_empty());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn block_spending_a_pooled_input_rejects_the_pooled_tx() {
        let (k, a, u, ops) = fixture();
        let mut m = Mempool::new(DEFAULT_MAX_BYTES);
        let (id, _) = m.add(spend(&k, a, vec![ops[2]], COIN - 10_000), &u, false, C, NET, 1, 0).unwrap();
        let other = spend(&k, a, vec![ops[2]], COIN - 50_000);
        assert_eq!(m.remove_for_block(&[other]), vec![id]);
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn pending_count_follows_every_transition() {
        let (k, a, u, ops) = fixture();
        let mut m = Mempool::new(DEFAULT_MAX_BYTES);
        let (i0, _) = m.add(spend(&k, a, vec![ops[0]], COIN - 10_000), &u, false, C, NET, 1, 0).unwrap();
        let (i1, _) = m.add(spend(&k, a, vec![ops[1]], COIN - 10_000), &u, false, C, NET, 1, 0).unwrap();
        let (i2, _) = m.add(spend(&k, a, vec![ops[2]], COIN - 10_000), &u, false, C, NET, 1, 0).unwrap();
        assert_eq!(m.pending_count(), 3);
        m.mark_finalized(&i0, 1);
        m.mark_finalized(&i0, 2);
        assert_eq!(m.pending_count(), 2, "finalizing twice counts once");
        m.reject(&i1, TxError::Expired);
        assert_eq!(m.pending_count(), 1);
        assert_eq!(m.rejection(&i1), Some(&TxError::Expired));
        let tx0 = m.get(&i0).unwrap().tx.clone();
        m.remove_for_block(&[tx0]);
        assert_eq!(m.pending_count(), 1, "a finalized entry leaving does not touch the count");
        m.reject(&i2, TxError::Expired);
        assert_eq!(m.pending_count(), 0);
        m.shrink_if_sparse();
        assert!(m.is_empty());
    }

    #[test]
    fn size_limit_and_in_chain() {
        let (k, a, u, ops) = fixture();
        let mut m = Mempool::new(10);
        assert_eq!(m.add(spend(&k, a, vec![ops[0]], COIN / 2), &u, false, C, NET, 1, 0), Err(TxError::MempoolFull));
        // A block's transaction has its inputs spent: "already in the chain" outranks
        // "missing inputs", and every other refusal.
        let mut m = Mempool::new(DEFAULT_MAX_BYTES);
        let mined = spend(&k, a, vec![OutPoint { txid: Hash256::digest(b"spent"), vout: 0 }], COIN / 2);
        assert_eq!(m.add(mined.clone(), &u, true, C, NET, 1, 0), Err(TxError::AlreadyInChain));
        assert_eq!(m.add(mined, &u, false, C, NET, 1, 0), Err(TxError::MissingInputs));
        let mut m = Mempool::new(10);
        assert_eq!(m.add(spend(&k, a, vec![ops[0]], COIN / 2), &u, true, C, NET, 1, 0), Err(TxError::AlreadyInChain));
    }

    #[test]
    fn the_chain_index_is_read_only_to_refuse() {
        // What passes every check cannot be in a block (its inputs would be spent), so the
        // engine's store read is skipped for it; any refusal asks.
        let (k, a, u, ops) = fixture();
        let mut m = Mempool::new(DEFAULT_MAX_BYTES);
        let asked = std::cell::Cell::new(0);
        let in_chain = || {
            asked.set(asked.get() + 1);
            false
        };
        let ok = IdentifiedTx::new(spend(&k, a, vec![ops[0]], COIN / 2));
        assert!(m.add_with(ok.clone(), Signatures::Verify, &u, &in_chain, C, NET, 1, 0).is_ok());
        assert_eq!(asked.get(), 0);
        let missing = spend(&k, a, vec![OutPoint { txid: Hash256::digest(b"gone"), vout: 0 }], COIN / 2);
        let r = m.add_with(IdentifiedTx::new(missing), Signatures::Verify, &u, &in_chain, C, NET, 1, 0);
        assert_eq!((r, asked.get()), (Err(TxError::MissingInputs), 1));
        assert!(m.add_with(ok, Signatures::Verify, &u, &in_chain, C, NET, 1, 0).is_ok_and(|(_, x)| x == Added::Known));
        assert_eq!(asked.get(), 2, "a pooled transaction could have been mined since");
    }
}
