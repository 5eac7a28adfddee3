//! `timectl local up|down`: a network of `timed` processes on this machine, replacing the
//! plan's setup_local_testnet.sh. Differences from the script, on purpose: RPC binds to
//! 127.0.0.1 (the script's 0.0.0.0 exposed unauthenticated RPC to the network), ports are
//! picked by the OS and read back from each node's node.json (no fixed-port clashes), and
//! readiness is "RPC answers" rather than `sleep 5`.

use crate::client;
use crate::context::Ctx;
use crate::inventory::{self, Inventory, InventoryError, Node, ProviderKind};
use crate::output::{self, Ui};
use crate::process::{alive, is_our_timed, signal};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use timed::api::TimeRpcClient;
use timed::node_info::NodeInfo;

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start N timed processes on 127.0.0.1 and write their inventory.
    #[command(after_help = "\
Examples:
  timectl local up --nodes 3                      validator1..3, 10 s blocks
  timectl local up --nodes 5 --block-time 2 --network fast
  timectl local up --nodes 3 --keep-data          restart a stopped network with its chain

Nodes run in their own process group, so they outlive timectl and ignore a later ctrl-c.
Data: testnet-data/NETWORK/nodeI/, logs: testnet-data/NETWORK/nodeI.log. Node log level: $TIMECTL_NODE_LOG
(default info).")]
    Up(UpArgs),
    /// Stop the processes of a local network (SIGTERM, then SIGKILL after --timeout).
    #[command(after_help = "\
Examples:
  timectl local down                  stop the last used network, keep its data
  timectl local down --network fast --wipe

Only processes that still are the timed started for this inventory (checked through
/proc/PID/cmdline) are signalled, so a recycled PID is never hit.")]
    Down(DownArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many nodes (validator1..validatorN).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Seconds per block slot.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub block_time: u64,
    /// Validators in the devnet genesis (default: --nodes). More than --nodes leaves the
    /// network without a quorum, which is useful for fault tests.
    #[arg(long, value_name = "N")]
    pub devnet_validators: Option<u32>,
    /// Parent of the node data directories [default: testnet-data/NETWORK].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The timed binary [default: next to timectl, then $PATH].
    #[arg(long, value_name = "PATH", env = "TIMECTL_TIMED", hide_env_values = true)]
    pub timed: Option<PathBuf>,
    /// Reuse existing data directories instead of starting from genesis.
    #[arg(long)]
    pub keep_data: bool,
    /// Seconds to wait for every node to answer RPC.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also delete the data directories, logs and the inventory.
    #[arg(long)]
    pub wipe: bool,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 15.0, value_name = "SECS")]
    pub timeout: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot find the timed binary (looked at: {})", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    TimedNotFound { tried: Vec<PathBuf> },
    #[error("network {network:?} is already running ({node} has pid {pid})")]
    AlreadyRunning { network: String, node: String, pid: u32 },
    #[error("{path} is a {provider} inventory, not a local one")]
    NotLocal { path: PathBuf, provider: String },
    #[error("cannot start {node}")]
    Spawn {
        node: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{node} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    Exited { node: String, status: String, log: PathBuf, tail: String },
    #[error("{node} did not write {path} within {secs:.0} s")]
    NoNodeJson { node: String, path: PathBuf, secs: f64, log: PathBuf },
    #[error("{path}: {message}")]
    BadNodeJson { path: PathBuf, message: String },
    #[error("not ready within {secs:.0} s: {}", nodes.join(", "))]
    NotReady { nodes: Vec<String>, secs: f64 },
    #[error("could not stop {}", nodes.join(", "))]
    StillRunning { nodes: Vec<String> },
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LocalError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            LocalError::TimedNotFound { .. } => "build it with `cargo build -p timed`, or pass --timed PATH".into(),
            LocalError::AlreadyRunning { network, .. } => {
                format!("stop it first with `timectl local down --network {network}`")
            }
            LocalError::NotLocal { .. } => {
                "local up/down only manage local networks; pick another --network name".into()
            }
            LocalError::NoNodeJson { log, .. } | LocalError::Exited { log, .. } => {
                format!("see the node's log: {}", log.display())
            }
            LocalError::NotReady { .. } => {
                "the nodes keep running; look at their logs, then `timectl local down`".into()
            }
            LocalError::StillRunning { .. } => "check with `ps`; nothing was wiped".into(),
            _ => return None,
        })
    }
}

