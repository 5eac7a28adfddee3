//! The `rehearsal` provider: hosts on this machine that behave like servers. Each host is a
//! `systemd-nspawn --boot` container (real systemd as PID 1, real sshd) in its own network
//! namespace, joined to the machine by a veth pair with an address on each end. The machine
//! routes between the hosts (`net.ipv4.ip_forward=1`), so they reach each other for P2P and
//! the operator reaches their sshd, as with cloud servers.
//!
//! Everything created is recorded in `STATE/NETWORK/rehearsal.json` before it is created, and
//! `destroy` removes exactly what that file names (containers by PID, namespaces and veths by
//! name), so a crash half-way can always be cleaned up and nothing else is ever touched.
//! `docs/deploy.md` ("The rehearsal provider") gives the layout and how to recover by hand.

use super::{Host, Plan, Progress, Provider, ProviderError, ProvisionRequest};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const NAME: &str = "rehearsal";
/// Where cached rootfs images live unless `TIMECTL_REHEARSAL_ROOTFS` names one.
pub const ROOTFS_DIR: &str = "/var/cache/timectl";
/// Packages of the host image: systemd as init, sshd, what installing and checking use
/// (`sudo`, `ss` from iproute2, `ps` from procps), and the firewalls chaos uses as on a
/// server (`nft` for partitions, `iptables` for the NFQUEUE rule of latency). A host resolves
/// its own name without DNS (`libnss-myhostname`), as a server with its name in /etc/hosts does:
/// the hosts have no reachable nameserver, and `sudo` looks its host up on every command (20 s
/// of DNS timeouts each without it).
const PACKAGES: &str =
    "systemd,systemd-sysv,openssh-server,dbus,iproute2,sudo,procps,nftables,iptables,libnss-myhostname";
/// Bumped when the image preparation changes, so an old cache is rebuilt rather than trusted.
const ROOTFS_VERSION: &str = "1";
const ROOTFS_MARKER: &str = "etc/timectl-rehearsal";
/// Addresses: network K gets 10.213.K.0/24; host N in it the /30 starting at 4(N-1), the
/// machine's end .1 of that /30, the host's end .2.
const PREFIX: [u8; 2] = [10, 213];
/// 63 /30 blocks fit in a /24.
pub const MAX_HOSTS: usize = 63;
/// Machine-wide lock: choosing a subnet and creating links must not race another `timectl`.
const GLOBAL_LOCK: &str = "/run/timectl-rehearsal.lock";
const SSH_PORT: u16 = 22;

/// The provider's record of one network, `STATE/NETWORK/rehearsal.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub network: String,
    /// K in 10.213.K.0/24.
    pub subnet: u8,
    pub hosts: Vec<HostState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub index: usize,
    /// Host name, container (machine) name and network namespace name: `NETWORK-node-N`.
    pub name: String,
    /// The veth end on the machine (the other end is `eth0` inside the namespace).
    pub veth: String,
    pub machine_addr: Ipv4Addr,
    pub host_addr: Ipv4Addr,
    /// PID of the `systemd-nspawn` that runs the container, once started.
    pub pid: Option<u32>,
    /// The `--ephemeral` copy of the rootfs (`.#machine.*` beside it) of a container started by
    /// a timectl from before containers ran on a volatile overlay; `destroy` still removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<PathBuf>,
}

pub struct Rehearsal {
    state_root: PathBuf,
    rootfs: PathBuf,
    mirror: Option<String>,
}

impl Rehearsal {
    /// `state_root/NETWORK/` holds each network's record and its hosts' sshd keys.
    /// The rootfs cache is `TIMECTL_REHEARSAL_ROOTFS` or [`DEFAULT_ROOTFS`]; the Debian mirror
    /// `TIMECTL_REHEARSAL_MIRROR` or debootstrap's default.
    pub fn new(state_root: PathBuf) -> Self {
        let rootfs = std::env::var_os("TIMECTL_REHEARSAL_ROOTFS").map(PathBuf::from).unwrap_or_else(default_rootfs);
        let mirror = std::env::var("TIMECTL_REHEARSAL_MIRROR").ok().filter(|m| !m.is_empty());
        Rehearsal { state_root, rootfs, mirror }
    }

    fn network_dir(&self, network: &str) -> PathBuf {
        self.state_root.join(network)
    }

    fn state_file(&self, network: &str) -> PathBuf {
        self.network_dir(network).join("rehearsal.json")
    }

    /// sshd host key and authorized_keys of one host, bound read-only into its container.
    pub fn host_dir(&self, network: &str, name: &str) -> PathBuf {
        self.network_dir(network).join("rehearsal").join(name)
    }

