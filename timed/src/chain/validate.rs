//! Transaction validation. Every rejection has its own reason string (Bitcoin Core's where one
//! exists) and a Bitcoin-style RPC error code.

use super::amount::{checked_sum, min_fee, DUST_LIMIT, MAX_MONEY};
use super::tx::{OutPoint, Transaction, TxOut, Txid};
use std::collections::HashSet;

pub const MAX_TX_SIZE: usize = 100_000;
pub const MAX_TX_INPUTS: usize = 1_000;
pub const MAX_TX_OUTPUTS: usize = 1_000;
pub const MAX_MEMO_LEN: usize = 80;

/// RPC_VERIFY_ERROR: general failure while checking (missing inputs).
pub const RPC_VERIFY_ERROR: i32 = -25;
/// RPC_VERIFY_REJECTED: the transaction breaks a rule.
pub const RPC_VERIFY_REJECTED: i32 = -26;
/// RPC_VERIFY_ALREADY_IN_CHAIN.
pub const RPC_VERIFY_ALREADY_IN_CHAIN: i32 = -27;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("bad-txns-vout-empty")]
    NoOutputs,
    #[error("bad-txns-oversize")]
    Oversize,
    #[error("bad-txns-too-many-inputs")]
    TooManyInputs,
    #[error("bad-txns-too-many-outputs")]
    TooManyOutputs,
    #[error("bad-txns-memo-toolong")]
    MemoTooLong,
    #[error("bad-txns-version")]
    BadVersion,
    #[error("bad-txns-inputs-duplicate")]
    DuplicateInputs,
    #[error("dust")]
    Dust,
    #[error("bad-txns-txouttotal-toolarge")]
    OutputOverflow,
    #[error("bad-txns-inputvalues-outofrange")]
    InputOverflow,
    #[error("bad-txns-wrong-network")]
    WrongNetwork,
    #[error("bad-txns-inputs-missingorspent")]
    MissingInputs,
    #[error("bad-txns-in-belowout")]
    InputsBelowOutputs,
    #[error("min-fee-not-met")]
    FeeTooLow,
    #[error("bad-txns-nonfinal")]
    NonFinal,
    #[error("bad-txns-wrong-key")]
    WrongKey,
    #[error("bad-txns-signature")]
    BadSignature,
    #[error("bad-txns-unexpected-coinbase")]
    UnexpectedCoinbase,
    #[error("txn-already-known")]
    AlreadyInChain,
    #[error("txn-mempool-conflict")]
    Conflict,
    #[error("txn-conflict-finalized")]
    ConflictFinalized,
    /// Too many transactions are waiting for finality; try again later (clients back off).
    #[error("mempool-full")]
    MempoolFull,
    /// Not final within the expiry time (no quorum agreed in time); safe to send again.
    #[error("txn-expired")]
    Expired,
}

impl TxError {
    /// The Bitcoin-style JSON-RPC error code for this rejection.
    pub fn rpc_code(&self) -> i32 {
        match self {
            TxError::MissingInputs => RPC_VERIFY_ERROR,
            TxError::AlreadyInChain => RPC_VERIFY_ALREADY_IN_CHAIN,
            _ => RPC_VERIFY_REJECTED,
        }
    }
}

/// Read access to spendable outputs (chain UTXO set, possibly overlaid with the mempool).
pub trait UtxoView {
    fn get_utxo(&self, outpoint: &OutPoint) -> Option<TxOut>;
}

impl UtxoView for std::collections::HashMap<OutPoint, TxOut> {
    fn get_utxo(&self, outpoint: &OutPoint) -> Option<TxOut> {
        self.get(outpoint).cloned()
    }
}

