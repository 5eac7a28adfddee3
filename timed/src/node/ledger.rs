//! Chain rules that need the stored chain: who may lead a slot, what a valid next block is,
//! and building one. Pure checks over the store; the engine decides when to call them.

use crate::chain::amount::checked_sum;
use crate::chain::block::verify_cert;
use crate::chain::block::{last_commit_hash, merkle_root, BlockHeader, BLOCK_VERSION, MAX_BLOCK_SIZE};
use crate::chain::genesis::{reward_outputs, BLOCK_REWARD};
use crate::chain::validate::{check_transaction_with, Signatures, TxError, UtxoView};
use crate::chain::{
    Block, CommitCert, GenesisConfig, Hash256, Keypair, OutPoint, PublicKey, Signature, Transaction, TxOut, Txid,
    ValidatorIndex,
};
use crate::consensus::leader;
use crate::storage::{Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// How far a peer's clock may run ahead of ours before its block counts as "from the future".
pub const MAX_CLOCK_DRIFT_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block height {got} does not follow the tip {tip}")]
    WrongHeight { got: u64, tip: u64 },
    #[error("block does not build on the tip")]
    WrongParent,
    #[error("block version {0} is not supported")]
    BadVersion(u32),
    #[error("block slot {got} is not the slot {expected} of this height")]
    WrongSlot { got: u64, expected: u64 },
    #[error("block is for a future slot")]
    FutureSlot,
    #[error("block timestamp is out of range")]
    BadTimestamp,
    #[error("producer {got} is not the proposer {expected} of round {round}")]
    WrongProducer { got: ValidatorIndex, expected: ValidatorIndex, round: u32 },
    #[error("producer signature is invalid")]
    BadProducerSignature,
    #[error("merkle root does not match the transactions")]
    BadMerkleRoot,
    #[error("last commit certificate is missing, invalid or for another block")]
    BadLastCommit,
    #[error("block is larger than {MAX_BLOCK_SIZE} bytes")]
    TooLarge,
    #[error("block has no coinbase or a wrong one")]
    BadCoinbase,
    #[error("block contains transaction {txid} twice")]
    DuplicateTx { txid: Hash256 },
    #[error("transaction {txid} is invalid: {reason}")]
    BadTx { txid: Hash256, reason: TxError },
    #[error("transaction {0} conflicts with a transaction this node finalized")]
    ConflictsWithFinalized(Hash256),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Ledger {
    pub store: Arc<Store>,
    pub genesis: GenesisConfig,
    pub genesis_hash: Hash256,
    pub pubkeys: Vec<PublicKey>,
    /// Signers of the commit certificate in each of the last few committed blocks, by height
    /// (`None`: the block has none). Eligibility reads two of them on every block built,
    /// checked and ranked; decoding whole blocks for that took milliseconds once blocks held
    /// a thousand transactions. Committed blocks never change, so entries never go stale.
    recent_signers: Mutex<BTreeMap<u64, Option<Vec<ValidatorIndex>>>>,
}

/// Heights kept in [`Ledger::recent_signers`]: eligibility looks two below the tip.
const RECENT_SIGNERS: usize = 8;

/// Spendable outputs while walking a block: the chain's, plus outputs created earlier in the
/// block, minus outputs spent earlier in the block.
struct BlockView<'a> {
    store: &'a Store,
    created: HashMap<OutPoint, TxOut>,
    spent: HashSet<OutPoint>,
}

impl UtxoView for BlockView<'_> {
    fn get_utxo(&self, op: &OutPoint) -> Option<TxOut> {
        if self.spent.contains(op) {
            return None;
        }
        self.created.get(op).cloned().or_else(|| UtxoView::get_utxo(self.store, op))
    }
}

impl Ledger {
    pub fn new(store: Arc<Store>, genesis: GenesisConfig) -> Self {
        let pubkeys = genesis.validators.iter().map(|v| v.pubkey).collect();
        let genesis_hash = genesis.genesis_hash();
        Ledger { store, genesis, genesis_hash, pubkeys, recent_signers: Mutex::default() }
    }

