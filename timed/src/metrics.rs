//! Prometheus metrics, served at `GET /metrics` on the RPC port (OpenMetrics text). Histograms
//! live in a prometheus-client registry; values owned elsewhere (height, peers, process
//! figures from /proc) are read at scrape time.

use crate::metrics_names as names;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// What the engine task was doing (see `node::engine::Stage`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub block_interval: Histogram,
    pub tx_finality: Histogram,
    pub rpc_duration: Family<MethodLabel, Histogram>,
    pub tx_finalized: Counter,
    pub tx_rejected: Counter,
    /// Seconds the engine task spent per kind of work, and how many times: the engine is one
    /// serial loop, so the sum of the rates says how close it is to saturation.
    pub engine_busy: Family<StageLabel, Counter<f64, AtomicU64>>,
    pub engine_events: Family<StageLabel, Counter>,
    /// Seconds from sending a poll to its last answer (polls that timed out are not counted).
    pub poll_round_trip: Histogram,
    /// Txids asked about in the polls this node sent.
    pub poll_txids: Counter,
}

/// Values the node owns, read when scraped.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub height: u64,
    pub peers: usize,
    pub mempool: usize,
    pub p2p_sent: u64,
    pub p2p_received: u64,
    /// Per message kind, every kind the protocol has (zeros too, so series never vanish).
    pub p2p_messages: Vec<MessageTraffic>,
}

/// One P2P message kind's traffic since start, frame headers included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageTraffic {
    pub kind: &'static str,
    pub sent_bytes: u64,
    pub sent: u64,
    pub received_bytes: u64,
    pub received: u64,
}

fn strip(name: &str) -> &str {
    // prometheus-client appends `_total` to counters itself.
    name.strip_suffix("_total").unwrap_or(name)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let block_interval = Histogram::new([1.0, 2.0, 4.0, 6.0, 8.0, 9.0, 10.0, 11.0, 12.0, 15.0, 20.0, 30.0, 60.0]);
        let tx_finality = Histogram::new([0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0]);
        let rpc_duration = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])
        });
        let tx_finalized = Counter::default();
        let tx_rejected = Counter::default();
        let engine_busy = Family::<StageLabel, Counter<f64, AtomicU64>>::default();
        let engine_events = Family::<StageLabel, Counter>::default();
        let poll_round_trip = Histogram::new([0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]);
        let poll_txids = Counter::default();
        registry.register(
            names::BLOCK_INTERVAL,
            "Seconds between consecutive committed blocks",
            block_interval.clone(),
        );
        registry.register(
            names::TX_FINALITY,
            "Seconds from first sight of a transaction to finality",
            tx_finality.clone(),
        );
        registry.register(names::RPC_DURATION, "JSON-RPC request handling time in seconds", rpc_duration.clone());
        registry.register(
            strip(names::TX_FINALIZED),
            "Transactions that became final on this node (its own polls, or a block that settled them first)",
            tx_finalized.clone(),
        );
        registry.register(
            strip(names::TX_REJECTED),
            "Transactions rejected (lost a conflict or expired)",
            tx_rejected.clone(),
        );
        registry.register(
            strip(names::ENGINE_BUSY),
            "Seconds the consensus engine task spent, by kind of work",
            engine_busy.clone(),
        );
        registry.register(
            strip(names::ENGINE_EVENTS),
            "Events the consensus engine task handled, by kind of work",
            engine_events.clone(),
        );
        registry.register(
            names::POLL_ROUND_TRIP,
            "Seconds from sending a Snowball poll to its last answer",
            poll_round_trip.clone(),
        );
        registry.register(strip(names::POLL_TXIDS), "Txids asked about in Snowball polls sent", poll_txids.clone());
        Metrics {
            registry,
            block_interval,
            tx_finality,
            rpc_duration,
            tx_finalized,
            tx_rejected,
            engine_busy,
            engine_events,
            poll_round_trip,
            poll_txids,
        }
    }

    pub fn observe_rpc(&self, method: &str, seconds: f64) {
        self.rpc_duration.get_or_create(&MethodLabel { method: method.to_string() }).observe(seconds);
    }

    /// The full exposition text.
    pub fn render(&self, snap: Snapshot) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        let body = out.strip_suffix("# EOF\n").unwrap_or(&out).to_string();
        let mut out = body;
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: f64| {
            let family = strip(name);
            let _ = write!(out, "# HELP {family} {help}\n# TYPE {family} counter\n{family}_total {v}\n");
        };
        gauge(&mut out, names::BLOCK_HEIGHT, "Height of the committed chain tip", snap.height as f64);
        gauge(&mut out, names::PEERS, "Connected validator peers", snap.peers as f64);
        gauge(&mut out, names::MEMPOOL_SIZE, "Transactions in the mempool", snap.mempool as f64);
        counter(&mut out, names::P2P_BYTES_SENT, "Bytes sent to peers", snap.p2p_sent as f64);
        counter(&mut out, names::P2P_BYTES_RECEIVED, "Bytes received from peers", snap.p2p_received as f64);
        // (sent, received) of one kind.
        let by_kind = |out: &mut String, name: &str, help: &str, value: fn(&MessageTraffic) -> (u64, u64)| {
            let family = strip(name);
            let _ = write!(out, "# HELP {family} {help}\n# TYPE {family} counter\n");
            for m in &snap.p2p_messages {
                let (sent, received) = value(m);
                for (direction, v) in [("sent", sent), ("received", received)] {
                    let _ = writeln!(out, "{family}_total{{direction=\"{direction}\",kind=\"{}\"}} {v}", m.kind);
                }
            }
        };
        by_kind(&mut out, names::P2P_MESSAGES, "P2P frames by message kind and direction", |m| (m.sent, m.received));
        by_kind(
            &mut out,
            names::P2P_MESSAGE_BYTES,
            "P2P bytes (frame headers included) by message kind and direction",
            |m| (m.sent_bytes, m.received_bytes),
        );
        if let Some(p) = process_stats() {
            gauge(&mut out, names::PROCESS_RSS_BYTES, "Resident memory size in bytes", p.rss_bytes as f64);
            counter(&mut out, names::PROCESS_CPU_SECONDS, "User and system CPU time in seconds", p.cpu_seconds);
            gauge(
                &mut out,
                names::PROCESS_START_TIME,
                "Start time of the process since the Unix epoch in seconds",
                p.start_time,
            );
        }
        out.push_str("# EOF\n");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct ProcessStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub start_time: f64,
}

