//! Replays the fuzz corpus kept in `timed/fuzz/corpus/<target>/` through the same entry points
//! the fuzz targets use, so every case found (and the attack cases) stays covered by a
//! plain `cargo test`. `write_seeds` (ignored) regenerates the valid-encoding seeds.

use std::path::{Path, PathBuf};
use timed::chain::tx::{OutPoint, Transaction, TxOut};
use timed::chain::{Address, Keypair, Network};
use timed::p2p::message::{Hello, HelloAck, Message};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("p2p_frames", timed::fuzzing::p2p_frames),
    ("handshake", timed::fuzzing::handshake),
    ("transaction", timed::fuzzing::transaction),
    ("block", timed::fuzzing::block),
    ("rpc_front_door", timed::fuzzing::rpc_front_door),
];

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

#[test]
fn every_corpus_case_runs_clean() {
    for (name, run) in TARGETS {
        let dir = corpus(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
            n += 1;
        }
        assert!(n >= 3, "{name}: only {n} corpus files in {}", dir.display());
    }
}

fn frame(m: &Message) -> Vec<u8> {
    let body = m.encode();
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend(body);
    v
}

#[test]
#[ignore = "writes the seed corpus; run by hand after changing message types"]
fn write_seeds() {
    let g = timed::chain::genesis::GenesisConfig::devnet(3, 1);
    let k = Keypair::insecure_from_label("seed");
    let to = Address::from_pubkey(Network::Testnet, &k.public());
    let mut tx = Transaction::unsigned(
        vec![OutPoint { txid: timed::chain::Hash256::digest(b"x"), vout: 0 }],
        vec![TxOut { value: 5, address: to }],
        0,
        Some(b"memo".to_vec()),
    );
    tx.inputs[0].pubkey = k.public();
    let hello = Hello {
        protocol_version: timed::p2p::message::PROTOCOL_VERSION,
        chain_id: g.chain_id.clone(),
        genesis_hash: g.genesis_hash(),
        validator_index: 1,
        validator_id: "validator2".into(),
        pubkey: g.validators[1].pubkey,
        nonce: [7; 32],
        listen_port: 8002,
        best_height: 3,
        user_agent: "/seed/".into(),
    };
    let msgs = [
        Message::Hello(Box::new(hello)),
        Message::HelloAck(HelloAck { signature: timed::chain::crypto::Signature([1; 64]) }),
        Message::Ping(9),
        Message::GetPeers,
        Message::Peers(vec!["127.0.0.1:8001".into()]),
        Message::GetBlocks { from: 1, to: 64 },
        Message::Tx(Box::new(tx.clone())),
        Message::Blocks(Vec::new()),
    ];
    let write = |target: &str, name: &str, data: &[u8]| {
        std::fs::create_dir_all(corpus(target)).unwrap();
        std::fs::write(corpus(target).join(name), data).unwrap();
    };
    for m in &msgs {
        write("p2p_frames", &format!("valid-{}", m.kind()), &frame(m));
    }
    write("handshake", "hello", &msgs[0].encode());
    write("handshake", "hello-ack", &msgs[1].encode());
    write("transaction", "valid-bytes", &tx.to_bytes());
    write("transaction", "valid-hex", tx.to_hex().as_bytes());
    write("block", "empty-blocks", &msgs[7].encode());
}
