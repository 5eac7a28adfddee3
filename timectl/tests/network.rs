//! End to end against real `timed` processes on 127.0.0.1: a three-node network driven through
//! every command, then faults injected one at a time (a node with another genesis, a stopped
//! node, a transaction that can never finalize) and the monitor must name each.
//! Every process is stopped by the `Cleanup` guard, also when an assertion fails.

mod common;

use common::{alive, filters, kill, svgs_parse, timed_path, wait_for, Cleanup, Env};
use serde_json::Value;
use std::time::Duration;

fn snapshot(env: &Env, name: &str, text: &str) {
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(env) {
        s.add_filter(&re, with);
    }
    // Column widths follow the content; collapse them so only the content is compared.
    s.add_filter(r"(validator\d)\s+┆\s+\d+\s+┆", "$1 ┆ [PID] ┆");
    s.add_filter(r"(node\d)\s+┆\s+\d+\s+┆\s+\d+\s+│", "$1 ┆ [HEIGHT] ┆ [MS] │");
    s.add_filter(r"(node\d)\s+┆\s+\d+\s+┆\s+(stopped|not running|killed)", "$1 ┆ [PID] ┆ $2");
    s.add_filter(r"─+", "─");
    s.add_filter(r"═+", "═");
    s.add_filter(r" {2,}", " ");
    s.bind(|| insta::assert_snapshot!(name, text));
}

fn heights(env: &Env, network: &str) -> Vec<Option<u64>> {
    let r = env.run(&["rpc", "getblockcount", "--all", "--json", "--network", network]);
    r.json().as_array().expect("array").iter().map(|row| row["result"].as_u64()).collect()
}

/// Findings of one kind in a `stability --json` summary.
fn findings<'a>(summary: &'a Value, kind: &str) -> Vec<&'a Value> {
    summary["analysis"]["findings"].as_array().expect("findings").iter().filter(|f| f["kind"] == kind).collect()
}

