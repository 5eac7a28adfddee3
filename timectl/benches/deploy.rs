//! Deployment speed on this machine, with the rehearsal provider (needs root): a deploy to
//! BENCH_HOSTS (5) hosts with the Debian image already cached, a no-op re-run, and
//! `rpc getblockcount --all` through the SSH tunnels (whole command, and each call once the
//! sessions are open). Prints a Markdown table for docs/benchmarks.md. The network is
//! destroyed at the end, also when a step fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Bench {
    dir: tempfile::TempDir,
    network: String,
    timed: PathBuf,
}

impl Bench {
    fn timectl(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_timectl"));
        c.env("TIMECTL_STATE_DIR", self.dir.path().join("state"))
            .env("TIMECTL_INVENTORY_DIR", self.dir.path().join("inventories"))
            .env("NO_COLOR", "1")
            .args(["--network", &self.network, "--ssh-identity"])
            .arg(self.dir.path().join("id_ed25519"))
            .stdin(Stdio::null());
        c
    }

    /// Runs timectl with `args`; returns (wall time, stdout). Panics on failure.
    fn run(&self, args: &[&str]) -> (Duration, String) {
        let t0 = Instant::now();
        let out = self.timectl().args(args).output().expect("run timectl");
        let took = t0.elapsed();
        assert!(
            out.status.success(),
            "timectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (took, String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.timectl().args(["destroy", "--yes"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn timed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_TIMED") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_BIN_EXE_timectl")).with_file_name("timed")
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("deploy bench: needs root (rehearsal hosts); skipped");
        return;
    }
    let hosts: usize = std::env::var("BENCH_HOSTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = tempfile::Builder::new().prefix("timectl-bench").tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(ok.success());
    let b = Bench { dir, network: format!("bn{}", std::process::id() % 10_000), timed: timed_binary() };
    assert!(b.timed.is_file(), "{} missing: cargo build --release -p timed, or BENCH_TIMED=PATH", b.timed.display());
    let size_mb = std::fs::metadata(&b.timed).unwrap().len() as f64 / 1e6;
    let timed = b.timed.display().to_string();

    // The image is built once per machine; time the deploy with it in place.
    let n = hosts.to_string();
    let (t_deploy, _) =
        b.run(&["deploy", "--provider", "rehearsal", "--nodes", &n, "--block-time", "2", "--timed", &timed, "--yes"]);
    let (t_rerun, _) = b.run(&["deploy", "--provider", "rehearsal", "--nodes", &n, "--timed", &timed, "--yes"]);
    let mut whole = Vec::new();
    let mut per_call = Vec::new();
    for _ in 0..5 {
        let (t, out) = b.run(&["--json", "rpc", "getblockcount", "--all"]);
        whole.push(t);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let max = rows.as_array().unwrap().iter().filter_map(|r| r["latency_ms"].as_u64()).max().unwrap();
        per_call.push(max);
    }
    whole.sort();
    per_call.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| deployment on this machine ({hosts} rehearsal hosts, timed {size_mb:.0} MB) | measured | target |");
    println!("|---|---|---|");
    println!("| deploy, image cached | {:.1} s | < 60 s |", t_deploy.as_secs_f64());
    println!("| no-op re-run of deploy | {:.1} s | < 5 s |", t_rerun.as_secs_f64());
    println!(
        "| `rpc getblockcount --all`, whole command (SSH sessions opened each time), median | {:.0} ms | — |",
        ms(whole[whole.len() / 2])
    );
    println!(
        "| `rpc getblockcount --all`, slowest node's call through its tunnel, median of 5 | {} ms | < 100 ms |",
        per_call[per_call.len() / 2]
    );
}
