//! Chaos for the stability monitor: a seeded schedule of perturbations and the backends that
//! apply and heal them. The schedule is a pure function of the seed and the perturbation's
//! number, so a run (and a resumed run) can be replayed exactly; the backends are the only part
//! that touches processes and hosts.
//!
//! - `local` networks: kill -9 or a clean stop of the `timed` process the inventory's PID names,
//!   then a start with the same flags and ports (timectl is its supervisor here).
//! - hosts with their own network (rehearsal, ssh, cloud), through the `ssh` module: kill -9 of
//!   the service's main PID (systemd brings it back), `systemctl stop`/`start`, a partition with
//!   nftables (iptables when nft is missing) rules in a table of our own, `tc netem` latency.
//! - rehearsal hosts, whose network namespaces are on this machine: the network changes run
//!   with the host's own tools (nsenter into its container), and latency is the userspace
//!   netem of the `netem` module, as this machine's kernel may lack `sch_netem`.

use crate::inventory::{self, Inventory, Node, ProviderKind};
use crate::netem::{self, Shaper};
use crate::process::{alive, cmdline, is_our_timed, is_timed_argv, signal};
use crate::providers::rehearsal::container_leader;
use crate::ssh;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timed::node_info::NodeInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Kill,
    Restart,
    Partition,
    Latency,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Kill, Action::Restart, Action::Partition, Action::Latency];

    pub fn name(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Restart => "restart",
            Action::Partition => "partition",
            Action::Latency => "latency",
        }
    }

    pub fn parse(s: &str) -> Result<Action, ChaosError> {
        Action::ALL.into_iter().find(|a| a.name() == s.trim()).ok_or_else(|| ChaosError::UnknownAction(s.into()))
    }

    /// Takes nodes out of consensus (down or cut off), so it counts against the quorum.
    /// Latency only slows them.
    pub fn faulty(self) -> bool {
        self != Action::Latency
    }

    /// Needs hosts with a network of their own.
    pub fn needs_hosts(self) -> bool {
        matches!(self, Action::Partition | Action::Latency)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("unknown chaos action {0:?} (known: kill, restart, partition, latency)")]
    UnknownAction(String),
    #[error("--chaos {action} needs hosts with a network of their own; this is a {provider} network")]
    NeedsHosts { action: String, provider: String },
    #[error("a network of {nodes} nodes tolerates no faulty node (a block needs {quorum})")]
    NoTolerance { nodes: usize, quorum: usize },
    #[error("{node} has no running timed to perturb ({})", .pid.map_or("the inventory has no pid".to_string(), |p| format!("pid {p} is not its timed")))]
    NotRunning { node: String, pid: Option<u32> },
    #[error("{node}: {message}")]
    Local { node: String, message: String },
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    #[error("{node}: no SSH session (reaching the node failed earlier)")]
    NoSession { node: String },
}

impl ChaosError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ChaosError::NeedsHosts { .. } => Some(
                "a local network supports --chaos kill,restart; for partitions and latency deploy hosts with \
                 `timectl deploy --provider rehearsal` (or use your own with --provider ssh)"
                    .into(),
            ),
            ChaosError::NoTolerance { .. } => Some(
                "use 4 or more nodes (one may fail), or --chaos-max-faulty 1 to halt the network on purpose".into(),
            ),
            ChaosError::NotRunning { .. } => Some("start the network first (`timectl local up`)".into()),
            ChaosError::Ssh(e) => e.hint(),
            _ => None,
        }
    }
}

/// How many nodes may be faulty at once without losing the quorum.
pub fn tolerance(nodes: usize) -> usize {
    nodes - crate::monitor::quorum_of(nodes)
}

/// `--chaos-every`: plain minutes (fractions allowed) or a duration with a unit (`90s`, `2m`,
/// `1h`); returns seconds.
pub fn parse_every(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, scale) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1.0),
        Some((i, 'm')) => (&s[..i], 60.0),
        Some((i, 'h')) => (&s[..i], 3600.0),
        _ => (s, 60.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v * scale >= 1.0 => Ok(v * scale),
        Ok(_) => Err(format!("{s:?} is shorter than one second")),
        Err(_) => Err(format!("{s:?} is not minutes (like 2 or 0.5) or a duration (like 30s, 2m, 1h)")),
    }
}