fn read_log(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn three_node_network_end_to_end() {
    let _ = timed_path();
    let env = Env::new();
    let mut cleanup = Cleanup { env: &env, networks: vec!["itest".into()], pids: Vec::new() };

    // Up: three nodes, one-second blocks.
    let up = env.run(&["local", "up", "--nodes", "3", "--block-time", "1", "--network", "itest"]);
    assert_eq!(up.code, 0, "{}", up.screen());
    snapshot(&env, "local_up", &up.stdout);
    let inv_path = env.inventory("itest");
    assert_eq!(common::inventory_pids(&inv_path).len(), 3);

    // rpc getblockcount --all: three equal heights once blocks flow.
    let equal = wait_for(Duration::from_secs(40), || {
        let h = heights(&env, "itest");
        (h.len() == 3 && h.iter().all(|x| x.is_some_and(|v| v >= 2)) && h.windows(2).all(|w| w[0] == w[1])).then_some(h)
    });
    assert!(equal.is_some(), "heights never became equal and >= 2: {:?}", heights(&env, "itest"));
    let table = wait_for(Duration::from_secs(20), || {
        let r = env.run(&["rpc", "getblockcount", "--all"]);
        let hs: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| l.starts_with("│ node") && !l.contains("result"))
            .map(|l| l.split('┆').nth(1).unwrap_or("").trim())
            .collect();
        (r.code == 0 && hs.len() == 3 && hs.windows(2).all(|w| w[0] == w[1])).then_some(r)
    })
    .expect("a table of three equal heights");
    snapshot(&env, "rpc_getblockcount_all", &table.stdout);

    // Parameters: JSON when they parse.
    let r = env.run(&["rpc", "getblockhash", "1", "--node", "node2", "--json"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    assert_eq!(r.json()[0]["result"].as_str().map(str::len), Some(64));

    // Status: everyone reachable with peers.
    let r = env.run(&["status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    let rows = r.json();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    for row in rows.as_array().unwrap() {
        assert_eq!(row["reachable"], true, "{row}");
        assert!(row["peers"].as_u64().unwrap() >= 1, "{row}");
        assert!(row["version"].as_str().unwrap().contains("timed"), "{row}");
    }

    // Resources: every node measured, memory well inside the plan's limit.
    let r = env.run(&["resources", "--interval", "2", "--json"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    for node in r.json()["nodes"].as_array().unwrap() {
        assert!(node.get("error").is_none(), "{node}");
        let mem = node["values"].as_array().unwrap().iter().find(|v| v["metric"] == "memory").unwrap();
        assert!(mem["value"].as_f64().unwrap() < 500.0, "{node}");
        let bt = node["values"].as_array().unwrap().iter().find(|v| v["metric"] == "block_time").unwrap();
        assert!(bt["value"].as_f64().is_some(), "no block time: {node}");
    }
    let r = env.run(&["resources", "--interval", "1"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    assert!(r.stdout.contains("memory (RSS)") && r.stdout.contains("PASS"), "{}", r.stdout);

    // A clean stability run: nothing to report, log written line by line.
    let log = env.path().join("run.jsonl");
    let r = env.run(&[
        "stability",
        "--hours",
        "0.01",
        "--interval",
        "2",
        "--probe-every",
        "2",
        "--probe-timeout",
        "20",
        "--report",
        log.to_str().unwrap(),
        "--json",
    ]);
    let summary = r.json();
    assert_eq!(r.code, 0, "{}\n{:#}", r.stderr, summary["analysis"]["findings"]);
    assert_eq!(summary["analysis"]["findings"], serde_json::json!([]));
    assert!(summary["analysis"]["ticks"].as_u64().unwrap() >= 15);
    assert!(summary["analysis"]["probes"]["finalized"].as_u64().unwrap() >= 5);
    let records = read_log(&log);
    assert_eq!(records[0]["kind"], "start");
    assert_eq!(records.last().unwrap()["kind"], "end");

    // Report: one HTML page whose plots are well-formed SVG.
    let html_path = env.path().join("report.html");
    let r = env.run(&["report", log.to_str().unwrap(), "-o", html_path.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.screen());
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(svgs_parse(&html) >= 4, "too few plots");
    assert!(html.contains("badge pass"));

    // Fault: a node with another genesis (validator4 of a four-validator devnet) joins the
    // inventory. Its block hashes differ from the first check on.
    let alien_dir = env.path().join("alien");
    let mut alien = std::process::Command::new(timed_path())
        .args(["--validator-id", "validator4", "--devnet-validators", "4", "--block-time", "1"])
        .args(["--port", "0", "--p2p-bind", "127.0.0.1", "--rpc-bind", "127.0.0.1:0", "--data-dir"])
        .arg(&alien_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.path().join("alien.log")).unwrap())
        .spawn()
        .unwrap();
    cleanup.pids.push(alien.id());
    let info = wait_for(Duration::from_secs(20), || timed::node_info::NodeInfo::read(&alien_dir).expect("node.json"))
        .expect("alien node.json");
    let mut text = std::fs::read_to_string(&inv_path).unwrap();
    text.push_str(&format!(
        "\n[[nodes]]\nname = \"alien\"\nhost = \"127.0.0.1\"\np2p = \"{}\"\nrpc = \"{}\"\nvalidator_id = \"validator4\"\n",
        info.p2p, info.rpc
    ));
    let fork_inv = env.path().join("fork.toml");
    std::fs::write(&fork_inv, text).unwrap();
    let fork_log = env.path().join("fork.jsonl");
    let r = env.run(&[
        "stability",
        "--inventory",
        fork_inv.to_str().unwrap(),
        "--hours",
        "0.0015",
        "--interval",
        "1",
        "--probe-every",
        "0",
        "--report",
        fork_log.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 3, "fork exit code: {}", r.screen());
    let summary = r.json();
    let forks = findings(&summary, "fork");
    assert_eq!(forks.len(), 1, "{:#}", summary["analysis"]["findings"]);
    let first_tick = read_log(&fork_log).into_iter().find(|x| x["kind"] == "tick").unwrap();
    assert_eq!(forks[0]["first_seen_ms"], first_tick["t_ms"], "fork not seen at the first interval");
    assert!(forks[0]["hashes"].as_object().unwrap().values().any(|nodes| nodes == &serde_json::json!(["alien"])));
    kill(alien.id(), libc::SIGTERM);
    let _ = alien.wait();

    // Fault: node3 stops. It is reported unreachable and, after two intervals, stalled.
    let node3 = common::inventory_pids(&inv_path)[2];
    kill(node3, libc::SIGTERM);
    assert!(wait_for(Duration::from_secs(15), || (!alive(node3)).then_some(())).is_some(), "node3 did not stop");
    let r = env.run(&[
        "--network",
        "itest",
        "stability",
        "--hours",
        "0.0015",
        "--interval",
        "1",
        "--stall-intervals",
        "2",
        "--probe-every",
        "0",
        "--report",
        env.path().join("stopped.jsonl").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 5, "stall exit code: {}", r.screen());
    let summary = r.json();
    assert_eq!(findings(&summary, "unreachable").len(), 1, "{:#}", summary["analysis"]["findings"]);
    // With three validators the quorum is three, so the others may stall too; node3 must.
    let stalls = findings(&summary, "stall");
    assert!(stalls.iter().any(|s| s["node"] == "node3"), "{:#}", summary["analysis"]["findings"]);
    assert!(findings(&summary, "fork").is_empty());

    // Down: the remaining nodes stop, everything is wiped.
    let down = env.run(&["local", "down", "--wipe", "--network", "itest"]);
    assert_eq!(down.code, 0, "{}", down.screen());
    snapshot(&env, "local_down", &down.stdout);
    assert!(!inv_path.exists());
    assert!(!env.path().join("testnet-data/itest/node1").exists());
}

#[test]
fn a_probe_that_cannot_finalize_is_a_lost_transaction() {
    let _ = timed_path();
    let env = Env::new();
    let _cleanup = Cleanup { env: &env, networks: vec!["lonely".into()], pids: Vec::new() };
    // One validator of three: it accepts transactions but can never gather a quorum.
    let up = env.run(&[
        "local",
        "up",
        "--nodes",
        "1",
        "--devnet-validators",
        "3",
        "--block-time",
        "1",
        "--network",
        "lonely",
    ]);
    assert_eq!(up.code, 0, "{}", up.screen());
    let r = env.run(&[
        "stability",
        "--hours",
        "0.002",
        "--interval",
        "1",
        "--probe-every",
        "2",
        "--probe-timeout",
        "3",
        "--report",
        env.path().join("lonely.jsonl").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 4, "lost-tx exit code: {}", r.screen());
    let summary = r.json();
    let lost = findings(&summary, "lost_tx");
    assert!(!lost.is_empty(), "{:#}", summary["analysis"]["findings"]);
    assert_eq!(lost[0]["from"], "node1");
    assert_eq!(summary["analysis"]["probes"]["finalized"], 0);
}
