//! The wire protocol: every frame is one bincode-encoded [`Message`] behind a 4-byte length.
//! The envelope and the connection-level messages live here; the consensus payloads it
//! carries (proposals, votes, heartbeats, poll answers) are `consensus::messages` types and
//! carry their own signatures, so they can be relayed by any peer and still be checked
//! against the genesis validator keys. p2p depends on chain and consensus, never the reverse.

use crate::chain::crypto::{Hash256, PublicKey, Signature};
use crate::chain::{Block, BlockHash, CommitCert, Transaction, Txid, ValidatorIndex};
use crate::consensus::messages::{Attestation, Heartbeat, Preference, Proposal, Vote};
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// Hard cap on one frame; anything larger is a protocol violation.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Most blocks sent in one `Blocks` reply.
pub const MAX_BLOCKS_PER_REPLY: u64 = 64;
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

/// A node's view of its chain, sent after the handshake and whenever the tip moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub height: u64,
    pub tip: BlockHash,
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
    fn frames_roundtrip_and_reject_garbage() {
        let m = Message::GetBlocks { from: 1, to: 9 };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        assert!(Message::decode(&[0xff, 0xff, 0xff, 0xff, 1, 2]).is_err());
        let mut trailing = m.encode();
        trailing.push(0);
        assert!(Message::decode(&trailing).is_err());
    }
}
