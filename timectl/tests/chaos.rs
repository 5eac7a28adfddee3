//! `timectl stability --chaos` against real `timed` processes on 127.0.0.1: a four-node network
//! (one node may fail) under steady payments (`--load`) is killed and restarted while it is
//! watched and must end clean, with every
//! perturbation and its reconvergence in the log; a run that halts it on purpose must name the
//! lost quorum, the perturbation that never healed and the probe that never finalized, each
//! within one interval; bad input is refused before anything is written. Every process is
//! stopped by the `Cleanup` guard, also when an assertion fails.

mod common;

use common::{filters, timed_path, Cleanup, Env};
use serde_json::Value;
use std::path::Path;

fn snapshot(env: &Env, name: &str, text: &str) {
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(env) {
        s.add_filter(&re, with);
    }
    s.add_filter(r"─+", "─");
    s.add_filter(r"═+", "═");
    s.add_filter(r" {2,}", " ");
    s.bind(|| insta::assert_snapshot!(name, text));
}

fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

fn findings<'a>(summary: &'a Value, kind: &str) -> Vec<&'a Value> {
    summary["analysis"]["findings"].as_array().expect("findings").iter().filter(|f| f["kind"] == kind).collect()
}

fn up(env: &Env, network: &str, nodes: &str) {
    let r = env.run(&["local", "up", "--nodes", nodes, "--block-time", "1", "--network", network]);
    assert_eq!(r.code, 0, "{}", r.screen());
}

#[test]
fn kill_and_restart_on_a_local_network_end_clean() {
    let _ = timed_path();
    let env = Env::new();
    let _cleanup = Cleanup { env: &env, networks: vec!["chaos".into()], pids: Vec::new() };
    up(&env, "chaos", "4");
    let inv = env.inventory("chaos");
    let pids_before = common::inventory_pids(&inv);

    let log = env.path().join("chaos.jsonl");
    let r = env.run(&[
        "stability",
        "--hours",
        "0.035",
        "--interval",
        "1",
        "--probe-every",
        "3",
        "--probe-timeout",
        "40",
        "--stall-intervals",
        "8",
        "--chaos",
        "kill,restart",
        "--chaos-every",
        "20s",
        "--chaos-seed",
        "7",
        "--load",
        "4",
        "--report",
        log.to_str().unwrap(),
        "--json",
    ]);
    let summary = r.json();
    let a = &summary["analysis"];
    assert_eq!(r.code, 0, "{}\n{:#}", r.stderr, a["findings"]);
    // Nothing but expected lag of the perturbed nodes.
    for f in a["findings"].as_array().unwrap() {
        assert_eq!(f["kind"], "expected_lag", "{f:#}");
    }
    let records = read_log(&log);
    let starts = of_kind(&records, "chaos");
    let ends = of_kind(&records, "chaos_end");
    let reconverged = of_kind(&records, "reconverged");
    assert!(starts.len() >= 2, "too few perturbations: {starts:#?}");
    assert_eq!(starts.len(), ends.len(), "every perturbation healed");
    for (s, e) in starts.iter().zip(&ends) {
        assert_eq!(s["id"], e["id"]);
        assert!(s["error"].is_null() && e["error"].is_null(), "{s} {e}");
        assert!(["kill", "restart"].contains(&s["action"].as_str().unwrap()), "{s}");
        assert_eq!(s["nodes"].as_array().unwrap().len(), 1, "one of four may fail: {s}");
        assert!(e["t_ms"].as_u64() > s["t_ms"].as_u64());
    }
    // Every heal reconverged within the bound, measured in the log and in the summary.
    assert_eq!(reconverged.len(), starts.len(), "{reconverged:#?}");
    for x in &reconverged {
        assert!(x["after_ms"].as_u64().unwrap() <= 30_000, "{x}");
    }
    assert!(a["reconverge_max_ms"].as_u64().is_some(), "{a:#}");
    assert!(a["probes"]["finalized"].as_u64().unwrap() >= 5, "{:#}", a["probes"]);
    assert_eq!(a["probes"]["lost"], 0);
    // The steady load went on throughout (4 a second for about two minutes; the killed
    // node's share is refused while it is down).
    let accepted = a["load"]["accepted"].as_u64().unwrap();
    assert!(accepted >= 200, "{:#}", a["load"]);
    assert!(a["load"]["refused"].as_u64().unwrap() < accepted / 2, "{:#}", a["load"]);
    // Killed nodes came back under new PIDs, recorded in the inventory for `local down`.
    let pids_after = common::inventory_pids(&inv);
    assert_eq!(pids_after.len(), 4);
    assert_ne!(pids_before, pids_after);
    assert!(pids_after.iter().all(|&p| common::alive(p)), "{pids_after:?}");

    // The report draws the perturbations as bands on every plot.
    let html_path = env.path().join("chaos.html");
    let rep = env.run(&["report", log.to_str().unwrap(), "-o", html_path.to_str().unwrap()]);
    assert_eq!(rep.code, 0, "{}", rep.screen());
    let html = std::fs::read_to_string(&html_path).unwrap();
    let plots = common::svgs_parse(&html);
    assert!(html.matches("class=\"band\"").count() >= plots * starts.len(), "bands missing");

    let down = env.run(&["local", "down", "--network", "chaos"]);
    assert_eq!(down.code, 0, "{}", down.screen());
    assert!(!pids_after.iter().any(|&p| common::alive(p)), "local down missed a restarted node");
}