    pub fn chain_id(&self) -> &str {
        &self.genesis.chain_id
    }

    pub fn tip_block(&self) -> Result<Block, StoreError> {
        let (h, _) = self.store.tip()?;
        self.store.block_by_height(h)?.ok_or_else(|| StoreError::Corrupt(format!("tip block {h} is missing")))
    }

    /// The slot a block on top of `parent` belongs to: the first slot after both the parent's
    /// slot and the parent's timestamp, so a chain that stalled resumes at the current slot
    /// instead of replaying the missed ones.
    pub fn slot_after(&self, parent: &BlockHeader) -> u64 {
        parent.slot.max(self.genesis.slot_at(parent.timestamp_ms)) + 1
    }

    /// Validators that may lead the block after `parent`: those whose precommits appear in
    /// any of the last three on-chain commit certificates (everyone while the chain is young).
    pub fn eligible_after(&self, parent: &Block) -> Result<Vec<ValidatorIndex>, StoreError> {
        let mut recent = Vec::new();
        if let Some(cert) = &parent.last_commit {
            recent.push(cert.signers().collect::<Vec<_>>());
            let mut h = parent.height();
            while recent.len() < 3 && h > 0 {
                h -= 1;
                let Some(signers) = self.commit_signers_at(h)? else { break };
                recent.push(signers);
            }
        }
        Ok(leader::eligible(self.genesis.validators.len(), &recent))
    }

    /// Signers of the commit certificate in the committed block at `h`; `None` when that
    /// block has none or is not in the store.
    fn commit_signers_at(&self, h: u64) -> Result<Option<Vec<ValidatorIndex>>, StoreError> {
        let cache = || self.recent_signers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = cache().get(&h) {
            return Ok(known.clone());
        }
        let Some(block) = self.store.block_by_height(h)? else { return Ok(None) };
        let signers = block.last_commit.as_ref().map(|c| c.signers().collect::<Vec<_>>());
        let mut cache = cache();
        cache.insert(h, signers.clone());
        while cache.len() > RECENT_SIGNERS {
            cache.pop_first();
        }
        Ok(signers)
    }

    pub fn ranking_after(&self, parent: &Block) -> Result<Vec<ValidatorIndex>, StoreError> {
        let eligible = self.eligible_after(parent)?;
        Ok(leader::ranking(&parent.hash(), self.slot_after(&parent.header), &eligible))
    }

    fn coinbase(&self, height: u64, eligible: &[ValidatorIndex], producer: ValidatorIndex, fees: u64) -> Transaction {
        Transaction {
            version: crate::chain::tx::TX_VERSION,
            inputs: vec![],
            outputs: reward_outputs(&self.genesis.validators, eligible, producer, BLOCK_REWARD + fees),
            lock_time: height,
            memo: None,
        }
    }

