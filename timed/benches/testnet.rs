//! Live measurement of the real `timed` binary: five validators on 127.0.0.1, a steady load of
//! `sendtoaddress`, and the plan's "Key Metrics to Monitor" measured from outside: block
//! interval, client-side finality latency, RSS, CPU, P2P bandwidth and RPC latency.
//!
//!     cargo bench -p timed --bench testnet
//!
//! Environment: `BENCH_BLOCK_TIME` (10 s), `BENCH_SECONDS` of load (120), `BENCH_TPS` (5),
//! `BENCH_NODES` (5), `BENCH_RUST_LOG` for the nodes (info). Nodes log to
//! `<tempdir>/validatorN/timed.log`; `BENCH_KEEP=1` keeps the temp dir for reading them.
//! Every node started here is killed when the bench ends, panics or gets Ctrl-C.

use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timed::api::{BlockRef, BlockResult, TimeRpcClient};
use timed::metrics_names::{P2P_BYTES_RECEIVED, P2P_BYTES_SENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------- processes ----------

struct Node {
    id: String,
    dir: PathBuf,
    child: Option<Child>,
    pid: u32,
    rpc: String,
    p2p: String,
    client: HttpClient,
}

impl Node {
    fn spawn(bin: &str, dir: &Path, i: usize, n: usize, block_time: u64, peers: Option<&str>) -> Node {
        let id = format!("validator{i}");
        let dir = dir.join(&id);
        std::fs::create_dir_all(&dir).expect("data dir");
        let log = std::fs::File::create(dir.join("timed.log")).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args(["--validator-id", &id, "--devnet-validators", &n.to_string()])
            .args(["--block-time", &block_time.to_string(), "--port", "0", "--rpc-bind", "127.0.0.1:0"])
            .args(["--p2p-bind", "127.0.0.1", "--data-dir"])
            .arg(&dir)
            .env("RUST_LOG", env_or("BENCH_RUST_LOG", "info".to_string()))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(p) = peers {
            cmd.args(["--peers", p]);
        }
        let mut child = cmd.spawn().expect("spawn timed");
        let pid = child.id();
        // node.json appears once P2P and RPC listen; it names the ports port 0 picked.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (rpc, p2p) = loop {
            if let Some(info) = timed::node_info::NodeInfo::read(&dir).expect("node.json") {
                break (info.rpc.to_string(), info.p2p.to_string());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{id} exited with {status}; see {}", dir.join("timed.log").display());
            }
            assert!(Instant::now() < deadline, "{id} did not write node.json within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let client = HttpClientBuilder::default()
            .request_timeout(Duration::from_secs(120))
            .build(format!("http://{rpc}"))
            .expect("rpc client");
        Node { id, dir, child: Some(child), pid, rpc, p2p, client }
    }
}

impl Drop for Node {
    // Runs on normal exit and while unwinding from a panic, so no node outlives the bench.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------- measurements ----------

/// Client-side latency of every JSON-RPC call, by method.
#[derive(Default)]
struct RpcLog(Mutex<BTreeMap<&'static str, Vec<f64>>>);

impl RpcLog {
    /// Times one call; the figure includes the client's encoding and the loopback round trip.
    async fn call<T, F: std::future::Future<Output = T>>(&self, method: &'static str, f: F) -> T {
        let t = Instant::now();
        let v = f.await;
        self.0.lock().unwrap().entry(method).or_default().push(t.elapsed().as_secs_f64() * 1000.0);
        v
    }
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v
}

/// One reading of a node's process and P2P counters.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    rss_kb: u64,
    cpu_ticks: u64,
    p2p_bytes: u64,
}

/// utime + stime in clock ticks; fields after the `)` that ends the command name.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Ticks per second for /proc/PID/stat; `getconf` avoids a libc dependency.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Sum of the P2P byte counters in the node's Prometheus text (sent + received). A bare
/// HTTP/1.1 GET keeps the bench free of an HTTP client dependency.
async fn p2p_bytes(rpc: &str) -> Option<u64> {
    let mut s = tokio::net::TcpStream::connect(rpc).await.ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {rpc}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body)).await.ok()?.ok()?;
    let mut total = 0u64;
    for line in body.lines() {
        for name in [P2P_BYTES_SENT, P2P_BYTES_RECEIVED] {
            if line.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')) {
                total += line.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            }
        }
    }
    Some(total)
}