#[test]
fn a_run_that_breaks_the_network_on_purpose_is_reported_within_one_interval() {
    let _ = timed_path();
    let env = Env::new();
    let _cleanup = Cleanup { env: &env, networks: vec!["broken".into()], pids: Vec::new() };
    up(&env, "broken", "4");
    let log = env.path().join("broken.jsonl");
    // Seed 1 kills two of the four nodes first (pinned by a unit test of the schedule) and
    // --chaos-no-heal keeps them down: the quorum of three is gone.
    let r = env.run(&[
        "stability",
        "--hours",
        "0.013",
        "--interval",
        "1",
        "--probe-every",
        "2",
        "--probe-timeout",
        "5",
        "--reconverge",
        "10",
        "--chaos",
        "kill",
        "--chaos-every",
        "10s",
        "--chaos-seed",
        "1",
        "--chaos-max-faulty",
        "2",
        "--chaos-no-heal",
        "--report",
        log.to_str().unwrap(),
        "--json",
    ]);
    let summary = r.json();
    let a = &summary["analysis"];
    assert_ne!(r.code, 0, "{:#}", a["findings"]);
    assert!(findings(&summary, "fork").is_empty(), "a halt is not a fork: {:#}", a["findings"]);
    let records = read_log(&log);
    let chaos = of_kind(&records, "chaos");
    assert_eq!(chaos.len(), 1, "{chaos:#?}");
    assert_eq!(chaos[0]["nodes"], serde_json::json!(["node3", "node4"]));
    let t_chaos = chaos[0]["t_ms"].as_u64().unwrap();
    let tick_gap = 2_500; // one interval, plus a slow sample on a busy machine

    let q = findings(&summary, "quorum_lost");
    assert_eq!(q.len(), 1, "{:#}", a["findings"]);
    let since = q[0]["since_ms"].as_u64().unwrap();
    assert!(since >= t_chaos && since - t_chaos <= tick_gap, "quorum loss seen {} ms after the kill", since - t_chaos);

    let nr = findings(&summary, "not_reconverged");
    assert_eq!(nr.len(), 1, "{:#}", a["findings"]);
    assert!(nr[0]["healed_ms"].is_null(), "{}", nr[0]);
    let deadline = chaos[0]["planned_end_ms"].as_u64().unwrap() + 10_000;
    let seen = nr[0]["t_ms"].as_u64().unwrap();
    assert!(seen > deadline && seen - deadline <= tick_gap, "never-healed seen {} ms after its bound", seen - deadline);

    let lost = findings(&summary, "lost_tx");
    assert!(!lost.is_empty(), "{:#}", a["findings"]);
    for l in &lost {
        let id = l["id"].as_u64().unwrap();
        let result = records.iter().find(|r| r["kind"] == "probe_result" && r["id"] == id).expect("result logged");
        let late = result["t_ms"].as_u64().unwrap().saturating_sub(l["sent_ms"].as_u64().unwrap() + 5_000);
        assert!(late <= tick_gap, "probe {id} reported lost {late} ms after its timeout");
    }
    // The nodes kept down were started again when the run ended, and recorded.
    let ends = of_kind(&records, "chaos_end");
    assert_eq!(ends.len(), 1);
    assert!(ends[0]["error"].is_null(), "{}", ends[0]);
    assert!(common::inventory_pids(&env.inventory("broken")).iter().all(|&p| common::alive(p)));

    // The same log read back by the report command names the same findings.
    let html_path = env.path().join("broken.html");
    let rep = env.run(&["report", log.to_str().unwrap(), "-o", html_path.to_str().unwrap()]);
    assert_eq!(rep.code, 0, "{}", rep.screen());
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.contains("quorum lost") && html.contains("never healed"), "report lacks the findings");
}