/// Checks that need no chain state. `network_byte` is the address network of this chain.
pub fn check_stateless(tx: &Transaction, network_byte: u8) -> Result<(), TxError> {
    if tx.version != super::tx::TX_VERSION {
        return Err(TxError::BadVersion);
    }
    if tx.inputs.is_empty() {
        return Err(TxError::UnexpectedCoinbase);
    }
    if tx.outputs.is_empty() {
        return Err(TxError::NoOutputs);
    }
    if tx.inputs.len() > MAX_TX_INPUTS {
        return Err(TxError::TooManyInputs);
    }
    if tx.outputs.len() > MAX_TX_OUTPUTS {
        return Err(TxError::TooManyOutputs);
    }
    if tx.memo.as_ref().is_some_and(|m| m.len() > MAX_MEMO_LEN) {
        return Err(TxError::MemoTooLong);
    }
    if tx.size() > MAX_TX_SIZE {
        return Err(TxError::Oversize);
    }
    let mut seen = HashSet::with_capacity(tx.inputs.len());
    if !tx.inputs.iter().all(|i| seen.insert(i.prevout)) {
        return Err(TxError::DuplicateInputs);
    }
    for out in &tx.outputs {
        if out.value > MAX_MONEY {
            return Err(TxError::OutputOverflow);
        }
        if out.value < DUST_LIMIT {
            return Err(TxError::Dust);
        }
        if out.address.network_byte != network_byte {
            return Err(TxError::WrongNetwork);
        }
    }
    tx.output_total().ok_or(TxError::OutputOverflow)?;
    Ok(())
}

/// Full check against spendable outputs; returns the fee.
pub fn check_transaction(
    tx: &Transaction,
    view: &dyn UtxoView,
    chain_id: &str,
    network_byte: u8,
    next_height: u64,
) -> Result<u64, TxError> {
    check_transaction_with(tx, view, chain_id, network_byte, next_height, Signatures::Verify)
}

/// How [`check_transaction_with`] learns whether the witnesses are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signatures {
    /// Verify them here.
    Verify,
    /// Already verified (by [`signatures_valid`] on this exact transaction, witnesses
    /// included); the verdict is reused, never re-derived from the txid alone.
    Verified(bool),
}

/// Whether every input's signature is valid for this transaction (strict ed25519).
pub fn signatures_valid(tx: &Transaction, chain_id: &str) -> bool {
    signed_by_inputs(tx, &tx.txid(), chain_id)
}

/// [`signatures_valid`] for a transaction whose txid is known already.
pub fn signatures_valid_identified(tx: &super::IdentifiedTx, chain_id: &str) -> bool {
    signed_by_inputs(tx.tx(), &tx.txid(), chain_id)
}

fn signed_by_inputs(tx: &Transaction, txid: &Txid, chain_id: &str) -> bool {
    tx.inputs.iter().all(|input| {
        super::crypto::verify(&input.pubkey, super::crypto::Domain::Transaction, chain_id, &txid.0, &input.signature)
    })
}

