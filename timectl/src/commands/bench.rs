//! `timectl bench`: how much payment load a network finalizes, and how fast. Funds fresh keys
//! from a devnet's derivable validator wallets, sends pre-signed one-input payments open loop
//! (JSON-RPC batches over keep-alive connections) at a ladder of offered rates, and watches
//! each payment's finality on a node other than the one it was sent to. Latency runs from the
//! payment's scheduled send time to the moment the observing node made it final, so a slow
//! sender or a queue at submission counts against the network, as it would for a user.

use crate::client;
use crate::context::Ctx;
use crate::error::{Hinted, Reported, EXIT_OK};
use crate::inventory::Node;
use crate::load::{self, Coin, Keys};
use crate::output::{now_ms, Ui};
use crate::prom;
use anyhow::Context as _;
use clap::Args;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::BatchRequestBuilder;
use jsonrpsee::http_client::HttpClient;
use jsonrpsee::rpc_params;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timed::api::{BlockRef, BlockResult, TimeRpcClient, TxFinality};
use timed::chain::tx::Txid;
use timed::metrics_names as m;
use tokio::sync::Semaphore;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  timectl local up --nodes 5 --block-time 1 && timectl bench
  timectl bench --rates 500,1000,2000 --step-secs 20
  timectl bench --smoke --json        a few seconds: proves the instrument works

The network must be a devnet (its validator wallets are derivable); the bench spends their
coins into --keys fresh keys first. A rate is sustained when at least 95 % of what was sent
became final within the step and its drain, with p99 latency at or under --max-p99.
CPU is per node, 100 % = one core. Bandwidth is P2P bytes sent + received per node.")]
pub struct BenchArgs {
    /// Offered rates in payments per second across the network, run in this order.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000,2000,5000", value_name = "TPS,..")]
    pub rates: Vec<u32>,
    /// Seconds each rate is offered for.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub step_secs: f64,
    /// Fresh keys the load is spread over.
    #[arg(long, default_value_t = 2000)]
    pub keys: usize,
    /// Seconds to keep watching for finality after a step's last payment was sent.
    #[arg(long, default_value_t = 15.0, value_name = "SECS")]
    pub drain_secs: f64,
    /// Concurrencies of the RPC request-rate test (getblockcount, closed loop).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32", value_name = "N,..")]
    pub rpc_concurrency: Vec<usize>,
    /// Seconds per RPC concurrency level.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub rpc_secs: f64,
    /// p99 finality latency (seconds) a sustained rate must meet.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub max_p99: f64,
    /// Seconds of idle measurement before the load.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub idle_secs: f64,
    /// A run of a few seconds at a low rate that proves the instrument works (for CI).
    #[arg(long)]
    pub smoke: bool,
    /// Seconds to wait for any single RPC call.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
}

impl BenchArgs {
    fn apply_smoke(&mut self) {
        if self.smoke {
            self.rates = vec![20];
            self.step_secs = 2.0;
            self.keys = 20;
            self.drain_secs = 20.0;
            self.rpc_concurrency = vec![1, 4];
            self.rpc_secs = 1.0;
            self.idle_secs = 1.0;
        }
    }
}

/// One node's resource use over an interval, from two scrapes of its `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeUse {
    pub node: String,
    /// Percent of one core.
    pub cpu_pct: Option<f64>,
    pub rss_mb: Option<f64>,
    /// P2P sent + received.
    pub mbit_s: Option<f64>,
    /// Transactions this node made final in the interval.
    pub finalized: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Scrape {
    at: Option<Instant>,
    cpu: Option<f64>,
    rss: Option<f64>,
    p2p: Option<f64>,
    finalized: Option<f64>,
}

async fn scrape(node: &Node, timeout: Duration) -> Scrape {
    let Ok(text) = client::http_get(&node.rpc, "/metrics", timeout).await else { return Scrape::default() };
    let Ok(mm) = prom::parse(&text) else { return Scrape::default() };
    let p2p = match (mm.value(m::P2P_BYTES_SENT), mm.value(m::P2P_BYTES_RECEIVED)) {
        (None, None) => None,
        (s, r) => Some(s.unwrap_or(0.0) + r.unwrap_or(0.0)),
    };
    Scrape {
        at: Some(Instant::now()),
        cpu: mm.value(m::PROCESS_CPU_SECONDS),
        rss: mm.value(m::PROCESS_RSS_BYTES),
        p2p,
        finalized: mm.value(m::TX_FINALIZED),
    }
}

