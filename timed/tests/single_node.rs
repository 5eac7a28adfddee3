//! One real `timed` that is the only validator of its devnet: every RPC method, the plan's curl
//! lines, JSON-RPC edge cases, spending, auth, metrics, and restart durability.

mod common;

use common::*;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::rpc_params;
use serde_json::{json, Value};
use std::process::Command;
use timed::api::*;

fn single(extra: &[&str]) -> Node {
    let mut args = vec!["--devnet-validators", "1", "--block-time", "1"];
    args.extend_from_slice(extra);
    start("validator1", &args)
}

/// Raw HTTP POST through curl, the way an operator would call it.
fn curl(url: &str, body: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", url, "-d", body])
        .args(extra)
        .output()
        .expect("curl is installed by .ci/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_answers_and_a_spend_lands_in_a_block() {
    let node = single(&[]);
    let c = node.client();
    wait_height(&node, 2, 30).await;

    let info = c.get_blockchain_info().await.unwrap();
    assert_eq!(info.chain, "test");
    assert!(info.blocks >= 2);
    assert_eq!(info.block_time_secs, 1);
    assert_eq!(c.get_best_block_hash().await.unwrap(), info.bestblockhash);
    let genesis_hash = c.get_block_hash(0).await.unwrap();
    assert_eq!(genesis_hash, info.genesishash);

    // getblock by height and by hash, at every verbosity.
    let BlockResult::Verbose(b1) = c.get_block(BlockRef::Height(1), Some(1)).await.unwrap() else { panic!() };
    assert_eq!(b1.height, 1);
    assert_eq!(b1.previousblockhash.as_deref(), Some(genesis_hash.as_str()));
    assert_eq!(b1.producer, "validator1");
    let BlockResult::Verbose(by_hash) = c.get_block(BlockRef::Hash(b1.hash.clone()), Some(2)).await.unwrap() else {
        panic!()
    };
    assert_eq!(by_hash.hash, b1.hash);
    assert!(by_hash.tx[0].is_object());
    let BlockResult::Hex(hex) = c.get_block(BlockRef::Height(1), Some(0)).await.unwrap() else { panic!() };
    assert!(hex.len() > 100);

    let status = c.masternode_status().await.unwrap();
    assert_eq!(status.id, "validator1");
    let wallet = status.wallet_address.clone();
    assert!(wallet.starts_with("TIME0"));
    let v = c.validate_address(wallet.clone()).await.unwrap();
    assert!(v.isvalid && v.ismine);
    let bad = c.validate_address(format!("{}x", &wallet[..wallet.len() - 1])).await.unwrap();
    assert!(!bad.isvalid);
    assert!(bad.error.is_some());

    let balance_before = c.get_balance(None, None).await.unwrap();
    assert!(balance_before >= 1_000_000.0, "devnet genesis funds the wallet: {balance_before}");
    let unspent = c.list_unspent(None, None, None).await.unwrap();
    assert!(unspent.len() >= 20);

    // Pay a fresh address and watch it become final and confirmed.
    let other =
        timed::chain::Address::from_pubkey(timed::chain::Network::Testnet, &timed::chain::Keypair::generate().public())
            .to_string();
    let sent_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let txid = c.send_to_address(other.clone(), 12.5, Some("hello".into())).await.unwrap();
    let fin = c.wait_transaction_finality(txid.clone(), Some(20.0)).await.unwrap();
    assert!(fin.finalized, "{fin:?}");
    // The node's own time of finality, which `timectl bench` measures latency against.
    let at = fin.finalized_at_ms.expect("finalized_at_ms");
    assert!(at >= sent_at.saturating_sub(5) && at <= sent_at + 20_000, "{fin:?} sent at {sent_at}");
    let confirmed = wait_confirmed(&node, &txid, 30).await;
    assert!(confirmed.blockheight.unwrap() >= 1);
    assert_eq!(c.get_balance(Some(other.clone()), None).await.unwrap(), 12.5);
    let after = c.get_balance(None, None).await.unwrap();
    assert!(after < balance_before - 12.5 + 10.0 * 50.0, "spent 12.5 + fee, earned block rewards");

    let RawTransaction::Verbose(vt) = c.get_raw_transaction(txid.clone(), Some(true)).await.unwrap() else { panic!() };
    assert_eq!(vt.memo.as_deref(), Some("hello"));
    assert_eq!(vt.finality, "confirmed");
    let RawTransaction::Hex(raw) = c.get_raw_transaction(txid.clone(), None).await.unwrap() else { panic!() };
    assert_eq!(raw, vt.hex);
    let t = c.get_transaction(txid.clone()).await.unwrap();
    assert!(t.fee.unwrap() > 0.0);
    assert!(t.amount < 0.0);

    // createrawtransaction + signrawtransactionwithwallet + sendrawtransaction.
    let coin = c.list_unspent(None, None, None).await.unwrap().into_iter().find(|u| u.spendable).unwrap();
    let mut outs = std::collections::BTreeMap::new();
    outs.insert(other.clone(), coin.amount - 0.01);
    let unsigned = c
        .create_raw_transaction(vec![InputRef { txid: coin.txid.clone(), vout: coin.vout }], outs, None, None)
        .await
        .unwrap();
    let signed = c.sign_raw_transaction_with_wallet(unsigned).await.unwrap();
    assert!(signed.complete);
    let txid2 = c.send_raw_transaction(signed.hex.clone()).await.unwrap();
    // Resubmitting the same bytes is idempotent while pooled; after a block it is -27.
    let fin2 = c.wait_transaction_finality(txid2.clone(), Some(20.0)).await.unwrap();
    assert!(fin2.finalized);

    // mergeutxos spends many small outputs into one.
    let merged = c.merge_utxos(Some(2), Some(5)).await.unwrap();
    assert_eq!(merged.merged, 5);
    assert!(c.wait_transaction_finality(merged.txid.unwrap(), Some(20.0)).await.unwrap().finalized);

    let pool = c.get_mempool_info().await.unwrap();
    assert!(pool.loaded);
    let _ = c.get_raw_mempool(Some(true)).await.unwrap();
    let _ = c.get_raw_mempool(None).await.unwrap();
    let set = c.get_txout_set_info().await.unwrap();
    assert_eq!(set.hash_serialized.len(), 64);
    assert!(set.txouts > 20);
    let net = c.get_network_info().await.unwrap();
    assert_eq!(net.genesis_hash, genesis_hash);
    assert_eq!(c.get_peer_info().await.unwrap().len(), 0);
    let up = c.uptime().await.unwrap();
    assert!(up < 600);
    let list = c.masternode_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].leader_eligible);
    let cons = c.get_consensus_info().await.unwrap();
    assert_eq!(cons.validators, 1);
    assert!(cons.blocks_committed >= 2);
    let av = c.get_avalanche_status().await.unwrap();
    assert!(av.finalized_total >= 3, "{av:?}");
    assert!(av.finality_ms_p50.is_some());
    let att = c.get_attestation_stats().await.unwrap();
    assert!(att.heartbeats_sent >= 1);
    let hist = c.get_heartbeat_history(Some("validator1".into()), Some(5)).await.unwrap();
    assert!(!hist.is_empty());
    assert!(c.get_heartbeat_history(Some("nobody".into()), None).await.is_err());

    // Error codes.
    let e = c.send_raw_transaction("zz".into()).await.unwrap_err();
    assert!(e.to_string().contains("-22"), "{e}");
    let e = c.send_raw_transaction(signed.hex.clone()).await;
    // Either still pooled (idempotent) or already in a block (-27).
    if let Err(e) = e {
        assert!(e.to_string().contains("-27"), "{e}");
    }
    let e = c.get_raw_transaction("00".repeat(32), None).await.unwrap_err();
    assert!(e.to_string().contains("-5"), "{e}");
    let e = c.send_to_address(other.clone(), 1e9, None).await.unwrap_err();
    assert!(e.to_string().contains("-6"), "{e}");
    let e = c.send_to_address(other.clone(), 1e12, None).await.unwrap_err();
    assert!(e.to_string().contains("-8"), "more than can ever exist: {e}");
    let e = c.send_to_address("TIME0nope".into(), 1.0, None).await.unwrap_err();
    assert!(e.to_string().contains("-5"), "{e}");
    let e = c.wait_transaction_finality("11".repeat(32), Some(0.5)).await.unwrap_err();
    assert!(e.to_string().contains("-11"), "{e}");
    let e = c.get_block(BlockRef::Height(1_000_000), None).await.unwrap_err();
    assert!(e.to_string().contains("-5"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_curl_lines_and_json_rpc_rules() {
    let node = single(&[]);
    let port = node.rpc.rsplit(':').next().unwrap().to_string();
    // The plan's two lines, verbatim but for the port.
    let script = format!(
        r#"curl -s -X POST http://localhost:{port}/rpc \
  -H "Content-Type: application/json" \
  -d '{{"jsonrpc":"2.0","method":"getblockchaininfo","params":[],"id":"1"}}' | jq .
curl -s http://localhost:{port}/rpc \
  -d '{{"jsonrpc":"2.0","method":"getblockcount","params":[],"id":"1"}}' | jq .result"#
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("\"bestblockhash\""), "{text}");
    let last = text.trim().lines().last().unwrap();
    assert!(last.parse::<u64>().is_ok(), "getblockcount via jq .result: {text}");

    let url = node.url();
    let (b, _) = curl(&url, "{not json", &[]);
    assert_eq!(json_of(&b)["error"]["code"], -32700);
    let (b, _) = curl(&url, r#"{"jsonrpc":"2.0","id":1}"#, &[]);
    assert_eq!(json_of(&b)["error"]["code"], -32600);
    let (b, _) = curl(&url, r#"{"jsonrpc":"2.0","method":"nosuch","params":[],"id":1}"#, &[]);
    assert_eq!(json_of(&b)["error"]["code"], -32601);
    let (b, _) = curl(&url, r#"{"jsonrpc":"2.0","method":"getblockhash","params":["x"],"id":1}"#, &[]);
    assert_eq!(json_of(&b)["error"]["code"], -32602);
    // Ids of every type JSON-RPC 2.0 allows come back unchanged; others are invalid requests.
    for id in [json!(7), json!("abc"), json!(null), json!(-3), json!(""), json!(1.5), json!(1e20)] {
        let body = json!({"jsonrpc":"2.0","method":"getblockcount","params":[],"id":id}).to_string();
        let (b, _) = curl(&url, &body, &[]);
        assert_eq!(json_of(&b)["id"], id, "{b}");
        assert!(json_of(&b)["result"].is_u64(), "{b}");
    }
    for id in [json!({"a": 1}), json!([1])] {
        let body = json!({"jsonrpc":"2.0","method":"getblockcount","params":[],"id":id}).to_string();
        let (b, _) = curl(&url, &body, &[]);
        assert_eq!(json_of(&b)["error"]["code"], -32600, "id {id}: {b}");
    }
    // Named params and the root path.
    let (b, _) = curl(
        &format!("http://{}/", node.rpc),
        r#"{"jsonrpc":"2.0","method":"getblockhash","params":{"height":0},"id":1}"#,
        &[],
    );
    assert_eq!(json_of(&b)["result"].as_str().unwrap().len(), 64);
    // Batches answer each call; notifications get no reply.
    let (b, _) = curl(
        &url,
        r#"[{"jsonrpc":"2.0","method":"getblockcount","id":1},{"jsonrpc":"2.0","method":"uptime","id":2},{"jsonrpc":"2.0","method":"uptime"}]"#,
        &[],
    );
    assert_eq!(json_of(&b).as_array().unwrap().len(), 2);
    let (b, code) = curl(&url, r#"{"jsonrpc":"2.0","method":"uptime"}"#, &[]);
    assert!(b.is_empty() && code == "204", "notification answered: {b:?} {code}");
    // Too large a batch, too large a body.
    let big: Vec<Value> = (0..101).map(|i| json!({"jsonrpc":"2.0","method":"uptime","id":i})).collect();
    let (b, _) = curl(&url, &Value::Array(big).to_string(), &[]);
    assert!(b.contains("-32010") || b.to_lowercase().contains("batch"), "{b}");
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"validateaddress","params":["{}"],"id":1}}"#,
        "A".repeat(2 * 1024 * 1024)
    );
    let path = node.dir.join("huge.json");
    std::fs::write(&path, huge).unwrap();
    let (_, code) = curl(&url, &format!("@{}", path.display()), &[]);
    assert_eq!(code, "413");
    // Unknown paths are refused; /metrics is Prometheus text a real parser accepts.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}/nope", node.rpc)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let metrics = Command::new("curl").args(["-s", &format!("http://{}/metrics", node.rpc)]).output().unwrap();
    let text = String::from_utf8(metrics.stdout).unwrap();
    let parse = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nnames={m.name for m in p(sys.stdin.read())}\nprint(' '.join(sorted(names)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    parse.stdin.as_ref().unwrap().write_all(text.as_bytes()).unwrap();
    let out = parse.wait_with_output().unwrap();
    assert!(out.status.success(), "metrics do not parse: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let names = String::from_utf8_lossy(&out.stdout);
    for n in [
        "timed_block_height",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "timed_tx_finality_seconds",
        "timed_rpc_request_duration_seconds",
        "timed_p2p_messages",
        "timed_p2p_message_bytes",
    ] {
        assert!(names.contains(n), "{n} missing: {names}");
    }
    // The WebSocket transport shares the port and sees the same chain.
    let http_height = node.client().get_block_count().await.unwrap();
    let ws = jsonrpsee::ws_client::WsClientBuilder::default().build(format!("ws://{}", node.rpc)).await.unwrap();
    let h: u64 = ws.request("getblockcount", rpc_params![]).await.unwrap();
    assert!((http_height..=http_height + 2).contains(&h), "ws {h}, http {http_height}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wallet_methods_need_credentials_beyond_loopback() {
    let node = single(&["--rpc-bind", "0.0.0.0:0"]);
    let port = node.rpc.rsplit(':').next().unwrap();
    let url = format!("http://127.0.0.1:{port}/rpc");
    let send = r#"{"jsonrpc":"2.0","method":"sendtoaddress","params":["TIME0x",1],"id":1}"#;
    let (b, _) = curl(&url, send, &[]);
    assert_eq!(json_of(&b)["error"]["code"], -32001, "{b}");
    let (b, _) = curl(&url, &format!("[{send}]"), &[]);
    assert_eq!(json_of(&b)[0]["error"]["code"], -32001, "{b}");
    let (b, _) = curl(&url, r#"{"jsonrpc":"2.0","method":"getblockcount","id":1}"#, &[]);
    assert!(json_of(&b)["result"].is_u64(), "read methods stay open: {b}");
    let cookie = std::fs::read_to_string(node.dir.join(".cookie")).unwrap();
    let (b, _) = curl(&url, send, &["-u", &cookie]);
    assert_eq!(json_of(&b)["error"]["code"], -5, "authenticated, then the bad address is reported: {b}");
    let (_, code) = curl(&url, send, &["-u", "__cookie__:wrong"]);
    assert_eq!(code, "401");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_height_utxos_and_balances() {
    let mut node = single(&[]);
    wait_height(&node, 3, 30).await;
    let c = node.client();
    let other =
        timed::chain::Address::from_pubkey(timed::chain::Network::Testnet, &timed::chain::Keypair::generate().public())
            .to_string();
    let txid = c.send_to_address(other.clone(), 3.0, None).await.unwrap();
    assert!(c.wait_transaction_finality(txid.clone(), Some(20.0)).await.unwrap().finalized);
    let status = node.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(node.log().contains("stopped cleanly"));
    // What was reported final is on disk, in a block or in the finalized table.
    let before_height = {
        let store =
            timed::storage::Store::open(&node.dir.join("chain.redb"), &timed::chain::GenesisConfig::devnet(1, 1))
                .unwrap();
        let (h, _) = store.tip().unwrap();
        let txid = timed::chain::Hash256::from_hex(&txid).unwrap();
        assert!(store.tx_location(&txid).unwrap().is_some() || store.is_finalized_pending(&txid).unwrap());
        let info = store.utxo_set_info().unwrap();
        (h, info.hash)
    };
    node.restart();
    let c = node.client();
    let h = c.get_block_count().await.unwrap();
    assert!(h >= before_height.0);
    if h == before_height.0 {
        assert_eq!(c.get_txout_set_info().await.unwrap().hash_serialized, before_height.1.to_hex());
    }
    assert_eq!(c.get_balance(Some(other.clone()), Some(0)).await.unwrap(), 3.0);
    let f = c.get_transaction_finality(txid.clone()).await.unwrap();
    assert!(f.finalized, "{f:?}");
    wait_height(&node, h + 2, 30).await;

    // A crash (SIGKILL) right after a spend loses nothing that was reported final.
    let txid2 = c.send_to_address(other.clone(), 4.0, None).await.unwrap();
    assert!(c.wait_transaction_finality(txid2.clone(), Some(20.0)).await.unwrap().finalized);
    let h_before = c.get_block_count().await.unwrap();
    node.kill();
    node.restart();
    let c = node.client();
    assert!(c.get_block_count().await.unwrap() >= h_before);
    assert!(c.get_transaction_finality(txid2).await.unwrap().finalized);
    assert_eq!(c.get_balance(Some(other.clone()), Some(0)).await.unwrap(), 7.0);

    // ctrl-c (SIGINT) is a clean shutdown too.
    let pid = node.child.as_ref().unwrap().id().to_string();
    std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = node.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_start_up_input_is_refused_clearly() {
    let out =
        Command::new(timed_bin()).args(["--validator-id", "validator7", "--devnet-validators", "3"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: validator \"validator7\" is not in the genesis"), "{err}");
    assert!(err.contains("validator1, validator2, validator3"), "{err}");
    // A data dir from another genesis is refused, and nothing in it changes.
    let mut node = single(&[]);
    node.stop();
    let dir = node.dir.clone();
    let before = std::fs::read(dir.join("chain.redb")).unwrap();
    let out = Command::new(timed_bin())
        .args([
            "--validator-id",
            "validator1",
            "--devnet-validators",
            "2",
            "--port",
            "0",
            "--rpc-bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains("genesis"), "{err}");
    assert_eq!(std::fs::read(dir.join("chain.redb")).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_genesis_file_from_keygen_runs_a_real_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("alpha");
    let out = Command::new(timed_bin())
        .args(["keygen", "--validator-id", "alpha", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entry = String::from_utf8(out.stdout).unwrap();
    let reward = entry.lines().find_map(|l| l.strip_prefix("reward_address = ")).unwrap().trim_matches('"').to_string();
    let genesis = format!(
        "chain_id = \"timecoin-testnet-x\"\nnetwork = \"testnet\"\ntimestamp_ms = 1766448000000\nblock_time_secs = 1\n\n{entry}\n[[allocations]]\naddress = \"{reward}\"\namount = 100000000000\noutputs = 3\n"
    );
    let gpath = tmp.path().join("genesis.toml");
    std::fs::write(&gpath, &genesis).unwrap();
    let node = spawn_in(&data, "alpha", &["--genesis", gpath.to_str().unwrap()]);
    wait_height(&node, 2, 30).await;
    let c = node.client();
    assert_eq!(c.get_blockchain_info().await.unwrap().chain_id, "timecoin-testnet-x");
    assert_eq!(c.get_balance(None, None).await.unwrap() as u64, 3000 + 10 * c.get_block_count().await.unwrap());
    // The same genesis with a devnet key in the data dir is refused: keys must match the genesis.
    let other = tmp.path().join("beta");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("validator.key"), hex::encode([7u8; 32])).unwrap();
    let out = Command::new(timed_bin())
        .args(["--validator-id", "alpha", "--port", "0", "--rpc-bind", "127.0.0.1:0", "--genesis"])
        .arg(&gpath)
        .arg("--data-dir")
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not the key the genesis lists"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_wallet_sends_each_take_their_own_coins() {
    // The devnet wallet holds 20 coins: ten payments at once all fit, so every one must be
    // accepted. Without the wallet's spend lock they chose the same coins and most were
    // refused as double spends.
    let node = single(&[]);
    wait_height(&node, 2, 30).await;
    let c = std::sync::Arc::new(node.client());
    let other =
        timed::chain::Address::from_pubkey(timed::chain::Network::Testnet, &timed::chain::Keypair::generate().public())
            .to_string();
    let sends = (0..10).map(|_| {
        let (c, to) = (c.clone(), other.clone());
        tokio::spawn(async move { c.send_to_address(to, 1.0, None).await })
    });
    let results: Vec<_> = futures::future::join_all(sends).await.into_iter().map(|r| r.unwrap()).collect();
    let txids: std::collections::HashSet<String> =
        results.iter().map(|r| r.as_ref().unwrap_or_else(|e| panic!("{e}; all: {results:?}")).clone()).collect();
    assert_eq!(txids.len(), 10);
    for txid in txids {
        assert!(c.wait_transaction_finality(txid, Some(30.0)).await.unwrap().finalized);
    }
    assert_eq!(c.get_balance(Some(other), Some(0)).await.unwrap(), 10.0);
}

/// Threads of a running process whose name starts with `prefix` (Linux: /proc/PID/task/*/comm).
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn threads_sets_the_runtime_workers() {
    // tokio's name for its workers. Its blocking pool uses the same name, but an idle
    // one-validator devnet starts no blocking task, so here they are the workers alone.
    const WORKER: &str = "tokio-rt-worker";
    for threads in [1, 3] {
        let node = single(&["--threads", &threads.to_string()]);
        wait_height(&node, 2, 30).await;
        assert_eq!(threads_named(node.child.as_ref().unwrap().id(), WORKER), threads);
    }
    let out = Command::new(timed_bin()).args(["--validator-id", "validator1", "--threads", "0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: --threads must be between 1 and 1024, not 0"), "{err}");
}