    fn load(&self, network: &str) -> Result<Option<NetworkState>, ProviderError> {
        let path = self.state_file(network);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                err(format!("{} is not a rehearsal state file", path.display()))
                    .with_source(e)
                    .with_hint("it lists what destroy removes; fix it by hand or remove what it names (docs/deploy.md)")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(format!("cannot read {}", path.display())).with_source(e)),
        }
    }

    /// Written before each thing is created, so a crash leaves a record of it.
    fn save(&self, state: &NetworkState) -> Result<(), ProviderError> {
        let dir = self.network_dir(&state.network);
        create_private_dir(&dir)?;
        let path = self.state_file(&state.network);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).expect("state serializes");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| err(format!("cannot write {}", path.display())).with_source(e))
    }

    fn to_host(&self, h: &HostState) -> Host {
        Host {
            name: h.name.clone(),
            index: h.index,
            ssh_host: h.host_addr.to_string(),
            ssh_port: SSH_PORT,
            ssh_user: "root".into(),
            p2p_host: h.host_addr.to_string(),
            provider_id: Some(h.name.clone()),
        }
    }

    /// Builds the rootfs once: in a temporary directory renamed into place when complete,
    /// under a file lock so parallel runs wait for one build instead of racing.
    async fn ensure_rootfs(&self, progress: &dyn Progress) -> Result<(), ProviderError> {
        if rootfs_ready(&self.rootfs) {
            return Ok(());
        }
        need_tool("debootstrap", "debootstrap")?;
        progress.step("rootfs", &format!("building {} with debootstrap (about a minute, once)", self.rootfs.display()));
        let rootfs = self.rootfs.clone();
        let mirror = self.mirror.clone();
        tokio::task::spawn_blocking(move || build_rootfs(&rootfs, mirror.as_deref()))
            .await
            .map_err(|e| err(format!("rootfs build task failed: {e}")))?
    }
}

fn err(message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, message)
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ProviderError {
    move |e| err(format!("{what}")).with_source(e)
}

fn create_private_dir(dir: &Path) -> Result<(), ProviderError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("cannot restrict {}", dir.display())))
}

fn need_root() -> Result<(), ProviderError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(err("the rehearsal provider needs root (network namespaces, veth pairs, systemd-nspawn)")
            .with_hint("run it as root, e.g. `sudo timectl deploy --provider rehearsal ...`"));
    }
    Ok(())
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    // PATH only, as the commands are then run by name: what is checked is what runs.
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn need_tool(tool: &str, package: &str) -> Result<PathBuf, ProviderError> {
    find_tool(tool).ok_or_else(|| {
        err(format!("`{tool}` is not installed"))
            .with_hint(format!("install the Debian package `{package}`: apt-get install {package}"))
    })
}

/// A network name becomes host names, namespace names and a directory name: keep it to
/// lower-case letters, digits and dashes.
fn check_network_name(network: &str) -> Result<(), ProviderError> {
    let ok = !network.is_empty()
        && network.len() <= 40
        && network.starts_with(|c: char| c.is_ascii_lowercase())
        && !network.ends_with('-')
        && network.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(err(format!("network name {network:?} cannot name rehearsal hosts"))
            .with_hint("use 1 to 40 lower-case letters, digits and dashes, starting with a letter"))
    }
}

// ---------- locks ----------

/// An exclusive `flock` held until dropped (closing the file releases it, also on a crash).
struct FileLock(#[allow(dead_code)] std::fs::File);

fn lock(path: &Path) -> Result<FileLock, ProviderError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("cannot open lock file {}", path.display())))?;
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: a valid open descriptor; flock only blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(FileLock(file));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(err(format!("cannot lock {}", path.display())).with_source(e));
        }
    }
}

async fn lock_async(path: PathBuf) -> Result<FileLock, ProviderError> {
    tokio::task::spawn_blocking(move || lock(&path)).await.map_err(|e| err(format!("lock task failed: {e}")))?
}

// ---------- rootfs ----------

/// What the image is made of: the preparation's version and the package list. It names the
/// default cache directory and is written into the image, so a changed list gets a new build
/// (beside the old one, which hosts still running from it keep using) instead of a stale one.
pub fn rootfs_key() -> String {
    rootfs_key_of(ROOTFS_VERSION, PACKAGES)
}

fn rootfs_key_of(version: &str, packages: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{version}\n{packages}").as_bytes());
    hex::encode(&digest[..4])
}

/// `ROOTFS_DIR/rehearsal-bookworm-KEY`.
pub fn default_rootfs() -> PathBuf {
    Path::new(ROOTFS_DIR).join(format!("rehearsal-bookworm-{}", rootfs_key()))
}

fn rootfs_ready(rootfs: &Path) -> bool {
    std::fs::read_to_string(rootfs.join(ROOTFS_MARKER)).is_ok_and(|v| v.trim() == rootfs_key())
}

fn build_rootfs(rootfs: &Path, mirror: Option<&str>) -> Result<(), ProviderError> {
    let lock_path = rootfs.with_extension("lock");
    let _lock = lock(&lock_path)?;
    // Another run may have finished the build while this one waited for the lock.
    if rootfs_ready(rootfs) {
        return Ok(());
    }
    let parent = rootfs.parent().unwrap_or(Path::new("/"));
    let base = rootfs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "rootfs".into());
    std::fs::create_dir_all(parent).map_err(io_err(format!("cannot create {}", parent.display())))?;
    // Leftovers of a build that crashed: only this lock's holder builds, so they are dead.
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{base}.building-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = parent.join(format!("{base}.building-{}", std::process::id()));
    let mut cmd = std::process::Command::new("debootstrap");
    cmd.args(["--variant=minbase", &format!("--include={PACKAGES}"), "bookworm"]).arg(&tmp);
    if let Some(m) = mirror {
        cmd.arg(m);
    }
    tracing::info!("building the rehearsal rootfs: {cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(io_err("cannot run debootstrap"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(err(format!("debootstrap failed ({}): {}", out.status, tail(&out.stdout, &out.stderr, 12)))
            .with_hint(
                "check the network and the mirror (TIMECTL_REHEARSAL_MIRROR); debootstrap needs deb.debian.org",
            ));
    }
    prepare_rootfs(&tmp).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    if rootfs.exists() {
        // An older version of the image: replaced, not patched.
        let old = parent.join(format!("{base}.building-old-{}", std::process::id()));
        std::fs::rename(rootfs, &old).map_err(io_err(format!("cannot move the old {}", rootfs.display())))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(&tmp, rootfs).map_err(io_err(format!("cannot move the new rootfs to {}", rootfs.display())))
}