/// A perturbation the schedule picked.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: u64,
    pub action: Action,
    /// Indexes into the nodes: the ones killed, stopped, cut off or slowed.
    pub targets: Vec<usize>,
    /// How long it lasts before the heal.
    pub hold_ms: u64,
    pub netem: Netem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Netem {
    pub delay_ms: u32,
    pub jitter_ms: u32,
    /// Packet loss in tenths of a percent.
    pub loss_permille: u32,
}

impl Netem {
    pub fn describe(&self) -> String {
        format!(
            "delay {} ms, jitter {} ms, loss {}.{}%",
            self.delay_ms,
            self.jitter_ms,
            self.loss_permille / 10,
            self.loss_permille % 10
        )
    }
}

/// SplitMix64: small, fast and the same on every platform and crate version, which is what
/// "reproducible from the seed" needs.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub actions: Vec<Action>,
    pub seed: u64,
    pub every_ms: u64,
    pub nodes: usize,
}

impl Schedule {
    /// Perturbation number `id`, with at most `budget` faulty nodes (latency touches one node
    /// and needs no budget). Depends only on the seed, `id` and its arguments.
    pub fn step(&self, id: u64, budget: usize) -> Step {
        let mut rng = Mix(self.seed ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let action = self.actions[rng.below(self.actions.len() as u64) as usize];
        let count = if action.faulty() { 1 + rng.below(budget.max(1) as u64) as usize } else { 1 };
        let count = count.min(self.nodes);
        // A partial Fisher-Yates shuffle picks `count` distinct nodes.
        let mut all: Vec<usize> = (0..self.nodes).collect();
        for i in 0..count {
            let j = i + rng.below((self.nodes - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut targets = all[..count].to_vec();
        targets.sort_unstable();
        // Between 30% and 60% of the spacing, so each heal leaves time to reconverge.
        let hold_ms = self.every_ms * (30 + rng.below(31)) / 100;
        let delay_ms = 50 + rng.below(251) as u32;
        let netem = Netem { delay_ms, jitter_ms: delay_ms / 4, loss_permille: rng.below(51) as u32 };
        Step { id, action, targets, hold_ms: hold_ms.max(1000), netem }
    }
}

/// Applies and heals perturbations.
pub enum Backend {
    Local(LocalBackend),
    Hosts(HostBackend),
}

impl Backend {
    /// The backend for an inventory's provider; checks up front that it can do `actions`.
    pub fn for_inventory(
        inv: &Inventory,
        inv_path: &Path,
        actions: &[Action],
        sessions: HashMap<String, (Arc<ssh::Host>, String)>,
    ) -> Result<Backend, ChaosError> {
        if inv.provider == ProviderKind::Local {
            if let Some(a) = actions.iter().find(|a| a.needs_hosts()) {
                return Err(ChaosError::NeedsHosts { action: a.name().into(), provider: "local".into() });
            }
            return Ok(Backend::Local(LocalBackend::new(inv, inv_path)?));
        }
        for n in &inv.nodes {
            if !sessions.contains_key(&n.name) {
                return Err(ChaosError::NoSession { node: n.name.clone() });
            }
        }
        // Rehearsal containers may not change their own network (no CAP_NET_ADMIN), but each
        // lives in a namespace of this machine named after it, where root may.
        let netns = inv.provider == ProviderKind::Rehearsal;
        if netns {
            if let Some(n) = inv.nodes.iter().find(|n| !Path::new(NETNS_DIR).join(&n.name).exists()) {
                return Err(ChaosError::Local {
                    node: n.name.clone(),
                    message: format!("no network namespace {NETNS_DIR}/{} on this machine", n.name),
                });
            }
        }
        Ok(Backend::Hosts(HostBackend {
            nodes: inv.nodes.clone(),
            sessions,
            netns,
            applied: Mutex::new(HashMap::new()),
            shapers: Mutex::new(HashMap::new()),
        }))
    }

    /// Applies a step; returns a description for the log.
    pub async fn apply(&self, step: &Step) -> Result<String, ChaosError> {
        match self {
            Backend::Local(b) => b.apply(step).await,
            Backend::Hosts(b) => b.apply(step).await,
        }
    }

    /// Whether the service manager undoes the action by itself (systemd restarts a killed
    /// timed), so there is no hold before the heal, only waiting for it.
    pub fn heals_itself(&self, action: Action) -> bool {
        matches!(self, Backend::Hosts(_)) && action == Action::Kill
    }

    pub async fn heal(&self, step: &Step) -> Result<(), ChaosError> {
        match self {
            Backend::Local(b) => b.heal(step).await,
            Backend::Hosts(b) => b.heal(step).await,
        }
    }
}

/// What a local node was started with, to start it again the same way.
struct LocalNode {
    node: Node,
    exe: PathBuf,
    args: Vec<String>,
    pid: Option<u32>,
}

pub struct LocalBackend {
    inv_path: PathBuf,
    nodes: Mutex<Vec<LocalNode>>,
}

/// Replaces the value after `flag` (or appends the pair), so a restart keeps the ports the
/// OS picked the first time (`--port 0` would get new ones, and peers know the old).
fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => args[i + 1] = value.to_string(),
        _ => {
            args.push(flag.to_string());
            args.push(value.to_string());
        }
    }
}

impl LocalBackend {
    fn new(inv: &Inventory, inv_path: &Path) -> Result<Self, ChaosError> {
        let mut nodes = Vec::new();
        for n in &inv.nodes {
            let pid = n.pid.filter(|&p| alive(p)).ok_or(ChaosError::NotRunning { node: n.name.clone(), pid: n.pid })?;
            let argv = cmdline(pid).ok_or(ChaosError::NotRunning { node: n.name.clone(), pid: Some(pid) })?;
            // Guards against a reused PID: it must be a timed with this node's data directory.
            if !is_timed_argv(&argv, n.data_dir.as_deref()) {
                return Err(ChaosError::NotRunning { node: n.name.clone(), pid: Some(pid) });
            }
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(&argv[0]));
            let mut args = argv[1..].to_vec();
            if let Some(port) = n.p2p.rsplit_once(':').map(|(_, p)| p) {
                set_flag(&mut args, "--port", port);
            }
            set_flag(&mut args, "--rpc-bind", &n.rpc);
            nodes.push(LocalNode { node: n.clone(), exe, args, pid: Some(pid) });
        }
        Ok(LocalBackend { inv_path: inv_path.to_path_buf(), nodes: Mutex::new(nodes) })
    }

    async fn apply(&self, step: &Step) -> Result<String, ChaosError> {
        let (sig, what) = match step.action {
            Action::Kill => (libc::SIGKILL, "kill -9"),
            Action::Restart => (libc::SIGTERM, "stop"),
            a => return Err(ChaosError::NeedsHosts { action: a.name().into(), provider: "local".into() }),
        };
        let mut done = Vec::new();
        for &i in &step.targets {
            let (name, pid, data_dir) = {
                let nodes = self.nodes.lock().expect("chaos state");
                (nodes[i].node.name.clone(), nodes[i].pid, nodes[i].node.data_dir.clone())
            };
            // Checked again at each signal, not only at the start: a node that died on its own
            // may have left its PID to another process by now.
            let pid = pid
                .filter(|&p| is_our_timed(p, data_dir.as_deref()))
                .ok_or(ChaosError::NotRunning { node: name.clone(), pid })?;
            signal(pid, sig).map_err(|e| ChaosError::Local { node: name.clone(), message: format!("{what}: {e}") })?;
            // A clean stop may take a while; a node that ignores it is killed.
            let deadline = Instant::now() + Duration::from_secs(if sig == libc::SIGKILL { 5 } else { 20 });
            while alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if alive(pid) {
                let _ = signal(pid, libc::SIGKILL);
            }
            self.nodes.lock().expect("chaos state")[i].pid = None;
            done.push(format!("{name} (pid {pid})"));
        }
        Ok(format!("{what} {}", done.join(", ")))
    }

    /// Starts the stopped nodes again, with their flags and ports, and records the new PIDs in
    /// the inventory so `local down` stops them.
    async fn heal(&self, step: &Step) -> Result<(), ChaosError> {
        for &i in &step.targets {
            let (node, exe, args) = {
                let nodes = self.nodes.lock().expect("chaos state");
                let n = &nodes[i];
                if n.pid.is_some_and(|p| is_our_timed(p, n.node.data_dir.as_deref())) {
                    continue;
                }
                (n.node.clone(), n.exe.clone(), n.args.clone())
            };
            let err = |message: String| ChaosError::Local { node: node.name.clone(), message };
            let log = node.log.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("{}.log", node.name)));
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| err(format!("cannot open {}: {e}", log.display())))?;
            let errout = out.try_clone().map_err(|e| err(e.to_string()))?;
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(&args)
                .env("RUST_LOG", std::env::var("TIMECTL_NODE_LOG").unwrap_or_else(|_| "info".into()))
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(errout)
                // Own process group, like `local up`: a ctrl-c to timectl must not reach it.
                .process_group(0);
            let child = cmd.spawn().map_err(|e| err(format!("cannot start {}: {e}", exe.display())))?;
            let pid = child.id();
            // Not waited for: the node outlives this run, as the ones `local up` started do.
            drop(child);
            self.nodes.lock().expect("chaos state")[i].pid = Some(pid);
            if let Some(dir) = &node.data_dir {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if matches!(NodeInfo::read(dir), Ok(Some(info)) if info.pid == pid) {
                        break;
                    }
                    if !alive(pid) {
                        return Err(err(format!("restarted timed (pid {pid}) exited; see {}", log.display())));
                    }
                    if Instant::now() > deadline {
                        return Err(err(format!("restarted timed (pid {pid}) wrote no node.json within 30 s")));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            self.record_pid(&node.name, pid).map_err(|e| err(format!("cannot record its new pid: {e}")))?;
        }
        Ok(())
    }