    /// Builds and signs the block after `parent`. `candidates` must be valid in order (the
    /// mempool's finalized candidates); any that are not are left out. The signature check is
    /// skipped for candidates for which `already_verified` is true, under the same rule as
    /// [`Ledger::check_block_with`]: the proposer's candidates come from its pool, where nothing
    /// enters unchecked, and checking them again was 5 % of a loaded network's CPU
    /// (docs/benchmarks.md, run AD).
    #[allow(clippy::too_many_arguments)]
    pub fn build_block(
        &self,
        parent: &Block,
        round: u32,
        producer: ValidatorIndex,
        key: &Keypair,
        candidates: Vec<Transaction>,
        last_commit: Option<CommitCert>,
        now_ms: u64,
        already_verified: &dyn Fn(&Transaction) -> bool,
    ) -> Result<Block, StoreError> {
        let height = parent.height() + 1;
        let mut view = BlockView { store: &self.store, created: HashMap::new(), spent: HashSet::new() };
        let mut txs = Vec::new();
        let mut txids = Vec::new();
        let mut fees: u64 = 0;
        let mut size = 1024usize;
        for tx in candidates {
            let sigs = if already_verified(&tx) { Signatures::Verified(true) } else { Signatures::Verify };
            let Ok(fee) =
                check_transaction_with(&tx, &view, self.chain_id(), self.genesis.network_byte(), height, sigs)
            else {
                continue;
            };
            if size + tx.size() > MAX_BLOCK_SIZE - 64 * 1024 {
                break;
            }
            size += tx.size();
            fees += fee;
            let txid = tx.txid();
            apply(&mut view, &tx, txid);
            txs.push(tx);
            txids.push(txid);
        }
        let eligible = self.eligible_after(parent)?;
        let mut all = vec![self.coinbase(height, &eligible, producer, fees)];
        txids.insert(0, all[0].txid());
        all.extend(txs);
        let header = BlockHeader {
            version: BLOCK_VERSION,
            height,
            prev_hash: parent.hash(),
            merkle_root: merkle_root(&txids),
            timestamp_ms: now_ms.max(parent.header.timestamp_ms + 1),
            slot: self.slot_after(&parent.header),
            round,
            producer,
            last_commit_hash: last_commit_hash(&last_commit),
        };
        let mut block = Block { header, producer_sig: Signature([0; 64]), txs: all, last_commit };
        block.sign(key, self.chain_id());
        Ok(block)
    }

    /// Full check of a block on top of `parent`. With `now_ms` (a live proposal) the slot and
    /// timestamp must not be in the future; synced blocks carry a certificate instead.
    /// `finalized_conflict` says whether a transaction conflicts with one this node finalized.
    pub fn check_block(
        &self,
        block: &Block,
        parent: &Block,
        now_ms: Option<u64>,
        finalized_conflict: &dyn Fn(&Transaction) -> bool,
    ) -> Result<(), BlockError> {
        self.check_block_with(block, parent, now_ms, finalized_conflict, &|_| false)
    }

