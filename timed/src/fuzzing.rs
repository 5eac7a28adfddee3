//! Entry points for the fuzz targets in `timed/fuzz/` and for the corpus replay test
//! (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, runs them through what the node does
//! with untrusted input, and must never panic; invariants that must hold are asserted.

use crate::chain::block::verify_cert;
use crate::chain::block::Block;
use crate::chain::genesis::GenesisConfig;
use crate::chain::tx::{OutPoint, Transaction, TxOut};
use crate::chain::validate::{check_stateless, check_transaction, UtxoView};
use crate::chain::{Address, Network};
use crate::p2p::message::{handshake_payload, Message, MAX_FRAME_BYTES};
use std::sync::OnceLock;

fn genesis() -> &'static GenesisConfig {
    static G: OnceLock<GenesisConfig> = OnceLock::new();
    G.get_or_init(|| GenesisConfig::devnet(3, 1))
}

/// A length-delimited P2P stream as the reader sees it: 4-byte big-endian length, then a
/// frame; frames over the cap end the stream, as the codec does.
pub fn p2p_frames(data: &[u8]) {
    let mut rest = data;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_FRAME_BYTES {
            return;
        }
        let Some(frame) = rest.get(4..4 + len) else { return };
        if let Ok(msg) = Message::decode(frame) {
            // What decodes must encode back to the same bytes: no two encodings of one message.
            assert_eq!(msg.encode(), frame, "re-encoding a decoded {} frame changed it", msg.kind());
            let _ = msg.kind();
        }
        rest = &rest[4 + len..];
    }
}

/// The checks a node applies to a peer's Hello and HelloAck.
pub fn handshake(data: &[u8]) {
    let g = genesis();
    let keys: Vec<_> = g.validators.iter().map(|v| v.pubkey).collect();
    match Message::decode(data) {
        Ok(Message::Hello(h)) => {
            let known = keys.get(h.validator_index as usize).is_some_and(|k| *k == h.pubkey);
            let ours = h.chain_id == g.chain_id && h.genesis_hash == g.genesis_hash();
            let _ = (known, ours, handshake_payload(&h.nonce, &h.pubkey, &keys[0]));
        }
        Ok(Message::HelloAck(ack)) => {
            let payload = handshake_payload(&[7u8; 32], &keys[1], &keys[0]);
            // A random signature must not verify against a genesis key.
            assert!(!crate::chain::crypto::verify(
                &keys[1],
                crate::chain::crypto::Domain::Handshake,
                &g.chain_id,
                &payload,
                &ack.signature
            ));
        }
        _ => {}
    }
}

/// Every outpoint exists and belongs to the key that spends it, so validation reaches the
/// signature and amount checks.
struct Generous<'a>(&'a Transaction);

impl UtxoView for Generous<'_> {
    fn get_utxo(&self, op: &OutPoint) -> Option<TxOut> {
        let input = self.0.inputs.iter().find(|i| i.prevout == *op)?;
        Some(TxOut { value: 1_000_000, address: Address::from_pubkey(Network::Testnet, &input.pubkey) })
    }
}

/// Transaction decoding (raw bytes and hex, as `sendrawtransaction` gets it) and validation.
pub fn transaction(data: &[u8]) {
    let g = genesis();
    let candidates =
        [Transaction::from_bytes(data).ok(), std::str::from_utf8(data).ok().and_then(Transaction::from_hex)];
    for tx in candidates.into_iter().flatten() {
        assert_eq!(Transaction::from_bytes(&bincode_fixint(&tx)).ok().as_ref(), Some(&tx));
        let _ = check_stateless(&tx, g.network_byte());
        let _ = check_transaction(&tx, &Generous(&tx), &g.chain_id, g.network_byte(), 10);
        let _ = (tx.txid(), tx.size(), tx.output_total());
    }
}

fn bincode_fixint(tx: &Transaction) -> Vec<u8> {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().serialize(tx).expect("in memory")
}

/// Block decoding (a `Blocks` or `Proposal` frame) and the checks that need no chain state.
pub fn block(data: &[u8]) {
    let g = genesis();
    let keys: Vec<_> = g.validators.iter().map(|v| v.pubkey).collect();
    let blocks: Vec<Block> = match Message::decode(data) {
        Ok(Message::Blocks(b)) => b.into_iter().map(|(b, _)| b).collect(),
        Ok(Message::Proposal(p)) => vec![p.block],
        _ => {
            use bincode::Options;
            match bincode::DefaultOptions::new()
                .with_fixint_encoding()
                .reject_trailing_bytes()
                .with_limit(MAX_FRAME_BYTES as u64)
                .deserialize::<Block>(data)
            {
                Ok(b) => vec![b],
                Err(_) => return,
            }
        }
    };
    for b in blocks {
        let _ = (b.hash(), b.height(), b.size());
        let root = crate::chain::block::merkle_root(&b.txids());
        let _ = root == b.header.merkle_root;
        if let Some(pk) = keys.get(b.header.producer as usize) {
            let _ = b.verify_producer(pk, &g.chain_id);
        }
        if let Some(cert) = &b.last_commit {
            let _ = verify_cert(cert, &keys, g.quorum(), &g.chain_id);
        }
        for tx in &b.txs {
            let _ = check_stateless(tx, g.network_byte());
        }
    }
}

/// The HTTP/JSON-RPC front door's own parsing: `Host` check and id rewriting. The first line
/// of `data` is a Host header value, the rest a request body.
pub fn rpc_front_door(data: &[u8]) {
    let (host, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(h) = std::str::from_utf8(host) {
        let _ = crate::rpc::http::host_allowed(h, &["node.example".to_string()]);
    }
    crate::rpc::http::check_id_roundtrip(body);
}