    fn record_pid(&self, name: &str, pid: u32) -> Result<(), inventory::InventoryError> {
        let mut inv = Inventory::load(&self.inv_path)?;
        if let Some(n) = inv.nodes.iter_mut().find(|n| n.name == name) {
            n.pid = Some(pid);
        }
        inv.save(&self.inv_path)
    }
}

/// Names of what we add on hosts, so a heal removes exactly that.
const NFT_TABLE: &str = "timectl_chaos";
const IPT_COMMENT: &str = "timectl-chaos";

/// Where `ip netns` keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";

pub struct HostBackend {
    nodes: Vec<Node>,
    sessions: HashMap<String, (Arc<ssh::Host>, String)>,
    /// Network changes go through `ip netns exec NODE` on this machine (rehearsal hosts)
    /// rather than over SSH.
    netns: bool,
    /// Per perturbation and node: what the heal must undo (the link given netem).
    applied: Mutex<HashMap<(u64, usize), String>>,
    /// Userspace netem readers of rehearsal hosts, per perturbation and node.
    shapers: Mutex<HashMap<(u64, usize), Shaper>>,
}

/// Runs `sh -ec script` inside the container of network namespace `netns`: its mount
/// namespace (its own nft and iptables, as on a server) and network namespace, with this
/// process's privileges (the container itself has no CAP_NET_ADMIN).
fn in_container(netns: &str, script: &str) -> Result<std::process::Command, String> {
    let leader = container_leader(netns).ok_or_else(|| format!("no running container in network namespace {netns}"))?;
    let mut cmd = std::process::Command::new("nsenter");
    cmd.args(["-t", &leader.to_string(), "-m", "-n", "--", "sh", "-ec", script]).stdin(std::process::Stdio::null());
    Ok(cmd)
}

