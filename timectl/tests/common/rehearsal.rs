//! Harness for tests on rehearsal hosts (systemd-nspawn containers with systemd and sshd, made
//! by `timectl`'s rehearsal provider). Include with `mod common;` and
//! `#[path = "common/rehearsal.rs"] mod rehearsal;`.
//!
//! - The rootfs is the provider's cache (`TIMECTL_REHEARSAL_ROOTFS` or its default), built once
//!   per machine under the provider's lock, so every test of a CI run shares one build.
//! - [`Rehearsal`] owns one network: a `Drop` guard runs `timectl destroy`, then removes by
//!   name and PID whatever the provider's state file still lists, also after a panic.
//! - Commands run on a host through `nsenter` into its container (no SSH, so a test can still
//!   look at a host whose SSH it broke on purpose).
//! - These tests need root; without it they fail loudly instead of passing silently.

#![allow(dead_code)]

use crate::common::{Env, Run};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The provider's record of a network (`rehearsal.json`), the fields the harness needs.
#[derive(Clone, Debug, Deserialize)]
pub struct NetworkState {
    pub network: String,
    pub subnet: u8,
    pub hosts: Vec<HostState>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HostState {
    pub index: usize,
    pub name: String,
    pub veth: String,
    pub machine_addr: String,
    pub host_addr: String,
    pub pid: Option<u32>,
}

pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "rehearsal tests need root (network namespaces, systemd-nspawn); CI runs them as root");
    for (tool, package) in
        [("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"), ("ssh", "openssh-client")]
    {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].iter().any(|d| Path::new(d).join(tool).is_file());
        assert!(found, "`{tool}` is missing: .ci/setup.sh installs the Debian package {package}");
    }
}

/// One rehearsal network of a test, destroyed when dropped.
pub struct Rehearsal {
    pub env: Env,
    pub network: String,
    /// The operator's SSH key (private; `.pub` beside it), made for this test.
    pub key: PathBuf,
}

impl Rehearsal {
    /// A fresh environment and key; the network name is unique per test process and `tag`.
    pub fn new(tag: &str) -> Self {
        require_root();
        let env = Env::new();
        let key = env.path().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "rehearsal-test", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen (openssh-client)");
        assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        // Short: host names are NETWORK-node-N.
        let network = format!("{tag}{}", std::process::id() % 100_000);
        Rehearsal { env, network, key }
    }

    /// `timectl --network N --ssh-identity KEY ARGS...`.
    pub fn timectl(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run timectl").into()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd();
        c.args(["--network", &self.network, "--ssh-identity"]).arg(&self.key).args(args).stdin(Stdio::null());
        c
    }

    /// The provider's state file, wherever the state dir layout puts it.
    pub fn state_file(&self) -> Option<PathBuf> {
        find_file(&self.env.path().join("state"), "rehearsal.json", &self.network)
    }

