//! The install stage: inventory -> running `timed` services. It knows nothing of providers:
//! for every host of the inventory it logs in over SSH (`crate::ssh`), checks the host can run
//! the node (systemd as init, the P2P port free), creates the `timecoin` user, uploads the
//! binary (skipped when the host's sha256 matches; checked after upload), the genesis, the
//! node's keys (0600, owned by the service user, through stdin) and config, installs the unit
//! rendered from `templates/timed.service`, and (re)starts the service only when something
//! changed. Then it waits until every node answers RPC through an SSH forward and the heights
//! agree and advance.

use crate::inventory::{Inventory, Node};
use crate::materials::{
    self, Materials, REMOTE_BINARY, REMOTE_CONFIG, REMOTE_DATA, REMOTE_GENESIS, REMOTE_UNIT, SERVICE_USER,
};
use crate::providers::Progress;
use crate::ssh::{self, Host, SshError, SshOptions, Target};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use timed::api::TimeRpcClient;

/// The unit template, built into the binary so that what the tests check is what deploys.
pub const UNIT_TEMPLATE: &str = include_str!("../../templates/timed.service");

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the inventory lists {host} twice: nodes {first} and {second}")]
    DuplicateHost { host: String, first: String, second: String },
    #[error("the unit template still has a field to fill in: {0}")]
    Template(String),
    #[error("cannot read the timed binary {path}")]
    Binary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{node}: step `{step}` failed{}", left_note(.left))]
    Step {
        node: String,
        step: &'static str,
        left: Vec<String>,
        #[source]
        source: Box<StepError>,
    },
    #[error("the network did not come up within {secs} s: {detail}")]
    NotConverged { secs: u64, detail: String },
    #[error("{} hosts failed", .0.len())]
    Several(Vec<InstallError>),
    #[error("upgrade stopped at {node} (upgraded before it: {}; not touched: {})", list(.upgraded), list(.untouched))]
    UpgradeStopped {
        node: String,
        upgraded: Vec<String>,
        untouched: Vec<String>,
        #[source]
        source: Box<InstallError>,
    },
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn left_note(left: &[String]) -> String {
    if left.is_empty() {
        " (nothing was changed on the host)".into()
    } else {
        format!(" (already done on the host: {})", left.join(", "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("the host does not run systemd as init (PID 1 is {init})")]
    NoSystemd { init: String },
    #[error("P2P port {port} is already in use on the host")]
    PortTaken { port: u16 },
    #[error("the uploaded binary's sha256 is {got}, expected {want}")]
    Corrupt { got: String, want: String },
    #[error("timed did not start: {detail}")]
    NotStarted { detail: String },
    #[error("the host's first boot failed (cloud-init: {status})")]
    FirstBootFailed { status: String },
    #[error("the host's first boot (cloud-init) was still running after {secs} s")]
    FirstBootSlow { secs: u64 },
}

impl InstallError {
    pub fn hint(&self) -> Option<String> {
        match self {
            InstallError::DuplicateHost { .. } => {
                Some("each node needs its own host (or its own ssh_port on one address); fix the inventory".into())
            }
            InstallError::Step { node, source, left, .. } => {
                let specific = match source.as_ref() {
                    StepError::Ssh(e) => e.hint(),
                    StepError::NoSystemd { .. } => {
                        Some("install onto a host (or VM) that boots systemd; containers without it cannot run the unit".into())
                    }
                    StepError::PortTaken { .. } => Some(
                        "stop what listens there, or give the node another P2P port in the inventory (p2p = \"HOST:PORT\")"
                            .into(),
                    ),
                    StepError::NotStarted { .. } => Some(format!("read the node's journal: `timectl logs {node}`")),
                    StepError::Corrupt { .. } => Some("run the install again; check the host's disk".into()),
                    StepError::FirstBootFailed { .. } => Some(
                        "read /var/log/cloud-init-output.log on the host; fix the cause, or replace the host, and run again"
                            .into(),
                    ),
                    StepError::FirstBootSlow { .. } => {
                        Some("run again once `cloud-init status` on the host says done (package mirrors can be slow)".into())
                    }
                };
                let cleanup = (!left.is_empty()).then(|| {
                    "run the install again to finish, or `timectl destroy` to remove what is there".to_string()
                });
                match (specific, cleanup) {
                    (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                    (a, b) => a.or(b),
                }
            }
            InstallError::NotConverged { .. } => {
                Some("look at `timectl status` and `timectl logs NODE`; the services keep running".into())
            }
            InstallError::Several(v) => v.first().and_then(InstallError::hint),
            InstallError::UpgradeStopped { source, .. } => source
                .hint()
                .or_else(|| Some("fix the node, then run the upgrade again: upgraded nodes are skipped".into())),
            _ => None,
        }
    }
}

/// Fills in the unit template; every `{{field}}` must be known.
pub fn render_unit(template: &str, node: &Node) -> Result<String, InstallError> {
    let unit = template.replace("{{validator_id}}", &node.validator_id);
    match unit.find("{{") {
        Some(i) => Err(InstallError::Template(unit[i..].chars().take_while(|c| *c != '\n').collect())),
        None => Ok(unit),
    }
}

/// Two nodes on one SSH endpoint would overwrite each other's service.
pub fn check_distinct_hosts(inv: &Inventory) -> Result<(), InstallError> {
    let mut seen: HashMap<(String, u16), &str> = HashMap::new();
    for n in &inv.nodes {
        let t = Target::of(n);
        if let Some(first) = seen.insert((t.host.clone(), t.port), &n.name) {
            return Err(InstallError::DuplicateHost {
                host: format!("{}:{}", t.host, t.port),
                first: first.to_string(),
                second: n.name.clone(),
            });
        }
    }
    Ok(())
}

/// One file to put on a host.
pub struct Upload {
    pub dest: &'static str,
    pub bytes: std::sync::Arc<Vec<u8>>,
    pub mode: u32,
    pub owner: &'static str,
    /// Shown in plans and progress: "binary", "genesis", ...; secrets say so.
    pub what: &'static str,
}

impl Upload {
    /// The binary is the same on every host and large: hashed once (see `Blob`).
    fn sha256(&self, binary: &Blob) -> String {
        if std::sync::Arc::ptr_eq(&self.bytes, &binary.bytes) {
            binary.sha256.clone()
        } else {
            hex::encode(Sha256::digest(self.bytes.as_slice()))
        }
    }
}

/// File content with its sha256, computed once.
pub struct Blob {
    pub bytes: std::sync::Arc<Vec<u8>>,
    pub sha256: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Blob { bytes: std::sync::Arc::new(bytes), sha256 }
    }

    /// The `timed` binary to install, read and hashed once for every host.
    fn read_binary(path: &Path) -> Result<Self, InstallError> {
        std::fs::read(path).map(Blob::new).map_err(|source| InstallError::Binary { path: path.to_path_buf(), source })
    }
}

/// What one host gets, in the order it gets it.
pub fn host_files(inv: &Inventory, index: usize, m: &Materials, binary: &Blob) -> Result<Vec<Upload>, InstallError> {
    let node = &inv.nodes[index];
    let keys = m.keys_of(&node.validator_id).expect("materials are made from this inventory");
    let svc = "timecoin:timecoin";
    Ok(vec![
        Upload { dest: REMOTE_BINARY, bytes: binary.bytes.clone(), mode: 0o755, owner: "root:root", what: "binary" },
        Upload {
            dest: REMOTE_GENESIS,
            bytes: m.genesis_toml.clone().into_bytes().into(),
            mode: 0o644,
            owner: "root:root",
            what: "genesis",
        },
        Upload {
            dest: REMOTE_CONFIG,
            bytes: materials::node_config(inv, index).into_bytes().into(),
            mode: 0o644,
            owner: "root:root",
            what: "config",
        },
        Upload {
            dest: "/var/lib/timed/validator.key",
            bytes: keys.validator_key.clone().into(),
            mode: 0o600,
            owner: svc,
            what: "validator key (secret)",
        },
        Upload {
            dest: "/var/lib/timed/wallet.key",
            bytes: keys.wallet_key.clone().into(),
            mode: 0o600,
            owner: svc,
            what: "wallet key (secret)",
        },
        Upload {
            dest: REMOTE_UNIT,
            bytes: render_unit(UNIT_TEMPLATE, node)?.into_bytes().into(),
            mode: 0o644,
            owner: "root:root",
            what: "unit timed.service",
        },
    ])
}

/// Per host, one line per thing `install` would do (for `--dry-run`).
pub fn plan(inv: &Inventory, m: &Materials, binary: &Blob) -> Result<Vec<(String, Vec<String>)>, InstallError> {
    check_distinct_hosts(inv)?;
    let mut out = Vec::new();
    for (i, n) in inv.nodes.iter().enumerate() {
        let t = Target::of(n);
        let mut lines =
            vec![format!("ssh {}@{}:{}", t.user, t.host, t.port), format!("user {SERVICE_USER} (created if missing)")];
        for u in host_files(inv, i, m, binary)? {
            lines.push(format!("upload {} {:o} {} ({}, {} bytes)", u.dest, u.mode, u.owner, u.what, u.bytes.len()));
        }
        lines.push("systemctl daemon-reload && systemctl enable --now timed (restart when anything changed)".into());
        out.push((n.name.clone(), lines));
    }
    Ok(out)
}

/// What install did on one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostResult {
    pub node: String,
    /// Names of the files that were different and were uploaded.
    pub uploaded: Vec<String>,
    pub restarted: bool,
}

/// What to install and how long to wait for it: the flags `deploy` and `install` share.
#[derive(Clone, Debug, clap::Args)]
pub struct InstallFlags {
    /// Seconds per block of a new network's genesis.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub block_time: u64,
    /// The timed binary to install (default: the one beside timectl, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub timed: Option<PathBuf>,
    /// Seconds to wait for the network to answer and advance after installing.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub wait: u64,
}

pub struct InstallOptions {
    pub binary: PathBuf,
    pub ssh: SshOptions,
    /// How long to wait for the network to answer and advance.
    pub wait: Duration,
}

/// Installs onto every host of `inv` and waits for the network. Sessions are closed on every
/// path out.
pub async fn install(
    inv: &Inventory,
    m: &Materials,
    opts: &InstallOptions,
    progress: &dyn Progress,
) -> Result<Vec<HostResult>, InstallError> {
    check_distinct_hosts(inv)?;
    let binary = Blob::read_binary(&opts.binary)?;
    for n in &inv.nodes {
        progress.step(&n.name, "connecting");
    }
    let targets: Vec<Target> = inv.nodes.iter().map(Target::of).collect();
    let pool = match ssh::Pool::connect(&targets, &opts.ssh).await {
        Ok(p) => p,
        Err(errors) => {
            let mut v: Vec<InstallError> = errors
                .into_iter()
                .map(|e| {
                    let node = match &e {
                        SshError::HostKeyChanged { host, .. }
                        | SshError::Auth { host, .. }
                        | SshError::Connect { host, .. }
                        | SshError::Timeout { host, .. }
                        | SshError::Failed { host, .. }
                        | SshError::Session { host, .. } => host.split(' ').next().unwrap_or_default().to_string(),
                    };
                    progress.step(&node, "failed: connect");
                    InstallError::Step { node, step: "connect", left: Vec::new(), source: Box::new(e.into()) }
                })
                .collect();
            return Err(if v.len() == 1 { v.remove(0) } else { InstallError::Several(v) });
        }
    };
    let result = install_on(&pool, inv, m, &binary, opts, progress).await;
    pool.close().await;
    result
}

async fn install_on(
    pool: &ssh::Pool,
    inv: &Inventory,
    m: &Materials,
    binary: &Blob,
    opts: &InstallOptions,
    progress: &dyn Progress,
) -> Result<Vec<HostResult>, InstallError> {
    use futures::StreamExt;
    let jobs = pool.hosts.iter().enumerate().map(|(i, h)| async move {
        let files = host_files(inv, i, m, binary)?;
        install_host(h, &inv.nodes[i], files, binary, progress).await
    });
    let results: Vec<Result<HostResult, InstallError>> =
        futures::stream::iter(jobs).buffered(opts.ssh.parallelism.max(1)).collect().await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(h) => ok.push(h),
            Err(e) => failed.push(e),
        }
    }
    if !failed.is_empty() {
        return Err(if failed.len() == 1 { failed.remove(0) } else { InstallError::Several(failed) });
    }
    for n in &inv.nodes {
        progress.step(&n.name, "waiting for the network");
    }
    // Nothing changed anywhere: the nodes need only answer and agree, not produce a block.
    let advance = ok.iter().any(|h| h.restarted);
    wait_converged(pool, inv, opts.wait, advance).await?;
    for n in &inv.nodes {
        progress.step(&n.name, "running");
    }
    Ok(ok)
}