/// What the sampler needs of a node, owned so it can run in its own task.
#[derive(Clone)]
struct Probe {
    pid: u32,
    rpc: String,
    client: HttpClient,
}

async fn sample(p: &Probe, rpc_log: &RpcLog) -> Option<Sample> {
    let p2p = rpc_log.call("GET /metrics", p2p_bytes(&p.rpc)).await?;
    Some(Sample {
        at: Instant::now(),
        rss_kb: status_kb(p.pid, "VmRSS:")?,
        cpu_ticks: cpu_ticks(p.pid)?,
        p2p_bytes: p2p,
    })
}

/// Samples every node once a second until `stop` flips, plus once more at the end. A cheap
/// getblockcount per node per sample measures read latency under the same load as sends.
async fn sampler(
    probes: Vec<Probe>,
    rpc_log: Arc<RpcLog>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Vec<Sample>> {
    let mut series: Vec<Vec<Sample>> = vec![Vec::new(); probes.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = *stop.borrow();
        tick.tick().await;
        for (k, p) in probes.iter().enumerate() {
            if let Some(s) = sample(p, &rpc_log).await {
                series[k].push(s);
            }
            let _ = rpc_log.call("getblockcount", p.client.get_block_count()).await;
        }
        if last {
            return series;
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What happened to one transaction of the load.
#[derive(Debug)]
enum Outcome {
    Final { send_ms: f64, final_ms: f64 },
    Rejected,
    TimedOut,
    SendFailed(String),
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(secs: u64, what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ratio wording for the margin column: how far under (or over) a limit a figure is.
fn margin(measured: f64, limit: f64, lower_is_better: bool) -> String {
    if !measured.is_finite() || measured <= 0.0 {
        return "-".into();
    }
    let r = if lower_is_better { limit / measured } else { measured / limit };
    if r >= 1.0 {
        format!("{r:.1}× under target")
    } else {
        format!("{:.1}× over target", 1.0 / r)
    }
}

fn verdict(measured: f64, target: f64, acceptable: f64) -> &'static str {
    if measured.is_nan() {
        "n/a (no data)"
    } else if measured <= target {
        "meets target"
    } else if measured <= acceptable {
        "acceptable"
    } else {
        "FAILS"
    }
}

#[tokio::main]
async fn main() {
    let block_time: u64 = env_or("BENCH_BLOCK_TIME", 10);
    let seconds: u64 = env_or("BENCH_SECONDS", 120);
    let tps: f64 = env_or("BENCH_TPS", 5.0);
    let n: usize = env_or("BENCH_NODES", 5);
    assert!(n >= 2, "need at least two nodes to send between");
    // Cargo builds the binary with the bench profile (release) before running a bench.
    let bin = env!("CARGO_BIN_EXE_timed");
    assert!(Path::new(bin).exists(), "{bin} is missing");
    let tmp = tempfile::tempdir().expect("temp dir");
    println!("timed live testnet benchmark");
    println!("binary: {bin}");
    println!(
        "nodes: {n}, block time {block_time} s, load {tps} tx/s for {seconds} s, data in {}",
        tmp.path().display()
    );
    println!("machine: {} cores, load average at start {}", num_cpus(), loadavg());

    let outcome = tokio::select! {
        r = run(bin, tmp.path(), n, block_time, seconds, tps) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    if std::env::var("BENCH_KEEP").is_ok() {
        println!("kept {}", tmp.keep().display());
    }
    if let Err(e) = outcome {
        panic!("benchmark failed: {e}");
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

async fn run(bin: &str, dir: &Path, n: usize, block_time: u64, seconds: u64, tps: f64) -> Result<(), String> {
    let rpc_log = Arc::new(RpcLog::default());
    // ---- start: validator1 first, the rest dial it and find each other through it ----
    let mut nodes = vec![Node::spawn(bin, dir, 1, n, block_time, None)];
    let seed = nodes[0].p2p.clone();
    for i in 2..=n {
        nodes.push(Node::spawn(bin, dir, i, n, block_time, Some(&seed)));
    }
    let started = Instant::now();
    for node in &nodes {
        let c = node.client.clone();
        let what = format!("{} to have {} peers (see {})", node.id, n - 1, node.dir.join("timed.log").display());
        wait_for(120, &what, || {
            let c = c.clone();
            async move { (c.get_peer_info().await.ok()?.len() == n - 1).then_some(()) }
        })
        .await;
    }
    println!("all {n} nodes peered after {:.1} s", started.elapsed().as_secs_f64());
    // A node polls only validators it has heard a heartbeat from; until then it cannot
    // finalize anything. How long that takes after peering is worth seeing on its own.
    let mut ready_at: Vec<Option<f64>> = vec![None; n];
    let deadline = Instant::now() + Duration::from_secs(3 * block_time + 60);
    while ready_at.iter().any(Option::is_none) {
        for (k, node) in nodes.iter().enumerate() {
            if ready_at[k].is_none() {
                let av = node.client.get_avalanche_status().await.map_err(|e| e.to_string())?;
                if av.sampleable_validators >= n - 1 {
                    ready_at[k] = Some(started.elapsed().as_secs_f64());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("nodes never saw heartbeats from all peers: {ready_at:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready: Vec<String> =
        nodes.iter().zip(&ready_at).map(|(node, t)| format!("{} {:.1} s", node.id, t.unwrap_or(f64::NAN))).collect();
    println!("every peer sampleable (heartbeats heard) after: {}", ready.join(", "));
    let mut wallets = Vec::new();
    for node in &nodes {
        wallets.push(node.client.masternode_status().await.map_err(|e| e.to_string())?.wallet_address);
    }
    // Warm-up: one payment final on another node shows heartbeats and polling are running.
    let warm = Instant::now();
    let txid = nodes[0].client.send_to_address(wallets[1].clone(), 1.0, None).await.map_err(|e| e.to_string())?;
    let f = nodes[1].client.wait_transaction_finality(txid, Some(120.0)).await.map_err(|e| e.to_string())?;
    if !f.finalized {
        return Err(format!("warm-up transaction not final: {f:?}"));
    }
    println!("warm-up payment final after {:.2} s; measuring for {seconds} s", warm.elapsed().as_secs_f64());

    // A devnet genesis lies in the past, so block 1 is made at start-up, mid-slot; from block 2
    // on blocks sit on slot boundaries. Intervals are measured from there.
    let c = nodes[0].client.clone();
    let h0 = wait_for(3 * block_time + 30, "height 2", || {
        let c = c.clone();
        async move { c.get_block_count().await.ok().filter(|h| *h >= 2) }
    })
    .await;

    // ---- measurement window ----
    let ticks = clock_ticks();
    let t0 = Instant::now();
    let wall0 = wall_ms();
    let load_start = loadavg();
    let probes: Vec<Probe> =
        nodes.iter().map(|n| Probe { pid: n.pid, rpc: n.rpc.clone(), client: n.client.clone() }).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampling = tokio::spawn(sampler(probes, rpc_log.clone(), stop_rx));
    let clients: Vec<HttpClient> = nodes.iter().map(|n| n.client.clone()).collect();
    // BENCH_TPS=0 measures an idle network: no sends, the same sampling.
    let total = (seconds as f64 * tps).round() as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / tps.max(1e-3)));
    if total == 0 {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        // Sender rotates over nodes, the recipient over the others; finality is asked on the
        // recipient's node, which learned the transaction only by gossip.
        let from = i % n;
        let to = (from + 1 + (i / n) % (n - 1)) % n;
        let (sender, waiter, addr, log) =
            (clients[from].clone(), clients[to].clone(), wallets[to].clone(), rpc_log.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let sent = log.call("sendtoaddress", sender.send_to_address(addr, 1.0, None)).await;
            let send_ms = t.elapsed().as_secs_f64() * 1000.0;
            let txid = match sent {
                Ok(t) => t,
                Err(e) => return Outcome::SendFailed(e.to_string()),
            };
            match log.call("waittransactionfinality", waiter.wait_transaction_finality(txid, Some(60.0))).await {
                Ok(f) if f.finalized => Outcome::Final { send_ms, final_ms: t.elapsed().as_secs_f64() * 1000.0 },
                Ok(_) => Outcome::Rejected,
                Err(_) => Outcome::TimedOut,
            }
        }));
    }
    // The sampler takes one more reading at the end of the load, before the stragglers.
    stop_tx.send(true).map_err(|e| e.to_string())?;
    let series = sampling.await.map_err(|e| e.to_string())?;
    if series.iter().any(|s| s.len() < 2) {
        return Err("a node could not be sampled".into());
    }
    let window = t0.elapsed().as_secs_f64();
    let wall1 = wall_ms();
    let load_end = loadavg();
    let h1 = nodes[0].client.get_block_count().await.map_err(|e| e.to_string())?;
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.map_err(|e| e.to_string())?);
    }
    let hwm: Vec<u64> = nodes.iter().map(|n| status_kb(n.pid, "VmHWM:").unwrap_or(0)).collect();

    // ---- blocks: intervals inside the window, then agreement on every height ----
    let mut times = Vec::new();
    let mut tx_in_blocks = 0usize;
    for h in h0..=h1 {
        let r = rpc_log.call("getblock", nodes[0].client.get_block(BlockRef::Height(h), Some(1))).await;
        match r.map_err(|e| e.to_string())? {
            BlockResult::Verbose(b) => {
                if h > h0 {
                    tx_in_blocks += b.n_tx.saturating_sub(1);
                }
                times.push(b.time_ms)
            }
            BlockResult::Hex(_) => return Err("getblock verbosity 1 returned hex".into()),
        }
    }
    let intervals: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) as f64 / 1000.0).collect();
    // Let every node reach h1 before comparing hashes, so a slow node is not a "fork".
    for node in &nodes {
        let c = node.client.clone();
        wait_for(4 * block_time + 30, &format!("{} to reach {h1}", node.id), || {
            let c = c.clone();
            async move { (c.get_block_count().await.ok()? >= h1).then_some(()) }
        })
        .await;
    }
    let mut forks = Vec::new();
    for h in 1..=h1 {
        let mut hashes = BTreeSet::new();
        for node in &nodes {
            hashes
                .insert(rpc_log.call("getblockhash", node.client.get_block_hash(h)).await.map_err(|e| e.to_string())?);
        }
        if hashes.len() > 1 {
            forks.push(h);
        }
    }
    let mut node_info = Vec::new();
    for node in &nodes {
        let c = rpc_log.call("getconsensusinfo", node.client.get_consensus_info()).await.map_err(|e| e.to_string())?;
        node_info.push(c);
    }

    // ---- report ----
    let mut sends = Vec::new();
    let mut finals = Vec::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for o in &outcomes {
        match o {
            Outcome::Final { send_ms, final_ms } => {
                sends.push(*send_ms);
                finals.push(*final_ms / 1000.0);
                *counts.entry("final").or_default() += 1;
            }
            Outcome::Rejected => *counts.entry("rejected").or_default() += 1,
            Outcome::TimedOut => *counts.entry("timed out").or_default() += 1,
            Outcome::SendFailed(e) => {
                *counts.entry("send failed").or_default() += 1;
                eprintln!("send failed: {e}");
            }
        }
    }
    let finals = sorted(finals);
    let intervals_s = sorted(intervals.clone());
    let per_node: Vec<NodeFigures> = series.iter().map(|s| NodeFigures::of(s, ticks)).collect();

    println!("\nwindow: {window:.1} s (heights {h0}..{h1}), load average {load_start} at start, {load_end} at end");
    println!(
        "transactions: {} sent, {} final, {} rejected, {} timed out, {} send errors; {} in blocks of the window",
        outcomes.len(),
        counts.get("final").copied().unwrap_or(0),
        counts.get("rejected").copied().unwrap_or(0),
        counts.get("timed out").copied().unwrap_or(0),
        counts.get("send failed").copied().unwrap_or(0),
        tx_in_blocks
    );
    println!("\nper node:");
    println!("| node | RSS max (MB) | VmHWM (MB) | CPU avg (% core) | CPU max 10 s (% core) | P2P avg (Mbit/s) | P2P max 10 s (Mbit/s) | rounds timed out |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, f) in per_node.iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.4} | {:.4} | {} |",
            nodes[k].id,
            f.rss_max_mb,
            hwm[k] as f64 / 1024.0,
            f.cpu_avg,
            f.cpu_max10,
            f.mbps_avg,
            f.mbps_max10,
            node_info[k].rounds_timed_out
        );
    }

    let worst = |f: fn(&NodeFigures) -> f64| per_node.iter().map(f).fold(0.0f64, f64::max);
    let rss_worst = hwm.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    let cpu_worst = worst(|f| f.cpu_avg);
    let net_worst = worst(|f| f.mbps_avg);
    let (bt, mean) = (block_time as f64, intervals.iter().sum::<f64>() / intervals.len().max(1) as f64);
    let within = intervals.iter().filter(|i| (*i - bt).abs() <= 0.2 * bt).count();
    let rpc_all = {
        let log = rpc_log.0.lock().unwrap();
        sorted(
            log.iter()
                .filter(|(m, _)| !m.starts_with("wait") && !m.starts_with("GET"))
                .flat_map(|(_, v)| v.clone())
                .collect(),
        )
    };
    let fin_p95 = pct(&finals, 95.0);
    let rpc_p95 = pct(&rpc_all, 95.0);

    println!("\nagainst the plan (targets scale with the block time for the block row):");
    println!("| metric | target | acceptable | measured | verdict | margin |");
    println!("|---|---|---|---|---|---|");
    let block_verdict = if (mean - bt).abs() <= 0.2 * bt && within == intervals.len() {
        "meets target"
    } else if intervals_s.first().is_some_and(|m| *m >= 0.5 * bt) && intervals_s.last().is_some_and(|m| *m <= 3.0 * bt)
    {
        "acceptable"
    } else {
        "FAILS"
    };
    println!(
        "| block interval | {bt:.0} s ± {:.1} s | {:.1}–{:.0} s | mean {mean:.2} s, p50 {:.2}, min {:.2}, max {:.2} ({within}/{} within ± 20 %) | {block_verdict} | mean off by {:.2} s |",
        0.2 * bt,
        0.5 * bt,
        3.0 * bt,
        pct(&intervals_s, 50.0),
        intervals_s.first().copied().unwrap_or(f64::NAN),
        intervals_s.last().copied().unwrap_or(f64::NAN),
        intervals.len(),
        (mean - bt).abs()
    );
    println!(
        "| TX finality (client, p95) | < 5 s | < 30 s | p50 {:.3} s, p95 {fin_p95:.3} s, p99 {:.3} s, max {:.3} s | {} | {} |",
        pct(&finals, 50.0),
        pct(&finals, 99.0),
        finals.last().copied().unwrap_or(f64::NAN),
        verdict(fin_p95, 5.0, 30.0),
        margin(fin_p95, 5.0, true)
    );
    println!(
        "| memory per node (peak RSS, worst) | < 200 MB | < 500 MB | {rss_worst:.1} MB | {} | {} |",
        verdict(rss_worst, 200.0, 500.0),
        margin(rss_worst, 200.0, true)
    );
    println!(
        "| CPU per node (avg % of one core, worst) | < 5 % | < 20 % | {cpu_worst:.2} % | {} | {} |",
        verdict(cpu_worst, 5.0, 20.0),
        margin(cpu_worst, 5.0, true)
    );
    println!(
        "| P2P bandwidth per node (sent+received, worst) | < 1 Mbit/s | < 5 Mbit/s | {net_worst:.4} Mbit/s | {} | {} |",
        verdict(net_worst, 1.0, 5.0),
        margin(net_worst, 1.0, true)
    );
    println!(
        "| RPC response (client, p95, all calls but waittransactionfinality) | < 100 ms | - | p50 {:.2} ms, p95 {rpc_p95:.2} ms, max {:.2} ms ({} calls) | {} | {} |",
        pct(&rpc_all, 50.0),
        rpc_all.last().copied().unwrap_or(f64::NAN),
        rpc_all.len(),
        verdict(rpc_p95, 100.0, 100.0),
        margin(rpc_p95, 100.0, true)
    );
    println!(
        "| forks (distinct hashes at a height) | 0 | 0 | {} of {h1} heights | {} | - |",
        forks.len(),
        if forks.is_empty() { "meets target" } else { "FAILS" }
    );

    println!("\nRPC latency by method (client side, ms):");
    println!("| method | calls | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (m, v) in rpc_log.0.lock().unwrap().iter() {
        let v = sorted(v.clone());
        println!(
            "| {m} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            v.len(),
            pct(&v, 50.0),
            pct(&v, 95.0),
            pct(&v, 99.0),
            v[v.len() - 1]
        );
    }
    let sends = sorted(sends);
    println!(
        "sendtoaddress share of finality: p50 {:.2} ms of p50 {:.0} ms",
        pct(&sends, 50.0),
        pct(&finals, 50.0) * 1000.0
    );
    let av =
        rpc_log.call("getavalanchestatus", nodes[0].client.get_avalanche_status()).await.map_err(|e| e.to_string())?;
    println!(
        "node-side finality on {} (first seen to final): p50 {:?} ms, p99 {:?} ms; polls sent {}, failed {}",
        nodes[0].id, av.finality_ms_p50, av.finality_ms_p99, av.polls_sent, av.polls_failed
    );
    let list: Vec<String> = intervals.iter().map(|i| format!("{i:.2}")).collect();
    println!("block intervals (s), heights {h0}..{h1}: {}", list.join(" "));
    println!("wall clock of the window: {wall0}..{wall1} ms since the epoch");
    if !forks.is_empty() {
        return Err(format!("forks at heights {forks:?}"));
    }
    Ok(())
}

/// One node's figures over the window.
struct NodeFigures {
    rss_max_mb: f64,
    cpu_avg: f64,
    cpu_max10: f64,
    mbps_avg: f64,
    mbps_max10: f64,
}

impl NodeFigures {
    fn of(s: &[Sample], ticks: f64) -> NodeFigures {
        let (first, last) = (s[0], s[s.len() - 1]);
        let cpu =
            |a: &Sample, b: &Sample| (b.cpu_ticks - a.cpu_ticks) as f64 / ticks / (b.at - a.at).as_secs_f64() * 100.0;
        let mbps =
            |a: &Sample, b: &Sample| (b.p2p_bytes - a.p2p_bytes) as f64 * 8.0 / 1e6 / (b.at - a.at).as_secs_f64();
        // Busiest 10-second stretch: pairs of samples about ten seconds apart.
        let (mut cpu_max10, mut mbps_max10) = (0.0f64, 0.0f64);
        for (i, a) in s.iter().enumerate() {
            if let Some(b) = s[i..].iter().find(|b| b.at - a.at >= Duration::from_secs(10)) {
                cpu_max10 = cpu_max10.max(cpu(a, b));
                mbps_max10 = mbps_max10.max(mbps(a, b));
            }
        }
        NodeFigures {
            rss_max_mb: s.iter().map(|x| x.rss_kb).max().unwrap_or(0) as f64 / 1024.0,
            cpu_avg: cpu(&first, &last),
            cpu_max10,
            mbps_avg: mbps(&first, &last),
            mbps_max10,
        }
    }
}