    pub fn state(&self) -> Option<NetworkState> {
        let text = std::fs::read_to_string(self.state_file()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn host(&self, index: usize) -> HostState {
        let state = self.state().expect("the rehearsal state file exists");
        state.hosts.into_iter().find(|h| h.index == index).unwrap_or_else(|| panic!("no host {index}"))
    }

    /// Runs `script` with `sh -c` on a host, inside its container.
    pub fn exec(&self, host: &HostState, script: &str) -> Output {
        let leader = container_leader(host).unwrap_or_else(|| panic!("{} is not running", host.name));
        Command::new("nsenter")
            .args(["-t", &leader.to_string(), "-m", "-u", "-i", "-n", "-p", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter (util-linux)")
    }

    /// Runs `script` on a host like [`exec`](Self::exec), with `input` on its stdin (written from
    /// a thread, so a large input cannot deadlock against the script's output).
    pub fn exec_with_input(&self, host: &HostState, script: &str, input: Vec<u8>) -> Output {
        use std::io::Write;
        let leader = container_leader(host).unwrap_or_else(|| panic!("{} is not running", host.name));
        let mut child = Command::new("nsenter")
            .args(["-t", &leader.to_string(), "-m", "-u", "-i", "-n", "-p", "--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter (util-linux)");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("wait for nsenter");
        let written = writer.join().expect("stdin writer");
        assert!(
            written.is_ok() || !out.status.success(),
            "on {}: `{script}` succeeded without reading its input: {written:?}",
            host.name
        );
        out
    }

    /// [`exec`](Self::exec), asserting success; returns stdout.
    pub fn sh(&self, host: &HostState, script: &str) -> String {
        let out = self.exec(host, script);
        assert!(
            out.status.success(),
            "on {}: `{script}` failed: {}{}",
            host.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Gives a host a new sshd key (as a reinstalled server would have) and restarts sshd.
    pub fn change_host_key(&self, host: &HostState) {
        let dir = self.state_file().expect("state file").parent().unwrap().join("rehearsal").join(&host.name);
        let key = dir.join("ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
        assert!(out.status.success());
        self.sh(host, "systemctl restart ssh");
    }

    /// What this network still has on the machine: namespaces, veths and live containers.
    pub fn leftovers(&self, state: &NetworkState) -> Vec<String> {
        let mut left = Vec::new();
        for h in &state.hosts {
            if Path::new("/run/netns").join(&h.name).exists() {
                left.push(format!("netns {}", h.name));
            }
            if Path::new("/sys/class/net").join(&h.veth).exists() {
                left.push(format!("veth {}", h.veth));
            }
            if h.pid.is_some_and(|p| is_nspawn_of(p, &h.name)) {
                left.push(format!("container {}", h.name));
            }
            // What a killed nspawn cannot remove; destroy must.
            let propagate = Path::new("/run/systemd/nspawn/propagate").join(&h.name);
            if propagate.exists() {
                left.push(format!("nspawn directory {}", propagate.display()));
            }
        }
        left
    }
}

impl Drop for Rehearsal {
    fn drop(&mut self) {
        let Some(state) = self.state() else { return };
        // The real path first; then by name and PID whatever is still there.
        let _ = self.cmd(&["destroy", "--yes"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        for h in &state.hosts {
            if let Some(pid) = h.pid.filter(|&p| is_nspawn_of(p, &h.name)) {
                crate::common::kill(pid, libc::SIGKILL);
                crate::common::wait_for(Duration::from_secs(10), || (!is_nspawn_of(pid, &h.name)).then_some(()));
            }
            // Whatever still runs in the namespace this network made (a container whose nspawn
            // died lives on there).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &h.name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
                    crate::common::kill(pid, libc::SIGKILL);
                }
            }
            if Path::new("/sys/class/net").join(&h.veth).exists() {
                let _ = Command::new("ip").args(["link", "del", &h.veth]).status();
            }
            if Path::new("/run/netns").join(&h.name).exists() {
                let _ = Command::new("ip").args(["netns", "del", &h.name]).status();
            }
            // An nspawn killed above cannot remove its (empty) propagation directory.
            let _ = std::fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&h.name));
        }
    }
}

/// `DIR/**/NAME` whose parent directory is called `network`.
fn find_file(dir: &Path, name: &str, network: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name, network) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name)
            && p.parent().and_then(|d| d.file_name()).is_some_and(|d| d == network)
        {
            return Some(p);
        }
    }
    None
}

/// Whether `pid` is the systemd-nspawn running machine `name` (PIDs get reused).
pub fn is_nspawn_of(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"systemd-nspawn"))
        && args.windows(2).any(|w| w[0] == b"-M" && w[1] == name.as_bytes())
}

/// The container's PID 1 (as seen from the machine): the child of its systemd-nspawn.
pub fn container_leader(host: &HostState) -> Option<u32> {
    let pid = host.pid.filter(|&p| is_nspawn_of(p, &host.name))?;
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .next()
}
