//! The wire protocol: every frame is one bincode-encoded [`Message`] behind a 4-byte length.
//! Consensus payloads (proposals, votes, heartbeats) carry their own signatures so they can be
//! relayed by any peer and still be checked against the genesis validator keys.

use crate::chain::block::{vote_payload, VOTE_PRECOMMIT, VOTE_PREVOTE};
use crate::chain::crypto::{self, Domain, Hash256, Keypair, PublicKey, Signature};
use crate::chain::{Block, BlockHash, CommitCert, Transaction, Txid, ValidatorIndex};
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// Hard cap on one frame; anything larger is a protocol violation.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Most blocks sent in one `Blocks` reply.
pub const MAX_BLOCKS_PER_REPLY: u64 = 64;
/// Most txids in one poll.
pub const MAX_POLL_TXIDS: usize = 4096;
/// Most transactions relayed in one `Txs` message (and handled from one).
pub const MAX_TXS_PER_MESSAGE: usize = 512;

/// First frame each side sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub chain_id: String,
    pub genesis_hash: Hash256,
    pub validator_index: ValidatorIndex,
    pub validator_id: String,
    pub pubkey: PublicKey,
    /// Fresh random challenge the other side must sign.
    pub nonce: [u8; 32],
    /// Port this node accepts connections on (the address is what the peer observes).
    pub listen_port: u16,
    pub best_height: u64,
    pub user_agent: String,
}

/// Second frame: proves ownership of the announced key by signing the peer's nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub signature: Signature,
}

/// The bytes a [`HelloAck`] signs: the challenge and both keys, so it cannot be replayed.
pub fn handshake_payload(their_nonce: &[u8; 32], signer: &PublicKey, verifier: &PublicKey) -> Vec<u8> {
    let mut p = Vec::with_capacity(96);
    p.extend_from_slice(their_nonce);
    p.extend_from_slice(&signer.0);
    p.extend_from_slice(&verifier.0);
    p
}

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

/// A node's view of its chain, sent after the handshake and whenever the tip moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub height: u64,
    pub tip: BlockHash,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Box<Hello>),
    HelloAck(HelloAck),
    Ping(u64),
    Pong(u64),
    GetPeers,
    /// Addresses ("ip:port") of peers the sender can reach.
    Peers(Vec<String>),
    Status(ChainStatus),
    Tx(Box<Transaction>),
    Proposal(Box<Proposal>),
    Vote(Vote),
    /// Ask for committed blocks `from..=to` (at most [`MAX_BLOCKS_PER_REPLY`]).
    GetBlocks {
        from: u64,
        to: u64,
    },
    /// Committed blocks, each with the certificate that finalized it, in height order.
    Blocks(Vec<(Block, CommitCert)>),
    PollQuery {
        id: u64,
        txids: Vec<Txid>,
    },
    PollReply {
        id: u64,
        prefs: Vec<Preference>,
    },
    Heartbeat(Heartbeat),
    Attestation(Attestation),
    /// Transactions relayed together (appended last: the variant index is the wire tag).
    Txs(Vec<Transaction>),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloAck(_) => "hello_ack",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::GetPeers => "get_peers",
            Message::Peers(_) => "peers",
            Message::Status(_) => "status",
            Message::Tx(_) => "tx",
            Message::Proposal(_) => "proposal",
            Message::Vote(_) => "vote",
            Message::GetBlocks { .. } => "get_blocks",
            Message::Blocks(_) => "blocks",
            Message::PollQuery { .. } => "poll_query",
            Message::PollReply { .. } => "poll_reply",
            Message::Heartbeat(_) => "heartbeat",
            Message::Attestation(_) => "attestation",
            Message::Txs(_) => "txs",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("in-memory serialization cannot fail")
    }

    /// Decodes one frame, refusing trailing bytes and anything over the frame cap.
    pub fn decode(bytes: &[u8]) -> Result<Self, bincode::Error> {
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
            .with_limit(MAX_FRAME_BYTES as u64)
            .deserialize(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn frames_roundtrip_and_reject_garbage() {
        let m = Message::GetBlocks { from: 1, to: 9 };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        assert!(Message::decode(&[0xff, 0xff, 0xff, 0xff, 1, 2]).is_err());
        let mut trailing = m.encode();
        trailing.push(0);
        assert!(Message::decode(&trailing).is_err());
    }
}
