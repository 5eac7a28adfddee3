//! `timectl stability`: the plan's 72-hour test, done so that its verdict means something.
//!
//! The plan's script counted distinct heights, so it cried "mismatch" whenever one node was a
//! block behind and never saw a real fork. Here each interval compares block *hashes* at the
//! highest height every reachable node has (a fork is two hashes at one height), rechecks an
//! earlier height now and then, notices nodes that stop making progress, and proves finality
//! by sending small probe transactions and watching them finalize on a different node. Every
//! observation is appended to a JSONL log at once, so nothing is lost on a crash and a run can
//! be resumed; the verdict is `monitor::analyze` over that log.

use crate::chaos::{self, Action, Backend, Schedule};
use crate::client;
use crate::context::Ctx;
use crate::error::{Hinted, EXIT_FORK, EXIT_LOST_TX, EXIT_OK, EXIT_STALL};
use crate::inventory::{self, Node};
use crate::measure::{MetricsScrape, ResourceSource};
use crate::monitor::{
    self, summary_rows, Analysis, ChaosConfig, ChaosEnd, ChaosStart, Finding, HashCheck, NodeObs, ProbeResult,
    ProbeSent, Reconverged, Record, Severity, Start, Tick, MAX_FINDINGS_SHOWN,
};
use crate::output::{human_duration, now_ms, Ui};
use clap::Args;
use jsonrpsee::http_client::HttpClient;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use timed::api::TimeRpcClient;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  timectl stability --hours 72 --report run.jsonl
  timectl stability --resume run.jsonl           continue after a crash or ctrl-c
  timectl stability --hours 72 --detach          in the background, as a systemd unit
  timectl stability --status run.jsonl           its progress and findings so far
  timectl stability --hours 0.5 --interval 2 --probe-every 1 --probe-timeout 20
  timectl stability --hours 2 --chaos kill,restart,partition,latency --chaos-every 2 --chaos-seed 7
  timectl stability --hours 2 --load 20           with 20 payments a second going on

Each interval: every node's height and mempool; block hashes at the highest common height
(a fork is different hashes at one height, never merely different heights); every
--probe-every intervals a small transaction from one node (rotating) to another node's wallet,
tracked on a different node until final. ctrl-c ends the run with its summary.

--chaos perturbs the network while it is watched: kill (kill -9, then back: timectl restarts a
local node, systemd a deployed one), restart (clean stop, start after a while), partition (cut
a minority off, then heal) and latency (tc netem delay, jitter, loss). Partition and latency
need hosts with their own network (rehearsal, ssh). One perturbation every --chaos-every,
never more faulty nodes than the quorum tolerates (unless --chaos-max-faulty says so), the same
schedule for the same --chaos-seed. A node that is down or cut off may lag; after each heal
every node must be on one tip within --reconverge seconds.

Exit codes: 0 clean, 3 fork, 4 lost transaction (or one final on a cut-off minority), 5 stall,
lost quorum or no reconvergence (the first that applies), 1 error.")]
pub struct StabilityArgs {
    /// How long the run lasts, counted from its start (also across --resume).
    #[arg(long, value_name = "H", conflicts_with = "resume")]
    pub hours: Option<f64>,
    /// Seconds between samples [default: 10].
    #[arg(long, value_name = "SECS", conflicts_with = "resume")]
    pub interval: Option<f64>,
    /// Run log to write (JSON lines) [default: stability-TIMESTAMP.jsonl].
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "resume")]
    pub report: Option<PathBuf>,
    /// Continue the run in this log, with its settings and counters.
    #[arg(long, value_name = "FILE.jsonl")]
    pub resume: Option<PathBuf>,
    /// Intervals without height progress that make a stall [default: 3].
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    pub stall_intervals: Option<u32>,
    /// Send a probe transaction every N intervals, 0 for none [default: 3].
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    pub probe_every: Option<u32>,
    /// Seconds a probe may take to finalize before it counts as lost [default: 60].
    #[arg(long, value_name = "SECS", conflicts_with = "resume")]
    pub probe_timeout: Option<f64>,
    /// Seconds to wait for each node's answers in a sample.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
    /// Perturb the network while watching it: any of kill,restart,partition,latency.
    #[arg(long, value_name = "ACTIONS", value_delimiter = ',', conflicts_with = "resume")]
    pub chaos: Vec<String>,
    /// Time between perturbations: minutes (0.5 is 30 s) or a duration (30s, 2m) [default: 5].
    #[arg(long, value_name = "MIN", value_parser = chaos::parse_every, requires = "chaos")]
    pub chaos_every: Option<f64>,
    /// Seed of the perturbation schedule: the same seed gives the same schedule [default: random].
    #[arg(long, value_name = "N", requires = "chaos")]
    pub chaos_seed: Option<u64>,
    /// Most nodes down or cut off at once [default: what the quorum tolerates]. More halts the
    /// network on purpose.
    #[arg(long, value_name = "N", requires = "chaos")]
    pub chaos_max_faulty: Option<usize>,
    /// Never heal a perturbation (until the run ends): rehearses the monitor's own report of it.
    #[arg(long, hide = true, requires = "chaos")]
    pub chaos_no_heal: bool,
    /// Seconds every node has after a heal to be on one tip again [default: 30].
    #[arg(long, value_name = "SECS", conflicts_with = "resume")]
    pub reconverge: Option<f64>,
    /// Keep this many real payments per second going during the run (signed payments between
    /// fresh keys, sent round-robin to the nodes; the nodes' wallets fund them once), so the
    /// mempool is exercised, not just empty blocks.
    #[arg(long, value_name = "TPS", conflicts_with = "resume")]
    pub load: Option<f64>,
    /// Run in the background as a transient systemd unit (survives closing the terminal).
    #[arg(long, conflicts_with = "status")]
    pub detach: bool,
    /// Progress and findings so far of a run (detached or not), from its log and its unit.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["resume", "hours", "interval", "report", "chaos"])]
    pub status: Option<PathBuf>,
}

