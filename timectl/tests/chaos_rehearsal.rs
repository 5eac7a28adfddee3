//! `timectl stability --chaos partition,latency` on four rehearsal hosts (systemd-nspawn
//! containers with their own addresses, deployed by `timectl deploy --provider rehearsal`):
//! a partition (nftables, the hosts' own) cuts one host off and heals, a delay (the userspace
//! netem: NFQUEUE) slows another and is removed, with steady payments going on; the run must
//! end clean with both perturbations and their reconvergence in the log, no probe final on the
//! cut-off side, and nothing of the perturbations left on the hosts. Meanwhile the test times
//! TCP connects to the slowed host's P2P port, which proves the delay is real. Needs root
//! (fails loudly without it); the `Rehearsal` guard destroys the network, also when an
//! assertion fails.

mod common;
#[path = "common/rehearsal.rs"]
mod rehearsal;

use rehearsal::Rehearsal;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// TCP connect times to `addr` every 200 ms until `stop`: (wall-clock ms, connect ms). The
/// SYN-ACK is what the host sends from its P2P port, so it waits out the netem delay.
fn time_connects(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(u64, f64)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let (t, start) = (now_ms(), Instant::now());
            if TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok() {
                out.push((t, start.elapsed().as_secs_f64() * 1000.0));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        out
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn partition_and_latency_on_rehearsal_hosts_end_clean() {
    let net = Rehearsal::new("chs");
    let r = net.timectl(&["deploy", "--provider", "rehearsal", "--nodes", "4", "--block-time", "1", "--yes"]);
    assert_eq!(r.code, 0, "deploy: {}", r.screen());

    let log = net.env.path().join("chaos.jsonl");
    let inventory: toml::Table =
        std::fs::read_to_string(net.env.inventory(&net.network)).unwrap().parse().expect("inventory is TOML");
    let node2 = format!("{}-node-2", net.network);
    let p2p_of_node2: SocketAddr = inventory["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"].as_str() == Some(&node2))
        .and_then(|n| n["p2p"].as_str()?.parse().ok())
        .expect("node2's P2P address in the inventory");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = time_connects(p2p_of_node2, stop.clone());
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
    stop.store(true, Ordering::SeqCst);
    let connects = sampler.join().unwrap();
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
    assert_eq!(chaos[1]["nodes"], serde_json::json!([node2]));
    assert!(chaos[1]["error"].is_null(), "latency not applied: {}", chaos[1]);
    for f in a["findings"].as_array().unwrap() {
        assert_eq!(f["kind"], "expected_lag", "{f:#}");
    }
    let ends = of("chaos_end");
    assert_eq!(ends.len(), 2, "{ends:#?}");
    assert!(ends.iter().all(|e| e["error"].is_null()), "{ends:#?}");
    assert_eq!(of("reconverged").len(), 2, "{:#}", a["perturbations"]);

    // The delay was real: connects to node2's P2P port took about the delay while it was in
    // force, and next to nothing before and after.
    let detail = chaos[1]["detail"].as_str().unwrap();
    let delay: f64 = detail
        .strip_prefix("delay ")
        .and_then(|d| d.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {detail:?}"));
    let (from, to) = (chaos[1]["t_ms"].as_u64().unwrap(), ends[1]["t_ms"].as_u64().unwrap());
    let during: Vec<f64> = connects.iter().filter(|(t, _)| *t > from + 500 && *t + 500 < to).map(|c| c.1).collect();
    let first = chaos[0]["t_ms"].as_u64().unwrap();
    let outside: Vec<f64> = connects.iter().filter(|(t, _)| *t + 500 < first || *t > to + 1000).map(|c| c.1).collect();
    let (slow, fast) = (median(during.clone()), median(outside.clone()));
    eprintln!(
        "connect to node2's P2P port: median {fast:.1} ms without ({} samples), {slow:.1} ms with {detail} ({} samples)",
        outside.len(),
        during.len()
    );
    assert!(slow >= delay * 0.6, "connects took {slow:.1} ms under a {delay} ms delay: {during:?}");
    assert!(fast < delay * 0.3 && fast < 40.0, "connects took {fast:.1} ms without a delay: {outside:?}");
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
    eprintln!("load: {}", a["load"]);
    assert!(a["load"]["accepted"].as_u64().unwrap() > 50, "{:#}", a["load"]);

    // Nothing of the perturbations is left on the hosts; the partition used nftables.
    for i in 1..=4 {
        let host = net.host(i);
        let left = net.sh(
            &host,
            "ip route show proto 213; nft list tables | grep timectl || true; \
             iptables -w -S | grep -e timectl -e NFQUEUE || true",
        );
        assert!(left.trim().is_empty(), "{} still has: {left}", host.name);
    }
    let partition = chaos[0]["detail"].as_str().unwrap();
    assert!(partition.ends_with("(nftables)"), "{partition}");

    // Ctrl-C while a delay is in force (held by the hidden --chaos-no-heal): the run heals on
    // its way out, so no NFQUEUE rule is left behind.
    let log2 = net.env.path().join("interrupted.jsonl");
    let child = held_latency(&net, &log2, true);
    let slowed = first_applied(&log2);
    let name = slowed["nodes"][0].as_str().unwrap().to_string();
    let index: usize = name.rsplit('-').next().unwrap().parse().unwrap();
    let rules = net.sh(&net.host(index), "iptables -w -S OUTPUT");
    assert!(rules.contains("--comment timectl-netem") && rules.contains("--queue-bypass"), "{rules}");
    common::kill(child.0.as_ref().unwrap().id(), libc::SIGINT);
    let out = child.wait();
    let records = read_log(&log2);
    assert!(
        records.iter().any(|r| r["kind"] == "chaos_end" && r["error"].is_null()),
        "no heal after ctrl-c: {records:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(records.iter().any(|r| r["kind"] == "end" && r["reason"] == "interrupted"), "{records:#?}");
    for i in 1..=4 {
        let host = net.host(i);
        let left = net.sh(&host, "iptables -w -S | grep -e timectl -e NFQUEUE || true");
        assert!(left.trim().is_empty(), "{} still has after ctrl-c: {left}", host.name);
    }

    // Killed outright (no heal can run): the rule stays, but with no reader the kernel lets
    // the packets through (--queue-bypass) instead of blackholing the host.
    let log3 = net.env.path().join("killed.jsonl");
    let child = held_latency(&net, &log3, false);
    let slowed = first_applied(&log3);
    let name = slowed["nodes"][0].as_str().unwrap().to_string();
    let index: usize = name.rsplit('-').next().unwrap().parse().unwrap();
    let host = net.host(index);
    common::kill(child.0.as_ref().unwrap().id(), libc::SIGKILL);
    child.wait();
    let rules = net.sh(&host, "iptables -w -S OUTPUT");
    assert!(rules.contains("--comment timectl-netem"), "the rule went away by itself: {rules}");
    let p2p: SocketAddr = inventory["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"].as_str() == Some(&name))
        .and_then(|n| n["p2p"].as_str()?.parse().ok())
        .unwrap();
    let times: Vec<f64> = (0..10)
        .map(|_| {
            let start = Instant::now();
            TcpStream::connect_timeout(&p2p, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{name} blackholed: {e}"));
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    eprintln!("connect to {name} with the rule and no reader: {times:?} ms");
    assert!(median(times.clone()) < 40.0, "{times:?}");
    // What an operator does after a kill (docs/deploy.md): delete the rule by its comment.
    net.sh(&host, "iptables -w -S OUTPUT | grep -- '--comment timectl-netem ' | sed 's/^-A/-D/' | while read -r r; do eval iptables -w $r; done");
    let left = net.sh(&host, "iptables -w -S | grep -e timectl -e NFQUEUE || true");
    assert!(left.trim().is_empty(), "{left}");
}

/// The records of a run log so far (a line being written is skipped).
fn read_log(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `stability --chaos latency` that holds its first delay until the run ends
/// (`--chaos-no-heal`), started in the background. Its output is captured only for a run that
/// will end by itself: the SSH masters of a killed one would keep the pipes open.
fn held_latency(net: &Rehearsal, log: &Path, capture: bool) -> Child {
    let args = ["stability", "--hours", "0.05", "--interval", "1", "--chaos", "latency", "--chaos-every", "5s"];
    let out = || if capture { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    let child = net
        .cmd(&args)
        .args(["--chaos-no-heal", "--json", "--report"])
        .arg(log)
        .stdout(out())
        .stderr(out())
        .spawn()
        .unwrap();
    Child(Some(child))
}

/// The first perturbation of a run that was applied, waited for.
fn first_applied(log: &Path) -> Value {
    common::wait_for(Duration::from_secs(60), || {
        read_log(log).into_iter().find(|r| r["kind"] == "chaos" && r["error"].is_null())
    })
    .unwrap_or_else(|| panic!("no latency applied: {:?}", read_log(log)))
}

/// A `timectl` this test started, killed by its PID if the test fails before waiting for it.
struct Child(Option<std::process::Child>);

impl Child {
    fn wait(mut self) -> std::process::Output {
        let c = self.0.take().unwrap();
        let pid = c.id();
        let waiter = std::thread::spawn(move || c.wait_with_output().unwrap());
        let done = common::wait_for(Duration::from_secs(150), || waiter.is_finished().then_some(()));
        if done.is_none() {
            common::kill(pid, libc::SIGKILL);
        }
        waiter.join().unwrap()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