#[test]
fn chaos_input_is_checked_before_anything_is_written() {
    let env = Env::new();
    // Inventories only: the checks come before any node is asked anything.
    let write_inv = |name: &str, n: u32| {
        let mut text = format!("network = \"{name}\"\nprovider = \"local\"\n");
        for i in 1..=n {
            text.push_str(&format!(
                "\n[[nodes]]\nname = \"node{i}\"\nhost = \"127.0.0.1\"\np2p = \"127.0.0.1:1\"\nrpc = \"127.0.0.1:1\"\nvalidator_id = \"validator{i}\"\n"
            ));
        }
        std::fs::write(env.inventory(name), text).unwrap();
    };
    write_inv("four", 4);
    write_inv("three", 3);
    let log = env.path().join("x.jsonl");
    let cases: [(&str, Vec<&str>); 5] = [
        ("chaos_partition_on_local", vec!["--network", "four", "stability", "--chaos", "kill,partition"]),
        ("chaos_three_nodes", vec!["--network", "three", "stability", "--chaos", "kill"]),
        ("chaos_unknown_action", vec!["--network", "four", "stability", "--chaos", "flood"]),
        ("chaos_bad_every", vec!["--network", "four", "stability", "--chaos", "kill", "--chaos-every", "soon"]),
        ("chaos_not_running", vec!["--network", "four", "stability", "--chaos", "kill,restart"]),
    ];
    for (name, mut args) in cases {
        args.extend(["--report", log.to_str().unwrap()]);
        let r = env.run(&args);
        assert_ne!(r.code, 0, "{name}: {}", r.screen());
        assert!(!log.exists(), "{name}: a run log was created for a refused run");
        snapshot(&env, name, &r.screen());
    }
}