    /// [`Ledger::check_block`] that skips the signature check of transactions for which
    /// `already_verified` is true: it must only say so for a transaction identical, witnesses
    /// included, to one whose signatures this node checked (its mempool holds only such).
    pub fn check_block_with(
        &self,
        block: &Block,
        parent: &Block,
        now_ms: Option<u64>,
        finalized_conflict: &dyn Fn(&Transaction) -> bool,
        already_verified: &dyn Fn(&Transaction) -> bool,
    ) -> Result<(), BlockError> {
        let h = &block.header;
        if h.version != BLOCK_VERSION {
            return Err(BlockError::BadVersion(h.version));
        }
        if h.height != parent.height() + 1 {
            return Err(BlockError::WrongHeight { got: h.height, tip: parent.height() });
        }
        if h.prev_hash != parent.hash() {
            return Err(BlockError::WrongParent);
        }
        let slot = self.slot_after(&parent.header);
        if h.slot != slot {
            return Err(BlockError::WrongSlot { got: h.slot, expected: slot });
        }
        if h.timestamp_ms <= parent.header.timestamp_ms || h.timestamp_ms < self.genesis.slot_start_ms(slot) {
            return Err(BlockError::BadTimestamp);
        }
        if let Some(now) = now_ms {
            if self.genesis.slot_start_ms(slot) > now + MAX_CLOCK_DRIFT_MS {
                return Err(BlockError::FutureSlot);
            }
            if h.timestamp_ms > now + MAX_CLOCK_DRIFT_MS {
                return Err(BlockError::BadTimestamp);
            }
        }
        let eligible = self.eligible_after(parent)?;
        let ranking = leader::ranking(&parent.hash(), slot, &eligible);
        let expected = ranking[h.round as usize % ranking.len()];
        if h.producer != expected {
            return Err(BlockError::WrongProducer { got: h.producer, expected, round: h.round });
        }
        let Some(pk) = self.pubkeys.get(h.producer as usize) else {
            return Err(BlockError::BadProducerSignature);
        };
        if !block.verify_producer(pk, self.chain_id()) {
            return Err(BlockError::BadProducerSignature);
        }
        if h.last_commit_hash != last_commit_hash(&block.last_commit) {
            return Err(BlockError::BadLastCommit);
        }
        match (&block.last_commit, parent.height()) {
            (None, 0) => {}
            (Some(cert), ph) if ph > 0 => {
                if cert.height != ph
                    || cert.block_hash != parent.hash()
                    || !verify_cert(cert, &self.pubkeys, self.genesis.quorum(), self.chain_id())
                {
                    return Err(BlockError::BadLastCommit);
                }
            }
            _ => return Err(BlockError::BadLastCommit),
        }
        if block.size() > MAX_BLOCK_SIZE {
            return Err(BlockError::TooLarge);
        }
        let txids: Vec<Hash256> = block.txids();
        if merkle_root(&txids) != h.merkle_root {
            return Err(BlockError::BadMerkleRoot);
        }
        let mut seen = HashSet::new();
        for id in &txids {
            if !seen.insert(*id) {
                return Err(BlockError::DuplicateTx { txid: *id });
            }
        }
        let Some((coinbase, rest)) = block.txs.split_first() else {
            return Err(BlockError::BadCoinbase);
        };
        let mut view = BlockView { store: &self.store, created: HashMap::new(), spent: HashSet::new() };
        let mut fees: Vec<u64> = Vec::with_capacity(rest.len());
        for (tx, &txid) in rest.iter().zip(&txids[1..]) {
            if tx.is_coinbase() {
                return Err(BlockError::BadCoinbase);
            }
            let sigs = if already_verified(tx) { Signatures::Verified(true) } else { Signatures::Verify };
            let fee =
                match check_transaction_with(tx, &view, self.chain_id(), self.genesis.network_byte(), h.height, sigs) {
                    Ok(fee) => fee,
                    // A transaction in the chain has its inputs spent, so the index is read only
                    // to name the refusal (a read per transaction was 2 % of a node at 2,500 tx/s).
                    Err(_) if self.store.tx_location(&txid)?.is_some() => {
                        return Err(BlockError::BadTx { txid, reason: TxError::AlreadyInChain })
                    }
                    Err(reason) => return Err(BlockError::BadTx { txid, reason }),
                };
            if finalized_conflict(tx) {
                return Err(BlockError::ConflictsWithFinalized(txid));
            }
            fees.push(fee);
            apply(&mut view, tx, txid);
        }
        let fees = checked_sum(fees).ok_or(BlockError::BadCoinbase)?;
        if *coinbase != self.coinbase(h.height, &eligible, h.producer, fees) {
            return Err(BlockError::BadCoinbase);
        }
        Ok(())
    }
}

