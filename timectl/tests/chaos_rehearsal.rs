//! `timectl stability --chaos partition,latency` on four rehearsal hosts (systemd-nspawn
//! containers with their own addresses, deployed by `timectl deploy --provider rehearsal`):
//! a partition cuts one host off and heals, a netem delay slows another and is removed, with
//! steady payments going on; the run must end clean with both perturbations and their
//! reconvergence in the log, no probe final on the cut-off side, and nothing of the
//! perturbations left on the hosts. Needs root (fails loudly without it); the `Rehearsal` guard
//! destroys the network, also when an assertion fails.

mod common;
#[path = "common/rehearsal.rs"]
mod rehearsal;

use rehearsal::Rehearsal;
use serde_json::Value;

#[test]
fn partition_and_latency_on_rehearsal_hosts_end_clean() {
    let net = Rehearsal::new("chs");
    let r = net.timectl(&["deploy", "--provider", "rehearsal", "--nodes", "4", "--block-time", "1", "--yes"]);
    assert_eq!(r.code, 0, "deploy: {}", r.screen());

    let log = net.env.path().join("chaos.jsonl");
    // Seed 4 on four nodes: a partition of node4 first, then latency on node2 (pinned by a unit
    // test of the schedule).
    let r = net.timectl(&[
        "stability",
        "--hours",
        "0.03",
        "--interval",
        "1",
        "--probe-every",
        "3",
        "--probe-timeout",
        "40",
        "--stall-intervals",
        "8",
        "--chaos",
        "partition,latency",
        "--chaos-every",
        "25s",
        "--chaos-seed",
        "4",
        "--load",
        "2",
        "--report",
        log.to_str().unwrap(),
        "--json",
    ]);
    let summary: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.screen()));
    let a = &summary["analysis"];
    let records: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |kind: &str| records.iter().filter(|r| r["kind"] == kind).cloned().collect::<Vec<_>>();
    let chaos = of("chaos");
    eprintln!("perturbations: {chaos:#?}\nfindings: {:#}", a["findings"]);
    assert_eq!(r.code, 0, "{}\n{:#}", r.stderr, a["findings"]);
    assert_eq!(chaos.len(), 2, "{chaos:#?}");
    let node4 = format!("{}-node-4", net.network);
    assert_eq!(chaos[0]["action"], "partition");
    assert_eq!(chaos[0]["nodes"], serde_json::json!([node4]));
    assert!(chaos[0]["error"].is_null(), "partition not applied: {}", chaos[0]);
    assert_eq!(chaos[1]["action"], "latency");
    // Some kernels (this project's VMs among them) are built without netem: then the latency
    // step must be reported as not applied, naming the cause, and change nothing.
    let netem_missing = chaos[1]["error"].as_str().is_some_and(|e| e.contains("sch_netem"));
    if netem_missing {
        eprintln!("this kernel has no tc netem: latency was refused and reported, not exercised");
    } else {
        assert!(chaos[1]["error"].is_null(), "latency not applied: {}", chaos[1]);
    }
    for f in a["findings"].as_array().unwrap() {
        let allowed = f["kind"] == "expected_lag" || (netem_missing && f["kind"] == "chaos_failed");
        assert!(allowed, "{f:#}");
    }
    let applied = if netem_missing { 1 } else { 2 };
    let ends = of("chaos_end");
    assert_eq!(ends.len(), applied, "{ends:#?}");
    assert!(ends.iter().all(|e| e["error"].is_null()), "{ends:#?}");
    assert_eq!(of("reconverged").len(), applied, "{:#}", a["perturbations"]);
    // A probe was sent on the cut-off side and did not finalize there before the heal.
    assert!(records.iter().any(|r| r["kind"] == "probe_sent" && r["minority_of"] == 0), "no minority probe");
    assert_eq!(a["probes"]["minority"], 1);
    // Ordinary probes kept to the majority side while the partition was in force.
    let (cut, healed) = (chaos[0]["t_ms"].as_u64().unwrap(), ends[0]["t_ms"].as_u64().unwrap());
    for p in of("probe_sent") {
        let t = p["t_ms"].as_u64().unwrap();
        if p["minority_of"].is_null() && t > cut && t < healed {
            assert!(p["from"] != node4.as_str() && p["checker"] != node4.as_str(), "probe on the cut-off side: {p}");
        }
    }
    assert!(a["load"]["accepted"].as_u64().unwrap() > 50, "{:#}", a["load"]);

    // Nothing of the perturbations is left on the hosts.
    for i in 1..=4 {
        let host = net.host(i);
        let left = net.sh(&host, "ip route show proto 213; tc qdisc show | grep netem || true");
        assert!(left.trim().is_empty(), "{} still has: {left}", host.name);
    }
}