pub async fn run(cmd: LocalCommand, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    match cmd {
        LocalCommand::Up(a) => up(a, ctx, ui).await,
        LocalCommand::Down(a) => down(a, ctx, ui).await,
    }
}

fn find_timed(explicit: Option<&Path>) -> Result<PathBuf, LocalError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(LocalError::TimedNotFound { tried: vec![p.to_path_buf()] })
        };
    }
    let mut tried = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        tried.push(dir.join("timed"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        tried.extend(std::env::split_paths(&path).map(|d| d.join("timed")));
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or(LocalError::TimedNotFound { tried })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io { path: path.to_path_buf(), source }
}

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Started {
    name: String,
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    info: Option<NodeInfo>,
}

struct Plan<'a> {
    timed: &'a Path,
    block_time: u64,
    devnet_validators: u32,
    /// `--threads` of each node.
    threads: usize,
}

/// The nodes share this machine's cores: each gets its share, at least one. A node's default
/// is every core, and five such nodes on two cores spent their time switching between threads
/// (docs/benchmarks.md, run S: about a fifth more payments per second with one each).
fn threads_per_node(nodes: u32) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / nodes.max(1) as usize).max(1)
}

fn spawn_node(plan: &Plan, index: u32, base: &Path, peers: Option<&str>) -> Result<Started, LocalError> {
    let name = format!("node{index}");
    let data_dir = base.join(&name);
    let log = base.join(format!("{name}.log"));
    std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
    // A node.json from an earlier run would be read as this run's ports.
    NodeInfo::remove(&data_dir)
        .map_err(|e| LocalError::BadNodeJson { path: NodeInfo::path(&data_dir), message: e.to_string() })?;
    let log_file = std::fs::File::create(&log).map_err(io_err(&log))?;
    let log_err = log_file.try_clone().map_err(io_err(&log))?;
    let mut cmd = std::process::Command::new(plan.timed);
    cmd.arg("--validator-id")
        .arg(format!("validator{index}"))
        // Loopback only, P2P included: a local network is nobody else's business.
        .args(["--port", "0", "--p2p-bind", "127.0.0.1", "--rpc-bind", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--block-time")
        .arg(plan.block_time.to_string())
        .arg("--devnet-validators")
        .arg(plan.devnet_validators.to_string())
        .arg("--threads")
        .arg(plan.threads.to_string());
    if let Some(p) = peers {
        cmd.arg("--peers").arg(p);
    }
    cmd.env("RUST_LOG", std::env::var("TIMECTL_NODE_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        // Own process group: a ctrl-c in this terminal later must not reach the nodes.
        .process_group(0);
    tracing::info!("starting {name}: {cmd:?}");
    let child = cmd.spawn().map_err(|source| LocalError::Spawn { node: name.clone(), source })?;
    Ok(Started { name, child, data_dir, log, info: None })
}

async fn wait_node_json(s: &mut Started, deadline: Instant, secs: f64) -> Result<(), LocalError> {
    let path = NodeInfo::path(&s.data_dir);
    loop {
        if let Ok(Some(status)) = s.child.try_wait() {
            return Err(LocalError::Exited {
                node: s.name.clone(),
                status: status.to_string(),
                log: s.log.clone(),
                tail: log_tail(&s.log, 15),
            });
        }
        // timed writes the file with a rename, so what is there is complete.
        let read = NodeInfo::read(&s.data_dir).map_err(|e| LocalError::BadNodeJson {
            path: path.clone(),
            message: std::error::Error::source(&e).map_or_else(|| e.to_string(), |c| c.to_string()),
        })?;
        if let Some(info) = read {
            if info.pid != s.child.id() {
                return Err(LocalError::BadNodeJson {
                    path,
                    message: format!("pid {} is not the started {}", info.pid, s.child.id()),
                });
            }
            s.info = Some(info);
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LocalError::NoNodeJson { node: s.name.clone(), path, secs, log: s.log.clone() });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops what a failed `up` started, so a failure leaves nothing behind.
async fn abort_started(started: &mut [Started]) {
    for s in started.iter() {
        let _ = signal(s.child.id(), libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in started.iter_mut() {
        while matches!(s.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
}

fn to_node(s: &Started) -> Node {
    let info = s.info.as_ref().expect("node.json read before use");
    Node {
        name: s.name.clone(),
        host: "127.0.0.1".into(),
        ssh_user: None,
        ssh_port: None,
        p2p: info.p2p.to_string(),
        rpc: info.rpc.to_string(),
        validator_id: info.validator_id.clone(),
        provider_id: None,
        pid: Some(info.pid),
        data_dir: Some(s.data_dir.clone()),
        log: Some(s.log.clone()),
        rpc_auth: None,
    }
}

async fn wait_rpc_ready(nodes: &[Node], started: &mut [Started], timeout: f64, ui: Ui) -> Result<(), LocalError> {
    let spinner = ui.spinner(format!("waiting for {} nodes to answer RPC and connect", nodes.len()));
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    let mut waiting_on: Vec<String>;
    while !pending.is_empty() {
        for s in started.iter_mut() {
            if let Ok(Some(status)) = s.child.try_wait() {
                spinner.finish_and_clear();
                return Err(LocalError::Exited {
                    node: s.name.clone(),
                    status: status.to_string(),
                    log: s.log.clone(),
                    tail: log_tail(&s.log, 15),
                });
            }
        }
        // Ready = answers RPC and is connected to every other node: a transaction sent before
        // the mesh forms may never reach a late peer.
        let want = nodes.len().saturating_sub(1);
        let probe: Vec<Node> = pending.iter().map(|&i| nodes[i].clone()).collect();
        let results = client::fan_out(&probe, Duration::from_secs(2), |n| async move {
            let c = client::rpc_client(&n, Duration::from_secs(2))?;
            let info = c.get_network_info().await.map_err(|e| client::compact_error(&e))?;
            if info.connections >= want {
                Ok(())
            } else {
                Err(format!("{} of {want} peers", info.connections))
            }
        })
        .await;
        let still: Vec<(usize, String)> =
            pending.iter().copied().zip(results).filter_map(|(i, (r, _))| r.err().map(|e| (i, e))).collect();
        pending = still.iter().map(|(i, _)| *i).collect();
        waiting_on = still.into_iter().map(|(i, e)| format!("{} ({e})", nodes[i].name)).collect();
        spinner.set_message(format!(
            "waiting for RPC and peers: {}/{} nodes ready",
            nodes.len() - pending.len(),
            nodes.len()
        ));
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            spinner.finish_and_clear();
            return Err(LocalError::NotReady { nodes: waiting_on, secs: timeout });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    spinner.finish_and_clear();
    Ok(())
}

async fn up(a: UpArgs, ctx: &Ctx, ui: Ui) -> anyhow::Result<u8> {
    let (inv_path, network) = match (&ctx.inventory_file, &ctx.network) {
        (Some(p), _) => (p.clone(), p.file_stem().map_or("local".into(), |s| s.to_string_lossy().into_owned())),
        (None, Some(n)) => (inventory::network_path(n), n.clone()),
        (None, None) => (inventory::network_path("local"), "local".to_string()),
    };

    // Refuse to clobber a running network, or a non-local inventory of the same name.
    if inv_path.exists() {
        let old = Inventory::load(&inv_path)?;
        if old.provider != ProviderKind::Local {
            return Err(LocalError::NotLocal { path: inv_path, provider: old.provider.name().into() }.into());
        }
        if let Some(n) = old.nodes.iter().find(|n| n.pid.is_some_and(|p| is_our_timed(p, n.data_dir.as_deref()))) {
            return Err(
                LocalError::AlreadyRunning { network, node: n.name.clone(), pid: n.pid.unwrap_or_default() }.into()
            );
        }
    }

    let timed = find_timed(a.timed.as_deref())?;
    let base = a.data_dir.clone().unwrap_or_else(|| PathBuf::from("testnet-data").join(&network));
    let base = std::path::absolute(&base).map_err(io_err(&base))?;
    if !a.keep_data {
        for i in 1..=a.nodes {
            let d = base.join(format!("node{i}"));
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(io_err(&d))?;
            }
        }
    }
    std::fs::create_dir_all(&base).map_err(io_err(&base))?;

    let plan = Plan {
        timed: &timed,
        block_time: a.block_time,
        devnet_validators: a.devnet_validators.unwrap_or(a.nodes),
        threads: threads_per_node(a.nodes),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout);
    let spinner = ui.spinner(format!("starting {} nodes", a.nodes));
    let mut started: Vec<Started> = Vec::new();
    let result: Result<(), LocalError> = async {
        // Node 1 first: the others need its P2P address, and peer exchange then connects
        // everyone to everyone.
        let mut first = spawn_node(&plan, 1, &base, None)?;
        let r = wait_node_json(&mut first, deadline, a.timeout).await;
        started.push(first);
        r?;
        let seed = started[0].info.as_ref().map(|i| i.p2p.to_string());
        for i in 2..=a.nodes {
            spinner.set_message(format!("starting node{i} of {}", a.nodes));
            started.push(spawn_node(&plan, i, &base, seed.as_deref())?);
        }
        for s in started.iter_mut().skip(1) {
            wait_node_json(s, deadline, a.timeout).await?;
        }
        Ok(())
    }
    .await;
    spinner.finish_and_clear();
    if let Err(e) = result {
        abort_started(&mut started).await;
        return Err(e.into());
    }

    let nodes: Vec<Node> = started.iter().map(to_node).collect();
    let remaining = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
    if let Err(e) = wait_rpc_ready(&nodes, &mut started, remaining.max(1.0), ui).await {
        if matches!(e, LocalError::Exited { .. }) {
            abort_started(&mut started).await;
        } else {
            // Keep them (the hint says so) but record them, so `local down` can stop them.
            write_inventory(&inv_path, &network, nodes)?;
        }
        return Err(e.into());
    }
    let inv = write_inventory(&inv_path, &network, nodes)?;
    // The children run on in their own process group; dropping the handles leaves them be.
    drop(started);

    if ui.json {
        ui.print_json(&serde_json::json!({ "inventory": inv_path, "network": inv }));
    } else {
        let mut t = ui.table(&["node", "validator", "pid", "p2p", "rpc", "log"]);
        for n in &inv.nodes {
            t.add_row(vec![
                n.name.clone(),
                n.validator_id.clone(),
                n.pid.map(|p| p.to_string()).unwrap_or_default(),
                n.p2p.clone(),
                n.rpc.clone(),
                n.log.as_ref().map(|l| l.display().to_string()).unwrap_or_default(),
            ]);
        }
        println!("{t}");
        println!("inventory: {}", inv_path.display());
    }
    Ok(crate::error::EXIT_OK)
}

fn write_inventory(path: &Path, network: &str, nodes: Vec<Node>) -> Result<Inventory, InventoryError> {
    let inv = Inventory {
        network: network.to_string(),
        provider: ProviderKind::Local,
        created: Some(output::rfc3339(output::now_ms())),
        hourly_usd_per_host: None,
        ssh_identity: None,
        nodes,
    };
    inv.save(path)?;
    inventory::remember(path);
    Ok(inv)
}

#[derive(Serialize)]
struct DownRow {
    node: String,
    pid: Option<u32>,
    result: &'static str,
}

async fn down(a: DownArgs, ctx: &Ctx, ui: Ui) -> anyhow::Result<u8> {
    let (path, inv) = ctx.inventory()?;
    let (path, inv) = (path.to_path_buf(), inv.clone());
    if inv.provider != ProviderKind::Local {
        return Err(LocalError::NotLocal { path, provider: inv.provider.name().into() }.into());
    }
    let spinner = ui.spinner(format!("stopping {} nodes", inv.nodes.len()));
    let mut rows: Vec<DownRow> = Vec::new();
    let mut signalled = Vec::new();
    for n in &inv.nodes {
        let ours = n.pid.filter(|&p| is_our_timed(p, n.data_dir.as_deref()));
        let result = match ours {
            // A reused PID belongs to someone else now: never signal it, and say so.
            None if n.pid.is_some_and(alive) => "not running (its pid is another process now)",
            None => "not running",
            Some(pid) => match signal(pid, libc::SIGTERM) {
                Ok(()) => {
                    signalled.push((rows.len(), pid));
                    "stopped"
                }
                Err(e) => {
                    tracing::warn!("SIGTERM to {} (pid {pid}): {e}", n.name);
                    "signal failed"
                }
            },
        };
        rows.push(DownRow { node: n.name.clone(), pid: n.pid, result });
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout);
    while signalled.iter().any(|&(_, p)| alive(p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &(row, pid) in &signalled {
        if alive(pid) {
            tracing::warn!("{} (pid {pid}) ignored SIGTERM; sending SIGKILL", rows[row].node);
            let _ = signal(pid, libc::SIGKILL);
            rows[row].result = "killed";
        }
    }
    let kill_deadline = Instant::now() + Duration::from_secs(5);
    while signalled.iter().any(|&(_, p)| alive(p)) && Instant::now() < kill_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spinner.finish_and_clear();
    let stuck: Vec<String> =
        signalled.iter().filter(|&&(_, p)| alive(p)).map(|&(row, _)| rows[row].node.clone()).collect();

    let mut wiped = false;
    if a.wipe && stuck.is_empty() {
        let mut parents = Vec::new();
        for n in &inv.nodes {
            for p in n.data_dir.iter() {
                if p.exists() {
                    std::fs::remove_dir_all(p).map_err(io_err(p))?;
                }
                parents.extend(p.parent().map(Path::to_path_buf));
            }
            for l in n.log.iter() {
                if l.exists() {
                    std::fs::remove_file(l).map_err(io_err(l))?;
                }
            }
        }
        parents.dedup();
        for p in parents {
            // Only removes the parent when nothing else is in it.
            let _ = std::fs::remove_dir(p);
        }
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        inventory::forget(&path);
        wiped = true;
    }

    if ui.json {
        ui.print_json(&serde_json::json!({ "inventory": path, "nodes": rows, "wiped": wiped }));
    } else {
        let mut t = ui.table(&["node", "pid", "result"]);
        for r in &rows {
            t.add_row(vec![r.node.clone(), r.pid.map(|p| p.to_string()).unwrap_or_default(), r.result.to_string()]);
        }
        println!("{t}");
        if wiped {
            println!("wiped data, logs and {}", path.display());
        }
    }
    if !stuck.is_empty() {
        return Err(LocalError::StillRunning { nodes: stuck }.into());
    }
    Ok(crate::error::EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::threads_per_node;

    #[test]
    fn nodes_share_the_cores_and_each_gets_at_least_one() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(threads_per_node(1), cores);
        assert_eq!(threads_per_node(cores as u32 * 3), 1);
        assert_eq!(threads_per_node(0), cores, "no nodes is not a division by zero");
    }
}