/// Turns a fresh debootstrap into a host image: no shared sshd keys (each host gets its own,
/// bound in at start), root logs in with a key only, the host name comes from the container.
fn prepare_rootfs(root: &Path) -> Result<(), ProviderError> {
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io_err(format!("cannot create {}", d.display())))?;
        }
        std::fs::write(&p, text).map_err(io_err(format!("cannot write {}", p.display())))
    };
    let ssh = root.join("etc/ssh");
    for e in std::fs::read_dir(&ssh).map_err(io_err(format!("cannot read {}", ssh.display())))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(e.path()).map_err(io_err(format!("cannot remove {}", e.path().display())))?;
        }
    }
    w(
        "etc/ssh/sshd_config.d/rehearsal.conf",
        "# Written by timectl's rehearsal provider: per-host keys bound in from the operator's state dir.\n\
         HostKey /etc/ssh/rehearsal/ssh_host_ed25519_key\n\
         AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/rehearsal/authorized_keys\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n",
    )?;
    std::fs::create_dir_all(root.join("etc/ssh/rehearsal")).map_err(io_err("cannot create etc/ssh/rehearsal"))?;
    // debootstrap copies this machine's name; without the file the container's name is used.
    let _ = std::fs::remove_file(root.join("etc/hostname"));
    // Empty: each boot gets its own machine id instead of all hosts sharing one.
    w("etc/machine-id", "")?;
    // Nobody logs in on the console; one process less per host.
    for unit in ["console-getty.service", "getty@tty1.service"] {
        let link = root.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).map_err(io_err(format!("cannot mask {unit}")))?;
    }
    w(ROOTFS_MARKER, &format!("{}\n", rootfs_key()))
}

fn tail(stdout: &[u8], stderr: &[u8], lines: usize) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(stdout), String::from_utf8_lossy(stderr));
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------- links and namespaces ----------

async fn run(program: &str, args: &[&str]) -> Result<String, ProviderError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_err(format!("cannot run {program}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            tail(&out.stdout, &out.stderr, 5)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The init process of the container that runs in network namespace `netns` (named by us):
/// the process in that namespace that is PID 1 of a PID namespace of its own. It is found this
/// way, not as nspawn's child, so that it is found also after nspawn itself died.
pub fn container_leader(netns: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(Path::new("/run/netns").join(netns)).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let net = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
        if (net.dev(), net.ino()) != (ns.dev(), ns.ino()) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let nspid: Vec<&str> = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().collect();
        (nspid.len() > 1 && nspid.last() == Some(&"1")).then_some(pid)
    })
}

/// Kills the init of a container whose nspawn is gone (killed -9, say): it lives on, reparented,
/// in the host's namespace. Killing a PID namespace's init ends every process in it.
async fn kill_orphaned_container(netns: &str) -> Option<u32> {
    let pid = container_leader(netns)?;
    tracing::warn!("{netns}: the container's init {pid} outlived its systemd-nspawn; killing it");
    // SAFETY: plain kill(2) on the PID-namespace init found in our own network namespace.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(pid)
}

/// Once a container is gone, the two empty directories an nspawn that was killed (by us after
/// the grace period, or by anyone) could not remove: its overlay's mount point (read from the
/// container before it was stopped) and its mount-propagation directory, named after the
/// machine. The tmpfs itself went with the container's mount namespace. remove_dir removes
/// only an empty directory, so a live container's are never touched.
fn remove_nspawn_leftovers(name: &str, overlay: Option<PathBuf>) {
    let propagate = Path::new("/run/systemd/nspawn/propagate").join(name);
    for dir in overlay.into_iter().chain([propagate]) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The `/tmp/nspawn-volatile-*` directory the overlay of container init `pid` lives under.
fn volatile_dir(pid: u32) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).ok()?;
    let root = mounts.lines().find(|l| l.split_whitespace().nth(1) == Some("/"))?;
    let upper = root.split([' ', ',']).find_map(|o| o.strip_prefix("upperdir="))?;
    let dir = Path::new(upper).parent()?;
    let name = dir.file_name()?.to_str()?;
    (dir.parent() == Some(Path::new("/tmp")) && name.starts_with("nspawn-volatile-")).then(|| dir.to_path_buf())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// IPv4 prefixes in use on this machine: every route of every table (default routes aside)
