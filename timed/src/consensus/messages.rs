//! Consensus messages: what validators sign and exchange to agree (block proposals and
//! votes, heartbeats and attestations, poll answers). Pure data with their signature checks;
//! `p2p::message::Message` carries them on the wire, and nothing here knows about the wire.

use crate::chain::block::{vote_payload, VOTE_PRECOMMIT, VOTE_PREVOTE};
use crate::chain::crypto::{self, Domain, Hash256, Keypair, PublicKey, Signature};
use crate::chain::{Block, BlockHash, ValidatorIndex};
use serde::{Deserialize, Serialize};

/// Most txids in one poll.
pub const MAX_POLL_TXIDS: usize = 4096;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

/// A signed prevote or precommit for a block (or for nothing: `None`) at (height, round).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub kind: VoteKind,
    pub height: u64,
    pub round: u32,
    pub block_hash: Option<BlockHash>,
    pub validator: ValidatorIndex,
    pub signature: Signature,
}

impl Vote {
    fn payload(kind: VoteKind, height: u64, round: u32, block_hash: Option<&BlockHash>) -> Vec<u8> {
        let k = match kind {
            VoteKind::Prevote => VOTE_PREVOTE,
            VoteKind::Precommit => VOTE_PRECOMMIT,
        };
        vote_payload(k, height, round, block_hash)
    }

    pub fn new_signed(
        kind: VoteKind,
        height: u64,
        round: u32,
        block_hash: Option<BlockHash>,
        validator: ValidatorIndex,
        key: &Keypair,
        chain_id: &str,
    ) -> Self {
        let signature = key.sign(Domain::Vote, chain_id, &Self::payload(kind, height, round, block_hash.as_ref()));
        Vote { kind, height, round, block_hash, validator, signature }
    }

    pub fn verify(&self, pk: &PublicKey, chain_id: &str) -> bool {
        let p = Self::payload(self.kind, self.height, self.round, self.block_hash.as_ref());
        crypto::verify(pk, Domain::Vote, chain_id, &p, &self.signature)
    }
}

/// A block proposed for (height, `round`). The block's producer signature authenticates the
/// block (made in `block.header.round`); the sender of a proposal is the round's proposer,
/// authenticated by the P2P handshake (proposals are not relayed). When a locked block is
/// re-proposed in a later round, `valid_round` is Tendermint's proof-of-lock round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub round: u32,
    pub block: Block,
    pub valid_round: Option<u32>,
}

/// "I am alive" from a validator, signed, at each heartbeat interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub validator: ValidatorIndex,
    pub sequence: u64,
    pub timestamp_ms: u64,
    pub signature: Signature,
}

impl Heartbeat {
    fn payload(validator: ValidatorIndex, sequence: u64, timestamp_ms: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(18);
        p.extend_from_slice(&validator.to_le_bytes());
        p.extend_from_slice(&sequence.to_le_bytes());
        p.extend_from_slice(&timestamp_ms.to_le_bytes());
        p
    }

    pub fn new_signed(
        validator: ValidatorIndex,
        sequence: u64,
        timestamp_ms: u64,
        key: &Keypair,
        chain_id: &str,
    ) -> Self {
        let signature = key.sign(Domain::Heartbeat, chain_id, &Self::payload(validator, sequence, timestamp_ms));
        Heartbeat { validator, sequence, timestamp_ms, signature }
    }

    pub fn verify(&self, pk: &PublicKey, chain_id: &str) -> bool {
        let p = Self::payload(self.validator, self.sequence, self.timestamp_ms);
        crypto::verify(pk, Domain::Heartbeat, chain_id, &p, &self.signature)
    }

    /// What witnesses sign: the whole signed heartbeat.
    pub fn digest(&self) -> Hash256 {
        Hash256::digest(&bincode::serialize(self).expect("in-memory serialization cannot fail"))
    }
}

/// A witness's signed statement that it received a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub subject: ValidatorIndex,
    pub sequence: u64,
    pub heartbeat_digest: Hash256,
    pub witness: ValidatorIndex,
    pub signature: Signature,
}

impl Attestation {
    fn payload(subject: ValidatorIndex, sequence: u64, digest: &Hash256, witness: ValidatorIndex) -> Vec<u8> {
        let mut p = Vec::with_capacity(44);
        p.extend_from_slice(&subject.to_le_bytes());
        p.extend_from_slice(&sequence.to_le_bytes());
        p.extend_from_slice(&digest.0);
        p.extend_from_slice(&witness.to_le_bytes());
        p
    }

    pub fn new_signed(hb: &Heartbeat, witness: ValidatorIndex, key: &Keypair, chain_id: &str) -> Self {
        let digest = hb.digest();
        let signature =
            key.sign(Domain::Attestation, chain_id, &Self::payload(hb.validator, hb.sequence, &digest, witness));
        Attestation { subject: hb.validator, sequence: hb.sequence, heartbeat_digest: digest, witness, signature }
    }

    pub fn verify(&self, witness_pk: &PublicKey, chain_id: &str) -> bool {
        let p = Self::payload(self.subject, self.sequence, &self.heartbeat_digest, self.witness);
        crypto::verify(witness_pk, Domain::Attestation, chain_id, &p, &self.signature)
    }
}

/// Answer to a poll for one txid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preference {
    /// The responder does not know the transaction (no vote).
    Unknown,
    /// Preferred in every conflict set it belongs to (or already accepted).
    Yes,
    /// Known, but a conflicting transaction is preferred (or it was rejected).
    No,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::verify_cert;
    use crate::chain::CommitCert;

    #[test]
    fn votes_and_heartbeats_verify() {
        let k = Keypair::insecure_from_label("v");
        let h = Hash256::digest(b"b");
        let v = Vote::new_signed(VoteKind::Precommit, 3, 1, Some(h), 0, &k, "c");
        assert!(v.verify(&k.public(), "c"));
        let mut forged = v.clone();
        forged.round = 2;
        assert!(!forged.verify(&k.public(), "c"));
        let cert = CommitCert { height: 3, round: 1, block_hash: h, votes: vec![(0, v.signature)] };
        assert!(verify_cert(&cert, &[k.public()], 1, "c"));
        assert!(!verify_cert(&cert, &[k.public()], 2, "c"));
        let dup = CommitCert { votes: vec![(0, v.signature), (0, v.signature)], ..cert.clone() };
        assert!(!verify_cert(&dup, &[k.public()], 1, "c"));
        let hb = Heartbeat::new_signed(0, 7, 1000, &k, "c");
        assert!(hb.verify(&k.public(), "c"));
        let w = Keypair::insecure_from_label("w");
        let a = Attestation::new_signed(&hb, 1, &w, "c");
        assert!(a.verify(&w.public(), "c"));
        assert!(!a.verify(&k.public(), "c"));
    }
}