/// Set for a detached run, so its start record names its unit.
const UNIT_ENV: &str = "TIMECTL_STABILITY_UNIT";
/// What a detached run needs from the operator's environment (paths and settings, no secrets).
const PASS_ENV: [&str; 6] = [
    "TIMECTL_INVENTORY_DIR",
    "TIMECTL_STATE_DIR",
    "TIMECTL_SSH_IDENTITY",
    "TIMECTL_SSH_KNOWN_HOSTS",
    "TIMECTL_NODE_LOG",
    "RUST_LOG",
];

/// Probe amount in TIME: far above dust, far below any wallet's genesis outputs.
const PROBE_AMOUNT: f64 = 0.001;
/// Every this many intervals an earlier fork-check height is checked again.
const RECHECK_EVERY: u64 = 5;

pub fn exit_code(a: &Analysis) -> u8 {
    if a.count("fork") > 0 {
        EXIT_FORK
    } else if a.count("lost tx") > 0 || a.count("minority finalized") > 0 {
        EXIT_LOST_TX
    } else if a.count("stall") > 0 || a.count("quorum lost") > 0 || a.count("not reconverged") > 0 {
        EXIT_STALL
    } else {
        EXIT_OK
    }
}

pub fn render_summary(a: &Analysis, ui: Ui) -> String {
    let mut t = ui.table(&["check", "result"]);
    for (label, value, bad) in summary_rows(a) {
        let color = if bad {
            comfy_table::Color::Red
        } else if label == "result" {
            comfy_table::Color::Green
        } else {
            comfy_table::Color::Reset
        };
        t.add_row(vec![comfy_table::Cell::new(label), ui.colored(value, color)]);
    }
    let mut out = t.to_string();
    if !a.findings.is_empty() {
        let mut f = ui.table(&["at", "severity", "finding", "detail"]);
        for x in a.findings.iter().take(MAX_FINDINGS_SHOWN) {
            let (sev, color) = match x.severity() {
                Severity::Error => ("error", comfy_table::Color::Red),
                Severity::Warning => ("warning", comfy_table::Color::Yellow),
                Severity::Info => ("expected", comfy_table::Color::Blue),
            };
            f.add_row(vec![
                comfy_table::Cell::new(format!("+{}", human_duration(x.t_ms().saturating_sub(a.started_ms) / 1000))),
                ui.colored(sev, color),
                comfy_table::Cell::new(x.kind()),
                comfy_table::Cell::new(x.describe()),
            ]);
        }
        out.push('\n');
        out.push_str(&f.to_string());
        if let Some(more) = a.findings.len().checked_sub(MAX_FINDINGS_SHOWN).filter(|m| *m > 0) {
            out.push_str(&format!("\n... and {more} more findings (all of them: --json, or the run log)"));
        }
    }
    out
}

struct Monitor {
    nodes: Vec<Node>,
    clients: Vec<HttpClient>,
    timeout: Duration,
    cfg: Start,
    file: std::fs::File,
    records: Vec<Record>,
    seq: u64,
    next_probe: u64,
    recheck_height: Option<u64>,
    wallets: Vec<Option<String>>,
    results_tx: mpsc::UnboundedSender<ProbeResult>,
    in_flight: usize,
    scrape: MetricsScrape,
    /// Perturbations whose reconvergence is already in the log.
    reconverged_logged: BTreeSet<u64>,
    /// Nodes down, cut off or not yet caught up: what the chaos scheduler must leave alone.
    lagging_tx: watch::Sender<usize>,
    /// Nodes the chaos task is cutting off right now, set before the partition is applied: its
    /// record reaches the log only once applied, and a probe sent from such a node in between
    /// could not finalize until the heal.
    cutting: watch::Receiver<BTreeSet<String>>,
    /// `--load` counters, read into every sample.
    load: Option<Arc<crate::load::Counters>>,
    /// The nodes as last reached (tunnel port, cookie), for `--load`'s clients.
    nodes_tx: Option<watch::Sender<Vec<Node>>>,
}

fn log_err(path: &Path) -> impl FnOnce(std::io::Error) -> anyhow::Error + '_ {
    move |e| anyhow::Error::new(e).context(format!("cannot write run log {}", path.display()))
}

impl Monitor {
    fn write(&mut self, r: Record) -> std::io::Result<()> {
        monitor::append(&mut self.file, &r)?;
        self.records.push(r);
        Ok(())
    }

    async fn observe(&self) -> Vec<NodeObs> {
        let calls = self.nodes.iter().zip(&self.clients).map(|(n, c)| async move {
            let t0 = std::time::Instant::now();
            let rpc = async {
                tokio::try_join!(c.get_block_count(), c.get_mempool_info())
                    .map_err(|e| (client::compact_error(&e), client::rejected_status(&e) == Some(401)))
            };
            let (r, metrics) = tokio::join!(tokio::time::timeout(self.timeout, rpc), self.scrape.snapshot(n));
            let r = r.unwrap_or_else(|_| Err(("timeout".into(), false)));
            let latency_ms = t0.elapsed().as_millis() as u64;
            let metrics = metrics.ok();
            match r {
                Ok((height, mempool)) => NodeObs {
                    name: n.name.clone(),
                    reachable: true,
                    height: Some(height),
                    mempool: Some(mempool.size as u64),
                    error: None,
                    unauthorized: false,
                    latency_ms,
                    rss_bytes: metrics.as_ref().and_then(|m| m.rss_bytes).map(|v| v as u64),
                    cpu_seconds: metrics.as_ref().and_then(|m| m.cpu_seconds),
                },
                Err((e, unauthorized)) => NodeObs {
                    name: n.name.clone(),
                    reachable: false,
                    error: Some(e),
                    unauthorized,
                    latency_ms,
                    ..Default::default()
                },
            }
        });
        futures::future::join_all(calls).await
    }