/// A run log written by hand: a four-node run with one kill that reconverged, still going.
fn synthetic_log(path: &Path) {
    let t0: u64 = 1_700_000_000_000;
    let mut lines = vec![serde_json::json!({
        "kind": "start", "version": 1, "started_ms": t0, "hours": 1.0, "interval_secs": 10.0,
        "stall_intervals": 3, "probe_every": 3, "probe_timeout_secs": 60.0, "network": "soak",
        "inventory": "inventories/soak.toml", "nodes": ["n1", "n2", "n3", "n4"], "reconverge_secs": 30.0,
        "chaos": {"actions": ["kill"], "every_secs": 60.0, "seed": 7, "max_faulty": 1},
        "unit": "timectl-stability-soak-test"
    })];
    for s in 0..8u64 {
        let down = (2..4).contains(&s);
        let nodes: Vec<Value> = (1..=4)
            .map(|i| {
                if i == 4 && down {
                    serde_json::json!({"name": "n4", "reachable": false, "error": "unreachable: Connection refused"})
                } else {
                    serde_json::json!({"name": format!("n{i}"), "reachable": true, "height": s + 1, "latency_ms": 2})
                }
            })
            .collect();
        let hashes: serde_json::Map<String, Value> =
            (1..=4).filter(|i| !(*i == 4 && down)).map(|i| (format!("n{i}"), Value::from("ab"))).collect();
        lines.push(serde_json::json!({"kind": "tick", "seq": s, "t_ms": t0 + s * 10_000, "nodes": nodes,
            "checks": [{"height": s + 1, "hashes": hashes}]}));
        if s == 1 {
            lines.push(serde_json::json!({"kind": "chaos", "id": 0, "t_ms": t0 + 15_000, "action": "kill",
                "nodes": ["n4"], "detail": "kill -9 n4", "planned_end_ms": t0 + 35_000, "faulty": true}));
        }
        if s == 3 {
            lines.push(serde_json::json!({"kind": "chaos_end", "id": 0, "t_ms": t0 + 35_000}));
        }
    }
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

#[test]
fn status_shows_progress_and_findings_so_far() {
    let env = Env::new();
    let log = env.path().join("soak.jsonl");
    synthetic_log(&log);
    let r = env.run(&["stability", "--status", log.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.screen());
    assert!(r.stdout.contains("unit:    timectl-stability-soak-test"), "{}", r.stdout);
    assert!(r.stdout.contains("1 (kill 1), 1 reconverged"), "{}", r.stdout);
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(&env) {
        s.add_filter(&re, with);
    }
    // Time since the last sample, and the unit's state (systemd present or not).
    s.add_filter(r"last sample \S+ ago", "last sample [AGO] ago");
    s.add_filter(r"state:   .*", "state:   [UNIT STATE]");
    s.add_filter(r"─+", "─");
    s.add_filter(r"═+", "═");
    s.add_filter(r" {2,}", " ");
    s.bind(|| insta::assert_snapshot!("status_synthetic", r.screen()));

    let j = env.run(&["stability", "--status", log.to_str().unwrap(), "--json"]).json();
    assert_eq!(j["unit"], "timectl-stability-soak-test");
    assert_eq!(j["analysis"]["perturbations"][0]["reconverge_ms"], 5_000);
    assert_eq!(j["passed_so_far"], true);

    // A log that is not one is refused with its line.
    let bad = env.path().join("bad.jsonl");
    std::fs::write(&bad, "hello\n").unwrap();
    let r = env.run(&["stability", "--status", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("bad.jsonl:1: not a run-log record"), "{}", r.stderr);
}

/// Stops a transient unit the test started, by its name, also when the test fails.
struct StopUnit(String);

impl Drop for StopUnit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("systemctl").args(["stop", &self.0]).output();
    }
}

#[test]
fn detach_runs_as_a_transient_unit_or_says_why_not() {
    let env = Env::new();
    if !Path::new("/run/systemd/system").is_dir() {
        // No systemd on this machine: refused plainly, nothing written.
        let log = env.path().join("d.jsonl");
        let r = env.run(&["stability", "--detach", "--hours", "0.01", "--report", log.to_str().unwrap()]);
        assert_eq!(r.code, 1, "{}", r.screen());
        assert!(!log.exists());
        snapshot(&env, "detach_without_systemd", &r.screen());
        return;
    }
    let _ = timed_path();
    let _cleanup = Cleanup { env: &env, networks: vec!["bg".into()], pids: Vec::new() };
    up(&env, "bg", "4");
    let log = env.path().join("bg.jsonl");
    let r = env.run(&[
        "stability",
        "--detach",
        "--hours",
        "0.01",
        "--interval",
        "1",
        "--probe-every",
        "0",
        "--report",
        log.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.screen());
    let unit = r.json()["unit"].as_str().unwrap().to_string();
    let _stop = StopUnit(unit.clone());
    // The detached run samples on its own, and --status sees it running.
    let ticks = common::wait_for(std::time::Duration::from_secs(30), || {
        let n = std::fs::read_to_string(&log).ok()?.lines().filter(|l| l.contains("\"kind\":\"tick\"")).count();
        (n >= 3).then_some(n)
    });
    assert!(ticks.is_some(), "the detached run wrote no samples");
    let st = env.run(&["stability", "--status", log.to_str().unwrap(), "--json"]).json();
    assert_eq!(st["unit"], unit.as_str());
    assert_eq!(st["unit_state"]["ActiveState"], "active", "{st:#}");
    // It ends by itself with an end record.
    let ended = common::wait_for(std::time::Duration::from_secs(90), || {
        std::fs::read_to_string(&log).ok()?.contains("\"kind\":\"end\"").then_some(())
    });
    assert!(ended.is_some(), "the detached run did not finish");
}