impl Drop for HostBackend {
    /// A run that ends on an error path still takes its NFQUEUE rules away and stops the
    /// readers (the rules' --queue-bypass covers a run that is killed outright).
    fn drop(&mut self) {
        let shapers = std::mem::take(&mut *self.shapers.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, shaper) in shapers {
            if let Ok(mut cmd) = in_container(shaper.netns(), &netem::remove_rule_script()) {
                let _ = cmd.output();
            }
            shaper.stop();
        }
    }
}

fn ip_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Routing protocol number marking our blackhole routes (unassigned by iproute2).
const ROUTE_PROTO: u8 = 213;

/// The shell script that cuts a host off from `peers` (both directions) in one nftables table,
/// or with commented iptables rules when nft is missing, or (minimal hosts such as the
/// rehearsal containers have neither) with blackhole routes: nothing it sends reaches them, so
/// no connection to or from them works.
pub fn partition_script(peers: &[&str]) -> String {
    let set = peers.join(", ");
    let mut ipt = String::new();
    let mut routes = String::new();
    for p in peers {
        ipt.push_str(&format!(
            "iptables -I INPUT -s {p} -m comment --comment {IPT_COMMENT} -j DROP; \
             iptables -I OUTPUT -d {p} -m comment --comment {IPT_COMMENT} -j DROP; "
        ));
        routes.push_str(&format!("ip route replace blackhole {p} proto {ROUTE_PROTO}; "));
    }
    format!(
        "if command -v nft >/dev/null 2>&1; then \
           nft add table inet {NFT_TABLE}; \
           nft add chain inet {NFT_TABLE} input '{{ type filter hook input priority -10; }}'; \
           nft add chain inet {NFT_TABLE} output '{{ type filter hook output priority -10; }}'; \
           nft add rule inet {NFT_TABLE} input ip saddr '{{ {set} }}' drop; \
           nft add rule inet {NFT_TABLE} output ip daddr '{{ {set} }}' drop; echo nftables; \
         elif command -v iptables >/dev/null 2>&1; then {ipt} echo iptables; \
         elif command -v ip >/dev/null 2>&1; then {routes} echo blackhole routes; \
         else echo 'none of nft, iptables or ip is installed' >&2; exit 3; fi"
    )
}