    async fn hashes_at(&self, height: u64, which: &[usize], recheck: bool) -> HashCheck {
        let calls = which.iter().map(|&i| async move {
            let r = tokio::time::timeout(self.timeout, self.clients[i].get_block_hash(height))
                .await
                .map_err(|_| "timeout".to_string())
                .and_then(|r| r.map_err(|e| client::compact_error(&e)));
            (self.nodes[i].name.clone(), r)
        });
        let mut check = HashCheck { height, recheck, hashes: BTreeMap::new(), errors: BTreeMap::new() };
        for (name, r) in futures::future::join_all(calls).await {
            match r {
                Ok(h) => {
                    check.hashes.insert(name, h);
                }
                Err(e) => {
                    check.errors.insert(name, e);
                }
            }
        }
        check
    }

    async fn tick(&mut self) -> anyhow::Result<()> {
        let t_ms = now_ms();
        let nodes = self.observe().await;
        let reachable: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].reachable).collect();
        let mut checks = Vec::new();
        if let Some(common) = reachable.iter().filter_map(|&i| nodes[i].height).min() {
            checks.push(self.hashes_at(common, &reachable, false).await);
            if self.seq.is_multiple_of(RECHECK_EVERY) {
                if let Some(h) = self.recheck_height.filter(|&h| h != common) {
                    checks.push(self.hashes_at(h, &reachable, true).await);
                }
                self.recheck_height = Some(common);
            }
        }
        let load = self.load.as_ref().map(|c| {
            let (accepted, refused) = c.get();
            monitor::LoadCounts { accepted, refused }
        });
        let tick = Tick { seq: self.seq, t_ms, nodes, checks, load };
        self.write(Record::Tick(tick))?;
        if self.cfg.probe_every > 0 && self.seq.is_multiple_of(u64::from(self.cfg.probe_every)) {
            self.send_probe(&reachable).await?;
        }
        self.seq += 1;
        Ok(())
    }

    async fn wallet(&mut self, i: usize) -> Option<String> {
        if self.wallets[i].is_none() {
            let r = tokio::time::timeout(self.timeout, self.clients[i].masternode_status()).await;
            if let Ok(Ok(s)) = r {
                self.wallets[i] = Some(s.wallet_address);
            }
        }
        self.wallets[i].clone()
    }

    async fn send_probe(&mut self, reachable: &[usize]) -> anyhow::Result<()> {
        // Ordinary probes stay on the majority side of a partition in force: the cut-off side
        // cannot finalize by design and has its own probe (`send_minority_probe`).
        let cut_off: BTreeSet<String> = monitor::perturbations(&self.records)
            .into_iter()
            .filter(|p| p.action == "partition" && p.error.is_none() && p.end_ms.is_none())
            .flat_map(|p| p.nodes)
            .chain(self.cutting.borrow().iter().cloned())
            .collect();
        let usable: Vec<usize> =
            reachable.iter().copied().filter(|&i| !cut_off.contains(&self.nodes[i].name)).collect();
        let reachable = &usable[..];
        if reachable.is_empty() {
            return Ok(());
        }
        let n = self.nodes.len();
        let from = reachable[(self.next_probe as usize) % reachable.len()];
        let to = (from + 1) % n;
        // Finality is read on a node other than the sender, so a probe only counts once the
        // network, not just the node that accepted it, agrees.
        let checker = if to != from && reachable.contains(&to) {
            to
        } else {
            reachable.iter().copied().find(|&i| i != from).unwrap_or(from)
        };
        self.send_probe_from(from, to, checker, None).await
    }

    /// A probe from the cut-off side of a partition, checked there: it must not finalize
    /// before the heal.
    async fn send_minority_probe(&mut self, c: &ChaosStart) -> anyhow::Result<()> {
        let idx: Vec<usize> =
            c.nodes.iter().filter_map(|name| self.nodes.iter().position(|n| &n.name == name)).collect();
        let Some(&from) = idx.first() else { return Ok(()) };
        let to = (0..self.nodes.len()).find(|i| !idx.contains(i)).unwrap_or(from);
        let checker = idx.get(1).copied().unwrap_or(from);
        self.send_probe_from(from, to, checker, Some(c.id)).await
    }

    async fn send_probe_from(
        &mut self,
        from: usize,
        to: usize,
        checker: usize,
        minority_of: Option<u64>,
    ) -> anyhow::Result<()> {
        let id = self.next_probe;
        self.next_probe += 1;
        let t_ms = now_ms();
        let sent = match self.wallet(to).await {
            None => Err(format!("no wallet address from {}", self.nodes[to].name)),
            Some(addr) => {
                let memo = format!("timectl probe {id}");
                match tokio::time::timeout(
                    self.timeout,
                    self.clients[from].send_to_address(addr, PROBE_AMOUNT, Some(memo)),
                )
                .await
                {
                    Err(_) => Err("timeout".into()),
                    Ok(r) => r.map_err(|e| client::compact_error(&e)),
                }
            }
        };
        let record = ProbeSent {
            id,
            t_ms,
            from: self.nodes[from].name.clone(),
            to: self.nodes[to].name.clone(),
            checker: self.nodes[checker].name.clone(),
            txid: sent.as_ref().ok().cloned(),
            error: sent.err(),
            minority_of,
        };
        if record.txid.is_some() {
            self.track(&record, checker);
        }
        self.write(Record::ProbeSent(record))?;
        Ok(())
    }

    fn track(&mut self, p: &ProbeSent, checker: usize) {
        self.in_flight += 1;
        let c = self.clients[checker].clone();
        let tx = self.results_tx.clone();
        let txid = p.txid.clone().unwrap_or_default();
        let (id, sent_ms) = (p.id, p.t_ms);
        let deadline_ms = sent_ms + (self.cfg.probe_timeout_secs * 1000.0) as u64;
        let per_call = self.timeout;
        tokio::spawn(async move {
            let result = loop {
                let status = match tokio::time::timeout(per_call, c.get_transaction_finality(txid.clone())).await {
                    Ok(Ok(f)) if f.finalized => {
                        break ProbeResult {
                            id,
                            t_ms: now_ms(),
                            finalized: true,
                            status: f.status,
                            latency_ms: Some(now_ms().saturating_sub(sent_ms)),
                            node_finality_ms: f.finality_ms,
                        };
                    }
                    Ok(Ok(f)) => f.status,
                    Ok(Err(e)) => client::compact_error(&e),
                    Err(_) => "timeout".into(),
                };
                if status == "rejected" || now_ms() >= deadline_ms {
                    break ProbeResult {
                        id,
                        t_ms: now_ms(),
                        finalized: false,
                        status,
                        latency_ms: None,
                        node_finality_ms: None,
                    };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let _ = tx.send(result);
        });
    }

    /// A node that stopped answering for three samples in a row (and is not down on purpose)
    /// gets a new client, and behind an SSH forward a new session and forward: after the
    /// service restarts, an old forward has been seen to keep resetting connections while a new
    /// one reaches the node at once.
    async fn reconnect(&mut self, ctx: &Ctx, inv: &inventory::Inventory, failing: &mut [u32]) {
        let Some(Record::Tick(t)) = self.records.iter().rev().find(|r| matches!(r, Record::Tick(_))) else {
            return;
        };
        let down: Vec<bool> =
            self.nodes.iter().map(|n| t.nodes.iter().any(|o| o.name == n.name && !o.reachable)).collect();
        // A node that answers 401 has a new cookie (it restarted): the client we hold can never
        // succeed again, so it is renewed at once instead of after the back-off.
        let refused: Vec<bool> =
            self.nodes.iter().map(|n| t.nodes.iter().any(|o| o.name == n.name && o.unauthorized)).collect();
        // Down on purpose now: nothing to re-open until the heal.
        let perturbed: BTreeSet<String> = monitor::perturbations(&self.records)
            .into_iter()
            .filter(|p| p.error.is_none() && p.end_ms.is_none())
            .flat_map(|p| p.nodes)
            .collect();
        for (i, is_down) in down.into_iter().enumerate() {
            if perturbed.contains(&self.nodes[i].name) {
                // Down on purpose: the back-off starts afresh at the heal, so a node that comes
                // back is re-reached within a few samples, not after the outage's own length.
                failing[i] = 0;
                continue;
            }
            failing[i] = if is_down { failing[i] + 1 } else { 0 };
            // At 3, 6, 12, 24, ... silent samples: each attempt is a new session that stays
            // open until the run ends, so a long outage must not pile them up.
            let backoff = failing[i] >= 3 && (failing[i] / 3).is_power_of_two() && failing[i].is_multiple_of(3);
            let due = backoff || (refused[i] && failing[i] == 1);
            if !due {
                continue;
            }
            if !inv.provider.tunnels_rpc() {
                // A node on this machine: a fresh client (and the cookie a restart rewrote).
                // A client kept across the node's restart has been seen to keep failing with
                // "connection refused" while a new one reaches the node at once.
                match client::rpc_client(&self.nodes[i], self.timeout) {
                    Ok(c) => {
                        tracing::warn!("{}: new RPC client after {} silent samples", self.nodes[i].name, failing[i]);
                        self.clients[i] = c;
                    }
                    Err(e) => tracing::warn!("{}: {e}", self.nodes[i].name),
                }
                continue;
            }
            match ctx.reach(inv, std::slice::from_ref(&inv.nodes[i])).await {
                Ok(mut fresh) => match client::rpc_client(&fresh[0], self.timeout) {
                    Ok(c) => {
                        tracing::warn!(
                            "{}: re-opened its SSH tunnel after {} silent samples",
                            inv.nodes[i].name,
                            failing[i]
                        );
                        self.clients[i] = c;
                        self.nodes[i] = fresh.remove(0);
                        if let Some(tx) = &self.nodes_tx {
                            tx.send_replace(self.nodes.clone());
                        }
                    }
                    Err(e) => tracing::warn!("{}: {e}", inv.nodes[i].name),
                },
                Err(e) => tracing::warn!("{}: cannot re-open its SSH tunnel: {e:#}", inv.nodes[i].name),
            }
        }
    }

    /// After each sample: the reconvergence of healed perturbations goes into the log as it
    /// is seen, and the chaos scheduler learns how many nodes are not in step.
    fn after_tick(&mut self) -> std::io::Result<Analysis> {
        let a = monitor::analyze(&self.records);
        for p in &a.perturbations {
            if let Some(after_ms) = p.reconverge_ms.filter(|_| !self.reconverged_logged.contains(&p.id)) {
                let t_ms = p.end_ms.unwrap_or_default() + after_ms;
                let height = self
                    .records
                    .iter()
                    .rev()
                    .find_map(|r| match r {
                        Record::Tick(t) if t.t_ms == t_ms => t.nodes.iter().filter_map(|o| o.height).max(),
                        _ => None,
                    })
                    .unwrap_or_default();
                self.reconverged_logged.insert(p.id);
                self.write(Record::Reconverged(Reconverged { id: p.id, t_ms, after_ms, height }))?;
            }
        }
        let mut lagging: BTreeSet<String> = BTreeSet::new();
        if let Some(Record::Tick(t)) = self.records.iter().rev().find(|r| matches!(r, Record::Tick(_))) {
            lagging.extend(t.nodes.iter().filter(|o| !o.reachable).map(|o| o.name.clone()));
        }
        let bound_ms = (self.cfg.reconverge_secs * 1000.0) as u64;
        for p in a.perturbations.iter().filter(|p| p.error.is_none() && p.reconverge_ms.is_none()) {
            // In force, or healed but not yet caught up (within its bound).
            if p.end_ms.is_none_or(|e| now_ms() < e + bound_ms) {
                lagging.extend(p.nodes.iter().cloned());
            }
        }
        self.lagging_tx.send_replace(lagging.len());
        Ok(a)
    }

    fn progress_message(&self, a: &Analysis) -> String {
        let heights: Vec<String> =
            a.nodes.values().map(|s| s.last_height.map_or("-".into(), |h| h.to_string())).collect();
        format!(
            "heights {} | forks {} | stalls {} | probes {}/{} final, {} lost",
            heights.join("/"),
            a.count("fork"),
            a.count("stall"),
            a.probes.finalized,
            a.probes.sent,
            a.probes.lost
        )
    }
}

fn chaos_config(a: &StabilityArgs) -> anyhow::Result<Option<ChaosConfig>> {
    if a.chaos.is_empty() {
        return Ok(None);
    }
    let mut actions = Vec::new();
    for x in &a.chaos {
        let name = Action::parse(x)?.name().to_string();
        if !actions.contains(&name) {
            actions.push(name);
        }
    }
    Ok(Some(ChaosConfig {
        actions,
        every_secs: a.chaos_every.unwrap_or(300.0),
        // Drawn once and logged, so even an unseeded run can be replayed.
        seed: a.chaos_seed.unwrap_or_else(rand::random),
        // Resolved to what the quorum tolerates once the inventory is read.
        max_faulty: a.chaos_max_faulty.unwrap_or(usize::MAX),
        no_heal: a.chaos_no_heal,
    }))
}

/// The chaos side of a run: one perturbation per slot of the schedule, each healed before the
/// next, skipped when nodes are still down or catching up and the budget is spent.
struct ChaosRun {
    backend: Arc<Backend>,
    schedule: Schedule,
    names: Vec<String>,
    max_faulty: usize,
    no_heal: bool,
    first_id: u64,
    started_ms: u64,
    end_ms: u64,
    margin_ms: u64,
    cutting: watch::Sender<BTreeSet<String>>,
}

impl ChaosRun {
    async fn run(
        self,
        out: mpsc::UnboundedSender<Record>,
        mut stop: watch::Receiver<bool>,
        lagging: watch::Receiver<usize>,
    ) {
        let every = self.schedule.every_ms.max(1000);
        let mut id = self.first_id;
        // Slots are counted from the run's start, so a resumed run keeps the rhythm.
        let mut slot = now_ms().saturating_sub(self.started_ms) / every + 1;
        loop {
            let at = self.started_ms + slot * every;
            slot += 1;
            if at + every * 6 / 10 + self.margin_ms > self.end_ms {
                return;
            }
            if !sleep_or_stop(at.saturating_sub(now_ms()), &mut stop).await {
                return;
            }
            let budget = self.max_faulty.saturating_sub(*lagging.borrow());
            let step = self.schedule.step(id, budget.max(1));
            if step.action.faulty() && budget == 0 {
                tracing::warn!("chaos: skipping {} #{id}: nodes are still down or catching up", step.action.name());
                continue;
            }
            let targets: BTreeSet<String> = step.targets.iter().map(|&i| self.names[i].clone()).collect();
            if step.action == Action::Partition {
                self.cutting.send_replace(targets);
            }
            let t_ms = now_ms();
            let applied = self.backend.apply(&step).await;
            let ok = applied.is_ok();
            let _ = out.send(Record::Chaos(ChaosStart {
                id,
                t_ms,
                action: step.action.name().into(),
                nodes: step.targets.iter().map(|&i| self.names[i].clone()).collect(),
                detail: applied.as_ref().cloned().unwrap_or_default(),
                planned_end_ms: t_ms + if self.backend.heals_itself(step.action) { 0 } else { step.hold_ms },
                faulty: step.action.faulty(),
                error: applied.err().map(|e| e.to_string()),
            }));
            id += 1;
            if !ok {
                // A step can fail part-way (a partition cut on its first node, refused on the
                // second): every target is healed at once, so nothing stays broken for the rest
                // of the run. Heals are no-ops where nothing was applied.
                self.heal(&step, &out).await;
                continue;
            }
            let stopped = if self.no_heal {
                // Held until the run ends; healed then so nothing stays broken.
                let _ = stop.wait_for(|s| *s).await;
                true
            } else if self.backend.heals_itself(step.action) {
                false
            } else {
                !sleep_or_stop(step.hold_ms, &mut stop).await
            };
            self.heal(&step, &out).await;
            if stopped {
                return;
            }
        }
    }

    /// Heals a step, logs its end, and lets probes use the nodes it cut off again.
    async fn heal(&self, step: &chaos::Step, out: &mpsc::UnboundedSender<Record>) {
        let healed = self.backend.heal(step).await;
        let _ = out.send(Record::ChaosEnd(ChaosEnd {
            id: step.id,
            t_ms: now_ms(),
            error: healed.err().map(|e| e.to_string()),
        }));
        self.cutting.send_replace(BTreeSet::new());
    }
}

/// Sleeps `ms` unless the run is told to stop first; false when it was.
async fn sleep_or_stop(ms: u64, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

fn default_log_path() -> PathBuf {
    PathBuf::from(format!("stability-{}.jsonl", crate::output::compact_timestamp(now_ms())))
}

/// `--detach`: the same command line minus `--detach`, as a transient unit with its own log
/// file named explicitly, so `--status` and `--resume` find it.
fn detach(a: &StabilityArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Err(Hinted {
            message: "--detach needs systemd as the service manager of this machine (/run/systemd/system is missing)"
                .into(),
            hint: "run it in tmux or screen instead, or with nohup; `--resume FILE` continues a run that stopped"
                .into(),
        }
        .into());
    }
    let systemd_run = ["/usr/bin/systemd-run", "/bin/systemd-run"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| anyhow::anyhow!("systemd-run is not installed (package systemd)"))?;
    let cwd = std::env::current_dir()?;
    let exe = std::env::current_exe()?;
    let mut args: Vec<String> = std::env::args().skip(1).filter(|x| x != "--detach").collect();
    let log = match (&a.resume, &a.report) {
        (Some(p), _) | (None, Some(p)) => std::path::absolute(p)?,
        (None, None) => {
            let p = cwd.join(default_log_path());
            args.extend(["--report".into(), p.display().to_string()]);
            p
        }
    };
    if a.resume.is_none() && log.exists() {
        return Err(Hinted {
            message: format!("run log {} already exists", log.display()),
            hint: format!("continue it with `timectl stability --detach --resume {}`", log.display()),
        }
        .into());
    }
    let network = ctx.inventory().map(|(_, i)| i.network.clone()).unwrap_or_else(|_| "run".into());
    let safe: String = network.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let unit = format!("timectl-stability-{safe}-{}", crate::output::compact_timestamp(now_ms()).to_lowercase());
    let mut cmd = std::process::Command::new(systemd_run);
    cmd.arg("--unit")
        .arg(&unit)
        .arg("--collect")
        .arg("--property=Type=exec")
        .arg(format!("--working-directory={}", cwd.display()))
        .arg(format!("--setenv={UNIT_ENV}={unit}"))
        .arg("--setenv=NO_COLOR=1");
    for var in PASS_ENV {
        if let Ok(v) = std::env::var(var) {
            cmd.arg(format!("--setenv={var}={v}"));
        }
    }
    cmd.arg("--").arg(exe).args(&args);
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("systemd-run failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    if ctx.ui.json {
        ctx.ui.print_json(&serde_json::json!({ "unit": unit, "log": log }));
    } else {
        println!("started unit {unit}");
        println!("run log: {}", log.display());
        println!("progress: timectl stability --status {}", log.display());
        println!("stop:     systemctl stop {unit}   (then --resume continues it)");
    }
    Ok(EXIT_OK)
}

/// The unit's state as `systemctl show` reports it, when there is a systemd to ask.
fn unit_state(unit: &str) -> Option<BTreeMap<String, String>> {
    let out = std::process::Command::new("systemctl")
        .args(["show", unit, "-p", "ActiveState,SubState,MainPID,ExecMainStartTimestamp"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let map: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// `--status`: how far a run has come and what it found so far.
fn status(path: &Path, ui: Ui) -> anyhow::Result<u8> {
    let records = monitor::read_log(path)?;
    let a = monitor::analyze(&records);
    let Some(Record::Start(start)) = records.first() else { unreachable!("read_log guarantees a start record") };
    let unit = start.unit.as_deref().map(|u| (u, unit_state(u)));
    let last_sample = records.iter().rev().find_map(|r| match r {
        Record::Tick(t) => Some(t.t_ms),
        _ => None,
    });
    let state = match (&a.ended, &unit) {
        (Some(r), _) => format!("ended ({r})"),
        (None, Some((_, Some(s)))) => {
            format!("{} ({})", s.get("ActiveState").map_or("?", |v| v), s.get("SubState").map_or("?", |v| v))
        }
        (None, Some((_, None))) => "unknown (the unit is gone or systemd cannot be asked)".into(),
        (None, None) => "running or stopped without an end record (not detached)".into(),
    };
    let code = exit_code(&a);
    if ui.json {
        ui.print_json(&serde_json::json!({
            "log": path,
            "unit": unit.as_ref().map(|(u, _)| u),
            "unit_state": unit.as_ref().and_then(|(_, s)| s.clone()),
            "state": state,
            "last_sample_ms": last_sample,
            "passed_so_far": a.passed(),
            "analysis": a,
        }));
        return Ok(code);
    }
    println!("run log: {}", path.display());
    if let Some((u, _)) = &unit {
        println!("unit:    {u}");
    }
    println!("state:   {state}");
    let pct = if a.planned_secs > 0 { a.duration_secs as f64 * 100.0 / a.planned_secs as f64 } else { 100.0 };
    println!(
        "progress: {} of {} ({pct:.0}%), last sample {}",
        human_duration(a.duration_secs),
        human_duration(a.planned_secs),
        last_sample.map_or("none yet".into(), |t| format!("{} ago", human_duration(now_ms().saturating_sub(t) / 1000)))
    );
    println!("{}", render_summary(&a, ui));
    Ok(code)
}

pub async fn run(a: StabilityArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    if let Some(path) = &a.status {
        return status(path, ui);
    }
    if a.detach {
        return detach(&a, ctx);
    }
    // Settings and history come from the log on --resume, from the flags otherwise.
    let (log_path, records, cfg, inv_path) = if let Some(path) = &a.resume {
        let records = monitor::read_log(path)?;
        let Some(Record::Start(cfg)) = records.first().cloned() else {
            unreachable!("read_log guarantees a start record");
        };
        let inv_path = if ctx.names_inventory() { ctx.inventory_path()? } else { PathBuf::from(&cfg.inventory) };
        (path.clone(), records, cfg, inv_path)
    } else {
        let inv_path = ctx.inventory_path()?;
        let cfg = Start {
            version: monitor::LOG_VERSION,
            started_ms: now_ms(),
            hours: a.hours.unwrap_or(72.0),
            interval_secs: a.interval.unwrap_or(10.0),
            stall_intervals: a.stall_intervals.unwrap_or(3),
            probe_every: a.probe_every.unwrap_or(3),
            probe_timeout_secs: a.probe_timeout.unwrap_or(60.0),
            network: String::new(),
            inventory: std::path::absolute(&inv_path).unwrap_or_else(|_| inv_path.clone()).display().to_string(),
            nodes: Vec::new(),
            reconverge_secs: a.reconverge.unwrap_or(30.0),
            chaos: chaos_config(&a)?,
            load_tps: a.load,
            unit: std::env::var(UNIT_ENV).ok(),
        };
        (a.report.clone().unwrap_or_else(default_log_path), Vec::new(), cfg, inv_path)
    };
    if !(cfg.interval_secs > 0.0 && cfg.hours >= 0.0) {
        anyhow::bail!("--interval must be positive and --hours not negative");
    }
    let inv = inventory::Inventory::load(&inv_path)?;
    inventory::remember(&inv_path);
    if inv.nodes.is_empty() {
        anyhow::bail!("{} lists no nodes", inv_path.display());
    }
    let mut cfg = cfg;
    if let Some(c) = cfg.chaos.as_mut().filter(|c| c.max_faulty == usize::MAX) {
        c.max_faulty = chaos::tolerance(inv.nodes.len());
    }

    // Not capped by the interval: a slow answer delays the next sample, while a short cap
    // would call a busy node unreachable.
    let timeout = Duration::from_secs_f64(a.timeout.max(0.1));
    // Remote nodes through SSH forwards (held open by the context for the whole run).
    let reached = ctx.reach(&inv, &inv.nodes).await?;
    let clients = reached
        .iter()
        .map(|n| client::rpc_client(n, timeout))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    // The chaos backend is checked before the log is created: bad input loses nothing.
    let chaos_setup = match &cfg.chaos {
        None => None,
        Some(c) => {
            let actions = c.actions.iter().map(|x| Action::parse(x)).collect::<Result<Vec<_>, _>>()?;
            let n = inv.nodes.len();
            if c.max_faulty == 0 {
                return Err(chaos::ChaosError::NoTolerance { nodes: n, quorum: monitor::quorum_of(n) }.into());
            }
            if c.max_faulty > chaos::tolerance(n) {
                tracing::warn!(
                    "--chaos-max-faulty {} is more than the {} of {n} nodes the quorum tolerates: expect halts",
                    c.max_faulty,
                    chaos::tolerance(n)
                );
            }
            let sessions = ctx.sessions_for(&inv.nodes).await;
            let backend = Backend::for_inventory(&inv, &inv_path, &actions, sessions)?;
            let schedule = Schedule { actions, seed: c.seed, every_ms: (c.every_secs * 1000.0) as u64, nodes: n };
            Some((Arc::new(backend), schedule, c.clone()))
        }
    };
    let resuming = !records.is_empty();
    let file = if resuming {
        std::fs::OpenOptions::new().append(true).open(&log_path)
    } else {
        std::fs::OpenOptions::new().write(true).create_new(true).open(&log_path)
    }
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::Error::new(Hinted {
                message: format!("run log {} already exists", log_path.display()),
                hint: format!(
                    "continue it with `timectl stability --resume {}`, or pick another --report file",
                    log_path.display()
                ),
            })
        } else {
            log_err(&log_path)(e)
        }
    })?;

    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let (lagging_tx, lagging_rx) = watch::channel(0usize);
    let (cutting_tx, cutting_rx) = watch::channel(BTreeSet::new());
    let (seq, next_probe) = monitor::next_counters(&records);
    let mut m = Monitor {
        wallets: vec![None; inv.nodes.len()],
        nodes: reached,
        clients,
        timeout,
        cfg: cfg.clone(),
        file,
        records,
        seq,
        next_probe,
        recheck_height: None,
        results_tx,
        in_flight: 0,
        scrape: MetricsScrape { timeout },
        reconverged_logged: BTreeSet::new(),
        lagging_tx,
        cutting: cutting_rx,
        load: None,
        nodes_tx: None,
    };
    if resuming {
        m.write(Record::Resume { t_ms: now_ms() }).map_err(log_err(&log_path))?;
        // Probes the previous invocation left unresolved are tracked again, on their checker.
        m.reconverged_logged = m
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Reconverged(x) => Some(x.id),
                _ => None,
            })
            .collect();
        for p in monitor::outstanding_probes(&m.records) {
            match m.nodes.iter().position(|n| n.name == p.checker) {
                Some(i) => m.track(&p, i),
                None => tracing::warn!("probe {}: checker {} not in the inventory", p.id, p.checker),
            }
        }
    } else {
        let mut start = cfg.clone();
        start.network = inv.network.clone();
        start.nodes = inv.nodes.iter().map(|n| n.name.clone()).collect();
        m.cfg = start.clone();
        m.write(Record::Start(start)).map_err(log_err(&log_path))?;
    }

    let end_ms = cfg.started_ms + (cfg.hours * 3_600_000.0) as u64;
    let total_ms = end_ms.saturating_sub(cfg.started_ms).max(1);
    if !ui.json {
        eprintln!("run log: {}", log_path.display());
    }
    let bar = ui.bar(total_ms, "starting");
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let interval = Duration::from_secs_f64(cfg.interval_secs);
    let mut interrupted = false;

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(tps) = cfg.load_tps.filter(|t| *t > 0.0) {
        let counters = Arc::new(crate::load::Counters::default());
        m.load = Some(counters.clone());
        let (tx, rx) = watch::channel(m.nodes.clone());
        m.nodes_tx = Some(tx);
        tokio::spawn(crate::load::steady(rx, tps, timeout, counters, stop_rx.clone()));
    }
    // The chaos task applies and heals perturbations on its own clock; its records come back
    // here, so the log has one writer.
    let (chaos_tx, mut chaos_rx) = mpsc::unbounded_channel::<Record>();
    let chaos_task = chaos_setup.map(|(backend, schedule, c)| {
        let first_id = m.records.iter().filter(|r| matches!(r, Record::Chaos(_))).count() as u64;
        let plan = ChaosRun {
            backend,
            schedule,
            names: inv.nodes.iter().map(|n| n.name.clone()).collect(),
            max_faulty: c.max_faulty,
            no_heal: c.no_heal,
            first_id,
            started_ms: cfg.started_ms,
            end_ms,
            // Room after the last heal to judge its reconvergence before the run ends.
            margin_ms: ((cfg.reconverge_secs + 2.0 * cfg.interval_secs) * 1000.0) as u64,
            cutting: cutting_tx,
        };
        tokio::spawn(plan.run(chaos_tx, stop_rx, lagging_rx))
    });

    // Consecutive samples each node did not answer in (reconnected after 3, 6, 12, ...).
    let mut failing: Vec<u32> = vec![0; inv.nodes.len()];
    'run: while now_ms() < end_ms {
        let next = tokio::time::Instant::now() + interval;
        // A sample waits for slow nodes; ctrl-c must not.
        tokio::select! {
            r = m.tick() => r.map_err(|e| e.context("writing the run log"))?,
            _ = sigint.recv() => { interrupted = true; break 'run; }
            _ = sigterm.recv() => { interrupted = true; break 'run; }
        }
        let analysis = m.after_tick().map_err(log_err(&log_path))?;
        m.reconnect(ctx, &inv, &mut failing).await;
        let progress = m.progress_message(&analysis);
        bar.set_position(now_ms().saturating_sub(cfg.started_ms).min(total_ms));
        tracing::info!("{progress}");
        bar.set_message(progress);
        let wake = next.min(tokio::time::Instant::now() + Duration::from_millis(end_ms.saturating_sub(now_ms())));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                Some(r) = results_rx.recv() => {
                    m.in_flight -= 1;
                    m.write(Record::ProbeResult(r)).map_err(log_err(&log_path))?;
                }
                Some(r) = chaos_rx.recv() => {
                    let minority = match &r {
                        Record::Chaos(c) if c.action == "partition" && c.error.is_none() => Some(c.clone()),
                        _ => None,
                    };
                    m.write(r).map_err(log_err(&log_path))?;
                    if let Some(c) = minority {
                        m.send_minority_probe(&c).await.map_err(|e| e.context("writing the run log"))?;
                    }
                }
                _ = sigint.recv() => { interrupted = true; break 'run; }
                _ = sigterm.recv() => { interrupted = true; break 'run; }
            }
        }
    }
    // A completed run waits for its last probes (bounded by the probe timeout).
    if !interrupted && m.in_flight > 0 {
        bar.set_message(format!("waiting for {} probes", m.in_flight));
        while m.in_flight > 0 {
            tokio::select! {
                Some(r) = results_rx.recv() => {
                    m.in_flight -= 1;
                    m.write(Record::ProbeResult(r)).map_err(log_err(&log_path))?;
                }
                _ = sigint.recv() => { interrupted = true; break; }
                _ = sigterm.recv() => { interrupted = true; break; }
            }
        }
    }
    // Whatever is still perturbed is healed before the run ends, and logged.
    stop_tx.send_replace(true);
    if let Some(task) = chaos_task {
        bar.set_message("healing the last perturbation");
        if tokio::time::timeout(Duration::from_secs(120), task).await.is_err() {
            tracing::error!("the chaos task did not finish healing within 120 s");
        }
        while let Ok(r) = chaos_rx.try_recv() {
            m.write(r).map_err(log_err(&log_path))?;
        }
    }
    bar.finish_and_clear();
    let reason = if interrupted { "interrupted" } else { "completed" };
    m.write(Record::End { t_ms: now_ms(), reason: reason.into() }).map_err(log_err(&log_path))?;

    let analysis = monitor::analyze(&m.records);
    let code = exit_code(&analysis);
    if ui.json {
        for line in findings_lines(&analysis) {
            eprintln!("{line}");
        }
        ui.print_json(&serde_json::json!({
            "log": log_path,
            "ended": reason,
            "passed": analysis.passed(),
            "exit_code": code,
            "analysis": analysis,
        }));
    } else {
        println!("{}", render_summary(&analysis, ui));
        println!("run log: {}", log_path.display());
        if interrupted {
            println!("interrupted: continue with `timectl stability --resume {}`", log_path.display());
        }
    }
    Ok(code)
}