async fn scrape_all(nodes: &[Node], timeout: Duration) -> Vec<Scrape> {
    futures::future::join_all(nodes.iter().map(|n| scrape(n, timeout))).await
}

fn usage(nodes: &[Node], a: &[Scrape], b: &[Scrape]) -> Vec<NodeUse> {
    nodes
        .iter()
        .zip(a.iter().zip(b))
        .map(|(n, (a, b))| {
            let secs = match (a.at, b.at) {
                (Some(x), Some(y)) => y.duration_since(x).as_secs_f64(),
                _ => 0.0,
            };
            let rate = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) if secs > 0.0 => Some((y - x).max(0.0) / secs),
                _ => None,
            };
            NodeUse {
                node: n.name.clone(),
                cpu_pct: rate(a.cpu, b.cpu).map(|c| round2(c * 100.0)),
                rss_mb: b.rss.map(|r| round2(r / 1e6)),
                mbit_s: rate(a.p2p, b.p2p).map(|x| round2(x * 8.0 / 1e6)),
                finalized: match (a.finalized, b.finalized) {
                    (Some(x), Some(y)) => Some((y - x).max(0.0) as u64),
                    _ => None,
                },
            }
        })
        .collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What happened to one payment.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Not yet answered by the node it was sent to.
    Sending,
    /// Given a txid; waiting for finality.
    Accepted,
    /// Refused at submission (the node's error), so never given a txid.
    Refused(String),
    /// The request itself failed (timeout, connection).
    SendFailed(String),
    /// Final on the observing node at this unix ms (`exact`: the node's own timestamp).
    Final { at_ms: u64, exact: bool },
    /// Reported rejected by the observing node after it was accepted.
    Rejected,
}

struct Payment {
    txid: Txid,
    hex: String,
    /// Scheduled send time, ms after the step's start.
    offset_ms: f64,
    sender: usize,
    fate: Fate,
}

