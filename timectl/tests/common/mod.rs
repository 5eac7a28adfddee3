//! Helpers for driving the real `timectl` (and `timed`) binaries from tests. Every test gets
//! its own directory for inventories, state, data and logs, so tests run side by side.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Env {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    /// Stdout and stderr together, for snapshots of what a person sees.
    pub fn screen(&self) -> String {
        format!("exit: {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("timectl-test").tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("inventories")).unwrap();
        Env { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_timectl"));
        c.current_dir(self.path())
            .env("TIMECTL_STATE_DIR", self.path().join("state"))
            .env("TIMECTL_INVENTORY_DIR", self.path().join("inventories"))
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("TIMECTL_RPC_USER")
            .env_remove("TIMECTL_RPC_PASSWORD");
        let timed = Path::new(env!("CARGO_BIN_EXE_timectl")).with_file_name("timed");
        if timed.is_file() {
            c.env("TIMECTL_TIMED", timed);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd().args(args).output().expect("run timectl").into()
    }

    pub fn inventory(&self, network: &str) -> PathBuf {
        self.path().join("inventories").join(format!("{network}.toml"))
    }
}

/// `timed` from the same target directory (`cargo test --workspace` builds it).
pub fn timed_path() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_timectl")).with_file_name("timed");
    assert!(p.is_file(), "{} is missing: run `cargo build -p timed` or `cargo test --workspace`", p.display());
    p
}

/// Insta filters for what changes from run to run.
pub fn filters(env: &Env) -> Vec<(String, String)> {
    let tmp = env.path().display().to_string();
    vec![
        (regex_escape(&tmp), "[TMP]".into()),
        (r"127\.0\.0\.1:\d+".into(), "127.0.0.1:[PORT]".into()),
        (r"\b[0-9a-f]{12,64}\b".into(), "[HASH]".into()),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ".into(), "[TIME]".into()),
        (r"\d{8}T\d{6}Z".into(), "[TIME]".into()),
    ]
}

pub fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if "\\.+*?()|[]{}^$".contains(c) { format!("\\{c}") } else { c.to_string() }).collect()
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z') | None),
        Err(_) => false,
    }
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// PIDs recorded in an inventory file.
pub fn inventory_pids(path: &Path) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let Ok(v) = text.parse::<toml::Table>() else { return Vec::new() };
    v.get("nodes")
        .and_then(|n| n.as_array())
        .map(|nodes| nodes.iter().filter_map(|n| n.get("pid").and_then(|p| p.as_integer()).map(|p| p as u32)).collect())
        .unwrap_or_default()
}

/// Stops every process a test started, even when the test fails: `local down --wipe` for
/// each network, then SIGKILL for any PID that is still there.
pub struct Cleanup<'a> {
    pub env: &'a Env,
    pub networks: Vec<String>,
    pub pids: Vec<u32>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let mut pids = self.pids.clone();
        for n in &self.networks {
            pids.extend(inventory_pids(&self.env.inventory(n)));
            let _ = self.env.cmd().args(["local", "down", "--wipe", "--timeout", "5", "--network", n]).output();
        }
        // Only processes whose command line points into this test's directory.
        let tmp = self.env.path().display().to_string();
        pids.retain(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tmp))
        });
        for p in &pids {
            kill(*p, libc::SIGTERM);
        }
        let _ = wait_for(Duration::from_secs(5), || (!pids.iter().any(|&p| alive(p))).then_some(()));
        for p in pids {
            if alive(p) {
                kill(p, libc::SIGKILL);
            }
        }
    }
}

#[path = "../../src/svg_check.rs"]
mod svg_check;
#[allow(unused_imports)] // not every test binary uses it
pub use svg_check::svgs_parse;
