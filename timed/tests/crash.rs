//! Crash safety: four real validators on 127.0.0.1 under a steady stream of payments, one of
//! them killed with SIGKILL at a random moment, again and again. After each restart on the same
//! data directory: the store opens and the node answers; every transaction the node had reported
//! final before it died is still final (or in a block) on it, at once, before any sync; and once
//! it has caught up its UTXO set hash (`gettxoutsetinfo`) equals every other node's at the same
//! tip.
//!
//! CI runs `crash_safety_under_load` (3 kills; `TIMED_CRASH_KILLS=N` for more). The long mode is
//! `cargo test -p timed --test crash -- --ignored` (100 kills). `TIMED_CRASH_SEED=N` replays the
//! same victims and moments; the seed in use is printed.

mod common;

use common::*;
use jsonrpsee::http_client::HttpClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timed::api::*;

/// SplitMix64, so a seed replays the same schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn validator(dir: &std::path::Path, i: usize, peers: &str) -> Node {
    let id = format!("validator{i}");
    let mut args = vec!["--devnet-validators", "4", "--block-time", "1"];
    if !peers.is_empty() {
        args.extend(["--peers", peers]);
    }
    spawn_in(&dir.join(&id), &id, &args)
}

/// Sent transactions, by the node that accepted them.
type Sent = Arc<Mutex<Vec<String>>>;

/// Small payments round-robin between the nodes' wallets, every `gap`, through whichever node
/// answers (the victim is down part of the time), until `stop`. Clients carry each node's
/// cookie (wallet methods need it); a restarted node's client is replaced, as it has a new one.
fn spawn_load(clients: Arc<Mutex<Vec<HttpClient>>>, wallets: Vec<String>, sent: Sent, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let client = clients.lock().unwrap()[i % 4].clone();
            let to = wallets[(i + 1) % 4].clone();
            let r = tokio::time::timeout(Duration::from_secs(5), client.send_to_address(to, 0.01, None)).await;
            if let Ok(Ok(txid)) = r {
                sent.lock().unwrap().push(txid);
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
}

/// Waits until every node has the same tip and the same UTXO set hash there.
async fn same_utxo_set(nodes: &[Node], secs: u64) -> TxOutSetInfo {
    eventually(secs, "every node on one tip with one UTXO set hash", || async {
        let mut infos = Vec::new();
        for n in nodes {
            infos.push(n.client().get_txout_set_info().await.ok()?);
        }
        let first = infos[0].clone();
        infos
            .iter()
            .all(|i| i.bestblock == first.bestblock && i.hash_serialized == first.hash_serialized)
            .then_some(first)
    })
    .await
}

async fn crash_many_times(kills: usize) {
    let seed = std::env::var("TIMED_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test: {kills} kills, TIMED_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let tmp = tempfile::tempdir().unwrap();
    let v1 = validator(tmp.path(), 1, "");
    let seed_addr = v1.p2p.clone();
    let mut nodes = vec![v1];
    for i in 2..=4 {
        nodes.push(validator(tmp.path(), i, &seed_addr));
    }
    wait_height(&nodes[3], 2, 60).await;
    let mut wallets = Vec::new();
    for n in &nodes {
        wallets.push(n.client().masternode_status().await.unwrap().wallet_address);
    }
    let clients = Arc::new(Mutex::new(nodes.iter().map(|n| n.client()).collect::<Vec<_>>()));
    let sent: Sent = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_load(clients.clone(), wallets, sent.clone(), stop.clone());

    let mut total_checked = 0usize;
    let started = Instant::now();
    for round in 0..kills {
        let victim = (rng.next() % 4) as usize;
        // What the victim reports final now must survive its death.
        let recent: Vec<String> = {
            let s = sent.lock().unwrap();
            s[s.len().saturating_sub(40)..].to_vec()
        };
        let c = nodes[victim].client();
        let mut final_before = Vec::new();
        for txid in recent {
            if let Ok(f) = c.get_transaction_finality(txid.clone()).await {
                if f.finalized {
                    final_before.push(txid);
                }
            }
        }
        // A random moment under load, then SIGKILL.
        tokio::time::sleep(Duration::from_millis(200 + rng.next() % 2300)).await;
        let height_at_kill = height(&nodes[(victim + 1) % 4]).await;
        nodes[victim].kill();
        tokio::time::sleep(Duration::from_millis(300 + rng.next() % 1500)).await;

        // The store opens (node.json is written after it) and the node answers.
        nodes[victim].restart();
        clients.lock().unwrap()[victim] = nodes[victim].client();
        let c = nodes[victim].client();
        let h = eventually(20, "the restarted node to answer", || {
            let c = c.clone();
            async move { c.get_block_count().await.ok() }
        })
        .await;
        // Nothing it had called final is gone, before it synced anything.
        for txid in &final_before {
            let f = c.get_transaction_finality(txid.clone()).await.unwrap();
            assert!(
                f.finalized,
                "round {round}, seed {seed}: validator{} lost finalized {txid} (now {}) at height {h}",
                victim + 1,
                f.status
            );
        }
        total_checked += final_before.len();
        // It catches up past where the others were, and all agree on the UTXO set.
        wait_height(&nodes[victim], height_at_kill + 1, 60).await;
        let info = same_utxo_set(&nodes, 60).await;
        eprintln!(
            "round {round}: killed validator{} at height {height_at_kill}; {} finalized survived; UTXO set {} at height {}",
            victim + 1,
            final_before.len(),
            &info.hash_serialized[..16],
            info.height
        );
    }
    stop.store(true, Ordering::Relaxed);
    let sent_total = sent.lock().unwrap().len();
    eprintln!(
        "crash test: {kills} kills in {:.0} s, {sent_total} payments sent, {total_checked} finality checks after restarts",
        started.elapsed().as_secs_f64()
    );
    assert!(sent_total > kills * 5, "the load generator barely ran: {sent_total} payments");
    assert!(total_checked > 0, "no finalized transaction was ever checked across a kill");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_safety_under_load() {
    let kills = std::env::var("TIMED_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    crash_many_times(kills).await;
}

/// The long mode: 100 kills (about half an hour on a quiet machine).
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn crash_safety_100_kills() {
    crash_many_times(100).await;
}