/// and every interface address.
async fn used_prefixes() -> Result<Vec<(u32, u8)>, ProviderError> {
    let mut out = Vec::new();
    let routes = run("ip", &["-4", "-o", "route", "show", "table", "all"]).await?;
    let addrs = run("ip", &["-4", "-o", "addr", "show"]).await?;
    for word in routes.lines().filter_map(|l| {
        let mut w = l.split_whitespace();
        let first = w.next()?;
        // `ip route show table all` starts some lines with the route type.
        if ["unicast", "local", "broadcast", "multicast", "unreachable", "prohibit", "blackhole", "throw"]
            .contains(&first)
        {
            w.next()
        } else {
            Some(first)
        }
    }) {
        if let Some(p) = parse_prefix(word) {
            out.push(p);
        }
    }
    for l in addrs.lines() {
        let mut w = l.split_whitespace();
        while let Some(t) = w.next() {
            if t == "inet" {
                if let Some(p) = w.next().and_then(parse_prefix) {
                    out.push(p);
                }
            }
        }
    }
    Ok(out.into_iter().filter(|&(_, len)| len > 0).collect())
}

fn parse_prefix(s: &str) -> Option<(u32, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    let a: Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((u32::from(a), len))
}

fn overlaps((a, alen): (u32, u8), (b, blen): (u32, u8)) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == b & mask
}

/// The first free 10.213.K.0/24, starting from a hash of the name so networks tend to keep
/// the same subnet across runs; free means no route or address here overlaps it and no other
/// rehearsal network under this state root claims it.
fn pick_subnet(network: &str, used: &[(u32, u8)], claimed: &[u8]) -> Option<u8> {
    let start = network.bytes().fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % 254;
    (0..254u32).map(|i| ((start + i) % 254 + 1) as u8).find(|&k| {
        let net = (u32::from(Ipv4Addr::new(PREFIX[0], PREFIX[1], k, 0)), 24);
        !claimed.contains(&k) && !used.iter().any(|&u| overlaps(u, net))
    })
}

fn addresses(subnet: u8, index: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = 4 * (index as u8 - 1);
    (Ipv4Addr::new(PREFIX[0], PREFIX[1], subnet, base + 1), Ipv4Addr::new(PREFIX[0], PREFIX[1], subnet, base + 2))
}

/// Interface names have at most 15 characters: `tcr<K>h<N>` (at most 9).
fn veth_name(subnet: u8, index: usize) -> String {
    format!("tcr{subnet}h{index}")
}

/// Creates the namespace, the veth pair and the addresses that are missing.
async fn ensure_links(h: &HostState) -> Result<(), ProviderError> {
    if !netns_exists(&h.name) {
        run("ip", &["netns", "add", &h.name]).await?;
    }
    if !link_exists(&h.veth) {
        run("ip", &["link", "add", &h.veth, "type", "veth", "peer", "name", "eth0", "netns", &h.name]).await?;
    }
    let machine_cidr = format!("{}/30", h.machine_addr);
    let host_cidr = format!("{}/30", h.host_addr);
    let have = run("ip", &["-4", "-o", "addr", "show", "dev", &h.veth]).await?;
    if !have.contains(&machine_cidr) {
        run("ip", &["addr", "add", &machine_cidr, "dev", &h.veth]).await?;
    }
    run("ip", &["link", "set", &h.veth, "up"]).await?;
    let have = run("ip", &["-n", &h.name, "-4", "-o", "addr", "show", "dev", "eth0"]).await?;
    if !have.contains(&host_cidr) {
        run("ip", &["-n", &h.name, "addr", "add", &host_cidr, "dev", "eth0"]).await?;
    }
    run("ip", &["-n", &h.name, "link", "set", "lo", "up"]).await?;
    run("ip", &["-n", &h.name, "link", "set", "eth0", "up"]).await?;
    run("ip", &["-n", &h.name, "route", "replace", "default", "via", &h.machine_addr.to_string()]).await?;
    Ok(())
}

/// Hosts reach each other through this machine.
fn enable_forwarding() -> Result<(), ProviderError> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(p, "1\n").map_err(io_err("cannot set net.ipv4.ip_forward=1"))
}

// ---------- containers ----------

/// Whether `pid` is the `systemd-nspawn` that runs machine `name` (a PID can be reused).
fn is_our_nspawn(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is_nspawn = args.first().is_some_and(|a| a.ends_with(b"systemd-nspawn"));
    is_nspawn && args.windows(2).any(|w| w[0] == b"-M" && w[1] == name.as_bytes())
}

