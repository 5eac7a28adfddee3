//! The stability monitor's record format (one JSON object per line of the run log) and its
//! judgement, `analyze`, a pure function of the records so the same verdict comes from a live
//! run, a resumed run and `timectl report`, and so it can be tested on synthetic runs.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::Path;

pub const LOG_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Start(Start),
    /// A later invocation continued the run (`--resume`).
    Resume {
        t_ms: u64,
    },
    Tick(Tick),
    ProbeSent(ProbeSent),
    ProbeResult(ProbeResult),
    End {
        t_ms: u64,
        reason: String,
    },
    /// A perturbation began (`--chaos`).
    Chaos(ChaosStart),
    /// A perturbation was healed: the node is back, the partition or the delay removed.
    ChaosEnd(ChaosEnd),
    /// Every node reached the same tip after a heal; written by the live monitor so the log
    /// itself carries the figure (`analyze` recomputes it from the ticks).
    Reconverged(Reconverged),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChaosStart {
    pub id: u64,
    pub t_ms: u64,
    /// kill, restart, partition or latency.
    pub action: String,
    /// The nodes that are down, cut off or slowed: they may lag until the heal.
    pub nodes: Vec<String>,
    /// What was done, for the report (the netem settings, the sides of a partition).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// When the scheduler means to heal it; a perturbation still open past this plus the
    /// reconvergence bound is reported as never healed.
    pub planned_end_ms: u64,
    /// Whether it takes down or cuts off nodes (kill, restart, partition) rather than only
    /// slowing them (latency): what counts against the quorum.
    pub faulty: bool,
    /// Set when applying it failed; then nothing happened to the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChaosEnd {
    pub id: u64,
    pub t_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reconverged {
    pub id: u64,
    pub t_ms: u64,
    /// From the heal to the first sample with every node on one tip.
    pub after_ms: u64,
    pub height: u64,
}

/// The chaos settings of a run, kept in its start record so `--resume` continues the same
/// schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChaosConfig {
    pub actions: Vec<String>,
    pub every_secs: f64,
    pub seed: u64,
    pub max_faulty: usize,
    /// Test aid: perturbations are never healed, so the monitor's report of that is tested.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_heal: bool,
}