/// The failures as lines for stderr when the summary goes to stdout as JSON.
pub fn findings_lines(a: &Analysis) -> Vec<String> {
    a.findings
        .iter()
        .filter(|f: &&Finding| f.severity() == Severity::Error)
        .map(|f| format!("{}: {}", f.kind(), f.describe()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::tests::{chaos, clean_run, kill_run, start, tick};

    fn ui() -> Ui {
        Ui { json: false, color: false, progress: false }
    }

    #[test]
    fn clean_summary_snapshot() {
        let a = monitor::analyze(&clean_run());
        assert_eq!(exit_code(&a), EXIT_OK);
        insta::assert_snapshot!(render_summary(&a, ui()));
    }

    #[test]
    fn fork_summary_snapshot_and_exit_code() {
        let mut r = vec![start(&["n1", "n2", "n3"])];
        for s in 0..5 {
            r.push(tick(
                s,
                &[Some(s + 1), Some(s + 1), if s < 3 { Some(s + 1) } else { None }],
                &["a", "a", if s == 0 { "a" } else { "b" }],
            ));
        }
        let a = monitor::analyze(&r);
        assert_eq!(exit_code(&a), EXIT_FORK);
        assert_eq!(findings_lines(&a).len(), 1);
        insta::assert_snapshot!(render_summary(&a, ui()));
    }

    #[test]
    fn chaos_summary_snapshots() {
        // A tolerated kill: expected lag only, reconvergence measured, exit 0.
        let a = monitor::analyze(&kill_run(|s| s + 1));
        assert_eq!(exit_code(&a), EXIT_OK);
        insta::assert_snapshot!("chaos_clean_summary", render_summary(&a, ui()));

        // Two of four killed and never healed: a halt from lost quorum, not a fork.
        let mut r = vec![start(&["n1", "n2", "n3", "n4"])];
        for s in 0..3u64 {
            r.push(tick(s, &[Some(s + 1); 4], &["a"; 4]));
        }
        r.push(chaos(0, 2, "kill", &["n3", "n4"], 5));
        for s in 3..9u64 {
            r.push(tick(s, &[Some(3), Some(3), None, None], &["a"; 4]));
        }
        let a = monitor::analyze(&r);
        assert_eq!(exit_code(&a), EXIT_STALL);
        insta::assert_snapshot!("chaos_halt_summary", render_summary(&a, ui()));
    }
}