fn apply(view: &mut BlockView<'_>, tx: &Transaction, txid: Txid) {
    for i in &tx.inputs {
        view.created.remove(&i.prevout);
        view.spent.insert(i.prevout);
    }
    for (n, o) in tx.outputs.iter().enumerate() {
        view.created.insert(OutPoint { txid, vout: n as u32 }, o.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::amount::COIN;
    use crate::chain::genesis::{devnet_validator_key, devnet_wallet_key};
    use crate::chain::{Address, Network, OutPoint, TxOut};

    /// The proposer skips the signature check only for what it is told was checked (its pool);
    /// anything else is checked, and a block that carries a forged signature anyway is refused
    /// by every validator that checks it.
    #[test]
    fn a_proposer_checks_the_signatures_it_was_not_told_are_checked() {
        let g = GenesisConfig::devnet(3, 10);
        let dir = tempfile::TempDir::new().unwrap();
        let ledger = Ledger::new(Arc::new(Store::open(&dir.path().join("chain.redb"), &g).unwrap()), g.clone());
        let parent = ledger.tip_block().unwrap();
        let producer = ledger.ranking_after(&parent).unwrap()[0];
        let key = devnet_validator_key(&g.validators[producer as usize].id);
        let now = g.slot_start_ms(ledger.slot_after(&parent.header));
        let to = Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label("to").public());
        let pay = |vout: u32| {
            let op = OutPoint { txid: parent.txs[0].txid(), vout };
            let mut tx = Transaction::unsigned(vec![op], vec![TxOut { value: COIN, address: to }], 0, None);
            tx.sign_all(&devnet_wallet_key("validator1"), &g.chain_id);
            tx
        };
        let good = pay(0);
        let mut forged = pay(1);
        forged.inputs[0].signature.0[0] ^= 1;
        let build = |verified: &dyn Fn(&Transaction) -> bool| {
            ledger
                .build_block(&parent, 0, producer, &key, vec![good.clone(), forged.clone()], None, now, verified)
                .unwrap()
        };

        let checked = build(&|_| false);
        assert_eq!(&checked.txs[1..], std::slice::from_ref(&good), "the forged one is left out");
        assert_eq!(&build(&|t| *t == good).txs[1..], std::slice::from_ref(&good), "the unvouched one is still checked");
        ledger.check_block(&checked, &parent, None, &|_| false).unwrap();

        // Vouching for a forged signature puts it in the block, and the others refuse the block.
        let vouched = build(&|_| true);
        assert_eq!(vouched.txs[1..], [good.clone(), forged.clone()]);
        let err = ledger.check_block(&vouched, &parent, None, &|_| false).unwrap_err();
        assert!(
            matches!(&err, BlockError::BadTx { txid, reason: TxError::BadSignature } if *txid == forged.txid()),
            "{err:?}"
        );
    }

    /// The index is read only once a transaction fails its checks, and the refusal still
    /// names a transaction already in the chain as such, not as one with missing inputs.
    #[test]
    fn a_block_repeating_a_chain_transaction_is_refused_as_such() {
        use crate::storage::tests::{certify, genesis_op, spend};
        let g = GenesisConfig::devnet(1, 10);
        let dir = tempfile::TempDir::new().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("chain.redb"), &g).unwrap());
        let ledger = Ledger::new(store.clone(), g.clone());
        let key = devnet_validator_key(&g.validators[0].id);
        let to = Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label("to").public());
        let genesis = ledger.tip_block().unwrap();
        let pay = |value: u64| spend(&g, "validator1", vec![genesis_op(&g, 0)], vec![(to, value)]);
        let (paid, rival) = (pay(COIN), pay(COIN / 2));
        let build = |parent: &Block, txs: Vec<Transaction>, last: Option<CommitCert>| {
            let now = g.slot_start_ms(ledger.slot_after(&parent.header));
            ledger.build_block(parent, 0, 0, &key, txs, last, now, &|_| false).unwrap()
        };
        let b1 = build(&genesis, vec![paid.clone()], None);
        assert_eq!(&b1.txs[1..], std::slice::from_ref(&paid));
        let cert = certify(&g, &b1);
        store.commit_block(&b1, &cert).unwrap();

        // build_block leaves out what no longer applies, so the block is sealed again by hand.
        let with = |tx: &Transaction| {
            let mut b = build(&b1, vec![], Some(cert.clone()));
            b.txs.push(tx.clone());
            b.header.merkle_root = merkle_root(&b.txids());
            b.sign(&key, &g.chain_id);
            b
        };
        let refusal = |tx: &Transaction| match ledger.check_block(&with(tx), &b1, None, &|_| false) {
            Err(BlockError::BadTx { txid, reason }) if txid == tx.txid() => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(refusal(&paid), TxError::AlreadyInChain);
        assert_eq!(refusal(&rival), TxError::MissingInputs);
    }
}