fn default_reconverge_secs() -> f64 {
    30.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub version: u32,
    pub started_ms: u64,
    pub hours: f64,
    pub interval_secs: f64,
    pub stall_intervals: u32,
    pub probe_every: u32,
    pub probe_timeout_secs: f64,
    pub network: String,
    pub inventory: String,
    pub nodes: Vec<String>,
    /// After a heal, every node must be on one tip within this many seconds.
    #[serde(default = "default_reconverge_secs")]
    pub reconverge_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosConfig>,
    /// Payments per second of `--load`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_tps: Option<f64>,
    /// The transient systemd unit running it (`--detach`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub seq: u64,
    pub t_ms: u64,
    pub nodes: Vec<NodeObs>,
    /// Block hashes compared at one height: the common height of this tick, and now and then
    /// an earlier one again (a node that silently switched chains shows there).
    #[serde(default)]
    pub checks: Vec<HashCheck>,
    /// Payments of `--load` so far in the run (cumulative for this invocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadCounts>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadCounts {
    pub accepted: u64,
    pub refused: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeObs {
    pub name: String,
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mempool: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node refused our credentials (HTTP 401): it restarted and wrote a new cookie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthorized: bool,
    #[serde(default)]
    pub latency_ms: u64,
    /// From `/metrics` when the node serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashCheck {
    pub height: u64,
    #[serde(default)]
    pub recheck: bool,
    /// Node name to block hash at `height`.
    pub hashes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeSent {
    pub id: u64,
    pub t_ms: u64,
    pub from: String,
    pub to: String,
    pub checker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txid: Option<String>,
    /// Set when the node refused the send; nothing to track then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sent on the cut-off side of this partition (sender and checker both there): it must
    /// not finalize before the heal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minority_of: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub id: u64,
    pub t_ms: u64,
    pub finalized: bool,
    /// Last status the checker reported (finalized, confirmed, pending, unknown, rejected) or
    /// the error that ended tracking.
    pub status: String,
    /// From send to the checker first reporting it final, as the monitor measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The checker's own first-seen-to-final time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_finality_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot read run log {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a run-log record: {message}")]
    Bad { path: String, line: usize, message: String },
    #[error("{path} does not start with a start record")]
    NoStart { path: String },
    #[error("{path} was written by log version {found}; this timectl reads version {LOG_VERSION}")]
    Version { path: String, found: u32 },
}

/// Reads a run log. A torn last line (the process died mid-write) is skipped with a warning;
/// anything else malformed is an error naming the line.
pub fn read_log(path: &Path) -> Result<Vec<Record>, LogError> {
    let p = path.display().to_string();
    let io = |source| LogError::Io { path: p.clone(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let lines: Vec<String> = std::io::BufReader::new(file).lines().collect::<Result<_, _>>().map_err(io)?;
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.push(r),
            Err(e) if Some(i) == last && e.is_eof() => {
                tracing::warn!("{p}:{}: ignoring a torn last line", i + 1);
            }
            Err(e) => return Err(LogError::Bad { path: p, line: i + 1, message: e.to_string() }),
        }
    }
    match out.first() {
        Some(Record::Start(s)) if s.version != LOG_VERSION => Err(LogError::Version { path: p, found: s.version }),
        Some(Record::Start(_)) => Ok(out),
        _ => Err(LogError::NoStart { path: p }),
    }
}

/// Appends one record as one line and flushes, so a crash loses at most the record in flight.
pub fn append(file: &mut std::fs::File, record: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).expect("records serialize");
    line.push(b'\n');
    file.write_all(&line)?;
    file.flush()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Expected under a perturbation; shown, never a failure.
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// Nodes reported different block hashes at one height. Consecutive checks that split the
    /// nodes the same way are one finding.
    Fork {
        first_height: u64,
        last_height: u64,
        heights_checked: u64,
        first_seen_ms: u64,
        /// Block hash at `first_height` to the nodes that have it.
        hashes: BTreeMap<String, Vec<String>>,
    },
    /// A node's height did not grow for at least `stall_intervals` intervals.
    Stall {
        node: String,
        height: Option<u64>,
        since_ms: u64,
        /// None while still stalled at the end of the log.
        until_ms: Option<u64>,
        intervals: u64,
    },
    Unreachable {
        node: String,
        since_ms: u64,
        until_ms: Option<u64>,
        intervals: u64,
        error: String,
    },
    /// Sent, accepted, but not final on the checker within the probe timeout.
    LostTx {
        id: u64,
        txid: String,
        from: String,
        checker: String,
        sent_ms: u64,
        status: String,
    },
    ProbeSendFailed {
        id: u64,
        from: String,
        t_ms: u64,
        error: String,
    },
    /// The run ended before a probe's fate was known.
    ProbeUnverified {
        id: u64,
        txid: String,
        sent_ms: u64,
    },
    HeightDecreased {
        node: String,
        from: u64,
        to: u64,
        t_ms: u64,
    },
    /// A node that a perturbation took down or cut off lagged (unreachable or no progress)
    /// while it lasted and until it caught up: expected, not a stall of the network.
    ExpectedLag {
        node: String,
        chaos_id: u64,
        action: String,
        /// "unreachable" or "stall".
        what: String,
        since_ms: u64,
        until_ms: Option<u64>,
    },
    /// More nodes were down or cut off than the quorum allows: the network halts by design.
    /// Stalls in this window are its consequence, not separate failures.
    QuorumLost {
        since_ms: u64,
        until_ms: Option<u64>,
        /// The nodes down or cut off when it began.
        faulty: Vec<String>,
        quorum: usize,
        nodes: usize,
    },
    /// After a heal (or never healed), the nodes were not on one tip within the bound.
    NotReconverged {
        chaos_id: u64,
        action: String,
        start_ms: u64,
        healed_ms: Option<u64>,
        bound_secs: f64,
        /// Nodes behind, unreachable or on another hash at the last sample.
        lagging: Vec<String>,
        t_ms: u64,
    },
    /// A probe sent on the cut-off side of a partition finalized before the heal: a minority
    /// finalized on its own.
    MinorityFinalized {
        id: u64,
        chaos_id: u64,
        node: String,
        t_ms: u64,
    },
    /// The chaos backend could not apply or heal a perturbation.
    ChaosFailed {
        chaos_id: u64,
        action: String,
        t_ms: u64,
        error: String,
    },
}

impl Finding {
    pub fn severity(&self) -> Severity {
        match self {
            Finding::Fork { .. }
            | Finding::Stall { .. }
            | Finding::LostTx { .. }
            | Finding::QuorumLost { .. }
            | Finding::NotReconverged { .. }
            | Finding::MinorityFinalized { .. } => Severity::Error,
            Finding::ExpectedLag { .. } => Severity::Info,
            _ => Severity::Warning,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Fork { .. } => "fork",
            Finding::Stall { .. } => "stall",
            Finding::Unreachable { .. } => "unreachable",
            Finding::LostTx { .. } => "lost tx",
            Finding::ProbeSendFailed { .. } => "probe send failed",
            Finding::ProbeUnverified { .. } => "probe unverified",
            Finding::HeightDecreased { .. } => "height decreased",
            Finding::ExpectedLag { .. } => "expected lag",
            Finding::QuorumLost { .. } => "quorum lost",
            Finding::NotReconverged { .. } => "not reconverged",
            Finding::MinorityFinalized { .. } => "minority finalized",
            Finding::ChaosFailed { .. } => "chaos failed",
        }
    }

    /// When it started, for ordering and plots.
    pub fn t_ms(&self) -> u64 {
        match self {
            Finding::Fork { first_seen_ms, .. } => *first_seen_ms,
            Finding::Stall { since_ms, .. } | Finding::Unreachable { since_ms, .. } => *since_ms,
            Finding::LostTx { sent_ms, .. } | Finding::ProbeUnverified { sent_ms, .. } => *sent_ms,
            Finding::ProbeSendFailed { t_ms, .. }
            | Finding::HeightDecreased { t_ms, .. }
            | Finding::NotReconverged { t_ms, .. }
            | Finding::MinorityFinalized { t_ms, .. }
            | Finding::ChaosFailed { t_ms, .. } => *t_ms,
            Finding::ExpectedLag { since_ms, .. } | Finding::QuorumLost { since_ms, .. } => *since_ms,
        }
    }

    /// One line for tables.
    pub fn describe(&self) -> String {
        match self {
            Finding::Fork { first_height, last_height, heights_checked, hashes, .. } => {
                let sides: Vec<String> = hashes
                    .iter()
                    .map(|(h, nodes)| format!("{} on {}", crate::output::short_hash(h), nodes.join(",")))
                    .collect();
                let span = if first_height == last_height {
                    format!("at height {first_height}")
                } else {
                    format!("at heights {first_height}..{last_height} ({heights_checked} checked)")
                };
                format!("{span}: {}", sides.join(" vs "))
            }
            Finding::Stall { node, height, intervals, until_ms, .. } => format!(
                "{node} made no progress for {intervals} intervals (height {}){}",
                height.map_or("unknown".into(), |h| h.to_string()),
                if until_ms.is_some() { ", then resumed" } else { ", still stalled" }
            ),
            Finding::Unreachable { node, intervals, error, until_ms, .. } => format!(
                "{node} unreachable for {intervals} intervals{}: {}",
                if until_ms.is_some() { " (recovered)" } else { "" },
                error.strip_prefix("unreachable: ").unwrap_or(error)
            ),
            Finding::LostTx { id, txid, from, checker, status, .. } => format!(
                "probe {id} {} sent by {from} not final on {checker} (last status: {status})",
                crate::output::short_hash(txid)
            ),
            Finding::ProbeSendFailed { id, from, error, .. } => {
                format!("probe {id} from {from} not sent: {error}")
            }
            Finding::ProbeUnverified { id, txid, .. } => {
                format!("probe {id} {} still being tracked when the run ended", crate::output::short_hash(txid))
            }
            Finding::HeightDecreased { node, from, to, .. } => {
                format!("{node} height went from {from} down to {to}")
            }
            Finding::ExpectedLag { node, chaos_id, action, what, since_ms, until_ms } => format!(
                "{node} {} during {action} #{chaos_id}, as expected{}",
                if what == "stall" { "made no progress" } else { "was unreachable" },
                until_ms.map_or(String::new(), |u| format!(
                    " ({})",
                    crate::output::human_duration(u.saturating_sub(*since_ms) / 1000)
                ))
            ),
            Finding::QuorumLost { until_ms, faulty, quorum, nodes, .. } => format!(
                "halt: {} of {nodes} nodes down or cut off ({}), quorum is {quorum}{}",
                faulty.len(),
                faulty.join(","),
                if until_ms.is_some() { "; recovered" } else { "; still halted" }
            ),
            Finding::NotReconverged { chaos_id, action, healed_ms, bound_secs, lagging, .. } => match healed_ms {
                Some(_) => format!(
                    "{action} #{chaos_id}: nodes not on one tip {bound_secs} s after the heal (lagging: {})",
                    lagging.join(",")
                ),
                None => format!(
                    "{action} #{chaos_id} never healed (lagging: {})",
                    if lagging.is_empty() { "-".to_string() } else { lagging.join(",") }
                ),
            },
            Finding::MinorityFinalized { id, chaos_id, node, .. } => {
                format!("probe {id} finalized on {node}, on the cut-off side of partition #{chaos_id}")
            }
            Finding::ChaosFailed { chaos_id, action, error, .. } => format!("{action} #{chaos_id}: {error}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProbeStats {
    pub sent: u64,
    /// Sent on the cut-off side of a partition (not counted in `sent`).
    pub minority: u64,
    pub finalized: u64,
    pub lost: u64,
    pub send_failed: u64,
    pub pending: u64,
    pub latency_p50_ms: Option<u64>,
    pub latency_max_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeSummary {
    pub last_height: Option<u64>,
    pub max_mempool: Option<u64>,
    pub unreachable_ticks: u64,
}

/// One perturbation as the analysis saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Perturbation {
    pub id: u64,
    pub action: String,
    pub nodes: Vec<String>,
    pub detail: String,
    pub faulty: bool,
    pub start_ms: u64,
    pub planned_end_ms: u64,
    pub end_ms: Option<u64>,
    /// From the heal to the first sample with every node on one tip at or above the height
    /// the network had at the heal.
    pub reconverge_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Analysis {
    pub network: String,
    pub started_ms: u64,
    pub last_ms: u64,
    pub duration_secs: u64,
    pub planned_secs: u64,
    pub records: usize,
    pub ticks: u64,
    pub ended: Option<String>,
    pub probes: ProbeStats,
    pub nodes: BTreeMap<String, NodeSummary>,
    pub findings: Vec<Finding>,
    /// Validators that must take part for a block: more than two thirds of the nodes.
    pub quorum: usize,
    pub perturbations: Vec<Perturbation>,
    pub reconverge_p50_ms: Option<u64>,
    pub reconverge_max_ms: Option<u64>,
    /// `--load` payments accepted and refused, over every invocation of the run.
    pub load: Option<LoadCounts>,
}

impl Analysis {
    pub fn count(&self, kind: &str) -> usize {
        self.findings.iter().filter(|f| f.kind() == kind).count()
    }

    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.severity() == Severity::Error).count()
    }

    pub fn passed(&self) -> bool {
        self.errors() == 0
    }
}

#[derive(Default)]
struct NodeState {
    last_height: Option<u64>,
    /// Tick index (this node's own count) of the last observed progress.
    last_progress: u64,
    last_progress_ms: u64,
    seen: u64,
    stall: Option<usize>,
    unreachable: Option<usize>,
}

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[idx])
}

/// More than two thirds of `n` validators.
pub fn quorum_of(n: usize) -> usize {
    n * 2 / 3 + 1
}

pub fn analyze(records: &[Record]) -> Analysis {
    let mut a = Analysis { records: records.len(), ..Default::default() };
    let mut stall_intervals = 3u64;
    let mut probe_timeout_ms = 60_000u64;
    let mut interval_ms = 10_000u64;
    let mut reconverge_ms = 30_000u64;
    let mut node_names: Vec<String> = Vec::new();
    a.perturbations = perturbations(records);
    // The open quorum-loss episode (index into findings) and the nodes faulty in it.
    let mut quorum_lost: Option<usize> = None;
    let mut halt_base: BTreeMap<usize, Option<u64>> = BTreeMap::new();
    let mut load_this: Option<LoadCounts> = None;
    let mut not_halted: BTreeSet<usize> = BTreeSet::new();
    let mut states: BTreeMap<String, NodeState> = BTreeMap::new();
    // height -> hash -> nodes (set), and when each height was first checked.
    let mut seen_hashes: BTreeMap<u64, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut height_first_ms: BTreeMap<u64, u64> = BTreeMap::new();
    let mut sent: BTreeMap<u64, &ProbeSent> = BTreeMap::new();
    let mut results: BTreeMap<u64, &ProbeResult> = BTreeMap::new();

    for r in records {
        match r {
            Record::Start(s) => {
                a.network = s.network.clone();
                a.started_ms = s.started_ms;
                a.last_ms = a.last_ms.max(s.started_ms);
                a.planned_secs = (s.hours * 3600.0).round() as u64;
                stall_intervals = u64::from(s.stall_intervals.max(1));
                probe_timeout_ms = (s.probe_timeout_secs * 1000.0) as u64;
                interval_ms = (s.interval_secs * 1000.0) as u64;
                reconverge_ms = (s.reconverge_secs * 1000.0) as u64;
                node_names = s.nodes.clone();
                a.quorum = quorum_of(s.nodes.len());
            }
            Record::Chaos(c) => {
                a.last_ms = a.last_ms.max(c.t_ms);
                if let Some(e) = &c.error {
                    a.findings.push(Finding::ChaosFailed {
                        chaos_id: c.id,
                        action: c.action.clone(),
                        t_ms: c.t_ms,
                        error: e.clone(),
                    });
                }
            }
            Record::ChaosEnd(c) => {
                a.last_ms = a.last_ms.max(c.t_ms);
                if let Some(e) = &c.error {
                    let action = a.perturbations.iter().find(|p| p.id == c.id).map(|p| p.action.clone());
                    a.findings.push(Finding::ChaosFailed {
                        chaos_id: c.id,
                        action: action.unwrap_or_default(),
                        t_ms: c.t_ms,
                        error: format!("heal: {e}"),
                    });
                }
            }
            Record::Reconverged(r) => a.last_ms = a.last_ms.max(r.t_ms),
            Record::Resume { t_ms } => {
                a.last_ms = a.last_ms.max(*t_ms);
                a.ended = None;
                // Counters restart with each invocation: bank what the last one reached.
                if let Some(l) = load_this.take() {
                    let total = a.load.get_or_insert_with(LoadCounts::default);
                    total.accepted += l.accepted;
                    total.refused += l.refused;
                }
            }
            Record::End { t_ms, reason } => {
                a.last_ms = a.last_ms.max(*t_ms);
                a.ended = Some(reason.clone());
            }
            Record::ProbeSent(p) => {
                a.last_ms = a.last_ms.max(p.t_ms);
                sent.insert(p.id, p);
            }
            Record::ProbeResult(p) => {
                a.last_ms = a.last_ms.max(p.t_ms);
                results.insert(p.id, p);
            }
            Record::Tick(t) => {
                a.ticks += 1;
                if t.load.is_some() {
                    load_this = t.load;
                }
                a.last_ms = a.last_ms.max(t.t_ms);
                for obs in &t.nodes {
                    observe_node(&mut a, &mut states, obs, t.t_ms, stall_intervals);
                }
                // Down or cut off now: unreachable, or named by a perturbation in force.
                let mut faulty: BTreeSet<String> =
                    t.nodes.iter().filter(|o| !o.reachable).map(|o| o.name.clone()).collect();
                for p in a.perturbations.iter().filter(|p| p.faulty && p.error.is_none()) {
                    if p.start_ms <= t.t_ms && p.end_ms.is_none_or(|e| t.t_ms < e) {
                        faulty.extend(p.nodes.iter().cloned());
                    }
                }
                let n = node_names.len().max(t.nodes.len());
                // The highest height among the nodes still up: a network that goes on past it
                // did not halt after all (the inventory does not list every validator).
                let up_top = t.nodes.iter().filter(|o| !faulty.contains(&o.name)).filter_map(|o| o.height).max();
                if let Some(i) = quorum_lost {
                    let base = halt_base.entry(i).or_insert(up_top);
                    if up_top > *base && base.is_some() {
                        not_halted.insert(i);
                    }
                }
                if faulty.len() > n - quorum_of(n) {
                    if quorum_lost.is_none() {
                        quorum_lost = Some(a.findings.len());
                        halt_base.insert(a.findings.len(), up_top);
                        a.findings.push(Finding::QuorumLost {
                            since_ms: t.t_ms,
                            until_ms: None,
                            faulty: faulty.into_iter().collect(),
                            quorum: quorum_of(n),
                            nodes: n,
                        });
                    }
                } else if let Some(i) = quorum_lost.take() {
                    if let Finding::QuorumLost { until_ms, .. } = &mut a.findings[i] {
                        *until_ms = Some(t.t_ms);
                    }
                }
                for c in &t.checks {
                    height_first_ms.entry(c.height).or_insert(t.t_ms);
                    let at = seen_hashes.entry(c.height).or_default();
                    for (node, hash) in &c.hashes {
                        at.entry(hash.clone()).or_default().insert(node.clone());
                    }
                }
            }
        }
    }

    // Close the intervals count of episodes still open at the end.
    for st in states.values() {
        if let Some(i) = st.stall {
            if let Finding::Stall { intervals, .. } = &mut a.findings[i] {
                *intervals = st.seen - 1 - st.last_progress;
            }
        }
    }

    collect_forks(&mut a, &seen_hashes, &height_first_ms);
    collect_probes(&mut a, &sent, &results, probe_timeout_ms);
    judge_reconvergence(&mut a, records, &node_names, reconverge_ms);
    if let Some(l) = load_this {
        let total = a.load.get_or_insert_with(LoadCounts::default);
        total.accepted += l.accepted;
        total.refused += l.refused;
    }
    // Reported at once (a live run shows it within one interval), withdrawn when the nodes
    // that were up kept finalizing.
    let mut i = 0;
    a.findings.retain(|_| {
        i += 1;
        !not_halted.contains(&(i - 1))
    });
    explain_lags(&mut a, interval_ms * (stall_intervals + 1), reconverge_ms + interval_ms);

    a.duration_secs = a.last_ms.saturating_sub(a.started_ms) / 1000;
    a.findings.sort_by_key(|f| (f.t_ms(), f.kind()));
    a
}

fn observe_node(
    a: &mut Analysis,
    states: &mut BTreeMap<String, NodeState>,
    obs: &NodeObs,
    t_ms: u64,
    stall_intervals: u64,
) {
    let summary = a.nodes.entry(obs.name.clone()).or_default();
    let st = states.entry(obs.name.clone()).or_default();
    let idx = st.seen;
    st.seen += 1;
    if idx == 0 {
        st.last_progress = 0;
        st.last_progress_ms = t_ms;
    }
    if let Some(m) = obs.mempool {
        summary.max_mempool = Some(summary.max_mempool.map_or(m, |x| x.max(m)));
    }

    // Unreachable episodes.
    if obs.reachable {
        if let Some(i) = st.unreachable.take() {
            if let Finding::Unreachable { until_ms, .. } = &mut a.findings[i] {
                *until_ms = Some(t_ms);
            }
        }
    } else {
        summary.unreachable_ticks += 1;
        match st.unreachable {
            Some(i) => {
                if let Finding::Unreachable { intervals, .. } = &mut a.findings[i] {
                    *intervals += 1;
                }
            }
            None => {
                st.unreachable = Some(a.findings.len());
                a.findings.push(Finding::Unreachable {
                    node: obs.name.clone(),
                    since_ms: t_ms,
                    until_ms: None,
                    intervals: 1,
                    error: obs.error.clone().unwrap_or_else(|| "no answer".into()),
                });
            }
        }
    }

    // Progress and stalls. The first observation sets the baseline.
    let progressed = match (obs.height, st.last_height) {
        (Some(h), Some(prev)) if h < prev => {
            a.findings.push(Finding::HeightDecreased { node: obs.name.clone(), from: prev, to: h, t_ms });
            st.last_height = Some(h);
            false
        }
        (Some(h), Some(prev)) => h > prev,
        (Some(h), None) => {
            st.last_height = Some(h);
            idx > 0
        }
        (None, _) => false,
    };
    if let Some(h) = obs.height {
        summary.last_height = Some(h);
    }
    if progressed {
        if let Some(i) = st.stall.take() {
            if let Finding::Stall { until_ms, intervals, .. } = &mut a.findings[i] {
                *until_ms = Some(t_ms);
                *intervals = idx - 1 - st.last_progress;
            }
        }
        st.last_height = obs.height;
        st.last_progress = idx;
        st.last_progress_ms = t_ms;
    } else if st.stall.is_none() && idx - st.last_progress >= stall_intervals {
        st.stall = Some(a.findings.len());
        a.findings.push(Finding::Stall {
            node: obs.name.clone(),
            height: st.last_height,
            since_ms: st.last_progress_ms,
            until_ms: None,
            intervals: idx - st.last_progress,
        });
    }
}

fn collect_forks(
    a: &mut Analysis,
    seen: &BTreeMap<u64, BTreeMap<String, BTreeSet<String>>>,
    first_ms: &BTreeMap<u64, u64>,
) {
    // One finding per distinct way of splitting the nodes, so a lasting fork is one finding
    // covering many heights rather than one per check.
    let mut by_partition: BTreeMap<Vec<Vec<String>>, usize> = BTreeMap::new();
    for (&height, hashes) in seen {
        if hashes.len() < 2 {
            continue;
        }
        let mut partition: Vec<Vec<String>> = hashes.values().map(|nodes| nodes.iter().cloned().collect()).collect();
        partition.sort();
        let t = first_ms.get(&height).copied().unwrap_or_default();
        match by_partition.get(&partition) {
            Some(&i) => {
                if let Finding::Fork { last_height, heights_checked, .. } = &mut a.findings[i] {
                    *last_height = height;
                    *heights_checked += 1;
                }
            }
            None => {
                by_partition.insert(partition, a.findings.len());
                a.findings.push(Finding::Fork {
                    first_height: height,
                    last_height: height,
                    heights_checked: 1,
                    first_seen_ms: t,
                    hashes: hashes.iter().map(|(h, n)| (h.clone(), n.iter().cloned().collect())).collect(),
                });
            }
        }
    }
}

fn collect_probes(
    a: &mut Analysis,
    sent: &BTreeMap<u64, &ProbeSent>,
    results: &BTreeMap<u64, &ProbeResult>,
    timeout_ms: u64,
) {
    let mut latencies = Vec::new();
    for (&id, p) in sent {
        let Some(txid) = &p.txid else {
            a.probes.send_failed += 1;
            a.findings.push(Finding::ProbeSendFailed {
                id,
                from: p.from.clone(),
                t_ms: p.t_ms,
                error: p.error.clone().unwrap_or_default(),
            });
            continue;
        };
        if let Some(cid) = p.minority_of {
            // Must not finalize while cut off; what happens after the heal is no finding.
            a.probes.minority += 1;
            let heal = a.perturbations.iter().find(|x| x.id == cid).and_then(|x| x.end_ms);
            if let Some(r) = results.get(&id).filter(|r| r.finalized && heal.is_none_or(|h| r.t_ms < h)) {
                a.findings.push(Finding::MinorityFinalized {
                    id,
                    chaos_id: cid,
                    node: p.checker.clone(),
                    t_ms: r.t_ms,
                });
            }
            continue;
        }
        a.probes.sent += 1;
        match results.get(&id) {
            Some(r) if r.finalized && r.latency_ms.is_none_or(|l| l <= timeout_ms) => {
                a.probes.finalized += 1;
                if let Some(l) = r.latency_ms {
                    latencies.push(l);
                }
            }
            Some(r) => {
                a.probes.lost += 1;
                a.findings.push(Finding::LostTx {
                    id,
                    txid: txid.clone(),
                    from: p.from.clone(),
                    checker: p.checker.clone(),
                    sent_ms: p.t_ms,
                    status: r.status.clone(),
                });
            }
            None => {
                a.probes.pending += 1;
                if a.ended.is_some() {
                    a.findings.push(Finding::ProbeUnverified { id, txid: txid.clone(), sent_ms: p.t_ms });
                }
            }
        }
    }
    latencies.sort_unstable();
    a.probes.latency_p50_ms = percentile(&latencies, 0.5);
    a.probes.latency_max_ms = latencies.last().copied();
}

/// The perturbations of a run, from their start and end records.
pub fn perturbations(records: &[Record]) -> Vec<Perturbation> {
    let mut out: Vec<Perturbation> = Vec::new();
    for r in records {
        match r {
            Record::Chaos(c) => out.push(Perturbation {
                id: c.id,
                action: c.action.clone(),
                nodes: c.nodes.clone(),
                detail: c.detail.clone(),
                faulty: c.faulty,
                start_ms: c.t_ms,
                planned_end_ms: c.planned_end_ms,
                // A perturbation that failed to apply changed nothing.
                end_ms: c.error.as_ref().map(|_| c.t_ms),
                reconverge_ms: None,
                error: c.error.clone(),
            }),
            Record::ChaosEnd(e) => {
                if let Some(p) = out.iter_mut().find(|p| p.id == e.id) {
                    p.end_ms = Some(e.t_ms);
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether a sample shows every node on one tip at or above `min_height`: all answer at the
/// same height, and the hash check there is one hash from all. (A sample is not atomic, so
/// with short blocks this may take an extra interval: the figure errs long, never short.)
pub fn converged(t: &Tick, nodes: &[String], min_height: u64) -> bool {
    let all_up = nodes.iter().all(|n| t.nodes.iter().any(|o| &o.name == n && o.reachable));
    let heights: BTreeSet<Option<u64>> = t.nodes.iter().map(|o| o.height).collect();
    let heights_ok = heights.len() == 1 && heights.iter().all(|h| h.is_some_and(|h| h >= min_height));
    let one_hash = t.checks.iter().filter(|c| !c.recheck).any(|c| {
        c.errors.is_empty()
            && nodes.iter().all(|n| c.hashes.contains_key(n))
            && c.hashes.values().collect::<BTreeSet<_>>().len() == 1
    });
    all_up && heights_ok && one_hash
}

/// Nodes not on the common tip in a sample: unreachable, behind the highest, or on another
/// hash than most.
fn lagging_in(t: &Tick, nodes: &[String]) -> Vec<String> {
    let top = t.nodes.iter().filter_map(|o| o.height).max().unwrap_or(0);
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    if let Some(c) = t.checks.iter().find(|c| !c.recheck) {
        for h in c.hashes.values() {
            *counts.entry(h).or_default() += 1;
        }
    }
    let majority_hash = counts.iter().max_by_key(|(_, n)| **n).map(|(h, _)| (*h).clone());
    let check = t.checks.iter().find(|c| !c.recheck);
    nodes
        .iter()
        .filter(|n| {
            let obs = t.nodes.iter().find(|o| &o.name == *n);
            let behind = obs.is_none_or(|o| !o.reachable || o.height.is_none_or(|h| h < top));
            let other_hash = check.and_then(|c| c.hashes.get(*n)).is_some_and(|h| Some(h) != majority_hash.as_ref());
            behind || other_hash
        })
        .cloned()
        .collect()
}

/// Per healed perturbation: when every node was back on one tip, or a finding when that took
/// longer than the bound (or the perturbation was never healed).
fn judge_reconvergence(a: &mut Analysis, records: &[Record], nodes: &[String], bound_ms: u64) {
    let ticks: Vec<&Tick> = records
        .iter()
        .filter_map(|r| match r {
            Record::Tick(t) => Some(t),
            _ => None,
        })
        .collect();
    // The highest height seen up to each sample: a 72-hour log has tens of thousands of
    // samples and hundreds of perturbations, so no rescanning per perturbation.
    let mut tip_before = Vec::with_capacity(ticks.len());
    let mut top = 0;
    for t in &ticks {
        top = t.nodes.iter().filter_map(|o| o.height).fold(top, u64::max);
        tip_before.push(top);
    }
    let mut times = Vec::new();
    for p in a.perturbations.iter_mut().filter(|p| p.error.is_none()) {
        // A heal that came later than the bound after it was planned counts as none: the
        // perturbation outlasted what the network was meant to survive.
        let heal = p.end_ms.filter(|&e| e <= p.planned_end_ms + bound_ms);
        // Never healed: judged once the planned heal plus the bound has passed.
        let deadline = heal.unwrap_or(p.planned_end_ms) + bound_ms;
        if let Some(e) = heal {
            let i = ticks.partition_point(|t| t.t_ms <= e);
            let tip = if i == 0 { 0 } else { tip_before[i - 1] };
            let found = ticks[i..].iter().find(|t| converged(t, nodes, tip));
            if let Some(t) = found.filter(|t| t.t_ms <= deadline) {
                p.reconverge_ms = Some(t.t_ms - e);
                times.push(t.t_ms - e);
                continue;
            }
        }
        if let Some(late) = ticks.get(ticks.partition_point(|t| t.t_ms <= deadline)) {
            a.findings.push(Finding::NotReconverged {
                chaos_id: p.id,
                action: p.action.clone(),
                start_ms: p.start_ms,
                healed_ms: heal,
                bound_secs: bound_ms as f64 / 1000.0,
                lagging: lagging_in(late, nodes),
                t_ms: late.t_ms,
            });
        }
    }
    times.sort_unstable();
    a.reconverge_p50_ms = percentile(&times, 0.5);
    a.reconverge_max_ms = times.last().copied();
}

/// Lag a perturbation explains becomes an expected-lag note; stalls of nodes that were up
/// while the quorum was lost are the halt's consequence and folded into it.
fn explain_lags(a: &mut Analysis, lead_ms: u64, grace_ms: u64) {
    let halts: Vec<(u64, u64, Vec<String>)> = a
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::QuorumLost { since_ms, until_ms, faulty, .. } => {
                Some((*since_ms, until_ms.unwrap_or(u64::MAX), faulty.clone()))
            }
            _ => None,
        })
        .collect();
    let last_ms = a.last_ms;
    let perts = a.perturbations.clone();
    let mut out = Vec::with_capacity(a.findings.len());
    for f in a.findings.drain(..) {
        let (node, since, until, what) = match &f {
            Finding::Stall { node, since_ms, until_ms, .. } => (node.clone(), *since_ms, *until_ms, "stall"),
            Finding::Unreachable { node, since_ms, until_ms, .. } => {
                (node.clone(), *since_ms, *until_ms, "unreachable")
            }
            _ => {
                out.push(f);
                continue;
            }
        };
        let explained = perts.iter().filter(|p| p.error.is_none() && p.nodes.contains(&node)).find(|p| {
            let end = p.end_ms.filter(|&e| e <= p.planned_end_ms + grace_ms).unwrap_or(p.planned_end_ms);
            let allowed = end.saturating_add(grace_ms);
            since + lead_ms >= p.start_ms && since <= allowed && until.unwrap_or(last_ms) <= allowed
        });
        if let Some(p) = explained {
            out.push(Finding::ExpectedLag {
                node,
                chaos_id: p.id,
                action: p.action.clone(),
                what: what.into(),
                since_ms: since,
                until_ms: until,
            });
            continue;
        }
        let in_halt = what == "stall"
            && halts
                .iter()
                .any(|(s, u, faulty)| !faulty.contains(&node) && since <= *u && until.unwrap_or(u64::MAX) >= *s);
        if !in_halt {
            out.push(f);
        }
    }
    a.findings = out;
}

/// Probes sent but not yet resolved: what a resumed run goes on tracking.
pub fn outstanding_probes(records: &[Record]) -> Vec<ProbeSent> {
    let done: BTreeSet<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::ProbeResult(p) => Some(p.id),
            _ => None,
        })
        .collect();
    records
        .iter()
        .filter_map(|r| match r {
            Record::ProbeSent(p) if p.txid.is_some() && !done.contains(&p.id) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// Where a resumed run picks up: next tick number and probe id.
pub fn next_counters(records: &[Record]) -> (u64, u64) {
    let mut seq = 0;
    let mut id = 0;
    for r in records {
        match r {
            Record::Tick(t) => seq = seq.max(t.seq + 1),
            Record::ProbeSent(p) => id = id.max(p.id + 1),
            _ => {}
        }
    }
    (seq, id)
}

/// A halted network produces a finding per probe; tables show the first ones.
pub const MAX_FINDINGS_SHOWN: usize = 50;

/// The rows of the summary, shared by the terminal and the HTML report: label, value, and
/// whether it is a failure.
pub fn summary_rows(a: &Analysis) -> Vec<(String, String, bool)> {
    let p = &a.probes;
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.2} s", v as f64 / 1000.0));
    let heights: Vec<String> =
        a.nodes.iter().map(|(n, s)| format!("{n}={}", s.last_height.map_or("-".into(), |h| h.to_string()))).collect();
    let mut rows: Vec<(String, String, bool)> = vec![
        ("network".into(), a.network.clone(), false),
        ("started".into(), crate::output::rfc3339(a.started_ms), false),
        (
            "duration".into(),
            format!(
                "{} of {}",
                crate::output::human_duration(a.duration_secs),
                crate::output::human_duration(a.planned_secs)
            ),
            false,
        ),
        ("samples".into(), format!("{} intervals, {} log records", a.ticks, a.records), false),
        ("forks".into(), a.count("fork").to_string(), a.count("fork") > 0),
        ("stalls".into(), a.count("stall").to_string(), a.count("stall") > 0),
        ("lost transactions".into(), p.lost.to_string(), p.lost > 0),
        ("unreachable episodes".into(), a.count("unreachable").to_string(), false),
        (
            "probes".into(),
            format!(
                "{} sent, {} final, {} lost, {} not sent, {} pending",
                p.sent, p.finalized, p.lost, p.send_failed, p.pending
            ),
            false,
        ),
        ("probe finality".into(), format!("p50 {}, max {}", ms(p.latency_p50_ms), ms(p.latency_max_ms)), false),
    ];
    if !a.perturbations.is_empty() || a.count("quorum lost") > 0 {
        let mut by_action: BTreeMap<&str, usize> = BTreeMap::new();
        for x in &a.perturbations {
            *by_action.entry(x.action.as_str()).or_default() += 1;
        }
        let kinds: Vec<String> = by_action.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let healed = a.perturbations.iter().filter(|x| x.reconverge_ms.is_some()).count();
        rows.extend([
            (
                "perturbations".into(),
                format!("{} ({}), {healed} reconverged", a.perturbations.len(), kinds.join(", ")),
                false,
            ),
            (
                "reconvergence".into(),
                format!("p50 {}, max {}", ms(a.reconverge_p50_ms), ms(a.reconverge_max_ms)),
                false,
            ),
            ("not reconverged".into(), a.count("not reconverged").to_string(), a.count("not reconverged") > 0),
            ("quorum lost".into(), a.count("quorum lost").to_string(), a.count("quorum lost") > 0),
            ("expected lag".into(), a.count("expected lag").to_string(), false),
        ]);
        if p.minority > 0 {
            rows.push((
                "minority probes".into(),
                format!("{} sent, {} finalized while cut off", p.minority, a.count("minority finalized")),
                a.count("minority finalized") > 0,
            ));
        }
    }
    if let Some(l) = a.load {
        let secs = a.duration_secs.max(1) as f64;
        rows.push((
            "load".into(),
            format!("{} payments accepted ({:.1}/s), {} refused", l.accepted, l.accepted as f64 / secs, l.refused),
            false,
        ));
    }
    rows.extend([
        ("last heights".into(), heights.join(" "), false),
        ("result".into(), if a.passed() { "PASS" } else { "FAIL" }.into(), !a.passed()),
    ]);
    rows
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn start(nodes: &[&str]) -> Record {
        Record::Start(Start {
            version: LOG_VERSION,
            started_ms: 1_000_000,
            hours: 1.0,
            interval_secs: 10.0,
            stall_intervals: 3,
            probe_every: 3,
            probe_timeout_secs: 60.0,
            network: "test".into(),
            inventory: "inventories/test.toml".into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            reconverge_secs: 30.0,
            chaos: None,
            load_tps: None,
            unit: None,
        })
    }

    /// A tick where node i is at heights[i] (None: unreachable) and, at the common height,
    /// has hash hashes[i].
    pub fn tick(seq: u64, heights: &[Option<u64>], hashes: &[&str]) -> Record {
        let names = ["n1", "n2", "n3", "n4"];
        let nodes: Vec<NodeObs> = heights
            .iter()
            .enumerate()
            .map(|(i, h)| NodeObs {
                name: names[i].into(),
                reachable: h.is_some(),
                height: *h,
                mempool: h.map(|_| seq % 4),
                error: h.is_none().then(|| "unreachable: Connection refused".into()),
                unauthorized: false,
                latency_ms: 2,
                rss_bytes: h.map(|_| 50_000_000 + seq * 1000),
                cpu_seconds: h.map(|_| seq as f64 * 0.1),
            })
            .collect();
        let common = heights.iter().flatten().min().copied();
        let checks = common
            .map(|c| HashCheck {
                height: c,
                recheck: false,
                hashes: heights
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.is_some())
                    .map(|(i, _)| (names[i].to_string(), hashes[i].to_string()))
                    .collect(),
                errors: BTreeMap::new(),
            })
            .into_iter()
            .collect();
        Record::Tick(Tick { seq, t_ms: 1_000_000 + seq * 10_000, nodes, checks, load: None })
    }

    fn sent(id: u64, seq: u64) -> Record {
        Record::ProbeSent(ProbeSent {
            id,
            t_ms: 1_000_000 + seq * 10_000 + 100,
            from: "n1".into(),
            to: "n2".into(),
            checker: "n2".into(),
            txid: Some(format!("{id:064x}")),
            error: None,
            minority_of: None,
        })
    }

    fn result(id: u64, seq: u64, finalized: bool, latency_ms: u64) -> Record {
        Record::ProbeResult(ProbeResult {
            id,
            t_ms: 1_000_000 + seq * 10_000 + 100 + latency_ms,
            finalized,
            status: if finalized { "finalized" } else { "pending" }.into(),
            latency_ms: finalized.then_some(latency_ms),
            node_finality_ms: None,
        })
    }

    /// A clean three-node run: heights grow, hashes agree, probes finalize.
    pub fn clean_run() -> Vec<Record> {
        let mut r = vec![start(&["n1", "n2", "n3"])];
        for s in 0..12u64 {
            // Heights differ between nodes (one lags by a block) but never fork.
            r.push(tick(s, &[Some(s + 1), Some(s + 1), Some(s)], &["a", "a", "a"]));
            if s % 3 == 0 {
                r.push(sent(s / 3, s));
                r.push(result(s / 3, s, true, 800 + s * 10));
            }
        }
        r.push(Record::End { t_ms: 1_120_000, reason: "completed".into() });
        r
    }

    #[test]
    fn clean_run_has_no_findings() {
        let a = analyze(&clean_run());
        assert_eq!(a.findings, vec![], "{:#?}", a.findings);
        assert!(a.passed());
        assert_eq!(a.ticks, 12);
        assert_eq!(a.probes.sent, 4);
        assert_eq!(a.probes.finalized, 4);
        assert_eq!(a.probes.latency_max_ms, Some(890));
        assert_eq!(a.nodes["n3"].last_height, Some(11));
        assert_eq!(a.duration_secs, 120);
    }

    #[test]
    fn same_height_different_hash_is_a_fork() {
        let mut r = vec![start(&["n1", "n2", "n3"])];
        r.push(tick(0, &[Some(5), Some(5), Some(5)], &["a", "a", "a"]));
        r.push(tick(1, &[Some(6), Some(6), Some(6)], &["b", "b", "x"]));
        r.push(tick(2, &[Some(7), Some(7), Some(7)], &["c", "c", "y"]));
        let a = analyze(&r);
        assert_eq!(a.count("fork"), 1, "{:#?}", a.findings);
        match &a.findings[0] {
            Finding::Fork { first_height, last_height, heights_checked, first_seen_ms, hashes } => {
                assert_eq!((*first_height, *last_height, *heights_checked), (6, 7, 2));
                assert_eq!(*first_seen_ms, 1_010_000);
                assert_eq!(hashes["b"], vec!["n1", "n2"]);
                assert_eq!(hashes["x"], vec!["n3"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(!a.passed());
    }

    #[test]
    fn different_heights_alone_are_not_a_fork() {
        let mut r = vec![start(&["n1", "n2", "n3"])];
        for s in 0..6 {
            // n3 is two blocks behind, but agrees at the common height.
            r.push(tick(s, &[Some(s + 2), Some(s + 3), Some(s + 1)], &["h", "h", "h"]));
        }
        let a = analyze(&r);
        assert_eq!(a.count("fork"), 0, "{:#?}", a.findings);
        assert!(a.passed());
    }

    #[test]
    fn a_node_changing_its_hash_at_a_height_later_is_a_fork() {
        let mut r = vec![start(&["n1", "n2"])];
        r.push(tick(0, &[Some(5), Some(5)], &["a", "a"]));
        let mut t = tick(1, &[Some(6), Some(6)], &["b", "b"]);
        if let Record::Tick(t) = &mut t {
            t.checks.push(HashCheck {
                height: 5,
                recheck: true,
                hashes: [("n1".into(), "a".into()), ("n2".into(), "z".into())].into(),
                errors: BTreeMap::new(),
            });
        }
        r.push(t);
        let a = analyze(&r);
        assert_eq!(a.count("fork"), 1, "{:#?}", a.findings);
    }

    #[test]
    fn stall_detected_after_n_intervals() {
        let mut r = vec![start(&["n1", "n2"])];
        // n2 stops at height 3 from tick 2 on; n1 keeps going.
        for s in 0..8u64 {
            let h2 = s.min(3);
            r.push(tick(s, &[Some(s + 1), Some(h2)], &["a", "a"]));
        }
        let a = analyze(&r);
        assert_eq!(a.count("stall"), 1, "{:#?}", a.findings);
        match &a.findings[0] {
            Finding::Stall { node, height, since_ms, until_ms, intervals } => {
                assert_eq!(node, "n2");
                assert_eq!(*height, Some(3));
                assert_eq!(*since_ms, 1_030_000);
                assert_eq!(*until_ms, None);
                assert_eq!(*intervals, 4);
            }
            other => panic!("{other:?}"),
        }

        // Two intervals without progress is below the threshold of 3.
        let mut r = vec![start(&["n1"])];
        for (s, h) in [1, 2, 2, 2, 3, 4].iter().enumerate() {
            r.push(tick(s as u64, &[Some(*h)], &["a"]));
        }
        assert_eq!(analyze(&r).count("stall"), 0);
    }

    #[test]
    fn stall_that_recovers_is_closed_but_still_an_error() {
        let mut r = vec![start(&["n1"])];
        for (s, h) in [1, 2, 2, 2, 2, 2, 3].iter().enumerate() {
            r.push(tick(s as u64, &[Some(*h)], &["a"]));
        }
        let a = analyze(&r);
        match &a.findings[..] {
            [Finding::Stall { until_ms: Some(u), intervals, .. }] => {
                assert_eq!(*u, 1_060_000);
                assert_eq!(*intervals, 4);
            }
            other => panic!("{other:#?}"),
        }
        assert!(!a.passed());
    }

    #[test]
    fn unreachable_node_is_reported_and_stalls() {
        let mut r = vec![start(&["n1", "n2"])];
        for s in 0..6u64 {
            let h2 = (s < 2).then_some(s + 1);
            r.push(tick(s, &[Some(s + 1), h2], &["a", "a"]));
        }
        let a = analyze(&r);
        assert_eq!(a.count("unreachable"), 1, "{:#?}", a.findings);
        assert_eq!(a.count("stall"), 1);
        assert_eq!(a.nodes["n2"].unreachable_ticks, 4);
        let un = a.findings.iter().find(|f| f.kind() == "unreachable").unwrap();
        assert!(un.describe().contains("n2 unreachable for 4 intervals"), "{}", un.describe());
    }

    #[test]
    fn probe_not_final_is_lost_and_send_failure_is_a_warning() {
        let mut r = clean_run();
        r.insert(r.len() - 1, sent(10, 11));
        r.insert(r.len() - 1, result(10, 11, false, 0));
        r.insert(
            r.len() - 1,
            Record::ProbeSent(ProbeSent {
                id: 11,
                t_ms: 1_115_000,
                from: "n3".into(),
                to: "n1".into(),
                checker: "n1".into(),
                txid: None,
                error: Some("rpc error -6: insufficient funds".into()),
                minority_of: None,
            }),
        );
        let a = analyze(&r);
        assert_eq!(a.count("lost tx"), 1, "{:#?}", a.findings);
        assert_eq!(a.count("probe send failed"), 1);
        assert_eq!(a.probes.lost, 1);
        assert_eq!(a.probes.send_failed, 1);
        assert_eq!(a.errors(), 1);
        // Finalized, but later than the timeout, is lost too.
        let mut r = clean_run();
        r.insert(r.len() - 1, sent(10, 11));
        r.insert(r.len() - 1, result(10, 11, true, 61_000));
        assert_eq!(analyze(&r).count("lost tx"), 1);
    }

    #[test]
    fn pending_probe_is_unverified_only_after_end() {
        let mut r = clean_run();
        let end = r.pop().unwrap();
        r.push(sent(10, 11));
        let a = analyze(&r);
        assert_eq!(a.probes.pending, 1);
        assert!(a.findings.is_empty());
        assert_eq!(outstanding_probes(&r).len(), 1);
        r.push(end);
        assert_eq!(analyze(&r).count("probe unverified"), 1);
    }

    #[test]
    fn resume_reads_back_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut run = clean_run();
        run.pop();
        run.push(sent(9, 11));
        for rec in &run {
            append(&mut f, rec).unwrap();
        }
        // A crash mid-line leaves a torn record at the end.
        f.write_all(br#"{"kind":"tick","seq":12,"t_"#).unwrap();
        drop(f);
        let back = read_log(&path).unwrap();
        assert_eq!(back, run);
        assert_eq!(next_counters(&back), (12, 10));
        assert_eq!(outstanding_probes(&back)[0].id, 9);
        assert_eq!(analyze(&back).started_ms, 1_000_000);

        // Garbage in the middle is an error naming the line.
        std::fs::write(&path, "{\"kind\":\"resume\",\"t_ms\":1}\n").unwrap();
        assert!(matches!(read_log(&path), Err(LogError::NoStart { .. })));
        let mut text = serde_json::to_string(&run[0]).unwrap();
        text.push_str("\nnot json\n{\"kind\":\"resume\",\"t_ms\":1}\n");
        std::fs::write(&path, text).unwrap();
        match read_log(&path) {
            Err(LogError::Bad { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
    }

    pub fn chaos(id: u64, seq: u64, action: &str, nodes: &[&str], planned_secs: u64) -> Record {
        let t_ms = 1_000_000 + seq * 10_000 + 50;
        Record::Chaos(ChaosStart {
            id,
            t_ms,
            action: action.into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            detail: String::new(),
            planned_end_ms: t_ms + planned_secs * 1000,
            faulty: action != "latency",
            error: None,
        })
    }

    fn chaos_end(id: u64, seq: u64) -> Record {
        Record::ChaosEnd(ChaosEnd { id, t_ms: 1_000_000 + seq * 10_000 + 50, error: None })
    }

    fn tick_at(seq: u64) -> u64 {
        1_000_000 + seq * 10_000
    }

    /// Four nodes; n4 is killed after tick 2 and restarted after tick 4; it answers again at
    /// tick 5 (still behind) and is level at tick 6. `majority` gives the others' heights.
    pub fn kill_run(majority: impl Fn(u64) -> u64) -> Vec<Record> {
        let mut r = vec![start(&["n1", "n2", "n3", "n4"])];
        for s in 0..10u64 {
            if s == 2 {
                r.push(tick(s, &[Some(majority(s)); 4], &["a"; 4]));
                r.push(chaos(0, s, "kill", &["n4"], 20));
                continue;
            }
            if s == 4 {
                r.push(tick(s, &[Some(majority(s)), Some(majority(s)), Some(majority(s)), None], &["a"; 4]));
                r.push(chaos_end(0, s));
                continue;
            }
            let h4 = match s {
                3 => None,
                5 => Some(majority(2)),
                _ => Some(majority(s)),
            };
            r.push(tick(s, &[Some(majority(s)), Some(majority(s)), Some(majority(s)), h4], &["a"; 4]));
        }
        r.push(Record::End { t_ms: tick_at(10), reason: "completed".into() });
        r
    }

    #[test]
    fn a_killed_node_lags_as_expected_and_reconvergence_is_measured() {
        let a = analyze(&kill_run(|s| s + 1));
        assert!(a.passed(), "{:#?}", a.findings);
        assert!(!a.findings.is_empty() && a.findings.iter().all(|f| f.kind() == "expected lag"), "{:#?}", a.findings);
        assert!(a.findings.iter().all(|f| matches!(f, Finding::ExpectedLag { node, chaos_id: 0, .. } if node == "n4")));
        assert_eq!(a.quorum, 3);
        assert_eq!(a.perturbations.len(), 1);
        // Healed at tick 4 + 50 ms; n4 level again at tick 6.
        assert_eq!(a.perturbations[0].reconverge_ms, Some(tick_at(6) - (tick_at(4) + 50)));
        assert_eq!(a.reconverge_max_ms, a.perturbations[0].reconverge_ms);
        let rows = summary_rows(&a);
        assert!(rows.iter().any(|(l, v, bad)| l == "perturbations" && v.starts_with("1 (kill 1)") && !bad), "{rows:?}");
    }

    #[test]
    fn a_majority_stall_during_a_tolerated_kill_is_an_error() {
        // The three others stop at height 3 while n4 is down, and stay there.
        let a = analyze(&kill_run(|s| if s < 2 { s + 1 } else { 3 }));
        let stalled: Vec<&str> = a
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Stall { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        // n4 never gets past 3 either once it is back: its stall outlasts the kill.
        assert_eq!(stalled, vec!["n1", "n2", "n3", "n4"], "{:#?}", a.findings);
        assert!(a.findings.iter().all(|f| f.kind() != "quorum lost"));
        assert_eq!(a.count("quorum lost"), 0, "one of four down is within the quorum");
        assert!(!a.passed());
    }

    #[test]
    fn more_nodes_down_than_the_quorum_allows_is_a_halt_not_a_fork() {
        let mut r = vec![start(&["n1", "n2", "n3", "n4"])];
        for s in 0..3u64 {
            r.push(tick(s, &[Some(s + 1); 4], &["a"; 4]));
        }
        r.push(chaos(0, 2, "kill", &["n3", "n4"], 30));
        for s in 3..9u64 {
            r.push(tick(s, &[Some(3), Some(3), None, None], &["a"; 4]));
        }
        let a = analyze(&r);
        assert_eq!(a.count("fork"), 0);
        assert_eq!(a.count("stall"), 0, "the halt explains the others' stalls: {:#?}", a.findings);
        let q: Vec<&Finding> = a.findings.iter().filter(|f| f.kind() == "quorum lost").collect();
        match q[..] {
            [Finding::QuorumLost { since_ms, until_ms: None, faulty, quorum: 3, nodes: 4 }] => {
                // Reported at the first sample after the kill.
                assert_eq!(*since_ms, tick_at(3));
                assert_eq!(faulty, &vec!["n3".to_string(), "n4".to_string()]);
            }
            _ => panic!("{:#?}", a.findings),
        }
        assert!(q[0].describe().contains("halt: 2 of 4 nodes down"), "{}", q[0].describe());
        assert!(!a.passed());
    }

    #[test]
    fn a_perturbation_never_healed_is_reported_one_interval_after_its_bound() {
        let mut r = vec![start(&["n1", "n2", "n3", "n4"])];
        r.push(tick(0, &[Some(1); 4], &["a"; 4]));
        r.push(chaos(0, 0, "partition", &["n4"], 10));
        for s in 1..8u64 {
            r.push(tick(s, &[Some(s + 1), Some(s + 1), Some(s + 1), Some(1)], &["a"; 4]));
        }
        let a = analyze(&r);
        let nr: Vec<&Finding> = a.findings.iter().filter(|f| f.kind() == "not reconverged").collect();
        match nr[..] {
            [Finding::NotReconverged { healed_ms: None, lagging, t_ms, .. }] => {
                assert_eq!(lagging, &vec!["n4".to_string()]);
                // Planned heal at +10 s, bound 30 s: judged at the first sample after that.
                let deadline = tick_at(0) + 50 + 40_000;
                assert!(*t_ms > deadline && *t_ms <= deadline + 10_000, "{t_ms}");
            }
            _ => panic!("{:#?}", a.findings),
        }
        assert!(nr[0].describe().contains("never healed"), "{}", nr[0].describe());
        // Its lag beyond the bound is a stall again, not an expected one.
        assert_eq!(a.count("stall"), 1, "{:#?}", a.findings);
        assert!(!a.passed());
    }

    #[test]
    fn a_node_still_behind_after_the_bound_is_not_reconverged() {
        let mut r = vec![start(&["n1", "n2", "n3", "n4"])];
        r.push(tick(0, &[Some(1); 4], &["a"; 4]));
        r.push(chaos(0, 0, "latency", &["n2"], 5));
        r.push(tick(1, &[Some(2), Some(2), Some(2), Some(2)], &["a"; 4]));
        r.push(chaos_end(0, 1));
        for s in 2..7u64 {
            r.push(tick(s, &[Some(s + 1), Some(2), Some(s + 1), Some(s + 1)], &["a"; 4]));
        }
        let a = analyze(&r);
        match a.findings.iter().find(|f| f.kind() == "not reconverged") {
            Some(Finding::NotReconverged { healed_ms: Some(_), lagging, .. }) => assert_eq!(lagging, &vec!["n2"]),
            other => panic!("{other:?} in {:#?}", a.findings),
        }
        assert_eq!(a.perturbations[0].reconverge_ms, None);
    }

    #[test]
    fn a_probe_final_on_the_cut_off_side_before_the_heal_is_an_error() {
        let mut r = vec![start(&["n1", "n2", "n3", "n4"])];
        for s in 0..6u64 {
            r.push(tick(s, &[Some(s + 1); 4], &["a"; 4]));
        }
        r.push(chaos(0, 1, "partition", &["n4"], 20));
        r.push(chaos_end(0, 3));
        let minority = |id: u64, seq: u64| {
            Record::ProbeSent(ProbeSent {
                id,
                t_ms: tick_at(seq) + 100,
                from: "n4".into(),
                to: "n1".into(),
                checker: "n4".into(),
                txid: Some(format!("{id:064x}")),
                error: None,
                minority_of: Some(0),
            })
        };
        // Probe 0 finalizes while n4 is cut off; probe 1 only after the heal.
        r.push(minority(0, 1));
        r.push(result(0, 1, true, 5_000));
        r.push(minority(1, 2));
        r.push(result(1, 2, true, 20_000));
        let a = analyze(&r);
        assert_eq!(a.probes.minority, 2);
        assert_eq!(a.probes.sent, 0, "minority probes are not counted as ordinary probes");
        let mf: Vec<&Finding> = a.findings.iter().filter(|f| f.kind() == "minority finalized").collect();
        assert!(matches!(mf[..], [Finding::MinorityFinalized { id: 0, chaos_id: 0, .. }]), "{:#?}", a.findings);
        assert!(!a.passed());
    }

    #[test]
    fn a_perturbation_that_could_not_be_applied_is_a_warning_and_changes_nothing() {
        let mut r = vec![start(&["n1", "n2", "n3", "n4"])];
        r.push(tick(0, &[Some(1); 4], &["a"; 4]));
        if let Record::Chaos(mut c) = chaos(0, 0, "partition", &["n4"], 10) {
            c.error = Some("neither nft nor iptables on n4".into());
            r.push(Record::Chaos(c));
        }
        for s in 1..4u64 {
            r.push(tick(s, &[Some(s + 1); 4], &["a"; 4]));
        }
        let a = analyze(&r);
        assert_eq!(a.count("chaos failed"), 1, "{:#?}", a.findings);
        assert_eq!(a.count("not reconverged"), 0);
        assert!(a.passed());
        // The records survive a round trip through the log's JSON.
        let line = serde_json::to_string(&r[2]).unwrap();
        assert!(line.starts_with(r#"{"kind":"chaos","#), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r[2]);
    }

    #[test]
    fn load_counts_add_up_across_resumed_invocations() {
        let mut r = vec![start(&["n1"])];
        let with_load = |seq: u64, accepted: u64| {
            let mut t = tick(seq, &[Some(seq + 1)], &["a"]);
            if let Record::Tick(t) = &mut t {
                t.load = Some(LoadCounts { accepted, refused: 1 });
            }
            t
        };
        r.push(with_load(0, 10));
        r.push(with_load(1, 20));
        r.push(Record::Resume { t_ms: 1_015_000 });
        // The new invocation counts from zero again.
        r.push(with_load(2, 5));
        let a = analyze(&r);
        assert_eq!(a.load, Some(LoadCounts { accepted: 25, refused: 2 }));
        assert!(summary_rows(&a).iter().any(|(l, v, _)| l == "load" && v.starts_with("25 payments accepted")));
    }
}