/// [`check_transaction`] with the signature verdict possibly known. Errors come in the same
/// order either way: a transaction with a bad signature and a missing input is reported as
/// missing its input.
pub fn check_transaction_with(
    tx: &Transaction,
    view: &dyn UtxoView,
    chain_id: &str,
    network_byte: u8,
    next_height: u64,
    sigs: Signatures,
) -> Result<u64, TxError> {
    check_stateless(tx, network_byte)?;
    if tx.lock_time > next_height {
        return Err(TxError::NonFinal);
    }
    let mut spent = Vec::with_capacity(tx.inputs.len());
    for input in &tx.inputs {
        let out = view.get_utxo(&input.prevout).ok_or(TxError::MissingInputs)?;
        if !out.address.matches(&input.pubkey) {
            return Err(TxError::WrongKey);
        }
        spent.push(out.value);
    }
    let valid = match sigs {
        Signatures::Verify => signatures_valid(tx, chain_id),
        Signatures::Verified(v) => v,
    };
    if !valid {
        return Err(TxError::BadSignature);
    }
    let total_in = checked_sum(spent).ok_or(TxError::InputOverflow)?;
    let total_out = tx.output_total().ok_or(TxError::OutputOverflow)?;
    let fee = total_in.checked_sub(total_out).ok_or(TxError::InputsBelowOutputs)?;
    if fee < min_fee(tx.size()) {
        return Err(TxError::FeeTooLow);
    }
    Ok(fee)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::address::{Address, Network};
    use crate::chain::amount::COIN;
    use crate::chain::crypto::{Hash256, Keypair};
    use proptest::prelude::*;
    use std::collections::HashMap;

    const CHAIN: &str = "test-chain";
    const NET: u8 = Network::Testnet as u8;

    fn setup(values: &[u64]) -> (Keypair, HashMap<OutPoint, TxOut>, Vec<OutPoint>) {
        let k = Keypair::insecure_from_label("owner");
        let addr = Address::from_pubkey(Network::Testnet, &k.public());
        let mut utxos = HashMap::new();
        let mut ops = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let op = OutPoint { txid: Hash256::digest(&[i as u8]), vout: 0 };
            utxos.insert(op, TxOut { value: *v, address: addr });
            ops.push(op);
        }
        (k, utxos, ops)
    }

    fn pay(k: &Keypair, ins: Vec<OutPoint>, outs: Vec<u64>) -> Transaction {
        let to = Address::from_pubkey(Network::Testnet, &Keypair::insecure_from_label("to").public());
        let mut tx =
            Transaction::unsigned(ins, outs.into_iter().map(|value| TxOut { value, address: to }).collect(), 0, None);
        tx.sign_all(k, CHAIN);
        tx
    }

    fn check(tx: &Transaction, u: &HashMap<OutPoint, TxOut>) -> Result<u64, TxError> {
        check_transaction(tx, u, CHAIN, NET, 1)
    }

    #[test]
    fn valid_spend_returns_fee() {
        let (k, u, ops) = setup(&[COIN]);
        let tx = pay(&k, vec![ops[0]], vec![COIN - 10_000]);
        assert_eq!(check(&tx, &u), Ok(10_000));
    }

    #[test]
    fn double_spend_of_spent_output_is_missing_input() {
        let (k, mut u, ops) = setup(&[COIN]);
        let tx = pay(&k, vec![ops[0]], vec![COIN - 10_000]);
        assert!(check(&tx, &u).is_ok());
        u.remove(&ops[0]); // spent by the first transaction
        let again = pay(&k, vec![ops[0]], vec![COIN - 20_000]);
        assert_eq!(check(&again, &u), Err(TxError::MissingInputs));
        assert_eq!(TxError::MissingInputs.rpc_code(), -25);
    }

    #[test]
    fn bad_signature_and_wrong_chain() {
        let (k, u, ops) = setup(&[COIN]);
        let mut tx = pay(&k, vec![ops[0]], vec![COIN - 10_000]);
        tx.inputs[0].signature.0[0] ^= 1;
        assert_eq!(check(&tx, &u), Err(TxError::BadSignature));
        let mut other = Transaction::unsigned(vec![ops[0]], tx.outputs.clone(), 0, None);
        other.sign_all(&k, "another-chain");
        assert_eq!(check(&other, &u), Err(TxError::BadSignature));
        assert_eq!(TxError::BadSignature.rpc_code(), -26);
    }

    #[test]
    fn a_known_signature_verdict_is_used_and_errors_keep_their_order() {
        let (k, u, ops) = setup(&[COIN]);
        let good = pay(&k, vec![ops[0]], vec![COIN - 10_000]);
        let mut bad = good.clone();
        bad.inputs[0].signature.0[0] ^= 1;
        assert!(signatures_valid(&good, CHAIN) && !signatures_valid(&bad, CHAIN));
        let with =
            |tx: &Transaction, v: &HashMap<OutPoint, TxOut>, sigs| check_transaction_with(tx, v, CHAIN, NET, 1, sigs);
        for (tx, verdict) in [(&good, true), (&bad, false)] {
            assert_eq!(with(tx, &u, Signatures::Verified(verdict)), with(tx, &u, Signatures::Verify));
        }
        assert_eq!(with(&good, &u, Signatures::Verified(false)), Err(TxError::BadSignature));
        // A missing input is reported first, whether the signatures were checked or not.
        let empty = HashMap::new();
        assert_eq!(with(&bad, &empty, Signatures::Verified(false)), Err(TxError::MissingInputs));
        assert_eq!(with(&bad, &empty, Signatures::Verify), Err(TxError::MissingInputs));
    }

    #[test]
    fn someone_elses_key_is_refused() {
        let (_, u, ops) = setup(&[COIN]);
        let thief = Keypair::insecure_from_label("thief");
        let tx = pay(&thief, vec![ops[0]], vec![COIN - 10_000]);
        assert_eq!(check(&tx, &u), Err(TxError::WrongKey));
    }

    #[test]
    fn dust_duplicates_overflow_fee() {
        let (k, u, ops) = setup(&[COIN, COIN]);
        assert_eq!(check(&pay(&k, vec![ops[0]], vec![545]), &u), Err(TxError::Dust));
        assert_eq!(check(&pay(&k, vec![ops[0], ops[0]], vec![COIN]), &u), Err(TxError::DuplicateInputs));
        assert_eq!(check(&pay(&k, vec![ops[0]], vec![u64::MAX, u64::MAX]), &u), Err(TxError::OutputOverflow));
        assert_eq!(check(&pay(&k, vec![ops[0]], vec![MAX_MONEY, MAX_MONEY]), &u), Err(TxError::OutputOverflow));
        assert_eq!(check(&pay(&k, vec![ops[0]], vec![COIN]), &u), Err(TxError::FeeTooLow));
        assert_eq!(check(&pay(&k, vec![ops[0]], vec![COIN + 1]), &u), Err(TxError::InputsBelowOutputs));
        let mut no_out = pay(&k, vec![ops[0]], vec![]);
        no_out.sign_all(&k, CHAIN);
        assert_eq!(check(&no_out, &u), Err(TxError::NoOutputs));
    }

    #[test]
    fn input_overflow_is_caught() {
        let (k, u, ops) = setup(&[MAX_MONEY, MAX_MONEY]);
        let tx = pay(&k, ops, vec![COIN]);
        assert_eq!(check(&tx, &u), Err(TxError::InputOverflow));
    }

    #[test]
    fn lock_time_and_memo() {
        let (k, u, ops) = setup(&[COIN]);
        let mut tx = pay(&k, vec![ops[0]], vec![COIN / 2]);
        tx.lock_time = 5;
        tx.sign_all(&k, CHAIN);
        assert_eq!(check(&tx, &u), Err(TxError::NonFinal));
        assert!(check_transaction(&tx, &u, CHAIN, NET, 5).is_ok());
        let mut memo = pay(&k, vec![ops[0]], vec![COIN / 2]);
        memo.memo = Some(vec![b'x'; MAX_MEMO_LEN + 1]);
        memo.sign_all(&k, CHAIN);
        assert_eq!(check(&memo, &u), Err(TxError::MemoTooLong));
    }

    proptest! {
        // Whatever the amounts, validation never panics and accepts only balanced spends.
        #[test]
        fn conservation(ins in prop::collection::vec(0u64..=MAX_MONEY, 1..4), outs in prop::collection::vec(0u64..=MAX_MONEY, 1..4)) {
            let (k, u, ops) = setup(&ins);
            let tx = pay(&k, ops, outs.clone());
            if let Ok(fee) = check(&tx, &u) {
                let i: u128 = ins.iter().map(|v| *v as u128).sum();
                let o: u128 = outs.iter().map(|v| *v as u128).sum();
                prop_assert_eq!(i - o, fee as u128);
                prop_assert!(fee >= min_fee(tx.size()));
                prop_assert!(outs.iter().all(|v| *v >= DUST_LIMIT));
            }
        }

        // Any flipped bit in any signature is caught.
        #[test]
        fn any_signature_bit_flip_fails(byte in 0usize..64, bit in 0u8..8) {
            let (k, u, ops) = setup(&[COIN]);
            let mut tx = pay(&k, vec![ops[0]], vec![COIN / 2]);
            tx.inputs[0].signature.0[byte] ^= 1 << bit;
            prop_assert_eq!(check(&tx, &u), Err(TxError::BadSignature));
        }
    }
}