/// Finds the free/used state of the P2P port: prints `used` when something listens on it
/// (from /proc, so no tool beyond sh is needed), unless it is our running service.
const PORT_CHECK: &str = r#"hex=$(printf '%04X' "$1")
if systemctl is-active --quiet timed 2>/dev/null; then echo ours; exit 0; fi
if cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$hex" '$4 == "0A" && toupper(substr($2, length($2)-4)) == p {f=1} END {exit !f}'; then echo used; else echo free; fi"#;

/// How long a cloud host's first boot may take: cloud-init updates the package lists and
/// installs chrony and nftables (templates/cloud-init.yaml) after sshd already lets us in.
const FIRST_BOOT_WAIT: Duration = Duration::from_secs(900);

/// `cloud-init status`, or `status: absent` on hosts without cloud-init (one's own servers,
/// rehearsal hosts). Not `--wait`: that can outlast the per-command timeout, and polling shows
/// the wait in the progress line.
const FIRST_BOOT_CHECK: &str =
    "command -v cloud-init >/dev/null 2>&1 || { echo 'status: absent'; exit 0; }; cloud-init status 2>&1 || true";

/// Waits until cloud-init has finished the host's first boot, so the firewall and time sync
/// it sets up are in place before timed starts. Returns at once where there is no cloud-init
/// or it finished long ago.
async fn wait_first_boot(h: &Host, name: &str, progress: &dyn Progress) -> Result<(), StepError> {
    let started = Instant::now();
    loop {
        let out = h.run("check cloud-init", FIRST_BOOT_CHECK).await?;
        let status = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("status:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| out.trim().to_string());
        match status.as_str() {
            // `disabled`: cloud-init will not run; `done` also covers newer versions' degraded
            // runs (exit status 2: deprecated keys, warnings), which finished what they do.
            "absent" | "done" | "disabled" => return Ok(()),
            "error" => {
                let detail: Vec<&str> =
                    out.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("status:")).collect();
                let status = if detail.is_empty() { "status error".to_string() } else { detail.join("; ") };
                return Err(StepError::FirstBootFailed { status });
            }
            "running" | "not started" | "not run" => {
                if started.elapsed() >= FIRST_BOOT_WAIT {
                    return Err(StepError::FirstBootSlow { secs: FIRST_BOOT_WAIT.as_secs() });
                }
                progress.step(name, &format!("waiting for first boot (cloud-init: {status})"));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            // A cloud-init too old for `status`, or an answer this does not know: not a reason
            // to stop, nor to wait a quarter of an hour.
            _ => {
                tracing::warn!("{name}: cannot tell whether cloud-init has finished ({status}); installing anyway");
                return Ok(());
            }
        }
    }
}

async fn install_host(
    h: &Host,
    node: &Node,
    files: Vec<Upload>,
    binary: &Blob,
    progress: &dyn Progress,
) -> Result<HostResult, InstallError> {
    let name = node.name.clone();
    let mut left: Vec<String> = Vec::new();
    let fail = |step: &'static str, left: &Vec<String>, source: StepError| {
        progress.step(&name, &format!("failed: {step}"));
        InstallError::Step { node: name.clone(), step, left: left.clone(), source: Box::new(source) }
    };

    progress.step(&name, "checking the host");
    let port: u16 = node.p2p.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(8001);
    let state = h
        .run("check the P2P port", &format!("set -- {port}\n{PORT_CHECK}"))
        .await
        .map_err(|e| fail("check the host", &left, e.into()))?;
    if state.trim() == "used" {
        return Err(fail("check the host", &left, StepError::PortTaken { port }));
    }

    let init = h
        .run(
            "check for systemd",
            "cat /proc/1/comm 2>/dev/null || true; test -d /run/systemd/system && echo systemd-running || true",
        )
        .await
        .map_err(|e| fail("check the host", &left, e.into()))?;
    if !init.contains("systemd-running") {
        let init = init.lines().next().unwrap_or("unknown").trim().to_string();
        return Err(fail("check the host", &left, StepError::NoSystemd { init }));
    }
    wait_first_boot(h, &name, progress).await.map_err(|e| fail("wait for first boot", &left, e))?;
    progress.step(&name, "creating the service user");
    let user_script = format!(
        "id -u {SERVICE_USER} >/dev/null 2>&1 || useradd --system --home-dir {REMOTE_DATA} --no-create-home --shell /usr/sbin/nologin {SERVICE_USER}\n\
         install -d -m 0755 /etc/timed\n\
         install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 0700 {REMOTE_DATA}"
    );
    let created = h
        .exec("create the service user", &format!("id -u {SERVICE_USER} >/dev/null 2>&1 && echo had || echo new"), None)
        .await
        .map_err(|e| fail("create the service user", &left, e.into()))?;
    h.run("create the service user", &user_script)
        .await
        .map_err(|e| fail("create the service user", &left, e.into()))?;
    if created.1.trim() == "new" {
        left.push(format!("user {SERVICE_USER}"));
    }

    progress.step(&name, "comparing files");
    let list: Vec<String> = files.iter().map(|f| ssh::shell_quote(f.dest)).collect();
    let sums = h
        .run(
            "compare files",
            &format!("for f in {}; do [ -f \"$f\" ] && sha256sum \"$f\" || true; done", list.join(" ")),
        )
        .await
        .map_err(|e| fail("compare files", &left, e.into()))?;
    let remote: BTreeMap<&str, &str> =
        sums.lines().filter_map(|l| l.split_once("  ").map(|(sum, path)| (path.trim(), sum.trim()))).collect();

    let mut uploaded = Vec::new();
    let mut unit_changed = false;
    for f in &files {
        let want = f.sha256(binary);
        if remote.get(f.dest) == Some(&want.as_str()) {
            continue;
        }
        let step: &'static str = if f.dest == REMOTE_BINARY { "upload the binary" } else { "upload files" };
        progress.step(&name, &format!("uploading {}", f.what));
        h.upload(step, &f.bytes, f.dest, f.mode, f.owner).await.map_err(|e| fail(step, &left, e.into()))?;
        if f.dest == REMOTE_BINARY {
            let got = h
                .run("verify the binary", &format!("sha256sum {REMOTE_BINARY}"))
                .await
                .map_err(|e| fail("verify the binary", &left, e.into()))?;
            let got = got.split_whitespace().next().unwrap_or_default().to_string();
            if got != want {
                return Err(fail("verify the binary", &left, StepError::Corrupt { got, want }));
            }
        }
        if f.dest == REMOTE_UNIT {
            unit_changed = true;
        }
        left.push(f.dest.to_string());
        // The file name is enough to tell them apart in a table.
        uploaded.push(f.dest.rsplit('/').next().unwrap_or(f.dest).to_string());
    }

    progress.step(&name, "starting the service");
    let changed = !uploaded.is_empty();
    let script = format!(
        "{}systemctl enable --quiet timed\n{}",
        if unit_changed { "systemctl daemon-reload\n" } else { "" },
        if changed { "systemctl restart timed" } else { "systemctl start timed" }
    );
    if let Err(e) = h.run("start the service", &script).await {
        let journal = h
            .exec("read the journal", "journalctl -u timed -n 5 --no-pager -o cat 2>/dev/null || true", None)
            .await
            .map(|(_, out, _)| out.trim().to_string())
            .unwrap_or_default();
        let detail = if journal.is_empty() { e.to_string() } else { format!("{e}; last journal lines:\n{journal}") };
        return Err(fail("start the service", &left, StepError::NotStarted { detail }));
    }
    progress.step(&name, if changed { "started" } else { "unchanged" });
    Ok(HostResult { node: name, uploaded, restarted: changed })
}