/// Undoes `partition_script`, whichever tool it used; harmless when nothing is there.
pub fn heal_partition_script() -> String {
    format!(
        "if command -v nft >/dev/null 2>&1; then nft delete table inet {NFT_TABLE} 2>/dev/null || true; fi; \
         if command -v iptables >/dev/null 2>&1; then \
           for chain in INPUT OUTPUT; do \
             iptables -S $chain | grep -- '--comment {IPT_COMMENT}' | sed 's/^-A/-D/' | \
               while read -r rule; do eval iptables $rule; done; \
           done; \
         fi; \
         if command -v ip >/dev/null 2>&1; then ip route flush proto {ROUTE_PROTO} 2>/dev/null || true; fi"
    )
}

impl HostBackend {
    fn host(&self, i: usize) -> Result<&Arc<ssh::Host>, ChaosError> {
        let name = &self.nodes[i].name;
        self.sessions.get(name).map(|(h, _)| h).ok_or(ChaosError::NoSession { node: name.clone() })
    }

    /// Runs a script that changes a host's network: in its namespace here for rehearsal
    /// hosts, over SSH otherwise. Returns stdout; a non-zero exit is an error with stderr.
    async fn net_run(&self, i: usize, step: &str, script: &str) -> Result<String, ChaosError> {
        if !self.netns {
            return Ok(self.host(i)?.run(step, script).await?);
        }
        let name = &self.nodes[i].name;
        let cmd = in_container(name, script).map_err(|m| ChaosError::Local { node: name.clone(), message: m })?;
        let out = tokio::time::timeout(Duration::from_secs(30), tokio::process::Command::from(cmd).output())
            .await
            .map_err(|_| ChaosError::Local { node: name.clone(), message: format!("{step}: no answer within 30 s") })?
            .map_err(|e| ChaosError::Local {
                node: name.clone(),
                message: format!("{step}: cannot run nsenter: {e}"),
            })?;
        if !out.status.success() {
            return Err(ChaosError::Local {
                node: name.clone(),
                message: format!("{step}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn apply(&self, step: &Step) -> Result<String, ChaosError> {
        let names: Vec<&str> = step.targets.iter().map(|&i| self.nodes[i].name.as_str()).collect();
        match step.action {
            Action::Kill => {
                for &i in &step.targets {
                    let pid = self
                        .host(i)?
                        .run(
                            "kill -9 timed",
                            "pid=$(systemctl show -p MainPID --value timed); \
                             test \"$pid\" -gt 0 || { echo 'timed is not running' >&2; exit 3; }; \
                             kill -9 \"$pid\"; echo \"$pid\"",
                        )
                        .await?;
                    self.applied.lock().expect("chaos state").insert((step.id, i), pid.trim().to_string());
                }
                Ok(format!("kill -9 timed on {} (systemd restarts it)", names.join(", ")))
            }
            Action::Restart => {
                for &i in &step.targets {
                    self.host(i)?.run("systemctl stop timed", "systemctl stop timed").await?;
                }
                Ok(format!("systemctl stop timed on {}, start after the hold", names.join(", ")))
            }
            Action::Partition => {
                let others: Vec<usize> = (0..self.nodes.len()).filter(|i| !step.targets.contains(i)).collect();
                let peers: Vec<&str> = others.iter().map(|&i| ip_of(&self.nodes[i].p2p)).collect();
                let mut tools = Vec::new();
                for &i in &step.targets {
                    let tool = self.net_run(i, "partition", &partition_script(&peers)).await?;
                    let tool = tool.lines().last().unwrap_or_default().trim().to_string();
                    if !tools.contains(&tool) {
                        tools.push(tool);
                    }
                }
                let rest: Vec<&str> = others.iter().map(|&i| self.nodes[i].name.as_str()).collect();
                Ok(format!("{} cut off from {} ({})", names.join(","), rest.join(","), tools.join(", ")))
            }
            Action::Latency if self.netns => {
                for &i in &step.targets {
                    let node = &self.nodes[i];
                    let local = |message: String| ChaosError::Local { node: node.name.clone(), message };
                    let port: u16 = node
                        .p2p
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse().ok())
                        .ok_or_else(|| local(format!("no P2P port in {:?}", node.p2p)))?;
                    let name = node.name.clone();
                    let seed = step.id.wrapping_mul(1000).wrapping_add(i as u64);
                    let netem = step.netem;
                    // The reader first, so the rule never queues packets nobody reads.
                    let shaper = tokio::task::spawn_blocking(move || Shaper::start(&name, netem, seed))
                        .await
                        .map_err(|e| local(format!("netem reader: {e}")))?
                        .map_err(|e| local(e.to_string()))?;
                    self.shapers.lock().expect("chaos state").insert((step.id, i), shaper);
                    if let Err(e) = self.net_run(i, "add the NFQUEUE rule", &netem::add_rule_script(port)).await {
                        let _ = self.net_run(i, "remove the NFQUEUE rule", &netem::remove_rule_script()).await;
                        if let Some(s) = self.shapers.lock().expect("chaos state").remove(&(step.id, i)) {
                            s.stop();
                        }
                        return Err(e);
                    }
                }
                Ok(format!(
                    "{} on {} (userspace netem: NFQUEUE of P2P traffic)",
                    step.netem.describe(),
                    names.join(", ")
                ))
            }
            Action::Latency => {
                for &i in &step.targets {
                    let peer = (0..self.nodes.len()).find(|j| *j != i).map_or("8.8.8.8", |j| ip_of(&self.nodes[j].p2p));
                    let n = step.netem;
                    let script = format!(
                        "dev=$(ip -o route get {peer} | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p'); \
                         test -n \"$dev\" || {{ echo 'no route to {peer}' >&2; exit 3; }}; \
                         tc qdisc replace dev \"$dev\" root netem delay {}ms {}ms loss {}.{}% || \
                           {{ echo 'tc netem failed: does this kernel have sch_netem (CONFIG_NET_SCH_NETEM)?' >&2; exit 3; }}; \
                         echo \"$dev\"",
                        n.delay_ms,
                        n.jitter_ms,
                        n.loss_permille / 10,
                        n.loss_permille % 10
                    );
                    let dev = self.net_run(i, "tc netem", &script).await?;
                    self.applied.lock().expect("chaos state").insert((step.id, i), dev.trim().to_string());
                }
                Ok(format!("{} on {}", step.netem.describe(), names.join(", ")))
            }
        }
    }

    async fn heal(&self, step: &Step) -> Result<(), ChaosError> {
        for &i in &step.targets {
            let host = self.host(i)?;
            let undo = self.applied.lock().expect("chaos state").remove(&(step.id, i));
            match step.action {
                Action::Kill => {
                    // systemd restarts it; the heal is seeing a new main PID active.
                    let old = undo.unwrap_or_default();
                    let script = format!(
                        "for i in $(seq 120); do \
                           pid=$(systemctl show -p MainPID --value timed); \
                           if [ \"$pid\" -gt 0 ] && [ \"$pid\" != '{old}' ] && systemctl is-active -q timed; then exit 0; fi; \
                           sleep 0.5; \
                         done; echo 'timed did not come back within 60 s' >&2; exit 3"
                    );
                    host.run("wait for systemd to restart timed", &script).await?;
                }
                Action::Restart => {
                    host.run("systemctl start timed", "systemctl start timed").await?;
                }
                Action::Partition => {
                    self.net_run(i, "heal the partition", &heal_partition_script()).await?;
                }
                Action::Latency if self.netns => {
                    // The rule first: from then on nothing new is queued, and stopping the
                    // reader lets through what it still holds.
                    let removed = self.net_run(i, "remove the NFQUEUE rule", &netem::remove_rule_script()).await;
                    let shaper = self.shapers.lock().expect("chaos state").remove(&(step.id, i));
                    if let Some(s) = shaper {
                        let stats = tokio::task::spawn_blocking(move || s.stop()).await.unwrap_or_default();
                        tracing::info!(
                            node = %self.nodes[i].name,
                            packets = stats.packets,
                            dropped = stats.dropped,
                            max_held = stats.max_held,
                            "netem removed"
                        );
                    }
                    removed?;
                }
                Action::Latency => {
                    if let Some(dev) = undo {
                        let script = format!("tc qdisc del dev {} root", ssh::shell_quote(&dev));
                        self.net_run(i, "remove tc netem", &script).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(actions: &[Action]) -> Schedule {
        Schedule { actions: actions.to_vec(), seed: 42, every_ms: 60_000, nodes: 5 }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let s = schedule(&Action::ALL);
        let a: Vec<Step> = (0..20).map(|i| s.step(i, 1)).collect();
        let b: Vec<Step> = (0..20).map(|i| s.step(i, 1)).collect();
        assert_eq!(a, b);
        let other = Schedule { seed: 43, ..s.clone() };
        assert_ne!(a, (0..20).map(|i| other.step(i, 1)).collect::<Vec<_>>());
        // Every action turns up in twenty steps, and each step stands alone (resume).
        for act in Action::ALL {
            assert!(a.iter().any(|x| x.action == act), "{act:?} never chosen");
        }
        assert_eq!(s.step(7, 1), a[7]);
    }

    #[test]
    fn never_more_faulty_nodes_than_the_budget() {
        let s = schedule(&[Action::Kill, Action::Partition, Action::Latency]);
        for budget in 1..=2 {
            for id in 0..200 {
                let st = s.step(id, budget);
                let limit = if st.action.faulty() { budget } else { 1 };
                assert!(!st.targets.is_empty() && st.targets.len() <= limit, "{st:?}");
                assert!(st.targets.windows(2).all(|w| w[0] < w[1] && w[1] < 5), "{st:?}");
                assert!(st.hold_ms >= 18_000 && st.hold_ms <= 36_000, "{st:?}");
            }
        }
        assert_eq!(tolerance(3), 0);
        assert_eq!(tolerance(4), 1);
        assert_eq!(tolerance(5), 1);
        assert_eq!(tolerance(7), 2);
    }

    #[test]
    fn every_accepts_minutes_and_durations() {
        assert_eq!(parse_every("2"), Ok(120.0));
        assert_eq!(parse_every("0.25"), Ok(15.0));
        assert_eq!(parse_every("30s"), Ok(30.0));
        assert_eq!(parse_every("2m"), Ok(120.0));
        assert_eq!(parse_every("1h"), Ok(3600.0));
        assert!(parse_every("0.001").unwrap_err().contains("shorter than one second"));
        assert!(parse_every("soon").unwrap_err().contains("not minutes"));
        assert!(matches!(Action::parse("flood"), Err(ChaosError::UnknownAction(_))));
    }

    #[test]
    fn restarts_keep_the_ports() {
        let mut args: Vec<String> =
            ["--port", "0", "--rpc-bind", "127.0.0.1:0", "--data-dir", "/d"].iter().map(|s| s.to_string()).collect();
        set_flag(&mut args, "--port", "4100");
        set_flag(&mut args, "--rpc-bind", "127.0.0.1:4200");
        assert_eq!(args, ["--port", "4100", "--rpc-bind", "127.0.0.1:4200", "--data-dir", "/d"]);
        assert_eq!(ip_of("10.0.0.5:9000"), "10.0.0.5");
        assert_eq!(ip_of("[::1]:9000"), "::1");
    }

    #[test]
    fn partition_rules_live_in_a_table_of_their_own() {
        let s = partition_script(&["10.0.0.2", "10.0.0.3"]);
        assert!(s.contains("nft add table inet timectl_chaos"), "{s}");
        assert!(s.contains("ip saddr '{ 10.0.0.2, 10.0.0.3 }' drop"), "{s}");
        assert!(s.contains("iptables -I OUTPUT -d 10.0.0.3 -m comment --comment timectl-chaos -j DROP"), "{s}");
        let h = heal_partition_script();
        assert!(h.contains("nft delete table inet timectl_chaos") && h.contains("--comment timectl-chaos"), "{h}");
        assert!(s.contains("ip route replace blackhole 10.0.0.2 proto 213"), "{s}");
        assert!(h.contains("ip route flush proto 213"), "{h}");
    }

    /// A namespace of this test's own, deleted by name even when an assertion fails.
    struct TestNetns(String);
    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// A host with neither nft nor iptables (PATH holds only `sh`, `ip`, `grep`, `sed`): the
    /// partition is blackhole routes of our protocol, and the heal removes exactly those.
    /// Needs root (CI runs as root).
    #[test]
    fn without_nft_or_iptables_a_partition_is_blackhole_routes() {
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (CI runs as root)");
        let ns = TestNetns(format!("timectl-ut-{}", std::process::id()));
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().unwrap();
        assert!(ip(&["netns", "add", &ns.0]).status.success());
        let bin = tempfile::tempdir().unwrap();
        for tool in ["sh", "ip", "grep", "sed"] {
            let path = std::env::split_paths(&std::env::var_os("PATH").unwrap())
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{tool} not found"));
            std::os::unix::fs::symlink(path, bin.path().join(tool)).unwrap();
        }
        let run = |script: &str| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns.0, "sh", "-ec", script])
                .env("PATH", bin.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // A route of someone else's that the heal must leave alone.
        run("ip link set lo up; ip route add blackhole 10.77.0.9");
        let tool = run(&partition_script(&["10.77.0.2", "10.77.0.3"]));
        assert_eq!(tool.trim(), "blackhole routes");
        let ours = run("ip route show proto 213");
        assert!(ours.contains("blackhole 10.77.0.2") && ours.contains("blackhole 10.77.0.3"), "{ours}");
        let route = run("ip route get 10.77.0.2 2>&1 || true");
        assert!(!route.contains("dev"), "10.77.0.2 is still reachable: {route}");
        run(&heal_partition_script());
        assert_eq!(run("ip route show proto 213").trim(), "");
        assert!(run("ip route show").contains("blackhole 10.77.0.9"), "the heal removed a route not ours");
    }

    #[test]
    fn seed_one_kills_two_of_four_first() {
        // timectl/tests/chaos.rs halts a four-node network on purpose with this seed.
        let s = Schedule { actions: vec![Action::Kill], seed: 1, every_ms: 10_000, nodes: 4 };
        assert_eq!(s.step(0, 2).targets, vec![2, 3]);
    }

    #[test]
    fn seed_four_partitions_then_slows() {
        // timectl/tests/chaos_rehearsal.rs relies on this order on four hosts.
        let s = Schedule { actions: vec![Action::Partition, Action::Latency], seed: 4, every_ms: 25_000, nodes: 4 };
        let first: Vec<(Action, Vec<usize>)> = (0..2).map(|i| (s.step(i, 1).action, s.step(i, 1).targets)).collect();
        assert_eq!(first, vec![(Action::Partition, vec![3]), (Action::Latency, vec![1])]);
    }
}
