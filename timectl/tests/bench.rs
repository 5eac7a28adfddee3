//! `timectl bench --smoke` against a real three-node devnet: the figures must be real, that is
//! agree with what the nodes themselves count. Every process is stopped by the `Cleanup` guard,
//! also when an assertion fails.

mod common;

use common::{filters, timed_path, wait_for, Cleanup, Env};
use std::time::Duration;

fn snapshot(env: &Env, name: &str, text: &str) {
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(env) {
        s.add_filter(&re, with);
    }
    // Measured figures change from run to run; the layout and the words must not.
    s.add_filter(r"\d+(\.\d+)?", "N");
    s.add_filter(r"─+", "─");
    s.add_filter(r"═+", "═");
    s.add_filter(r" {2,}", " ");
    s.bind(|| insta::assert_snapshot!(name, text));
}

/// `timed_tx_finalized_total` of every node, read from its `/metrics` with `timectl rpc`'s
/// own inventory (so the test reads the nodes, not the bench).
fn finalized_counts(env: &Env, network: &str) -> Vec<u64> {
    let inv: toml::Table = std::fs::read_to_string(env.inventory(network)).unwrap().parse().unwrap();
    inv["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let rpc = n["rpc"].as_str().unwrap();
            let body = http_get(rpc, "/metrics");
            body.lines()
                .find_map(|l| l.strip_prefix("timed_tx_finalized_total "))
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
                .unwrap_or(0)
        })
        .collect()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[test]
fn smoke_bench_figures_match_the_nodes() {
    let _ = timed_path();
    let env = Env::new();
    let _cleanup = Cleanup { env: &env, networks: vec!["bench".into()], pids: Vec::new() };
    let up = env.run(&["local", "up", "--nodes", "3", "--block-time", "1", "--network", "bench"]);
    assert_eq!(up.code, 0, "{}", up.screen());
    let ready = wait_for(Duration::from_secs(40), || {
        let r = env.run(&["rpc", "getblockcount", "--all", "--json", "--network", "bench"]);
        let v = r.json();
        v.as_array().unwrap().iter().all(|row| row["result"].as_u64().is_some_and(|h| h >= 2)).then_some(())
    });
    assert!(ready.is_some(), "network never reached height 2");

    // The table a person sees.
    let human = env.run(&["bench", "--smoke", "--network", "bench"]);
    assert_eq!(human.code, 0, "{}", human.screen());
    snapshot(&env, "bench_smoke_table", &human.stdout);

    // The JSON a script reads, checked against the nodes' own counters around the run.
    let before = finalized_counts(&env, "bench");
    let r = env.run(&["bench", "--smoke", "--json", "--network", "bench"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    let after = finalized_counts(&env, "bench");
    let v = r.json();
    let step = &v["steps"][0];
    let sent = step["sent"].as_u64().unwrap();
    let finalized = step["finalized"].as_u64().unwrap();
    assert_eq!(sent, 40, "20 tx/s for 2 s: {v}");
    assert!(finalized > 0, "nothing final: {v}");
    assert_eq!(finalized, sent, "a smoke run on a quiet devnet finalizes everything: {v}");
    assert_eq!(step["never_final"], 0);
    assert!(step["p50_s"].as_f64().unwrap() > 0.0 && step["p99_s"].as_f64().unwrap() < 30.0, "{v}");
    let funding = v["funding_txs"].as_u64().unwrap();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        // Every node makes every transaction final itself: the bench's payments plus its
        // funding transactions, nothing more and nothing less.
        assert_eq!(
            a - b,
            finalized + funding,
            "node {} counted {} finalized, bench {finalized} + {funding}",
            i + 1,
            a - b
        );
    }
    // The per-node figures the bench read around the step agree with the step itself (a
    // funding transaction may still turn final on a node other than its observer then).
    for n in step["nodes"].as_array().unwrap() {
        let f = n["finalized"].as_u64().unwrap();
        assert!(f >= finalized && f <= finalized + funding, "{n}");
        assert!(n["rss_mb"].as_f64().unwrap() > 1.0 && n["cpu_pct"].as_f64().unwrap() > 0.0, "{n}");
    }
    let rpc = v["rpc"].as_array().unwrap();
    assert_eq!(rpc.len(), 2);
    assert!(rpc.iter().all(|x| x["requests"].as_u64().unwrap() > 0 && x["errors"] == 0), "{v}");
    assert!(v["slots"]["blocks"].as_u64().unwrap() >= 2, "{v}");
}

#[test]
fn bench_needs_a_reachable_network() {
    let env = Env::new();
    let inv = env.inventory("gone");
    std::fs::write(
        &inv,
        "network = \"gone\"\nprovider = \"local\"\n\n[[nodes]]\nname = \"node1\"\nhost = \"127.0.0.1\"\np2p = \"127.0.0.1:9\"\nrpc = \"127.0.0.1:9\"\nvalidator_id = \"validator1\"\n",
    )
    .unwrap();
    let r = env.run(&["bench", "--smoke", "--network", "gone", "--timeout", "2"]);
    assert_eq!(r.code, 1, "{}", r.screen());
    assert!(r.stdout.is_empty(), "no table on failure: {}", r.stdout);
    snapshot(&env, "bench_unreachable", &r.screen());

    let help = env.run(&["bench", "--help"]);
    assert_eq!(help.code, 0);
    snapshot(&env, "bench_help", &help.stdout);
}