/// Heights of every node, through forwards opened on the pool's sessions.
async fn heights(clients: &[(String, jsonrpsee::http_client::HttpClient)]) -> Vec<(String, Result<u64, String>)> {
    let calls = clients.iter().map(|(n, c)| async move {
        let r = tokio::time::timeout(Duration::from_secs(5), c.get_block_count())
            .await
            .map_err(|_| "timeout".to_string())
            .and_then(|r| r.map_err(|e| crate::client::compact_error(&e)));
        (n.clone(), r)
    });
    futures::future::join_all(calls).await
}

/// Waits until every node answers RPC, then (with `advance`) until every node has passed the
/// best height seen at that moment, and all have the same block hash there.
pub async fn wait_converged(
    pool: &ssh::Pool,
    inv: &Inventory,
    wait: Duration,
    advance: bool,
) -> Result<(), InstallError> {
    let deadline = Instant::now() + wait;
    let not = |detail: String| InstallError::NotConverged { secs: wait.as_secs(), detail };
    let mut clients = Vec::new();
    for (h, n) in pool.hosts.iter().zip(&inv.nodes) {
        let local = h.forward(&n.rpc).await.map_err(|e| not(e.to_string()))?;
        let mut reached = n.clone();
        reached.rpc = local.to_string();
        let c = crate::client::rpc_client(&reached, Duration::from_secs(5)).map_err(not)?;
        clients.push((n.name.clone(), c));
    }
    let mut target: Option<u64> = None;
    let mut last = String::new();
    while Instant::now() < deadline {
        let hs = heights(&clients).await;
        let down: Vec<String> = hs.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
        if down.is_empty() {
            let got: Vec<u64> = hs.iter().filter_map(|(_, r)| r.as_ref().ok().copied()).collect();
            let max = got.iter().copied().max().unwrap_or(0);
            let min = got.iter().copied().min().unwrap_or(0);
            let t = *target.get_or_insert(if advance { max + 1 } else { min });
            if min >= t {
                let hashes = futures::future::join_all(clients.iter().map(|(_, c)| c.get_block_hash(t))).await;
                let distinct: std::collections::BTreeSet<String> = hashes.into_iter().filter_map(Result::ok).collect();
                if distinct.len() == 1 {
                    return Ok(());
                }
                last = format!("nodes disagree on the block at height {t}");
            } else {
                last = format!(
                    "heights {}",
                    hs.iter()
                        .map(|(n, r)| format!("{n}={}", r.as_ref().map_or(0, |h| *h)))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        } else {
            last = down.join("; ");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(not(last))
}

/// Rolling upgrade: one node at a time, the new binary uploaded (skipped when the host has
/// it), the service restarted, then the network must finalize a new block with that node
/// agreeing before the next node is touched. Stops at the first failure.
pub async fn upgrade(
    inv: &Inventory,
    opts: &InstallOptions,
    progress: &dyn Progress,
) -> Result<Vec<HostResult>, InstallError> {
    check_distinct_hosts(inv)?;
    let blob = Blob::read_binary(&opts.binary)?;
    let want = blob.sha256.clone();
    let binary = blob.bytes;
    let targets: Vec<Target> = inv.nodes.iter().map(Target::of).collect();
    let pool = ssh::Pool::connect(&targets, &opts.ssh).await.map_err(|mut errors| {
        let e = errors.remove(0);
        InstallError::Step {
            node: e.to_string().split(' ').next().unwrap_or_default().to_string(),
            step: "connect",
            left: Vec::new(),
            source: Box::new(e.into()),
        }
    })?;
    let mut results = Vec::new();
    let mut failure = None;
    for (i, h) in pool.hosts.iter().enumerate() {
        let name = inv.nodes[i].name.clone();
        let one = async {
            progress.step(&name, "comparing the binary");
            let fail = |step: &'static str, source: StepError| InstallError::Step {
                node: name.clone(),
                step,
                left: Vec::new(),
                source: Box::new(source),
            };
            let have = h
                .run("compare the binary", &format!("sha256sum {REMOTE_BINARY} 2>/dev/null || true"))
                .await
                .map_err(|e| fail("compare the binary", e.into()))?;
            if have.split_whitespace().next() == Some(want.as_str()) {
                progress.step(&name, "unchanged");
                return Ok(HostResult { node: name.clone(), uploaded: Vec::new(), restarted: false });
            }
            progress.step(&name, "uploading the binary");
            h.upload("upload the binary", &binary, REMOTE_BINARY, 0o755, "root:root")
                .await
                .map_err(|e| fail("upload the binary", e.into()))?;
            let got = h
                .run("verify the binary", &format!("sha256sum {REMOTE_BINARY}"))
                .await
                .map_err(|e| fail("verify the binary", e.into()))?;
            let got = got.split_whitespace().next().unwrap_or_default().to_string();
            if got != want {
                return Err(fail("verify the binary", StepError::Corrupt { got, want: want.clone() }));
            }
            progress.step(&name, "restarting");
            h.run("restart the service", "systemctl restart timed")
                .await
                .map_err(|e| fail("restart the service", StepError::NotStarted { detail: e.to_string() }))?;
            progress.step(&name, "waiting for the network to finalize");
            wait_converged(&pool, inv, opts.wait, true).await?;
            progress.step(&name, "upgraded");
            Ok(HostResult { node: name.clone(), uploaded: vec![REMOTE_BINARY.to_string()], restarted: true })
        };
        match one.await {
            Ok(r) => results.push(r),
            Err(e) => {
                failure = Some(InstallError::UpgradeStopped {
                    node: name,
                    upgraded: results.iter().filter(|r: &&HostResult| r.restarted).map(|r| r.node.clone()).collect(),
                    untouched: inv.nodes[i + 1..].iter().map(|n| n.name.clone()).collect(),
                    source: Box::new(e),
                });
                break;
            }
        }
    }
    pool.close().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// The `timed` to upload: `--timed PATH`, else the one beside this `timectl`, else on PATH.
pub fn find_timed(explicit: Option<&std::path::Path>) -> Result<PathBuf, InstallError> {
    let mut tried = Vec::new();
    match explicit {
        Some(p) => tried.push(p.to_path_buf()),
        None => {
            if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.to_path_buf())) {
                tried.push(dir.join("timed"));
            }
            if let Some(path) = std::env::var_os("PATH") {
                tried.extend(std::env::split_paths(&path).map(|d| d.join("timed")));
            }
        }
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| InstallError::Binary {
        path: tried.first().cloned().unwrap_or_else(|| PathBuf::from("timed")),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no timed binary there (build it: cargo build -p timed)",
        ),
    })
}

/// What `install` and `deploy` share: the network's materials (made once), then the install.
pub async fn install_network(
    inv: &Inventory,
    network_dir: &std::path::Path,
    block_time_secs: u64,
    opts: &InstallOptions,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<HostResult>> {
    check_distinct_hosts(inv)?;
    let m = materials::ensure(network_dir, inv, block_time_secs)?;
    Ok(install(inv, &m, opts, progress).await?)
}

/// Stops and disables the service and removes what install put on the host (binary, unit,
/// config, genesis, data and keys, the service user). Leaves the host itself.
pub async fn uninstall(h: &Host) -> Result<(), SshError> {
    let script = format!(
        "systemctl disable --now timed 2>/dev/null || true\n\
         rm -f {REMOTE_UNIT} {REMOTE_BINARY}\n\
         systemctl daemon-reload 2>/dev/null || true\n\
         rm -rf /etc/timed {REMOTE_DATA}\n\
         if id -u {SERVICE_USER} >/dev/null 2>&1; then userdel {SERVICE_USER}; fi"
    );
    h.run("uninstall", &script).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ProviderKind;

    fn node(name: &str, host: &str, port: u16) -> Node {
        Node {
            name: name.into(),
            host: host.into(),
            ssh_user: Some("root".into()),
            ssh_port: Some(port),
            p2p: format!("{host}:8001"),
            rpc: "127.0.0.1:8080".into(),
            validator_id: format!("v-{name}"),
            provider_id: None,
            pid: None,
            data_dir: None,
            log: None,
            rpc_auth: None,
        }
    }

    #[test]
    fn renders_every_field_and_refuses_unknown_ones() {
        let unit = render_unit(UNIT_TEMPLATE, &node("a", "10.0.0.1", 22)).unwrap();
        assert!(unit.contains("Description=TIME Coin validator node (v-a)"), "{unit}");
        assert!(unit.contains("Type=notify"));
        assert!(unit.contains("ExecStart=/usr/local/bin/timed --config /etc/timed/timed.toml"));
        assert!(unit.contains("User=timecoin"));
        let e = render_unit("x={{nope}}\n", &node("a", "h", 22)).unwrap_err();
        assert!(e.to_string().contains("{{nope}}"), "{e}");
    }

    #[test]
    fn rendered_unit_verifies_and_is_sandboxed() {
        // The renderer deploy uses, checked by systemd itself.
        let dir = tempfile::tempdir().unwrap();
        let unit = render_unit(UNIT_TEMPLATE, &node("a", "10.0.0.1", 22)).unwrap();
        // verify checks that ExecStart exists: point it at a real executable.
        let unit = unit.replace(REMOTE_BINARY, "/bin/true");
        let path = dir.path().join("timed.service");
        std::fs::write(&path, unit).unwrap();
        let out =
            std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("timed.service")).collect();
        assert!(out.status.success() && complaints.is_empty(), "{stderr}");
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for timed.service:").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score: {text}"));
        assert!(score <= 2.0, "{score}: {text}");
    }

    #[test]
    fn same_host_twice_is_refused() {
        let inv = Inventory {
            network: "t".into(),
            provider: ProviderKind::Ssh,
            created: None,
            hourly_usd_per_host: None,
            ssh_identity: None,
            nodes: vec![node("a", "10.0.0.1", 22), node("b", "10.0.0.2", 22), node("c", "10.0.0.1", 22)],
        };
        let e = check_distinct_hosts(&inv).unwrap_err();
        assert_eq!(e.to_string(), "the inventory lists 10.0.0.1:22 twice: nodes a and c");
        // One address, two SSH ports: two hosts (port-forwarded machines, test sshds).
        let inv = Inventory { nodes: vec![node("a", "127.0.0.1", 2201), node("b", "127.0.0.1", 2202)], ..inv };
        check_distinct_hosts(&inv).unwrap();
    }
}
