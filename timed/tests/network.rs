//! Five real validators on 127.0.0.1 with real TCP, started the way the plan starts them
//! (`--validator-id validatorN --port P --peers ...`), exercised end to end: discovery,
//! agreement at every height, finality across nodes, a double-spend race, a killed leader, a
//! node down for three blocks, a late joiner and a peer from another genesis.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use timed::api::*;
use timed::chain::genesis::devnet_wallet_key;
use timed::chain::{Address, Hash256, Keypair, Network, OutPoint, Transaction, TxOut};

const BLOCK_TIME: &str = "2";

fn validator(dir: &std::path::Path, i: usize, peers: &str) -> Node {
    let id = format!("validator{i}");
    let mut args = vec!["--devnet-validators", "5", "--block-time", BLOCK_TIME];
    if !peers.is_empty() {
        args.extend(["--peers", peers]);
    }
    spawn_in(&dir.join(&id), &id, &args)
}

/// Block hashes from 1 to `upto` on every node must be identical.
async fn assert_same_chain(nodes: &[&Node], upto: u64) {
    for h in 1..=upto {
        let mut hashes = BTreeMap::new();
        for n in nodes {
            hashes.insert(n.id.clone(), n.client().get_block_hash(h).await.unwrap());
        }
        let distinct: std::collections::BTreeSet<_> = hashes.values().collect();
        assert_eq!(distinct.len(), 1, "fork at height {h}: {hashes:?}");
    }
}

async fn min_height(nodes: &[&Node]) -> u64 {
    let mut m = u64::MAX;
    for n in nodes {
        m = m.min(height(n).await);
    }
    m
}

async fn wait_all(nodes: &[&Node], h: u64, secs: u64) {
    for n in nodes {
        wait_height(n, h, secs).await;
    }
}

fn all(nodes: &[Node]) -> Vec<&Node> {
    nodes.iter().collect()
}

fn all_but(nodes: &[Node], skip: usize) -> Vec<&Node> {
    nodes.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, n)| n).collect()
}