/// Figures of one offered rate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub offered_tps: u32,
    pub secs: f64,
    pub sent: usize,
    /// Given a txid by the node.
    pub accepted: usize,
    /// Refused at submission, by reason.
    pub refused: BTreeMap<String, usize>,
    pub send_failed: usize,
    pub finalized: usize,
    /// Finalized payments per second, over the step or until the last one was final.
    pub finalized_tps: f64,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub max_s: Option<f64>,
    /// Accepted, then reported rejected by the observing node.
    pub rejected: usize,
    /// Accepted, and neither final nor rejected when the drain ended.
    pub never_final: usize,
    /// Finality times that are the observation time (the node no longer remembered its own).
    pub latency_upper_bounds: usize,
    pub sustained: bool,
    pub nodes: Vec<NodeUse>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RpcRow {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub requests_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Slots {
    pub from_height: u64,
    pub to_height: u64,
    pub blocks: usize,
    /// Slots in the window without a block.
    pub missed: u64,
    /// Block timestamp minus its slot's start, ms.
    pub jitter_p50_ms: Option<f64>,
    pub jitter_p99_ms: Option<f64>,
    pub jitter_max_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub network: String,
    pub nodes: usize,
    pub chain_id: String,
    pub block_time_secs: u64,
    pub keys: usize,
    pub funding_txs: usize,
    pub funding_secs: f64,
    pub max_p99_s: f64,
    pub idle: Vec<NodeUse>,
    pub steps: Vec<Step>,
    /// Highest offered rate that was sustained (see `--max-p99`).
    pub sustained_tps: Option<u32>,
    /// Resource use in the quiet seconds after the last step.
    pub after: Vec<NodeUse>,
    pub rpc: Vec<RpcRow>,
    pub slots: Slots,
}

/// Quantile by nearest rank of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The figures of one step from the fate of its payments.
fn summarize(rate: u32, secs: f64, start_ms: u64, pays: &[Payment], max_p99: f64, nodes: Vec<NodeUse>) -> Step {
    let mut refused = BTreeMap::new();
    let (mut send_failed, mut rejected, mut never_final, mut bounds) = (0, 0, 0, 0);
    let mut lat: Vec<f64> = Vec::new();
    let mut last_final = 0u64;
    for p in pays {
        match &p.fate {
            Fate::Refused(r) => *refused.entry(r.clone()).or_insert(0) += 1,
            Fate::SendFailed(_) | Fate::Sending => send_failed += 1,
            Fate::Accepted => never_final += 1,
            Fate::Rejected => rejected += 1,
            Fate::Final { at_ms, exact } => {
                let scheduled = start_ms as f64 + p.offset_ms;
                lat.push(((*at_ms as f64 - scheduled) / 1000.0).max(0.0));
                last_final = last_final.max(*at_ms);
                if !exact {
                    bounds += 1;
                }
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let finalized = lat.len();
    let window = secs.max(last_final.saturating_sub(start_ms) as f64 / 1000.0);
    let p99 = quantile(&lat, 0.99);
    let sent = pays.len();
    Step {
        offered_tps: rate,
        secs,
        sent,
        accepted: sent - refused.values().sum::<usize>() - send_failed,
        refused,
        send_failed,
        finalized,
        finalized_tps: if window > 0.0 { round2(finalized as f64 / window) } else { 0.0 },
        p50_s: quantile(&lat, 0.5).map(round3),
        p99_s: p99.map(round3),
        max_s: lat.last().copied().map(round3),
        rejected,
        never_final,
        latency_upper_bounds: bounds,
        sustained: sent > 0 && finalized as f64 >= 0.95 * sent as f64 && p99.is_some_and(|p| p <= max_p99),
        nodes,
    }
}

/// Slot discipline of committed blocks: (height, slot, time_ms) in height order.
pub fn slot_figures(blocks: &[(u64, u64, u64)], genesis_ms: u64, block_ms: u64) -> Slots {
    let mut s = Slots { blocks: blocks.len(), ..Default::default() };
    let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else { return s };
    s.from_height = first.0;
    s.to_height = last.0;
    s.missed = (last.1 - first.1 + 1).saturating_sub(blocks.len() as u64);
    let mut jit: Vec<f64> =
        blocks.iter().map(|(_, slot, t)| *t as f64 - (genesis_ms + slot * block_ms) as f64).collect();
    jit.sort_by(f64::total_cmp);
    s.jitter_p50_ms = quantile(&jit, 0.5);
    s.jitter_p99_ms = quantile(&jit, 0.99);
    s.jitter_max_ms = jit.last().copied();
    s
}

fn hinted(message: String, hint: &str) -> anyhow::Error {
    Hinted { message, hint: hint.into() }.into()
}

/// Most batches in flight per node: below the node's connection limit, so an overloaded node
/// queues us rather than refusing connections. Time spent waiting here counts as latency.
const INFLIGHT_PER_NODE: usize = 16;
/// The node's default `rpc_max_batch`.
const BATCH: usize = 100;

pub async fn run(mut a: BenchArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    a.apply_smoke();
    let ui = ctx.ui;
    let (path, inv) = ctx.inventory()?;
    // Remote nodes are measured through their SSH forwards, like every other command.
    let nodes = ctx.reach(inv, &inv.nodes).await?;
    if nodes.is_empty() || a.rates.is_empty() {
        anyhow::bail!("nothing to do: the inventory {} lists no nodes, or --rates is empty", path.display());
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    let clients: Vec<HttpClient> =
        nodes.iter().map(|n| client::rpc_client(n, timeout).map_err(anyhow::Error::msg)).collect::<Result<_, _>>()?;
    let info = clients[0]
        .get_blockchain_info()
        .await
        .map_err(|e| {
            hinted(
                format!("{}: {}", nodes[0].name, client::compact_error(&e)),
                "is the network up? `timectl status` shows every node; `timectl local up` starts a devnet",
            )
        })
        .context("reading the chain")?;
    let genesis_ms = match clients[0].get_block(BlockRef::Height(0), Some(1)).await {
        Ok(BlockResult::Verbose(b)) => b.time_ms,
        Ok(_) => anyhow::bail!("getblock 0 did not return a verbose block"),
        Err(e) => anyhow::bail!("{}: getblock 0: {}", nodes[0].name, client::compact_error(&e)),
    };
    let block_ms = info.block_time_secs * 1000;
    let start_height = clients[0].get_block_count().await.map_err(|e| anyhow::anyhow!(client::compact_error(&e)))?;

    // Idle first, so the load's figures have a baseline.
    let spinner = ui.spinner("measuring idle");
    let s0 = scrape_all(&nodes, timeout).await;
    tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
    let idle = usage(&nodes, &s0, &scrape_all(&nodes, timeout).await);

    // Fund the keys: one coin per payment of the whole ladder.
    spinner.set_message("funding keys");
    let total: usize = a.rates.iter().map(|r| (*r as f64 * a.step_secs).ceil() as usize).sum();
    let keys = Arc::new(Keys::generate(a.keys));
    let t_fund = Instant::now();
    let coins = load::fund_from_devnet(&nodes, &clients, &info.chain_id, &keys, total, timeout).await?;
    let funding_txs = total.div_ceil(load::outputs_per_funding_tx());
    let funding_secs = round2(t_fund.elapsed().as_secs_f64());

    let mut steps = Vec::new();
    let mut next_coin = 0;
    for &rate in &a.rates {
        let count = (rate as f64 * a.step_secs).ceil() as usize;
        spinner.set_message(format!("{rate} tx/s for {} s", a.step_secs));
        let step_coins: Vec<Coin> = coins[next_coin..next_coin + count].to_vec();
        next_coin += count;
        let step = run_step(&nodes, &clients, &info.chain_id, &keys, step_coins, rate, &a).await?;
        tracing::info!(rate, finalized = step.finalized, p99 = ?step.p99_s, "step done");
        steps.push(step);
    }

    spinner.set_message("measuring after load");
    tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
    let s0 = scrape_all(&nodes, timeout).await;
    tokio::time::sleep(Duration::from_secs_f64(a.idle_secs)).await;
    let after = usage(&nodes, &s0, &scrape_all(&nodes, timeout).await);

    spinner.set_message("RPC request rate");
    let mut rpc = Vec::new();
    for &c in &a.rpc_concurrency {
        rpc.push(rpc_rate(&clients, c.max(1), Duration::from_secs_f64(a.rpc_secs)).await);
    }

    spinner.set_message("reading blocks");
    let end_height = clients[0].get_block_count().await.map_err(|e| anyhow::anyhow!(client::compact_error(&e)))?;
    let mut blocks = Vec::new();
    // Block 1 of a devnet is made mid-slot at start-up; slot discipline starts at 2.
    for h in start_height.max(2)..=end_height {
        if let Ok(BlockResult::Verbose(b)) = clients[0].get_block(BlockRef::Height(h), Some(1)).await {
            blocks.push((b.height, b.slot, b.time_ms));
        }
    }
    let slots = slot_figures(&blocks, genesis_ms, block_ms);
    spinner.finish_and_clear();

    let sustained_tps = steps.iter().filter(|s| s.sustained).map(|s| s.offered_tps).max();
    let report = Report {
        network: inv.network.clone(),
        nodes: nodes.len(),
        chain_id: info.chain_id.clone(),
        block_time_secs: info.block_time_secs,
        keys: keys.keys.len(),
        funding_txs,
        funding_secs,
        max_p99_s: a.max_p99,
        idle,
        steps,
        sustained_tps,
        after,
        rpc,
        slots,
    };
    if ui.json {
        ui.print_json(&report);
    } else {
        print_tables(&report, &ui);
    }
    if a.smoke && report.steps.iter().all(|s| s.finalized == 0) {
        return Err(Reported("smoke run: no payment became final".into()).into());
    }
    Ok(EXIT_OK)
}

/// One offered rate: sign, send open loop, watch finality, summarize.
async fn run_step(
    nodes: &[Node],
    clients: &[HttpClient],
    chain_id: &str,
    keys: &Arc<Keys>,
    coins: Vec<Coin>,
    rate: u32,
    a: &BenchArgs,
) -> anyhow::Result<Step> {
    let n = nodes.len();
    let chain = chain_id.to_string();
    let keys2 = keys.clone();
    // Signing is not what is measured: all of it happens before the clock starts.
    let pays: Vec<Payment> = tokio::task::spawn_blocking(move || {
        coins
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (txid, hex) = load::payment(c, &keys2, &chain);
                Payment { txid, hex, offset_ms: i as f64 * 1000.0 / rate as f64, sender: 0, fate: Fate::Sending }
            })
            .collect()
    })
    .await?;
    let count = pays.len();
    let pays = Arc::new(Mutex::new(pays));
    let timeout = Duration::from_secs_f64(a.timeout);
    let before = scrape_all(nodes, timeout).await;
    let gates: Vec<Arc<Semaphore>> = (0..n).map(|_| Arc::new(Semaphore::new(INFLIGHT_PER_NODE))).collect();

    let start = Instant::now() + Duration::from_millis(50);
    let start_ms = now_ms() + 50;
    let watch_stop = Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch(nodes.to_vec(), pays.clone(), timeout, watch_stop.clone()));

    let mut next = 0;
    let mut batch_no = 0usize;
    let mut sends = Vec::new();
    while next < count {
        let elapsed = Instant::now().saturating_duration_since(start).as_secs_f64() * 1000.0;
        let due = {
            let p = pays.lock().expect("lock");
            p[next..].iter().take_while(|x| x.offset_ms <= elapsed).count()
        };
        for chunk_start in (next..next + due).step_by(BATCH) {
            let end = (chunk_start + BATCH).min(next + due);
            let sender = batch_no % n;
            batch_no += 1;
            let body: Vec<String> = {
                let mut p = pays.lock().expect("lock");
                p[chunk_start..end]
                    .iter_mut()
                    .map(|x| {
                        x.sender = sender;
                        x.hex.clone()
                    })
                    .collect()
            };
            let (c, gate, pays) = (clients[sender].clone(), gates[sender].clone(), pays.clone());
            sends.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let fates = send_batch(&c, &body).await;
                let mut p = pays.lock().expect("lock");
                for (k, f) in fates.into_iter().enumerate() {
                    p[chunk_start + k].fate = f;
                }
            }));
        }
        next += due;
        if next < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for s in sends {
        let _ = s.await;
    }
    // Keep watching until every accepted payment is settled or the drain time is over.
    let drain_end = Instant::now() + Duration::from_secs_f64(a.drain_secs);
    while Instant::now() < drain_end {
        let open = pays.lock().expect("lock").iter().any(|p| p.fate == Fate::Accepted);
        if !open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch_stop.notify_one();
    let _ = watcher.await;
    let after = scrape_all(nodes, timeout).await;
    let pays = pays.lock().expect("lock");
    Ok(summarize(rate, a.step_secs, start_ms, &pays, a.max_p99, usage(nodes, &before, &after)))
}

async fn send_batch(c: &HttpClient, hexes: &[String]) -> Vec<Fate> {
    let mut b = BatchRequestBuilder::new();
    for h in hexes {
        if let Err(e) = b.insert("sendrawtransaction", rpc_params![h]) {
            return vec![Fate::SendFailed(e.to_string()); hexes.len()];
        }
    }
    match c.batch_request::<String>(b).await {
        Ok(resp) => resp
            .into_iter()
            .map(|r| match r {
                Ok(_) => Fate::Accepted,
                Err(e) => Fate::Refused(format!("{} {}", e.code(), e.message())),
            })
            .collect(),
        Err(e) => vec![Fate::SendFailed(client::compact_error(&e)); hexes.len()],
    }
}

/// Asks each accepted payment's observer (the node after its sender) for its finality, in
/// batches, until told to stop; a final check runs after the stop.
async fn watch(nodes: Vec<Node>, pays: Arc<Mutex<Vec<Payment>>>, timeout: Duration, stop: Arc<tokio::sync::Notify>) {
    let n = nodes.len();
    let clients: Vec<Option<HttpClient>> = nodes.iter().map(|x| client::rpc_client(x, timeout).ok()).collect();
    let mut stopping = false;
    loop {
        let open: Vec<(usize, usize, String)> = pays
            .lock()
            .expect("lock")
            .iter()
            .enumerate()
            .filter(|(_, p)| p.fate == Fate::Accepted)
            .map(|(i, p)| (i, (p.sender + 1) % n, p.txid.to_hex()))
            .collect();
        // The observers are asked side by side: one at a time, a backlog of open payments
        // made each round take seconds, and inexact finality times piled up.
        let rounds = clients.iter().enumerate().map(|(observer, c)| {
            let (open, pays) = (&open, &pays);
            async move {
                let Some(c) = c else { return };
                let mine: Vec<&(usize, usize, String)> = open.iter().filter(|x| x.1 == observer).collect();
                for chunk in mine.chunks(BATCH) {
                    let mut b = BatchRequestBuilder::new();
                    for (_, _, txid) in chunk {
                        let _ = b.insert("gettransactionfinality", rpc_params![txid]);
                    }
                    let Ok(resp) = c.batch_request::<TxFinality>(b).await else { continue };
                    let seen = now_ms();
                    let mut p = pays.lock().expect("lock");
                    for ((i, _, _), r) in chunk.iter().zip(resp) {
                        let Ok(f) = r else { continue };
                        if f.finalized {
                            p[*i].fate = match f.finalized_at_ms {
                                Some(at_ms) => Fate::Final { at_ms, exact: true },
                                None => Fate::Final { at_ms: seen, exact: false },
                            };
                        } else if f.status == "rejected" {
                            p[*i].fate = Fate::Rejected;
                        }
                    }
                }
            }
        });
        futures::future::join_all(rounds).await;
        if stopping {
            return;
        }
        tokio::select! {
            _ = stop.notified() => stopping = true,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Closed-loop `getblockcount` from `c` workers spread over the nodes.
async fn rpc_rate(clients: &[HttpClient], c: usize, secs: Duration) -> RpcRow {
    let end = Instant::now() + secs;
    let workers = (0..c).map(|w| {
        let cl = clients[w % clients.len()].clone();
        async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < end {
                let t = Instant::now();
                match cl.get_block_count().await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }
    });
    let t0 = Instant::now();
    let results = futures::future::join_all(workers).await;
    let took = t0.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    let errors = results.iter().map(|(_, e)| e).sum();
    lat.sort_by(f64::total_cmp);
    RpcRow {
        concurrency: c,
        requests: lat.len(),
        errors,
        requests_per_s: round2(lat.len() as f64 / took),
        p50_ms: quantile(&lat, 0.5).map(round3),
        p99_ms: quantile(&lat, 0.99).map(round3),
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

fn sum_max(nodes: &[NodeUse]) -> (Option<f64>, Option<f64>, Option<f64>) {
    let cpu: Vec<f64> = nodes.iter().filter_map(|n| n.cpu_pct).collect();
    let rss = nodes.iter().filter_map(|n| n.rss_mb).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let bw = nodes.iter().filter_map(|n| n.mbit_s).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    ((!cpu.is_empty()).then(|| cpu.iter().sum()), rss, bw)
}

fn print_tables(r: &Report, ui: &Ui) {
    println!(
        "{} nodes of {} ({}), {} s blocks; load from {} keys ({} funding transactions, {:.1} s)",
        r.nodes, r.network, r.chain_id, r.block_time_secs, r.keys, r.funding_txs, r.funding_secs
    );
    let mut t = ui.table(&[
        "offered tx/s",
        "sent",
        "refused",
        "finalized tx/s",
        "p50 s",
        "p99 s",
        "max s",
        "never final",
        "rejected",
        "CPU % (all nodes)",
        "RSS MB (max)",
        "Mbit/s (max node)",
        "sustained",
    ]);
    let mut row = |label: String, s: Option<&Step>, nodes: &[NodeUse]| {
        let (cpu, rss, bw) = sum_max(nodes);
        let mut cells = vec![label];
        match s {
            Some(s) => cells.extend([
                s.sent.to_string(),
                (s.refused.values().sum::<usize>() + s.send_failed).to_string(),
                format!("{:.1}", s.finalized_tps),
                opt(s.p50_s, 3),
                opt(s.p99_s, 3),
                opt(s.max_s, 3),
                s.never_final.to_string(),
                s.rejected.to_string(),
            ]),
            None => cells.extend(vec![String::new(); 8]),
        }
        cells.extend([opt(cpu, 1), opt(rss, 1), opt(bw, 3)]);
        cells.push(s.map(|s| if s.sustained { "yes" } else { "no" }).unwrap_or("").to_string());
        t.add_row(cells);
    };
    row("idle".into(), None, &r.idle);
    for s in &r.steps {
        row(s.offered_tps.to_string(), Some(s), &s.nodes);
    }
    row("after load".into(), None, &r.after);
    println!("{t}");
    for s in &r.steps {
        for (reason, n) in &s.refused {
            println!("{} tx/s: {n} refused: {reason}", s.offered_tps);
        }
        if s.send_failed > 0 {
            println!("{} tx/s: {} requests failed (timeout or connection)", s.offered_tps, s.send_failed);
        }
    }
    match r.sustained_tps {
        Some(x) => println!("sustained: {x} tx/s with p99 <= {} s", r.max_p99_s),
        None => println!("sustained: none of the offered rates with p99 <= {} s", r.max_p99_s),
    }
    let mut t = ui.table(&["RPC concurrency", "requests/s", "p50 ms", "p99 ms", "errors"]);
    for x in &r.rpc {
        t.add_row(vec![
            x.concurrency.to_string(),
            format!("{:.0}", x.requests_per_s),
            opt(x.p50_ms, 2),
            opt(x.p99_ms, 2),
            x.errors.to_string(),
        ]);
    }
    println!("{t}");
    let s = &r.slots;
    println!(
        "blocks {}..{}: {} blocks, {} missed slots, slot jitter p50 {} ms, p99 {} ms, max {} ms",
        s.from_height,
        s.to_height,
        s.blocks,
        s.missed,
        opt(s.jitter_p50_ms, 0),
        opt(s.jitter_p99_ms, 0),
        opt(s.jitter_max_ms, 0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay(offset_ms: f64, fate: Fate) -> Payment {
        Payment { txid: timed::chain::Hash256::digest(b"t"), hex: String::new(), offset_ms, sender: 0, fate }
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn a_step_counts_every_fate_and_latency_runs_from_the_schedule() {
        let start = 1_000_000;
        let pays = vec![
            pay(0.0, Fate::Final { at_ms: start + 400, exact: true }),
            pay(500.0, Fate::Final { at_ms: start + 1_100, exact: false }),
            pay(600.0, Fate::Refused("-26 mempool full".into())),
            pay(700.0, Fate::Accepted),
            pay(800.0, Fate::Rejected),
            pay(900.0, Fate::SendFailed("timeout".into())),
        ];
        let s = summarize(6, 1.0, start, &pays, 1.0, vec![]);
        assert_eq!((s.sent, s.accepted, s.finalized, s.never_final, s.rejected, s.send_failed), (6, 4, 2, 1, 1, 1));
        assert_eq!(s.refused.get("-26 mempool full"), Some(&1));
        assert_eq!(s.p50_s, Some(0.4));
        assert_eq!(s.max_s, Some(0.6));
        assert_eq!(s.latency_upper_bounds, 1);
        assert!(!s.sustained, "2 of 6 final is not sustained");
        // Last final at 1.1 s after start stretches the window past the 1 s step.
        assert_eq!(s.finalized_tps, round2(2.0 / 1.1));
        let all = vec![pay(0.0, Fate::Final { at_ms: start + 200, exact: true })];
        assert!(summarize(1, 1.0, start, &all, 1.0, vec![]).sustained);
        assert!(!summarize(1, 1.0, start, &all, 0.1, vec![]).sustained, "p99 above the bound");
    }

    #[test]
    fn slot_jitter_and_missed_slots() {
        // Genesis at 0, 1 s slots: blocks in slots 10, 11 and 13 (12 missed).
        let s = slot_figures(&[(5, 10, 10_020), (6, 11, 11_005), (7, 13, 13_300)], 0, 1000);
        assert_eq!((s.blocks, s.missed, s.from_height, s.to_height), (3, 1, 5, 7));
        assert_eq!(s.jitter_p50_ms, Some(20.0));
        assert_eq!(s.jitter_max_ms, Some(300.0));
        assert_eq!(slot_figures(&[], 0, 1000), Slots::default());
    }

    #[test]
    fn usage_is_a_rate_between_scrapes() {
        let node = Node {
            name: "n1".into(),
            host: "127.0.0.1".into(),
            ssh_user: None,
            ssh_port: None,
            p2p: "127.0.0.1:1".into(),
            rpc: "127.0.0.1:2".into(),
            validator_id: "validator1".into(),
            provider_id: None,
            pid: None,
            data_dir: None,
            log: None,
            rpc_auth: None,
        };
        let t = Instant::now();
        let a = Scrape { at: Some(t), cpu: Some(1.0), rss: Some(1e7), p2p: Some(0.0), finalized: Some(10.0) };
        let b = Scrape {
            at: Some(t + Duration::from_secs(2)),
            cpu: Some(2.0),
            rss: Some(2e7),
            p2p: Some(250_000.0),
            finalized: Some(30.0),
        };
        let u = usage(&[node], &[a], &[b]);
        assert_eq!(u[0].cpu_pct, Some(50.0));
        assert_eq!(u[0].rss_mb, Some(20.0));
        assert_eq!(u[0].mbit_s, Some(1.0));
        assert_eq!(u[0].finalized, Some(20));
    }
}
