//! Issue 9, P2P side: 1,000 idle, reconnecting connections to a validator used to keep a
//! restarted validator out for 55 s and stop a three-validator chain, with a WARN line per
//! refused connection. Now the restarted validator rejoins within seconds during the flood,
//! blocks keep coming, and the log stays short.

mod common;
mod hardening;

use common::*;
use hardening::raise_nofile;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timed::api::TimeRpcClient;
use tokio::io::AsyncReadExt;

const FLOOD: usize = 1000;

fn validator(dir: &std::path::Path, i: usize, peers: &[&str]) -> Node {
    let id = format!("validator{i}");
    let peers = peers.join(",");
    let mut args = vec!["--devnet-validators", "3", "--block-time", "1"];
    if !peers.is_empty() {
        args.extend(["--peers", &peers]);
    }
    spawn_in(&dir.join(&id), &id, &args)
}

async fn peers(n: &Node) -> usize {
    n.client().get_peer_info().await.map(|p| p.len()).unwrap_or(0)
}

/// Stops the flood tasks when dropped, also when an assertion fails.
struct Flood {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
    connects: Arc<AtomicU64>,
}

impl Flood {
    /// `n` sockets that connect, send nothing, and reconnect shortly after being closed.
    fn start(target: &str, n: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let (target, stop, connects) = (target.to_string(), stop.clone(), connects.clone());
            tasks.spawn(async move {
                // Spread the first wave over half a second.
                tokio::time::sleep(Duration::from_micros(500 * i as u64)).await;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = tokio::net::TcpStream::connect(&target).await {
                        connects.fetch_add(1, Ordering::Relaxed);
                        let mut buf = [0u8; 4096];
                        // Idle: read (and discard) until the node closes the socket.
                        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                            if n == 0 || stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        Flood { stop, tasks, connects }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_validator_rejoins_during_a_flood_of_idle_connections() {
    raise_nofile(8192);
    let tmp = tempfile::tempdir().unwrap();
    let v1 = validator(tmp.path(), 1, &[]);
    let v2 = validator(tmp.path(), 2, &[&v1.p2p]);
    let mut v3 = validator(tmp.path(), 3, &[&v1.p2p, &v2.p2p]);
    for n in [&v1, &v2, &v3] {
        wait_height(n, 3, 60).await;
    }
    eventually(30, "a full mesh", || async { (peers(&v1).await == 2 && peers(&v3).await == 2).then_some(()) }).await;
    let log_before = v1.log().lines().count();

    let flood = Flood::start(&v1.p2p, FLOOD);
    let h_flood_start = height(&v1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // With one-second slots the flooded chain keeps its pace.
    let h_flooded = height(&v1).await;

    // Restart validator3 while validator1 is flooded.
    v3.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let target = height(&v1).await;
    let t0 = Instant::now();
    v3.restart();
    let rejoined = eventually(60, "validator3 to rejoin during the flood", || async {
        let p = peers(&v3).await;
        let h = v3.client().get_block_count().await.unwrap_or(0);
        (p == 2 && h >= target).then(|| t0.elapsed())
    })
    .await;
    // And the chain keeps producing with everyone in it (with three validators every one is
    // needed for a quorum, so blocks pause while validator3 is down, flood or not).
    let h_rejoin = height(&v1).await;
    wait_height(&v1, h_rejoin + 3, 30).await;
    wait_height(&v3, h_rejoin + 3, 30).await;
    let h_end = height(&v1).await;
    let flood_secs = 4.0 + 2.0 + t0.elapsed().as_secs_f64();
    let connects = flood.connects.load(Ordering::Relaxed);
    drop(flood);

    let log = v1.log();
    let flood_lines: Vec<&str> = log.lines().skip(log_before).filter(|l| l.contains("WARN")).collect();
    println!(
        "flood of {FLOOD} idle sockets ({connects} connects in {flood_secs:.0} s): validator3 rejoined in {:.1} s; \
         validator1 height {h_flood_start} -> {h_flooded} in the first 4 s, {h_end} at the end; {} WARN lines on validator1 during the flood",
        rejoined.as_secs_f64(),
        flood_lines.len()
    );
    assert!(rejoined < Duration::from_secs(6), "rejoin took {rejoined:?} (12 to 55 s before the fix)");
    assert!(h_flooded >= h_flood_start + 2, "blocks kept coming under the flood: {h_flood_start} -> {h_flooded}");
    assert!(connects > FLOOD as u64, "the flood did reconnect ({connects} connects)");
    // One line per 10 s per kind of event, each with its count, instead of one per socket.
    assert!(flood_lines.len() < 40, "{} WARN lines:\n{}", flood_lines.len(), flood_lines.join("\n"));
    assert!(flood_lines.iter().any(|l| l.contains("events=")), "repeated lines carry a count");
}
