//! Where resource figures come from: a node's own `/metrics`, and on remote hosts its
//! process's `/proc` read over SSH. Shared by `resources` and `stability`.

use crate::client;
use crate::inventory::Node;
use crate::prom::{self, Histogram};
use std::time::{Duration, Instant};
use timed::metrics_names as m;

/// Raw counters and histograms of one node at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub at: Option<Instant>,
    pub rss_bytes: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub p2p_bytes: Option<f64>,
    pub block_interval: Option<Histogram>,
    pub finality: Option<Histogram>,
    pub rpc: Option<Histogram>,
}

impl Snapshot {
    pub fn from_metrics(text: &str, at: Instant) -> Result<Self, prom::ParseError> {
        let mm = prom::parse(text)?;
        let sent = mm.value(m::P2P_BYTES_SENT);
        let recv = mm.value(m::P2P_BYTES_RECEIVED);
        Ok(Snapshot {
            at: Some(at),
            rss_bytes: mm.value(m::PROCESS_RSS_BYTES),
            cpu_seconds: mm.value(m::PROCESS_CPU_SECONDS),
            p2p_bytes: match (sent, recv) {
                (None, None) => None,
                (s, r) => Some(s.unwrap_or(0.0) + r.unwrap_or(0.0)),
            },
            block_interval: mm.histogram(m::BLOCK_INTERVAL),
            finality: mm.histogram(m::TX_FINALITY),
            rpc: mm.histogram(m::RPC_DURATION),
        })
    }
}

/// Where resource numbers come from.
pub trait ResourceSource {
    async fn snapshot(&self, node: &Node) -> Result<Snapshot, String>;
}

/// GET /metrics on the node's RPC port.
pub struct MetricsScrape {
    pub timeout: Duration,
}

impl ResourceSource for MetricsScrape {
    async fn snapshot(&self, node: &Node) -> Result<Snapshot, String> {
        let text = client::http_get(&node.rpc, "/metrics", self.timeout).await?;
        Snapshot::from_metrics(&text, Instant::now()).map_err(|e| e.to_string())
    }
}

/// Metrics from the node, memory and CPU from `/proc` on its host over SSH.
pub struct ProcOverSsh {
    pub metrics: MetricsScrape,
    /// Per node name: its host's session and the RPC address as the host sees it.
    pub hosts: std::collections::HashMap<String, (std::sync::Arc<crate::ssh::Host>, String)>,
}

/// Finds the node process (the systemd unit's main PID, else whoever listens on the RPC port)
/// and prints the clock tick rate, its stat line and its resident set size.
const PROC_SCRIPT: &str = r#"port="$1"
pid=$(systemctl show -p MainPID --value timed 2>/dev/null)
if [ -z "$pid" ] || [ "$pid" = 0 ]; then
  pid=$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9][0-9]*\).*/\1/p' | head -n 1)
fi
[ -n "$pid" ] || { echo "no timed process found (no unit, nothing listening on port $port)" >&2; exit 3; }
echo "ticks $(getconf CLK_TCK)"
echo "stat $(cat /proc/$pid/stat)"
grep '^VmRSS:' /proc/$pid/status"#;

/// Parses [`PROC_SCRIPT`]'s output into (RSS bytes, CPU seconds).
pub fn parse_proc(out: &str) -> Result<(f64, f64), String> {
    let bad = || format!("unexpected /proc output: {out:?}");
    let ticks: f64 =
        out.lines().find_map(|l| l.strip_prefix("ticks ")).and_then(|t| t.trim().parse().ok()).ok_or_else(bad)?;
    let stat = out.lines().find_map(|l| l.strip_prefix("stat ")).ok_or_else(bad)?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(bad)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let rss_kb: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    Ok((rss_kb * 1024.0, (utime + stime) / ticks))
}

impl ProcOverSsh {
    async fn read_proc(&self, node: &Node) -> Result<(f64, f64), String> {
        let (host, remote_rpc) =
            self.hosts.get(&node.name).ok_or_else(|| format!("no SSH session to {}", node.name))?;
        let port = remote_rpc.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
        // Not `sh -e`: a host without systemd makes the first probe fail, the second decides.
        let script = format!("set +e; set -- {}\n{PROC_SCRIPT}", crate::ssh::shell_quote(&port));
        let out = host.run("read /proc", &script).await.map_err(|e| e.to_string())?;
        parse_proc(&out)
    }
}

impl ResourceSource for ProcOverSsh {
    async fn snapshot(&self, node: &Node) -> Result<Snapshot, String> {
        let mut snap = self.metrics.snapshot(node).await?;
        let (rss, cpu) = self.read_proc(node).await?;
        snap.rss_bytes = Some(rss);
        snap.cpu_seconds = Some(cpu);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_output_is_parsed_and_bad_output_is_an_error() {
        let out = "ticks 100\nstat 4242 (timed worker) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1234 0 0\nVmRSS:\t   12345 kB\n";
        let (rss, cpu) = parse_proc(out).unwrap();
        assert_eq!(rss, 12345.0 * 1024.0);
        assert!((cpu - 3.0).abs() < 1e-9, "(250 + 50) ticks at 100 Hz: {cpu}");
        assert!(parse_proc("ticks 100\n").is_err());
        assert!(parse_proc("").is_err());
    }
}
