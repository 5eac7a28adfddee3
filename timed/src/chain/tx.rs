//! Transactions. The txid covers everything except the witnesses (public key and signature
//! of each input), so a transaction can be signed after its id is known.

use super::address::Address;
use super::crypto::{self, Domain, Hash256, Keypair, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use std::fmt;

pub type Txid = Hash256;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutPoint {
    pub txid: Txid,
    pub vout: u32,
}

impl fmt::Debug for OutPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.txid.to_hex(), self.vout)
    }
}

impl fmt::Display for OutPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxIn {
    pub prevout: OutPoint,
    /// Key whose hash the spent output pays to.
    pub pubkey: PublicKey,
    pub signature: Signature,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxOut {
    pub value: u64,
    pub address: Address,
}

/// A transaction with its txid, hashed once. A relayed payment went through five or so steps
/// on each node (arrival, signature check, admission, the pool) and each hashed it again; they
/// pass this instead. The fields are private, so the id always belongs to the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifiedTx {
    txid: Txid,
    tx: Transaction,
}

impl IdentifiedTx {
    pub fn new(tx: Transaction) -> Self {
        IdentifiedTx { txid: tx.txid(), tx }
    }

    pub fn txid(&self) -> Txid {
        self.txid
    }

    pub fn tx(&self) -> &Transaction {
        &self.tx
    }

    pub fn into_tx(self) -> Transaction {
        self.tx
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub version: u32,
    pub inputs: Vec<TxIn>,
    pub outputs: Vec<TxOut>,
    /// Earliest block height that may include this transaction (0: any). For a coinbase it is
    /// the block height, which keeps coinbase txids unique.
    pub lock_time: u64,
    pub memo: Option<Vec<u8>>,
}

/// The part of a transaction that its id commits to.
#[derive(Serialize)]
struct TxidPreimage<'a> {
    version: u32,
    prevouts: Vec<&'a OutPoint>,
    outputs: &'a [TxOut],
    lock_time: u64,
    memo: &'a Option<Vec<u8>>,
}

pub const TX_VERSION: u32 = 1;

impl Transaction {
    /// An unsigned transaction spending `prevouts`; call [`Transaction::sign_all`] next.
    pub fn unsigned(prevouts: Vec<OutPoint>, outputs: Vec<TxOut>, lock_time: u64, memo: Option<Vec<u8>>) -> Self {
        Transaction {
            version: TX_VERSION,
            inputs: prevouts
                .into_iter()
                .map(|prevout| TxIn { prevout, pubkey: PublicKey([0; 32]), signature: Signature([0; 64]) })
                .collect(),
            outputs,
            lock_time,
            memo,
        }
    }

    pub fn txid(&self) -> Txid {
        let pre = TxidPreimage {
            version: self.version,
            prevouts: self.inputs.iter().map(|i| &i.prevout).collect(),
            outputs: &self.outputs,
            lock_time: self.lock_time,
            memo: &self.memo,
        };
        Hash256::digest(&bincode::serialize(&pre).expect("in-memory serialization cannot fail"))
    }

    pub fn is_coinbase(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Signs every input with `key` (all inputs of a wallet spend belong to one key).
    pub fn sign_all(&mut self, key: &Keypair, chain_id: &str) {
        let sig = key.sign(Domain::Transaction, chain_id, &self.txid().0);
        for input in &mut self.inputs {
            input.pubkey = key.public();
            input.signature = sig;
        }
    }

    /// Signs input `index` only, for transactions that spend coins of several keys.
    pub fn sign_input(&mut self, index: usize, key: &Keypair, chain_id: &str) {
        let sig = key.sign(Domain::Transaction, chain_id, &self.txid().0);
        self.inputs[index].pubkey = key.public();
        self.inputs[index].signature = sig;
    }

    pub fn verify_input(&self, index: usize, chain_id: &str) -> bool {
        let input = &self.inputs[index];
        crypto::verify(&input.pubkey, Domain::Transaction, chain_id, &self.txid().0, &input.signature)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).expect("in-memory serialization cannot fail")
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    pub fn size(&self) -> usize {
        bincode::serialized_size(self).expect("in-memory serialization cannot fail") as usize
    }

    /// Decodes a transaction, refusing trailing bytes and oversized input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, bincode::Error> {
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
            .with_limit(super::validate::MAX_TX_SIZE as u64)
            .deserialize(bytes)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        Self::from_bytes(&hex::decode(s.trim()).ok()?).ok()
    }

    pub fn output_total(&self) -> Option<u64> {
        super::amount::checked_sum(self.outputs.iter().map(|o| o.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::address::Network;

    #[test]
    fn txid_ignores_witness_and_hex_roundtrips() {
        let k = Keypair::insecure_from_label("k");
        let to = Address::from_pubkey(Network::Testnet, &k.public());
        let prev = OutPoint { txid: Hash256::digest(b"p"), vout: 1 };
        let mut tx = Transaction::unsigned(vec![prev], vec![TxOut { value: 5000, address: to }], 0, None);
        let before = tx.txid();
        tx.sign_all(&k, "c");
        assert_eq!(tx.txid(), before);
        assert!(tx.verify_input(0, "c"));
        assert!(!tx.verify_input(0, "other-chain"));
        let back = Transaction::from_hex(&tx.to_hex()).unwrap();
        assert_eq!(back, tx);
        let mut trailing = tx.to_bytes();
        trailing.push(0);
        assert!(Transaction::from_bytes(&trailing).is_err());
    }
}
