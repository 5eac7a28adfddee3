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

/// `Message::Txs`'s wire tag (its variant index).
const TXS_TAG: u32 = 16;

/// Every message kind's name (logs, the per-kind `/metrics` counters), in variant order, so
/// that a frame's wire tag indexes it (see [`Message::frame_kind`]).
pub const KINDS: [&str; 17] = [
    "hello",
    "hello_ack",
    "ping",
    "pong",
    "get_peers",
    "peers",
    "status",
    "tx",
    "proposal",
    "vote",
    "get_blocks",
    "blocks",
    "poll_query",
    "poll_reply",
    "heartbeat",
    "attestation",
    "txs",
];

impl Message {
    pub fn kind(&self) -> &'static str {
        KINDS[self.kind_index()]
    }

    /// The variant's position: its wire tag and its index in [`KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Message::Hello(_) => 0,
            Message::HelloAck(_) => 1,
            Message::Ping(_) => 2,
            Message::Pong(_) => 3,
            Message::GetPeers => 4,
            Message::Peers(_) => 5,
            Message::Status(_) => 6,
            Message::Tx(_) => 7,
            Message::Proposal(_) => 8,
            Message::Vote(_) => 9,
            Message::GetBlocks { .. } => 10,
            Message::Blocks(_) => 11,
            Message::PollQuery { .. } => 12,
            Message::PollReply { .. } => 13,
            Message::Heartbeat(_) => 14,
            Message::Attestation(_) => 15,
            Message::Txs(_) => 16,
        }
    }

    /// The kind of an encoded frame, read from its tag (a little-endian u32 first) without
    /// decoding it: the send queue holds frames already encoded.
    pub fn frame_kind(frame: &[u8]) -> Option<usize> {
        let tag = u32::from_le_bytes(frame.get(..4)?.try_into().ok()?) as usize;
        (tag < KINDS.len()).then_some(tag)
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("in-memory serialization cannot fail")
    }

    /// A `Txs` frame from transactions encoded one by one ([`Transaction::to_bytes`]), byte for
    /// byte what `Message::Txs(..).encode()` gives: the relay encodes a transaction once for
    /// all its peers instead of cloning and encoding it once per peer.
    pub fn txs_frame(encoded: &[&[u8]]) -> Vec<u8> {
        let body: usize = encoded.iter().map(|e| e.len()).sum();
        let mut frame = Vec::with_capacity(12 + body);
        // bincode with fixed-size integers: the variant index as a u32, the length as a u64.
        frame.extend_from_slice(&TXS_TAG.to_le_bytes());
        frame.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
        for e in encoded {
            frame.extend_from_slice(e);
        }
        frame
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

    #[test]
    fn a_txs_frame_from_encoded_transactions_is_the_message_s_encoding() {
        let coin = Transaction::unsigned(Vec::new(), Vec::new(), 0, None);
        let spend = Transaction::unsigned(
            vec![crate::chain::OutPoint { txid: coin.txid(), vout: 1 }],
            Vec::new(),
            7,
            Some(b"memo".to_vec()),
        );
        for txs in [vec![], vec![coin.clone()], vec![coin, spend.clone(), spend]] {
            let encoded: Vec<Vec<u8>> = txs.iter().map(Transaction::to_bytes).collect();
            let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            let frame = Message::txs_frame(&refs);
            let m = Message::Txs(txs);
            assert_eq!(frame, m.encode());
            assert_eq!(Message::decode(&frame).unwrap(), m);
            assert_eq!(Message::frame_kind(&frame), Some(m.kind_index()));
        }
    }

    /// The per-kind counters read a queued frame's kind from its wire tag: the table must
    /// follow the enum's order, for every variant.
    #[test]
    fn a_frame_s_tag_names_its_kind() {
        use crate::chain::genesis::GenesisConfig;
        use crate::consensus::messages::VoteKind;
        let sig = Signature([0; 64]);
        let block = GenesisConfig::devnet(2, 1).genesis_block();
        let tx = Transaction::unsigned(Vec::new(), Vec::new(), 0, None);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            chain_id: "c".into(),
            genesis_hash: Hash256([1; 32]),
            validator_index: 0,
            validator_id: "v".into(),
            pubkey: PublicKey([2; 32]),
            nonce: [3; 32],
            listen_port: 1,
            best_height: 0,
            user_agent: "u".into(),
        };
        let all = [
            Message::Hello(Box::new(hello)),
            Message::HelloAck(HelloAck { signature: sig }),
            Message::Ping(1),
            Message::Pong(1),
            Message::GetPeers,
            Message::Peers(vec!["127.0.0.1:1".into()]),
            Message::Status(ChainStatus { height: 1, tip: Hash256([4; 32]) }),
            Message::Tx(Box::new(tx.clone())),
            Message::Proposal(Box::new(Proposal { round: 0, block: block.clone(), valid_round: None })),
            Message::Vote(Vote {
                kind: VoteKind::Prevote,
                height: 1,
                round: 0,
                block_hash: None,
                validator: 0,
                signature: sig,
            }),
            Message::GetBlocks { from: 1, to: 2 },
            Message::Blocks(Vec::new()),
            Message::PollQuery { id: 1, txids: vec![Hash256([5; 32])] },
            Message::PollReply { id: 1, prefs: vec![Preference::Yes] },
            Message::Heartbeat(Heartbeat { validator: 0, sequence: 1, timestamp_ms: 2, signature: sig }),
            Message::Attestation(Attestation {
                subject: 0,
                sequence: 1,
                heartbeat_digest: Hash256([6; 32]),
                witness: 1,
                signature: sig,
            }),
            Message::Txs(vec![tx]),
        ];
        assert_eq!(all.len(), KINDS.len());
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.kind_index(), i, "{}", m.kind());
            assert_eq!(Message::frame_kind(&m.encode()), Some(i), "{}", m.kind());
        }
        let mut names = KINDS.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len(), "kind names are distinct");
        assert_eq!(Message::frame_kind(&[17, 0, 0, 0]), None);
        assert_eq!(Message::frame_kind(&[1, 0]), None);
    }
}
