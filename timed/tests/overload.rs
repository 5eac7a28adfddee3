//! Overload against real validators on 127.0.0.1: the excess is refused at submission with
//! `mempool-full` (and nothing else), every transaction given a txid is settled (final, or
//! rejected with a reason), refused ones can simply be sent again, expired ones stay rejected
//! even while a peer keeps re-gossiping them, and no peer is dropped on the way. And the other
//! end: an idle network does not poll.

mod common;

use common::*;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::BatchRequestBuilder;
use jsonrpsee::rpc_params;
use std::time::Duration;
use timed::api::*;
use timed::chain::genesis::devnet_wallet_key;
use timed::chain::{Address, Hash256, Keypair, Network, OutPoint, Transaction, TxOut};

const CHAIN: &str = "timecoin-devnet-3";

fn validator(dir: &std::path::Path, i: usize, peers: &str, extra: &[&str]) -> Node {
    let id = format!("validator{i}");
    let mut args = vec!["--devnet-validators", "3", "--block-time", "1"];
    if !peers.is_empty() {
        args.extend(["--peers", peers]);
    }
    args.extend(extra);
    spawn_in(&dir.join(&id), &id, &args)
}

/// Validator1 with `first`, validators 2 and 3 with `others`, connected and past height 2.
async fn three_validators(dir: &std::path::Path, first: &[&str], others: &[&str]) -> [Node; 3] {
    let v1 = validator(dir, 1, "", first);
    let seed = v1.p2p.clone();
    let nodes = [v1, validator(dir, 2, &seed, others), validator(dir, 3, &seed, others)];
    let refs: Vec<&Node> = nodes.iter().collect();
    connected(&refs, 2).await;
    for n in &refs {
        wait_height(n, 2, 60).await;
    }
    nodes
}

async fn connected(nodes: &[&Node], peers: usize) {
    for n in nodes {
        let c = n.client();
        eventually(40, &format!("{} to see {peers} peers", n.id), || {
            let c = c.clone();
            async move { (c.get_peer_info().await.ok()?.len() == peers).then_some(()) }
        })
        .await;
    }
}

/// One of validator1's genesis coins (more than 10 TIME) as seen by `node`, and its value.
async fn genesis_coin(node: &Node) -> (OutPoint, u64) {
    let coin = node
        .client()
        .list_unspent(Some(1), None, None)
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.spendable && u.amount_units > 10 * 100_000_000)
        .expect("validator1 has genesis coins");
    (OutPoint { txid: Hash256::from_hex(&coin.txid).unwrap(), vout: coin.vout }, coin.amount_units)
}

/// `count` coins of 0.01 TIME for `key`, from validator1's genesis coins, final on `observer`.
async fn fund(payer: &Node, observer: &Node, key: &Keypair, count: usize) -> Vec<OutPoint> {
    let wallet = devnet_wallet_key("validator1");
    let (op, amount) = genesis_coin(payer).await;
    let to = Address::from_pubkey(Network::Testnet, &key.public());
    let mut outputs = vec![TxOut { value: 1_000_000, address: to }; count];
    let change = amount - 1_000_000 * count as u64 - 200_000;
    outputs.push(TxOut { value: change, address: Address::from_pubkey(Network::Testnet, &wallet.public()) });
    let mut tx = Transaction::unsigned(vec![op], outputs, 0, None);
    tx.sign_all(&wallet, CHAIN);
    let txid = payer.client().send_raw_transaction(tx.to_hex()).await.unwrap();
    // Final on both: the payer spends the coins next, possibly after a validator stopped and
    // nothing can finalize any more, so it must not be the one still polling.
    for node in [observer, payer] {
        let f = node.client().wait_transaction_finality(txid.clone(), Some(30.0)).await.unwrap();
        assert!(f.finalized, "funding not final: {f:?}");
    }
    let id = Hash256::from_hex(&txid).unwrap();
    (0..count as u32).map(|vout| OutPoint { txid: id, vout }).collect()
}

fn payment(key: &Keypair, coin: OutPoint, memo: u8) -> Transaction {
    let to = Address::from_pubkey(Network::Testnet, &key.public());
    let mut tx = Transaction::unsigned(vec![coin], vec![TxOut { value: 990_000, address: to }], 0, Some(vec![memo]));
    tx.sign_all(key, CHAIN);
    tx
}