/// Reads this process's RSS and CPU time from /proc (Linux only; elsewhere nothing).
pub fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ is 100 on every Linux platform we ship for.
    const TICKS: f64 = 100.0;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let start_ticks: f64 = f.get(19)?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
    Some(ProcessStats {
        rss_bytes: rss_kb * 1024,
        cpu_seconds: (utime + stime) / TICKS,
        start_time: boot + start_ticks / TICKS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_named_metric() {
        let m = Metrics::new();
        m.block_interval.observe(10.0);
        m.tx_finality.observe(0.3);
        m.observe_rpc("getblockcount", 0.001);
        m.tx_finalized.inc();
        m.engine_busy.get_or_create(&StageLabel { stage: "poll_reply" }).inc_by(0.25);
        m.engine_events.get_or_create(&StageLabel { stage: "poll_reply" }).inc();
        m.poll_round_trip.observe(0.01);
        m.poll_txids.inc_by(3);
        let vote = MessageTraffic { kind: "vote", sent_bytes: 5, sent: 1, received_bytes: 7, received: 2 };
        let text = m.render(Snapshot {
            height: 7,
            peers: 2,
            mempool: 1,
            p2p_sent: 10,
            p2p_received: 20,
            p2p_messages: vec![vote],
        });
        for name in [
            names::BLOCK_INTERVAL,
            names::TX_FINALITY,
            names::RPC_DURATION,
            names::TX_FINALIZED,
            names::BLOCK_HEIGHT,
            names::PEERS,
            names::P2P_BYTES_SENT,
            names::P2P_MESSAGES,
            names::P2P_MESSAGE_BYTES,
            names::PROCESS_RSS_BYTES,
            names::PROCESS_CPU_SECONDS,
            names::ENGINE_BUSY,
            names::ENGINE_EVENTS,
            names::POLL_ROUND_TRIP,
            names::POLL_TXIDS,
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains("timed_block_height 7"));
        assert!(text.contains("timed_engine_busy_seconds_total{stage=\"poll_reply\"} 0.25"), "{text}");
        assert!(text.contains("timed_poll_txids_total 3"), "{text}");
        assert!(text.contains("timed_p2p_messages_total{direction=\"received\",kind=\"vote\"} 2"), "{text}");
        assert!(text.contains("timed_p2p_message_bytes_total{direction=\"sent\",kind=\"vote\"} 5"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert!(process_stats().unwrap().rss_bytes > 1024 * 1024);
    }
}
