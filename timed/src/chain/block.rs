//! Blocks and commit certificates. The block hash covers the header only; the header commits
//! to the transactions (merkle root) and to the parent's commit certificate.

use super::crypto::{self, Domain, Hash256, Keypair, PublicKey, Signature};
use super::tx::{Transaction, Txid};
use serde::{Deserialize, Serialize};

pub type BlockHash = Hash256;
pub type ValidatorIndex = u16;

pub const BLOCK_VERSION: u32 = 1;
pub const MAX_BLOCK_SIZE: usize = 2_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub version: u32,
    pub height: u64,
    pub prev_hash: BlockHash,
    pub merkle_root: Hash256,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub slot: u64,
    /// Which proposer of the slot's ranking made it (0 = leader, 1.. = backups).
    pub round: u32,
    pub producer: ValidatorIndex,
    pub last_commit_hash: Hash256,
}

impl BlockHeader {
    pub fn hash(&self) -> BlockHash {
        Hash256::digest(&bincode::serialize(self).expect("in-memory serialization cannot fail"))
    }
}

/// Precommit signatures of more than two thirds of the validators on one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCert {
    pub height: u64,
    pub round: u32,
    pub block_hash: BlockHash,
    pub votes: Vec<(ValidatorIndex, Signature)>,
}

impl CommitCert {
    pub fn hash(&self) -> Hash256 {
        Hash256::digest(&bincode::serialize(self).expect("in-memory serialization cannot fail"))
    }

    pub fn signers(&self) -> impl Iterator<Item = ValidatorIndex> + '_ {
        self.votes.iter().map(|(i, _)| *i)
    }
}

/// The payload a precommit (or prevote) signs.
pub fn vote_payload(kind: u8, height: u64, round: u32, block_hash: Option<&BlockHash>) -> Vec<u8> {
    let mut p = Vec::with_capacity(48);
    p.push(kind);
    p.extend_from_slice(&height.to_le_bytes());
    p.extend_from_slice(&round.to_le_bytes());
    match block_hash {
        Some(h) => p.extend_from_slice(&h.0),
        None => p.extend_from_slice(&[0u8; 32]),
    }
    p
}

/// Vote kinds as signed.
pub const VOTE_PREVOTE: u8 = 1;
pub const VOTE_PRECOMMIT: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: BlockHeader,
    pub producer_sig: Signature,
    /// First transaction is the coinbase.
    pub txs: Vec<Transaction>,
    /// Certificate that finalized the parent (none for genesis and its child).
    pub last_commit: Option<CommitCert>,
}

impl Block {
    pub fn hash(&self) -> BlockHash {
        self.header.hash()
    }

    pub fn height(&self) -> u64 {
        self.header.height
    }

    pub fn txids(&self) -> Vec<Txid> {
        self.txs.iter().map(|t| t.txid()).collect()
    }

    pub fn sign(&mut self, key: &Keypair, chain_id: &str) {
        self.producer_sig = key.sign(Domain::Block, chain_id, &self.hash().0);
    }

    pub fn verify_producer(&self, pk: &PublicKey, chain_id: &str) -> bool {
        crypto::verify(pk, Domain::Block, chain_id, &self.hash().0, &self.producer_sig)
    }

    pub fn size(&self) -> usize {
        bincode::serialized_size(self).expect("in-memory serialization cannot fail") as usize
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).expect("in-memory serialization cannot fail")
    }
}

/// Hash of the last commit as stored in a header (zero when there is none).
pub fn last_commit_hash(cert: &Option<CommitCert>) -> Hash256 {
    cert.as_ref().map(|c| c.hash()).unwrap_or(Hash256::ZERO)
}

/// Merkle root over txids. Leaves and inner nodes are tagged differently, and an odd node is
/// promoted rather than paired with itself, so no two transaction lists share a root.
pub fn merkle_root(txids: &[Txid]) -> Hash256 {
    if txids.is_empty() {
        return Hash256::ZERO;
    }
    let mut level: Vec<Hash256> = txids.iter().map(|t| Hash256::tagged("TIMECOIN/merkle-leaf", &[&t.0])).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => Hash256::tagged("TIMECOIN/merkle-node", &[&a.0, &b.0]),
                [a] => *a,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    level[0]
}

/// Checks a commit certificate: distinct known signers, valid precommit signatures, and more
/// than two thirds of `validators`.
pub fn verify_cert(cert: &CommitCert, validators: &[PublicKey], quorum: usize, chain_id: &str) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut valid = 0usize;
    for (idx, sig) in &cert.votes {
        let Some(pk) = validators.get(*idx as usize) else { return false };
        if !seen.insert(*idx) {
            return false;
        }
        let payload = vote_payload(VOTE_PRECOMMIT, cert.height, cert.round, Some(&cert.block_hash));
        if !crypto::verify(pk, Domain::Vote, chain_id, &payload, sig) {
            return false;
        }
        valid += 1;
    }
    valid >= quorum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_distinguishes_lists() {
        let a = Hash256::digest(b"a");
        let b = Hash256::digest(b"b");
        let c = Hash256::digest(b"c");
        assert_ne!(merkle_root(&[a, b, c]), merkle_root(&[a, b, c, c]));
        assert_ne!(merkle_root(&[a, b]), merkle_root(&[b, a]));
        assert_ne!(merkle_root(&[a]), a);
        assert_eq!(merkle_root(&[a, b, c]), merkle_root(&[a, b, c]));
    }
}