/// Host key (generated once, kept across re-runs so the operator's pin stays valid) and the
/// operator's key as root's authorized_keys.
async fn ensure_host_keys(dir: &Path, name: &str, public_key: &str) -> Result<(), ProviderError> {
    create_private_dir(dir)?;
    let key = dir.join("ssh_host_ed25519_key");
    if !key.exists() {
        need_tool("ssh-keygen", "openssh-client")?;
        let _ = std::fs::remove_file(dir.join("ssh_host_ed25519_key.pub"));
        let key_s = key.to_string_lossy().into_owned();
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", &key_s]).await?;
    }
    let auth = dir.join("authorized_keys");
    let line = format!("{}\n", public_key.trim());
    if std::fs::read_to_string(&auth).ok().as_deref() != Some(line.as_str()) {
        let tmp = dir.join("authorized_keys.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(format!("cannot write {}", tmp.display())))?;
        f.write_all(line.as_bytes()).map_err(io_err(format!("cannot write {}", tmp.display())))?;
        std::fs::rename(&tmp, &auth).map_err(io_err(format!("cannot write {}", auth.display())))?;
    }
    Ok(())
}

/// Starts the container detached: its own process group, no terminal, output to a log in the
/// host's state dir, so it outlives the `timectl` that started it.
///
/// `--volatile=overlay`: the rootfs is the read-only lower layer and the host's writes go to a
/// tmpfs that dies with the container. Nothing is copied (an `--ephemeral` copy is 280 MB of
/// disk per host and seconds of boot), and nothing is left on disk after a SIGKILL.
fn start_container(rootfs: &Path, h: &HostState, host_dir: &Path) -> Result<u32, ProviderError> {
    let nspawn = need_tool("systemd-nspawn", "systemd-container")?;
    let log_path = host_dir.join("console.log");
    let log = std::fs::File::create(&log_path).map_err(io_err(format!("cannot create {}", log_path.display())))?;
    let log2 = log.try_clone().map_err(io_err("cannot duplicate the console log"))?;
    let mut cmd = std::process::Command::new(nspawn);
    cmd.arg("-D")
        .arg(rootfs)
        .args(["-M", &h.name, "--boot", "--register=no", "--keep-unit", "--volatile=overlay", "--console=read-only"])
        .arg(format!("--network-namespace-path=/run/netns/{}", h.name))
        .arg(format!("--bind-ro={}:/etc/ssh/rehearsal", host_dir.display()))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    tracing::info!("starting rehearsal host {}: {cmd:?}", h.name);
    let child = cmd.spawn().map_err(io_err(format!("cannot start systemd-nspawn for {}", h.name)))?;
    // Not waited for: the container must outlive this process. If timectl lives on (tests),
    // the zombie is harmless; once timectl exits, init reaps it.
    Ok(child.id())
}

/// How `systemd-nspawn` `pid` ended, when this process started it (and so can reap it): the
/// console log alone can be empty, say after a signal.
fn exit_status(pid: u32) -> String {
    let mut status = 0;
    // SAFETY: waitpid(2) with a valid out-pointer; WNOHANG never blocks, and a PID that is not
    // our child gives ECHILD.
    let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if reaped != pid as i32 {
        format!("systemd-nspawn {pid} is gone")
    } else if libc::WIFSIGNALED(status) {
        format!("systemd-nspawn {pid} was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("systemd-nspawn {pid} exited with status {}", libc::WEXITSTATUS(status))
    }
}

/// Waits until the host's sshd sends its banner.
async fn wait_ssh(h: &HostState, host_dir: &Path, timeout: Duration) -> Result<(), ProviderError> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((h.host_addr, SSH_PORT));
    loop {
        let probe = tokio::task::spawn_blocking(move || -> bool {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
        })
        .await
        .unwrap_or(false);
        if probe {
            return Ok(());
        }
        if let Some(pid) = h.pid {
            if !is_our_nspawn(pid, &h.name) {
                let log = std::fs::read(host_dir.join("console.log")).unwrap_or_default();
                let log = tail(&log, &[], 8);
                return Err(err(format!(
                    "host {}: the container exited while booting ({}){}{log}",
                    h.name,
                    exit_status(pid),
                    if log.is_empty() { ", its console log is empty" } else { ": " },
                ))
                .with_hint(format!("its console log is {}", host_dir.join("console.log").display())));
            }
        }
        if Instant::now() >= deadline {
            return Err(err(format!("host {}: sshd on {addr} did not answer within {}s", h.name, timeout.as_secs()))
                .with_hint(format!("see the console log {}", host_dir.join("console.log").display())));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// SIGTERM (systemd in the container shuts down cleanly and nspawn removes its overlay), then
/// SIGKILL after `grace`; returns once the process is gone.
async fn stop_container(pid: u32, name: &str, grace: Duration) -> bool {
    if !is_our_nspawn(pid, name) {
        return false;
    }
    // SAFETY: plain kill(2) on a PID just checked to be our nspawn.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while is_our_nspawn(pid, name) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if is_our_nspawn(pid, name) {
        tracing::warn!("{name}: systemd-nspawn {pid} still runs after {}s; killing it", grace.as_secs());
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_our_nspawn(pid, name) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    true
}

/// Removes a copy (and its lock file) that a killed nspawn left behind.
fn remove_ephemeral_copy(copy: &Path, rootfs: &Path) -> Result<bool, std::io::Error> {
    let name = copy.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // Never anything but nspawn's copy of this rootfs.
    if copy.parent() != rootfs.parent() || !name.starts_with(".#machine.") || !copy.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(copy)?;
    let _ = std::fs::remove_file(copy.with_file_name(format!(".#{name}.lck")));
    Ok(true)
}

#[async_trait]
impl Provider for Rehearsal {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn plan(&self, req: &ProvisionRequest) -> Result<Plan, ProviderError> {
        check_network_name(&req.network)?;
        let existing = self.list(&req.network).await?;
        let mut create = Vec::new();
        if !rootfs_ready(&self.rootfs) {
            create.push(format!("rootfs {} (debootstrap bookworm, once)", self.rootfs.display()));
        }
        let state = self.load(&req.network)?;
        for index in 1..=req.nodes {
            if existing.iter().any(|h| h.index == index) {
                continue;
            }
            let name = format!("{}-node-{index}", req.network);
            let addr = state
                .as_ref()
                .map(|s| addresses(s.subnet, index).1.to_string())
                .unwrap_or_else(|| "a free 10.213.K.0/24".into());
            create.push(format!("container {name} (systemd-nspawn --boot, netns {name}, sshd on {addr}:22)"));
        }
        Ok(Plan { existing, create, hourly_usd: Some(0.0) })
    }

    async fn create(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError> {
        need_root()?;
        check_network_name(&req.network)?;
        if req.nodes == 0 || req.nodes > MAX_HOSTS {
            return Err(err(format!("{} hosts asked for; a rehearsal network has 1 to {MAX_HOSTS}", req.nodes)));
        }
        need_tool("systemd-nspawn", "systemd-container")?;
        need_tool("ip", "iproute2")?;
        self.ensure_rootfs(progress).await?;

        let _global = lock_async(PathBuf::from(GLOBAL_LOCK)).await?;
        let mut state = match self.load(&req.network)? {
            Some(s) => s,
            None => {
                let used = used_prefixes().await?;
                let claimed = self.claimed_subnets();
                let subnet = pick_subnet(&req.network, &used, &claimed).ok_or_else(|| {
                    err("no free 10.213.K.0/24 left for another rehearsal network")
                        .with_hint("destroy a rehearsal network you no longer need")
                })?;
                NetworkState { network: req.network.clone(), subnet, hosts: Vec::new() }
            }
        };
        enable_forwarding()?;
        for index in 1..=req.nodes {
            if !state.hosts.iter().any(|h| h.index == index) {
                let (machine_addr, host_addr) = addresses(state.subnet, index);
                state.hosts.push(HostState {
                    index,
                    name: format!("{}-node-{index}", req.network),
                    veth: veth_name(state.subnet, index),
                    machine_addr,
                    host_addr,
                    pid: None,
                    ephemeral: None,
                });
                state.hosts.sort_by_key(|h| h.index);
                // Recorded before anything exists, so destroy finds it after any crash.
                self.save(&state)?;
            }
        }
        for i in 0..state.hosts.len() {
            let h = state.hosts[i].clone();
            let dir = self.host_dir(&req.network, &h.name);
            if h.pid.is_some_and(|p| is_our_nspawn(p, &h.name)) {
                progress.step(&h.name, "running");
                ensure_host_keys(&dir, &h.name, &req.ssh_public_key).await?;
                continue;
            }
            progress.step(&h.name, "network namespace and veth");
            ensure_links(&h).await?;
            progress.step(&h.name, "sshd keys");
            ensure_host_keys(&dir, &h.name, &req.ssh_public_key).await?;
            if let Some(old) = state.hosts[i].ephemeral.take() {
                // The copy of a container that died without cleaning up after itself.
                remove_ephemeral_copy(&old, &self.rootfs)
                    .map_err(io_err(format!("cannot remove the old copy {}", old.display())))?;
            }
            progress.step(&h.name, "booting");
            let pid = start_container(&self.rootfs, &h, &dir)?;
            state.hosts[i].pid = Some(pid);
            self.save(&state)?;
        }
        drop(_global);
        let waits = state.hosts.iter().map(|h| {
            let dir = self.host_dir(&req.network, &h.name);
            async move {
                wait_ssh(h, &dir, Duration::from_secs(120)).await?;
                progress.step(&h.name, "sshd answers");
                Ok::<(), ProviderError>(())
            }
        });
        for r in futures::future::join_all(waits).await {
            r?;
        }
        Ok(state.hosts.iter().map(|h| self.to_host(h)).collect())
    }

    async fn list(&self, network: &str) -> Result<Vec<Host>, ProviderError> {
        let Some(state) = self.load(network)? else {
            return Ok(Vec::new());
        };
        Ok(state
            .hosts
            .iter()
            .filter(|h| h.pid.is_some_and(|p| is_our_nspawn(p, &h.name)))
            .map(|h| self.to_host(h))
            .collect())
    }

    async fn destroy(&self, network: &str, progress: &dyn Progress) -> Result<Vec<String>, ProviderError> {
        need_root()?;
        let _global = lock_async(PathBuf::from(GLOBAL_LOCK)).await?;
        let Some(state) = self.load(network)? else {
            return Ok(Vec::new());
        };
        let mut done = Vec::new();
        let rootfs = &self.rootfs;
        let stops = state.hosts.iter().map(|h| async move {
            let copy = h.ephemeral.clone();
            let overlay = container_leader(&h.name).and_then(volatile_dir);
            let stopped = match h.pid {
                Some(pid) => {
                    progress.step(&h.name, "stopping the container");
                    stop_container(pid, &h.name, Duration::from_secs(30)).await
                }
                None => false,
            };
            let orphan = kill_orphaned_container(&h.name).await;
            remove_nspawn_leftovers(&h.name, overlay);
            (h, stopped, orphan, copy)
        });
        let stopped = futures::future::join_all(stops).await;
        let mut failures = Vec::new();
        for (h, was_running, orphan, copy) in stopped {
            if was_running {
                done.push(format!("container {} (systemd-nspawn pid {})", h.name, h.pid.unwrap_or_default()));
            }
            if let Some(pid) = orphan {
                done.push(format!("container {} (its init, pid {pid}, without systemd-nspawn)", h.name));
            }
            if let Some(copy) = copy {
                match remove_ephemeral_copy(&copy, rootfs) {
                    Ok(true) => done.push(format!("ephemeral copy {}", copy.display())),
                    Ok(false) => {}
                    Err(e) => failures.push(format!("cannot remove {}: {e}", copy.display())),
                }
            }
            if link_exists(&h.veth) {
                match run("ip", &["link", "del", &h.veth]).await {
                    Ok(_) => done.push(format!("veth {}", h.veth)),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            if netns_exists(&h.name) {
                progress.step(&h.name, "removing the namespace");
                match run("ip", &["netns", "del", &h.name]).await {
                    Ok(_) => done.push(format!("netns {}", h.name)),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            let dir = self.host_dir(network, &h.name);
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    failures.push(format!("cannot remove {}: {e}", dir.display()));
                }
            }
        }
        if !failures.is_empty() {
            // Keep the record: it is what a second destroy needs.
            return Err(err(format!("destroy left things behind: {}", failures.join("; ")))
                .with_hint("run destroy again; docs/deploy.md says how to remove them by hand"));
        }
        let _ = std::fs::remove_dir(self.network_dir(network).join("rehearsal"));
        std::fs::remove_file(self.state_file(network))
            .map_err(io_err(format!("cannot remove {}", self.state_file(network).display())))?;
        Ok(done)
    }
}

impl Rehearsal {
    /// Subnets other rehearsal networks under this state root have recorded (they may not
    /// have routes yet while being created).
    fn claimed_subnets(&self) -> Vec<u8> {
        let Ok(entries) = std::fs::read_dir(&self.state_root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("rehearsal.json")).ok())
            .filter_map(|t| serde_json::from_str::<NetworkState>(&t).ok())
            .map(|s| s.subnet)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        assert_eq!(veth_name(254, MAX_HOSTS), "tcr254h63");
        assert!(veth_name(254, MAX_HOSTS).len() <= 15);
    }

    #[test]
    fn addresses_are_a_slash_30_per_host() {
        assert_eq!(addresses(7, 1), (Ipv4Addr::new(10, 213, 7, 1), Ipv4Addr::new(10, 213, 7, 2)));
        assert_eq!(addresses(7, 2), (Ipv4Addr::new(10, 213, 7, 5), Ipv4Addr::new(10, 213, 7, 6)));
        assert_eq!(addresses(7, MAX_HOSTS), (Ipv4Addr::new(10, 213, 7, 249), Ipv4Addr::new(10, 213, 7, 250)));
    }

    #[test]
    fn subnet_avoids_routes_addresses_and_claimed_networks() {
        let first = pick_subnet("tn", &[], &[]).unwrap();
        // A route covering the whole 10/8 leaves nothing.
        assert_eq!(pick_subnet("tn", &[parse_prefix("10.0.0.0/8").unwrap()], &[]), None);
        // A route inside the preferred /24 moves the network elsewhere.
        let inside = parse_prefix(&format!("10.213.{first}.0/30")).unwrap();
        let second = pick_subnet("tn", &[inside], &[]).unwrap();
        assert_ne!(second, first);
        assert_ne!(pick_subnet("tn", &[], &[first]).unwrap(), first);
        // Default routes do not count (filtered before), host routes do.
        assert!(overlaps(parse_prefix("10.213.9.7").unwrap(), (u32::from(Ipv4Addr::new(10, 213, 9, 0)), 24)));
        assert!(!overlaps(parse_prefix("10.214.0.0/16").unwrap(), (u32::from(Ipv4Addr::new(10, 213, 9, 0)), 24)));
    }

    /// Removes what a state file names, without the provider: the test's own safety net.
    struct Cleanup(PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let Ok(text) = std::fs::read_to_string(&self.0) else { return };
            let Ok(state) = serde_json::from_str::<NetworkState>(&text) else { return };
            for h in &state.hosts {
                if let Some(pid) = h.pid.filter(|&p| is_our_nspawn(p, &h.name)) {
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                let _ = std::process::Command::new("ip").args(["link", "del", &h.veth]).status();
                let _ = std::process::Command::new("ip").args(["netns", "del", &h.name]).status();
            }
        }
    }

    fn sh(program: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(program).args(args).output().unwrap()
    }

    /// Two real hosts: root over ssh with the operator's key, host to host through the
    /// machine, an idempotent second create, and a destroy that leaves nothing behind.
    /// Needs root and a rootfs (built on first use, or `TIMECTL_REHEARSAL_ROOTFS`).
    #[tokio::test(flavor = "multi_thread")]
    async fn two_hosts_reach_each_other_and_destroy_leaves_nothing() {
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (CI runs as root)");
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("id_ed25519");
        let out = sh("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
        assert!(out.status.success());
        let network = format!("ut{}", std::process::id());
        let p = Rehearsal::new(tmp.path().join("state"));
        let _cleanup = Cleanup(p.state_file(&network));
        let req = ProvisionRequest {
            network: network.clone(),
            nodes: 2,
            ssh_public_key: std::fs::read_to_string(key.with_extension("pub")).unwrap(),
            p2p_port: 8001,
            allow_from: None,
        };
        let hosts = p.create(&req, &NoProgressTest).await.unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].name, format!("{network}-node-1"));
        assert_eq!(p.list(&network).await.unwrap(), hosts);
        let state = p.load(&network).unwrap().unwrap();

        // root logs in with the operator's key; the host key is pinned on first contact.
        let kh = tmp.path().join("known_hosts");
        let ssh = |host: &str, cmd: &str| {
            sh(
                "ssh",
                &[
                    "-i",
                    key.to_str().unwrap(),
                    "-o",
                    &format!("UserKnownHostsFile={}", kh.display()),
                    "-o",
                    "StrictHostKeyChecking=accept-new",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=10",
                    &format!("root@{host}"),
                    cmd,
                ],
            )
        };
        let out = ssh(&hosts[0].ssh_host, "hostname; systemctl is-system-running --wait; id -un");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&hosts[0].name) && text.contains("root"), "{text}");
        // Each host has its own sshd key.
        let k1 =
            std::fs::read_to_string(p.host_dir(&network, &hosts[0].name).join("ssh_host_ed25519_key.pub")).unwrap();
        let k2 =
            std::fs::read_to_string(p.host_dir(&network, &hosts[1].name).join("ssh_host_ed25519_key.pub")).unwrap();
        assert_ne!(k1.split_whitespace().nth(1), k2.split_whitespace().nth(1));
        // Host 1 reaches host 2's sshd through the machine.
        let probe = format!("exec 3<>/dev/tcp/{}/22 && head -c 4 <&3", hosts[1].p2p_host);
        let out = ssh(&hosts[0].ssh_host, &format!("bash -c '{probe}'"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "SSH-", "{}", String::from_utf8_lossy(&out.stderr));
        // No copy of the rootfs beside it (an `--ephemeral` container makes `.#machine.*`).
        let copies: Vec<_> = std::fs::read_dir(p.rootfs.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".#machine."))
            .map(|e| e.path())
            .collect();
        assert!(copies.is_empty(), "copies of the rootfs: {copies:?}");
        // A host's writes stay in its own overlay: the shared rootfs is not touched.
        let out = ssh(&hosts[0].ssh_host, "touch /usr/local/bin/overlay-probe");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!p.rootfs.join("usr/local/bin/overlay-probe").exists(), "a write reached the rootfs");

        // A second create changes nothing.
        let again = p.create(&req, &NoProgressTest).await.unwrap();
        assert_eq!(again, hosts);
        assert_eq!(p.load(&network).unwrap().unwrap(), state);

        let removed = p.destroy(&network, &NoProgressTest).await.unwrap();
        for h in &state.hosts {
            for what in [format!("veth {}", h.veth), format!("netns {}", h.name)] {
                assert!(removed.contains(&what), "{what} not in {removed:?}");
            }
            assert!(!netns_exists(&h.name) && !link_exists(&h.veth), "{} left behind", h.name);
            assert!(!is_our_nspawn(h.pid.unwrap(), &h.name), "{} still runs", h.name);
        }
        assert!(!p.state_file(&network).exists());
        assert!(p.list(&network).await.unwrap().is_empty());
        assert!(p.destroy(&network, &NoProgressTest).await.unwrap().is_empty(), "a second destroy finds nothing");
    }

    struct NoProgressTest;
    impl Progress for NoProgressTest {
        fn step(&self, host: &str, step: &str) {
            eprintln!("{host}: {step}");
        }
    }

    #[test]
    fn a_changed_package_list_is_a_new_image() {
        let key = rootfs_key();
        assert_eq!(key.len(), 8);
        assert_ne!(rootfs_key_of(ROOTFS_VERSION, "systemd,iproute2"), rootfs_key_of(ROOTFS_VERSION, "systemd"));
        assert_ne!(rootfs_key_of("2", PACKAGES), key);
        assert!(default_rootfs().ends_with(format!("rehearsal-bookworm-{key}")));
        // An image made before the key (its marker says "1") or with another list is not used.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        for (marker, ready) in [("1\n", false), ("0badc0de\n", false), (&*format!("{key}\n"), true)] {
            std::fs::write(dir.path().join(ROOTFS_MARKER), marker).unwrap();
            assert_eq!(rootfs_ready(dir.path()), ready, "marker {marker:?}");
        }
    }

    #[test]
    fn a_second_locker_waits_for_the_first() {
        // What makes parallel runs wait for one rootfs build instead of racing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.lock");
        let first = lock(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let _second = lock(&p2).unwrap();
            tx.send(Instant::now()).unwrap();
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "the second lock was granted while the first was held");
        let released = Instant::now();
        drop(first);
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("granted after release");
        assert!(got >= released);
        waiter.join().unwrap();
    }

    #[test]
    fn only_nspawn_copies_beside_the_rootfs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let copy = dir.path().join(".#machine.rootfsabc123");
        let lck = dir.path().join(".#.#machine.rootfsabc123.lck");
        let other = dir.path().join("data");
        let elsewhere = tempfile::tempdir().unwrap();
        let foreign = elsewhere.path().join(".#machine.rootfsabc123");
        for d in [&rootfs, &copy, &other, &foreign] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(&lck, "").unwrap();
        assert!(!remove_ephemeral_copy(&other, &rootfs).unwrap());
        assert!(!remove_ephemeral_copy(&foreign, &rootfs).unwrap());
        assert!(other.exists() && foreign.exists());
        assert!(remove_ephemeral_copy(&copy, &rootfs).unwrap());
        assert!(!copy.exists() && !lck.exists() && rootfs.exists());
        assert!(!remove_ephemeral_copy(&copy, &rootfs).unwrap(), "already gone");
    }

    #[test]
    fn network_names_are_checked() {
        for ok in ["tn", "rehearsal-1", "a"] {
            check_network_name(ok).unwrap();
        }
        for bad in ["", "Tn", "1tn", "tn-", "tn_1", "a/b", &"x".repeat(41)] {
            assert!(check_network_name(bad).is_err(), "{bad:?}");
        }
    }
}