/// Sends every transaction in batches of 100, all batches at once; per transaction, the txid or
/// the error (code, message).
async fn send_all(node: &Node, txs: &[Transaction]) -> Vec<Result<String, (i32, String)>> {
    let c = node.client();
    let batches = txs.chunks(100).map(|chunk| {
        let c = c.clone();
        let hexes: Vec<String> = chunk.iter().map(|t| t.to_hex()).collect();
        async move {
            let mut b = BatchRequestBuilder::new();
            for h in &hexes {
                b.insert("sendrawtransaction", rpc_params![h]).unwrap();
            }
            let r = c.batch_request::<String>(b).await.expect("batch answered");
            r.into_iter().map(|x| x.map_err(|e| (e.code(), e.message().to_string()))).collect::<Vec<_>>()
        }
    });
    futures::future::join_all(batches).await.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn excess_is_refused_and_every_admitted_transaction_settles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A small limit, so a few hundred transactions are an overload even for a debug build.
    let limit = ["--max-pending-txs", "40"];
    let nodes = three_validators(dir, &limit, &limit).await;

    let key = Keypair::generate();
    let coins = fund(&nodes[0], &nodes[1], &key, 400).await;
    let txs: Vec<Transaction> = coins.iter().map(|c| payment(&key, *c, 0)).collect();
    let answers = send_all(&nodes[0], &txs).await;

    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for (tx, a) in txs.iter().zip(&answers) {
        match a {
            Ok(txid) => {
                assert_eq!(*txid, tx.txid().to_hex());
                admitted.push(txid.clone());
            }
            Err((code, msg)) => {
                assert_eq!((*code, msg.as_str()), (-26, "mempool-full"), "the only refusal is the documented one");
                refused.push(tx.clone());
            }
        }
    }
    assert!(!refused.is_empty(), "400 at once over a limit of 40 must refuse some");
    assert!(!admitted.is_empty(), "and admit some");

    // Every txid handed out is settled, seen from a node it was not sent to.
    let c2 = nodes[1].client();
    for txid in &admitted {
        let f = c2.wait_transaction_finality(txid.clone(), Some(60.0)).await.unwrap();
        assert!(
            f.finalized || (f.status == "rejected" && f.reject_reason.is_some()),
            "admitted {txid} neither final nor rejected with a reason: {f:?}"
        );
        assert!(f.finalized, "nothing here conflicts, so everything admitted is final: {f:?}");
    }
    // A refused transaction was never given a txid and is not remembered as rejected...
    let f = nodes[0].client().get_transaction_finality(refused[0].txid().to_hex()).await.unwrap();
    assert_eq!(f.status, "unknown", "{f:?}");
    // ...so backing off and sending it again works.
    let mut left = refused;
    for _ in 0..120 {
        if left.is_empty() {
            break;
        }
        let answers = send_all(&nodes[0], &left).await;
        let mut again = Vec::new();
        for (tx, a) in left.iter().zip(answers) {
            match a {
                Ok(txid) => {
                    let f = c2.wait_transaction_finality(txid.clone(), Some(60.0)).await.unwrap();
                    assert!(f.finalized, "{f:?}");
                }
                Err((code, msg)) => {
                    assert_eq!((code, msg.as_str()), (-26, "mempool-full"));
                    again.push(tx.clone());
                }
            }
        }
        left = again;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(left.is_empty(), "{} transactions were never admitted", left.len());

    // Nobody was disconnected for being slow.
    for n in &nodes {
        assert_eq!(n.client().get_peer_info().await.unwrap().len(), 2, "{} lost a peer", n.id);
        assert!(!n.log().contains("too slow"), "{} dropped a peer as too slow", n.id);
    }
}

/// A full pool refuses a client before its transaction is even decoded: under overload nearly
/// every submission ends there, so that answer must cost no decoding, hashing or lock
/// (docs/benchmarks.md, run AG). The price, documented in docs/rpc.md: a pooled transaction
/// sent again meanwhile is told to back off too.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_refuses_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    // Alone of three validators: nothing can become final, so one pending payment keeps a pool
    // of one full for as long as the test takes.
    let v1 = validator(tmp.path(), 1, "", &["--max-pending-txs", "1"]);
    let wallet = devnet_wallet_key("validator1");
    let (op, amount) = genesis_coin(&v1).await;
    let pay = |value: u64| {
        let to = Address::from_pubkey(Network::Testnet, &wallet.public());
        let mut tx = Transaction::unsigned(vec![op], vec![TxOut { value, address: to }], 0, None);
        tx.sign_all(&wallet, CHAIN);
        tx
    };
    let first = pay(amount - 200_000);
    let c = v1.client();
    // Not decodable: refused as undecodable while there is room...
    let garbage = c.send_raw_transaction("zz".to_string()).await.unwrap_err().to_string();
    assert!(garbage.contains("TX decode failed"), "{garbage}");
    assert_eq!(c.send_raw_transaction(first.to_hex()).await.unwrap(), first.txid().to_hex());
    // ...and as mempool-full once the pool is full: nothing was decoded.
    for hex in ["zz".to_string(), pay(amount - 300_000).to_hex(), first.to_hex()] {
        let e = c.send_raw_transaction(hex).await.unwrap_err();
        assert!(e.to_string().contains("mempool-full"), "{e}");
    }
    assert_eq!(c.get_transaction_finality(first.txid().to_hex()).await.unwrap().status, "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_transactions_stay_rejected_despite_re_gossip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // validator1 gives up after 3 s; validator2 keeps the transaction for 30 s and re-gossips
    // it every status tick meanwhile.
    let v1 = validator(dir, 1, "", &["--tx-expiry-secs", "3"]);
    let seed = v1.p2p.clone();
    let v2 = validator(dir, 2, &seed, &["--tx-expiry-secs", "30"]);
    let mut v3 = validator(dir, 3, &seed, &[]);
    connected(&[&v1, &v2, &v3], 2).await;
    wait_height(&v1, 2, 60).await;
    let key = Keypair::generate();
    let coins = fund(&v1, &v2, &key, 2).await;
    // Without validator3 no poll speaks for more than two thirds: nothing can finalize.
    v3.stop();
    connected(&[&v1, &v2], 1).await;

    let tx = payment(&key, coins[0], 1);
    let txid = v1.client().send_raw_transaction(tx.to_hex()).await.unwrap();
    eventually(10, "validator2 to hold it", || {
        let c = v2.client();
        let txid = txid.clone();
        async move { (c.get_transaction_finality(txid).await.ok()?.status == "pending").then_some(()) }
    })
    .await;
    let f = eventually(15, "validator1 to expire it", || {
        let c = v1.client();
        let txid = txid.clone();
        async move { c.get_transaction_finality(txid).await.ok().filter(|f| f.status == "rejected") }
    })
    .await;
    assert_eq!(f.reject_reason.as_deref(), Some("txn-expired"), "{f:?}");

    // For the next 8 s validator2 still holds it and re-gossips it; validator1 must not take
    // it back, and a client sending it again gets the same answer.
    for _ in 0..16 {
        let f1 = v1.client().get_transaction_finality(txid.clone()).await.unwrap();
        assert_eq!(f1.status, "rejected", "an expired transaction came back: {f1:?}");
        let RawMempool::Txids(pool) = v1.client().get_raw_mempool(Some(false)).await.unwrap() else { panic!() };
        assert!(!pool.contains(&txid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(v2.client().get_transaction_finality(txid.clone()).await.unwrap().status, "pending");
    let again = v1.client().send_raw_transaction(tx.to_hex()).await.unwrap_err().to_string();
    assert!(again.contains("txn-expired"), "{again}");
}

/// Polls about transactions the peers do not know make no progress; they must wait for the
/// poll tick instead of following one another at the speed of the round trip (back-to-back
/// polls are for polls that made progress, docs/consensus.md).
#[tokio::test(flavor = "multi_thread")]
async fn polls_that_make_no_progress_wait_for_the_tick() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The peers take at most 3 pending transactions from gossip, so of 12 sent to validator1
    // the others learn only the first few until re-gossip brings the rest seconds later.
    let small = ["--max-pending-txs", "1"];
    let nodes = three_validators(dir, &[], &small).await;
    let key = Keypair::generate();
    let coins = fund(&nodes[0], &nodes[1], &key, 12).await;
    let txs: Vec<Transaction> = coins.iter().map(|c| payment(&key, *c, 0)).collect();
    let c1 = nodes[0].client();
    let before = c1.get_avalanche_status().await.unwrap().polls_sent;
    let t0 = std::time::Instant::now();
    let answers = send_all(&nodes[0], &txs).await;
    assert!(answers.iter().all(|a| a.is_ok()), "validator1 admits all 12: {answers:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = c1.get_avalanche_status().await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(status.undecided > 0, "some must still be unknown to the peers for this to test anything: {status:?}");
    // At the 20 ms tick, at most 50 polls a second start; back to back they would follow each
    // other every round trip (a few ms on loopback) for as long as the peers do not know them.
    let rate = (status.polls_sent - before) as f64 / secs;
    assert!(rate < 120.0, "{rate:.0} polls/s about transactions the peers do not know");
    // And they do become final once re-gossip brings them.
    for tx in &txs {
        let f = c1.wait_transaction_finality(tx.txid().to_hex(), Some(60.0)).await.unwrap();
        assert!(f.finalized, "{f:?}");
    }
}

/// The engine's handled events of one `stage`, from the node's `/metrics`.
fn scrape(node: &Node) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", node.rpc)])
        .output()
        .expect("curl is installed by .ci/setup.sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the series `name{labels}` (`labels` as rendered, without braces; "" for none).
fn series(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() { format!("{name} ") } else { format!("{name}{{{labels}}} ") };
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}in:\n{text}"));
    line[prefix.len()..].trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn engine_events(node: &Node, stage: &str) -> f64 {
    series(&scrape(node), timed::metrics_names::ENGINE_EVENTS, &format!("stage=\"{stage}\""))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_network_does_not_poll() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_validators(tmp.path(), &[], &[]).await;
    for n in &nodes {
        wait_height(n, 5, 60).await;
    }
    let count = |stage: &'static str| nodes.iter().map(move |n| engine_events(n, stage)).collect::<Vec<_>>();
    let polls_before = count("poll_round");
    let h0 = height(&nodes[0]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let polls_after = count("poll_round");
    assert!(height(&nodes[0]).await >= h0 + 3, "the chain moved meanwhile");
    for (i, n) in nodes.iter().enumerate() {
        // Ticking regardless, the 20 ms poll tick would be 250 events in 5 s.
        let polls = polls_after[i] - polls_before[i];
        assert!(polls <= 5.0, "{}: {polls} poll ticks with nothing to poll", n.id);
    }
    // A transaction brings the tick back, and it becomes final everywhere.
    let key = Keypair::generate();
    let coins = fund(&nodes[0], &nodes[1], &key, 1).await;
    let f = nodes[2].client().wait_transaction_finality(coins[0].txid.to_hex(), Some(30.0)).await.unwrap();
    assert!(f.finalized, "{f:?}");
    assert!(engine_events(&nodes[0], "poll_round") > polls_after[0], "the poll tick ran again");

    // Where the bytes went, by message kind: block agreement and heartbeats flowed both ways,
    // the payment was polled, and the kinds account for the node's totals.
    use timed::metrics_names::{P2P_BYTES_RECEIVED, P2P_BYTES_SENT, P2P_MESSAGES, P2P_MESSAGE_BYTES};
    let text = scrape(&nodes[0]);
    let per = |name: &str, direction: &str, kind: &str| {
        series(&text, name, &format!("direction=\"{direction}\",kind=\"{kind}\""))
    };
    for kind in ["hello", "vote", "heartbeat", "status"] {
        for direction in ["sent", "received"] {
            assert!(per(P2P_MESSAGES, direction, kind) >= 1.0, "{direction} {kind}:\n{text}");
        }
    }
    // The leader is drawn per slot, so one node may have led none of these blocks ((2/3)^10, one
    // run in sixty, for ten blocks; CI met it once): proposals are counted over the three nodes.
    let texts: Vec<String> = nodes.iter().map(scrape).collect();
    for direction in ["sent", "received"] {
        let labels = format!("direction=\"{direction}\",kind=\"proposal\"");
        let proposals: f64 = texts.iter().map(|t| series(t, P2P_MESSAGES, &labels)).sum();
        assert!(proposals >= 1.0, "{direction} proposals:\n{}", texts.join("\n"));
    }
    assert!(per(P2P_MESSAGES, "sent", "poll_query") >= 1.0 && per(P2P_MESSAGES, "received", "poll_reply") >= 1.0);
    for (direction, total) in [("sent", P2P_BYTES_SENT), ("received", P2P_BYTES_RECEIVED)] {
        let by_kind: f64 = timed::p2p::message::KINDS.iter().map(|k| per(P2P_MESSAGE_BYTES, direction, k)).sum();
        let total = series(&text, total, "");
        // Never more than the total (each frame's total is counted first); less only by the
        // frames in flight during the scrape.
        assert!(by_kind <= total && by_kind >= 0.95 * total, "{direction}: {by_kind} by kind, {total} in all");
    }
}