async fn status_everywhere(nodes: &[&Node], txid: &str) -> Vec<String> {
    let mut v = Vec::new();
    for n in nodes {
        v.push(n.client().get_transaction_finality(txid.to_string()).await.unwrap().status);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn five_validators_agree_finalize_and_survive_faults() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // validator1..4 first: a quorum of the five-validator genesis.
    let v1 = validator(dir, 1, "");
    let seed = v1.p2p.clone();
    let mut nodes: Vec<Node> = vec![v1];
    for i in 2..=4 {
        nodes.push(validator(dir, i, &seed));
    }
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_all(&refs, 3, 60).await;
    }

    // Late joiner: catches up by sync and then follows.
    nodes.push(validator(dir, 5, &seed));
    let target = min_height(&all(&nodes)[..4]).await + 1;
    wait_height(&nodes[4], target, 60).await;

    // Peer exchange: every node found all four others from a single seed.
    for n in &nodes {
        let c = n.client();
        eventually(30, &format!("{} to see 4 peers", n.id), || {
            let c = c.clone();
            async move { (c.get_peer_info().await.ok()?.len() == 4).then_some(()) }
        })
        .await;
        let peers = c.get_peer_info().await.unwrap();
        assert!(peers.iter().all(|p| p.bytesrecv > 0 && !p.validator_id.is_empty()));
    }

    // Heights advance about once per block time, and every height agrees.
    let h0 = min_height(&all(&nodes)).await;
    let t0 = Instant::now();
    wait_all(&all(&nodes), h0 + 3, 60).await;
    let per_block = t0.elapsed().as_secs_f64() / 3.0;
    assert!(per_block < 6.0, "3 blocks took {:?}", t0.elapsed());
    assert_same_chain(&all(&nodes), h0 + 3).await;

    // A transaction sent to node 1 is final on node 5 and lands in the same block everywhere.
    let to = nodes[4].client().masternode_status().await.unwrap().wallet_address;
    let txid = nodes[0].client().send_to_address(to, 2.0, None).await.unwrap();
    let f = nodes[4].client().wait_transaction_finality(txid.clone(), Some(30.0)).await.unwrap();
    assert!(f.finalized, "{f:?}");
    let mut block = None;
    for n in &nodes {
        let f = wait_confirmed(n, &txid, 60).await;
        // Every node knows when the payment became final there, by its own polls or by the
        // block; and the block named is the one at that height.
        assert!(f.finalized_at_ms.is_some(), "{f:?}");
        let b = (f.blockheight.unwrap(), f.blockhash.unwrap());
        assert_eq!(n.client().get_block_hash(b.0).await.unwrap(), b.1);
        assert!(block.as_ref().is_none_or(|x| *x == b), "different blocks: {block:?} vs {b:?}");
        block = Some(b);
    }

    // Double-spend race: two spends of one output, sent to different nodes at once.
    let key = devnet_wallet_key("validator2");
    let owner = Address::from_pubkey(Network::Testnet, &key.public()).to_string();
    let coin = nodes[1]
        .client()
        .list_unspent(Some(1), None, Some(vec![owner]))
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.amount_units > 100_000_000 && u.spendable)
        .expect("validator2 has genesis coins");
    let op = OutPoint { txid: Hash256::from_hex(&coin.txid).unwrap(), vout: coin.vout };
    let chain_id = "timecoin-devnet-5";
    let spend = |to: &Keypair| {
        let mut tx = Transaction::unsigned(
            vec![op],
            vec![TxOut {
                value: coin.amount_units - 100_000,
                address: Address::from_pubkey(Network::Testnet, &to.public()),
            }],
            0,
            None,
        );
        tx.sign_all(&key, chain_id);
        tx
    };
    let (a, b) = (spend(&Keypair::generate()), spend(&Keypair::generate()));
    let (ida, idb) = (a.txid().to_hex(), b.txid().to_hex());
    let (ca, cb) = (nodes[0].client(), nodes[3].client());
    let (ra, rb) = tokio::join!(ca.send_raw_transaction(a.to_hex()), cb.send_raw_transaction(b.to_hex()));
    assert!(ra.is_ok() || rb.is_ok(), "{ra:?} {rb:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (sa, sb) = loop {
        let sa = status_everywhere(&all(&nodes), &ida).await;
        let sb = status_everywhere(&all(&nodes), &idb).await;
        let decided = |v: &Vec<String>| v.iter().all(|s| s == "finalized" || s == "confirmed" || s == "rejected");
        if decided(&sa) && decided(&sb) {
            break (sa, sb);
        }
        assert!(Instant::now() < deadline, "race undecided: {sa:?} {sb:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let won = |v: &Vec<String>| v.iter().all(|s| s == "finalized" || s == "confirmed");
    let lost = |v: &Vec<String>| v.iter().all(|s| s == "rejected");
    assert!((won(&sa) && lost(&sb)) || (won(&sb) && lost(&sa)), "exactly one must win everywhere: {sa:?} {sb:?}");

    // Kill the leader of the coming slot before the slot starts: a backup produces the block
    // within that same slot, once the leader's timeout has passed.
    let c1 = nodes[0].client();
    let info = eventually(30, "a height waiting for its slot", || {
        let c1 = c1.clone();
        async move {
            let i = c1.get_consensus_info().await.ok()?;
            (i.step == "waiting-for-slot").then_some(i)
        }
    })
    .await;
    let leader = info.slot_leader.clone().unwrap();
    let victim = nodes.iter().position(|n| n.id == leader).unwrap();
    let victim_height = info.height;
    nodes[victim].kill();
    wait_all(&all_but(&nodes, victim), victim_height + 3, 60).await;
    let c = all_but(&nodes, victim)[0].client();
    let BlockResult::Verbose(b) = c.get_block(BlockRef::Height(victim_height), Some(1)).await.unwrap() else {
        panic!()
    };
    let BlockResult::Verbose(prev) = c.get_block(BlockRef::Height(victim_height - 1), Some(1)).await.unwrap() else {
        panic!()
    };
    assert_ne!(b.producer, leader, "the dead leader cannot have produced height {victim_height}");
    assert!(b.round >= 1, "a backup made it: {b:?}");
    assert_eq!(b.slot, prev.slot + 1, "no slot was skipped");
    let slot_start = timed::chain::genesis::DEVNET_GENESIS_MS + b.slot * 2000;
    assert!(b.time_ms - slot_start < 2000, "produced within its own slot: {} ms late", b.time_ms - slot_start);

    // Down for three blocks, then back: it syncs and agrees. Meanwhile the others see it go
    // inactive (no heartbeat for three intervals) and lose leadership (no recent precommits).
    let down_at = min_height(&all_but(&nodes, victim)).await;
    wait_all(&all_but(&nodes, victim), down_at + 3, 60).await;
    let observer = all_but(&nodes, victim)[0].client();
    let entry = eventually(30, "the dead validator to turn inactive", || {
        let observer = observer.clone();
        let leader = leader.clone();
        async move {
            let list = observer.masternode_list().await.ok()?;
            let e = list.into_iter().find(|m| m.id == leader)?;
            (e.status == "inactive" && !e.leader_eligible).then_some(e)
        }
    })
    .await;
    assert!(!entry.connected);
    nodes[victim].restart();
    let now = min_height(&all_but(&nodes, victim)).await;
    wait_height(&nodes[victim], now, 60).await;
    assert_same_chain(&all(&nodes), now).await;
    eventually(30, "the restarted validator to be active again", || {
        let observer = observer.clone();
        let leader = leader.clone();
        async move {
            let list = observer.masternode_list().await.ok()?;
            let e = list.into_iter().find(|m| m.id == leader)?;
            (e.status == "active" && e.verified_heartbeats > 0).then_some(())
        }
    })
    .await;
    let set_hashes: Vec<String> = {
        let h = min_height(&all(&nodes)).await;
        let mut v = Vec::new();
        for n in &nodes {
            // UTXO sets compared at one height: wait until each node is there and no further.
            let c = n.client();
            let info = eventually(30, "utxo info at common height", || {
                let c = c.clone();
                async move {
                    let i = c.get_txout_set_info().await.ok()?;
                    (i.height >= h).then_some(i)
                }
            })
            .await;
            if info.height == h {
                v.push(info.hash_serialized);
            }
        }
        v
    };
    assert!(set_hashes.windows(2).all(|w| w[0] == w[1]), "UTXO sets differ: {set_hashes:?}");

    // A node of another genesis is refused and learns nothing.
    let stranger = spawn_in(
        &dir.join("stranger"),
        "validator1",
        &["--devnet-validators", "6", "--block-time", BLOCK_TIME, "--peers", &seed],
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stranger.client().get_peer_info().await.unwrap().len(), 0);
    assert_eq!(stranger.client().get_block_count().await.unwrap(), 0);
    for p in nodes[0].client().get_peer_info().await.unwrap() {
        assert_ne!(p.listen_addr, stranger.p2p, "stranger connected");
    }
    assert!(nodes[0].log().contains("genesis"), "the refusal is logged with its reason");
    let h = min_height(&all(&nodes)).await;
    assert_same_chain(&all(&nodes), h).await;
}
