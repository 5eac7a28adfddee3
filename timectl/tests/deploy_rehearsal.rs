//! `timectl deploy --provider rehearsal` onto three real hosts (systemd-nspawn containers with
//! systemd as PID 1 and sshd, each with its own address), then the day-2 operations, then
//! `destroy`. One network for the whole list: a deploy is expensive on a small machine.
//!
//! Each check is a named step; a failing step is recorded and the rest still run (where they
//! can), so one run says exactly which points hold. The test fails if any step failed. Needs
//! root: it fails loudly without it.

mod common;
#[path = "common/rehearsal.rs"]
mod rehearsal;

use rehearsal::{HostState, Rehearsal};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Named checks; a failure is recorded (with its message) and the run goes on.
struct Steps {
    results: Vec<(String, Result<(), String>)>,
}

impl Steps {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) -> bool {
        let started = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default())
        });
        eprintln!(
            "step {name}: {} ({:.1}s){}",
            if r.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64(),
            r.as_ref().err().map(|e| format!("\n  {e}")).unwrap_or_default()
        );
        let ok = r.is_ok();
        self.results.push((name.to_string(), r));
        ok
    }

    fn finish(self) {
        let failed: Vec<String> =
            self.results.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
        let summary: Vec<String> =
            self.results.iter().map(|(n, r)| format!("{} {n}", if r.is_ok() { "ok    " } else { "FAILED" })).collect();
        eprintln!("steps:\n{}", summary.join("\n"));
        assert!(failed.is_empty(), "{} of {} steps failed:\n{}", failed.len(), self.results.len(), failed.join("\n\n"));
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn ok_run(r: &common::Run, what: &str) -> Result<(), String> {
    ensure(r.code == 0, || format!("{what} exited {}:\n{}", r.code, r.screen()))
}

/// `rpc METHOD PARAMS --node NODE --json` → that node's result.
fn rpc_one(net: &Rehearsal, node: &str, method: &str, params: &[&str]) -> Result<Value, String> {
    let mut args = vec!["--json", "rpc", method];
    args.extend_from_slice(params);
    args.extend_from_slice(&["--node", node, "--timeout", "60"]);
    let r = net.timectl(&args);
    ok_run(&r, &format!("rpc {method} on {node}"))?;
    let rows: Value = serde_json::from_str(&r.stdout).map_err(|e| format!("not JSON ({e}): {}", r.screen()))?;
    rows[0].get("result").cloned().ok_or_else(|| format!("no result: {}", r.stdout))
}

/// `rpc METHOD PARAMS --all --json` → (node, result) per node, all of which answered.
fn rpc_all(net: &Rehearsal, method: &str, params: &[&str]) -> Result<Vec<(String, Value)>, String> {
    let mut args = vec!["--json", "rpc", method];
    args.extend_from_slice(params);
    args.extend_from_slice(&["--all", "--timeout", "30"]);
    let r = net.timectl(&args);
    ok_run(&r, &format!("rpc {method} --all"))?;
    let rows: Vec<Value> = serde_json::from_str(&r.stdout).map_err(|e| format!("not JSON ({e}): {}", r.screen()))?;
    Ok(rows.into_iter().map(|v| (v["node"].as_str().unwrap_or_default().to_string(), v["result"].clone())).collect())
}

fn heights(net: &Rehearsal) -> Result<Vec<u64>, String> {
    rpc_all(net, "getblockcount", &[])?
        .into_iter()
        .map(|(n, v)| v.as_u64().ok_or_else(|| format!("{n}: getblockcount gave {v}")))
        .collect()
}

/// Waits until every node is past `min` and they agree on the hash at a common height.
fn wait_agree(net: &Rehearsal, min: u64, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match heights(net) {
            Ok(h) if h.iter().all(|&x| x > min) => {
                let common = *h.iter().min().unwrap();
                let hashes = rpc_all(net, "getblockhash", &[&common.to_string()])?;
                let first = &hashes[0].1;
                if hashes.iter().all(|(_, v)| v == first) {
                    return Ok(common);
                }
                return Err(format!("fork at height {common}: {hashes:?}"));
            }
            Ok(h) => last = format!("heights {h:?}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(format!("no agreement past height {min} within {}s: {last}", timeout.as_secs()))
}

/// A payment made on `from` is final on `to`.
fn pay(net: &Rehearsal, from: &str, to: &str) -> Result<(), String> {
    let status = rpc_one(net, to, "masternodestatus", &[])?;
    let addr = status["wallet_address"].as_str().ok_or_else(|| format!("no wallet_address in {status}"))?.to_string();
    let txid = rpc_one(net, from, "sendtoaddress", &[&addr, "1.5"])?;
    let txid = txid.as_str().ok_or_else(|| format!("sendtoaddress gave {txid}"))?.to_string();
    let fin = rpc_one(net, to, "waittransactionfinality", &[&txid, "60"])?;
    ensure(fin["finalized"] == Value::Bool(true), || format!("{txid} on {to}: {fin}"))
}

fn main_pid(net: &Rehearsal, h: &HostState) -> String {
    net.sh(h, "systemctl show -p MainPID --value timed").trim().to_string()
}

fn node_names(net: &Rehearsal) -> Vec<String> {
    (1..=3).map(|i| format!("{}-node-{i}", net.network)).collect()
}

#[test]
fn deploy_three_rehearsal_hosts_operate_and_destroy() {
    let net = Rehearsal::new("dr");
    let mut steps = Steps { results: Vec::new() };
    let names = node_names(&net);

    let deployed = steps.run("deploy", || {
        let r = net.timectl(&["deploy", "--provider", "rehearsal", "--nodes", "3", "--yes"]);
        ok_run(&r, "deploy")?;
        ensure(r.stdout.contains(".toml"), || format!("deploy does not print the inventory path:\n{}", r.screen()))
    });
    if !deployed || net.state().is_none() {
        steps.finish();
        return;
    }
    let hosts: Vec<HostState> = (1..=3).map(|i| net.host(i)).collect();
    let inventory: toml::Table =
        std::fs::read_to_string(net.env.inventory(&net.network)).ok().and_then(|t| t.parse().ok()).unwrap_or_default();
    let rpc_port = |name: &str| -> Option<String> {
        let nodes = inventory.get("nodes")?.as_array()?;
        let n = nodes.iter().find(|n| n.get("name").and_then(|v| v.as_str()) == Some(name))?;
        n.get("rpc")?.as_str()?.rsplit(':').next().map(str::to_string)
    };

    steps.run("timed active under systemd, Type=notify, user timecoin, RPC on loopback only", || {
        for h in &hosts {
            let active = net.exec(h, "systemctl is-active timed");
            let active = String::from_utf8_lossy(&active.stdout).trim().to_string();
            ensure(active == "active", || format!("{}: timed is {active}", h.name))?;
            let ty = net.sh(h, "systemctl show -p Type --value timed");
            ensure(ty.trim() == "notify", || format!("{}: Type={}", h.name, ty.trim()))?;
            let user = net.sh(h, "ps -o user= -p \"$(systemctl show -p MainPID --value timed)\"");
            ensure(user.trim() == "timecoin", || format!("{}: timed runs as {}", h.name, user.trim()))?;
            let port = rpc_port(&h.name).ok_or_else(|| format!("no rpc for {} in the inventory", h.name))?;
            let ss = net.sh(h, "ss -H -ltn");
            let on_port: Vec<&str> = ss
                .lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .filter(|a| a.rsplit(':').next() == Some(port.as_str()))
                .collect();
            ensure(on_port == ["127.0.0.1:".to_string() + &port], || {
                format!("{}: RPC port {port} listens on {on_port:?}:\n{ss}", h.name)
            })?;
        }
        Ok(())
    });

    steps.run("rpc getblockcount --all through the tunnels", || {
        let r = net.timectl(&["rpc", "getblockcount", "--all"]);
        ok_run(&r, "rpc getblockcount --all")?;
        for n in &names {
            ensure(r.stdout.contains(n.as_str()), || format!("{n} missing:\n{}", r.screen()))?;
        }
        Ok(())
    });

    steps.run("block hashes agree at a common height", || wait_agree(&net, 2, Duration::from_secs(120)).map(|_| ()));

    steps.run("sendtoaddress on node 1 is final on node 3", || pay(&net, &names[0], &names[2]));

    // Before upgrade: afterwards deploy would (rightly) put its own binary back.
    steps.run("a second deploy changes nothing", || {
        let pids: Vec<String> = hosts.iter().map(|h| main_pid(&net, h)).collect();
        let state_before = net.state().map(|s| format!("{s:?}"));
        let r = net.timectl(&["deploy", "--provider", "rehearsal", "--nodes", "3", "--yes"]);
        ok_run(&r, "second deploy")?;
        let after: Vec<String> = hosts.iter().map(|h| main_pid(&net, h)).collect();
        ensure(pids == after, || format!("timed restarted: {pids:?} -> {after:?}\n{}", r.screen()))?;
        ensure(net.state().map(|s| format!("{s:?}")) == state_before, || "the hosts changed".into())
    });

    steps.run("logs returns journal lines", || {
        let r = net.timectl(&["logs", &names[0]]);
        ok_run(&r, "logs")?;
        ensure(r.stdout.contains("node ready") || r.stdout.contains("block committed"), || {
            format!("no timed lines in logs:\n{}", r.screen())
        })
    });

    steps.run("kill -9 of timed is restarted by systemd and catches up", || {
        let h = &hosts[1];
        let before = main_pid(&net, h);
        ensure(before != "0", || "timed is not running".into())?;
        net.sh(h, &format!("kill -9 {before}"));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let now = main_pid(&net, h);
            let active = String::from_utf8_lossy(&net.exec(h, "systemctl is-active timed").stdout).trim().to_string();
            if now != "0" && now != before && active == "active" {
                break;
            }
            ensure(Instant::now() < deadline, || format!("not restarted: MainPID {now}, {active}"))?;
            std::thread::sleep(Duration::from_secs(1));
        }
        let top = *heights(&net)?.iter().max().unwrap();
        wait_agree(&net, top, Duration::from_secs(120)).map(|_| ())
    });

    steps.run("upgrade with a rebuilt binary keeps the network finalizing", || {
        // A different build: the same program with a different hash (a trailing note is
        // ignored by the loader), as a rebuild from other sources would have.
        let bin = net.env.path().join("timed-upgraded");
        let mut bytes = std::fs::read(common::timed_path()).map_err(|e| e.to_string())?;
        bytes.extend_from_slice(b"\nrehearsal upgrade test build\n");
        std::fs::write(&bin, &bytes).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let want = sha256_hex(&bytes);
        let r = net.timectl(&["upgrade", "--binary", bin.to_str().unwrap()]);
        ok_run(&r, "upgrade")?;
        for h in &hosts {
            let sum = net.sh(h, "sha256sum /usr/local/bin/timed");
            ensure(sum.starts_with(&want), || format!("{}: binary is {sum}", h.name))?;
        }
        let top = *heights(&net)?.iter().max().unwrap();
        wait_agree(&net, top, Duration::from_secs(120))?;
        pay(&net, &names[1], &names[0])
    });

    // The operator's machine of a 72-hour run must be one with systemd; this machine's PID 1 may
    // not be. Host 3 is one: a copy of the operator's timectl, inventory, state and key goes
    // there, and the monitor is started detached against the whole network.
    steps.run("stability --detach runs as a transient unit, --status follows it, --resume continues it", || {
        detached_monitor(&net, &hosts[2])
    });

    steps.run("a host whose key changed is refused", || {
        net.change_host_key(&hosts[0]);
        let r = net.timectl(&["rpc", "getblockcount", "--node", &names[0]]);
        ensure(r.code != 0, || format!("a changed host key was accepted:\n{}", r.screen()))?;
        eprintln!("refused as:\n{}", r.stderr);
        let text = r.stderr.to_lowercase();
        ensure(text.contains(&names[0].to_lowercase()) || text.contains(&hosts[0].host_addr), || {
            format!("the error does not name the host:\n{}", r.screen())
        })?;
        ensure(text.contains("key"), || format!("the error does not say the key changed:\n{}", r.screen()))
    });

    steps.run("destroy leaves no container, namespace or veth, also where nspawn was killed", || {
        let state = net.state().ok_or("no state before destroy")?;
        // Host 3's nspawn dies -9: its container's init lives on, reparented, and destroy must
        // still end it (found by the network namespace destroy made it in).
        let h3 = &hosts[2];
        let orphan = rehearsal::container_leader(h3).ok_or("host 3 has no container init")?;
        // The mount point of its tmpfs overlay, which a killed nspawn cannot remove.
        let mounts = std::fs::read_to_string(format!("/proc/{orphan}/mounts")).unwrap_or_default();
        let overlay = mounts
            .split([' ', ',', '\n'])
            .find_map(|o| o.strip_prefix("upperdir="))
            .and_then(|upper| Path::new(upper).parent().map(Path::to_path_buf))
            .ok_or_else(|| format!("host 3 does not run on a volatile overlay:\n{mounts}"))?;
        common::kill(h3.pid.ok_or("host 3 has no nspawn pid")?, libc::SIGKILL);
        std::thread::sleep(Duration::from_secs(1));
        ensure(common::alive(orphan), || format!("the container init {orphan} died with nspawn"))?;
        let r = net.timectl(&["destroy", "--yes"]);
        ok_run(&r, "destroy")?;
        ensure(r.stdout.contains(&format!("pid {orphan}, without systemd-nspawn")), || {
            format!("destroy does not report the orphaned init:\n{}", r.screen())
        })?;
        ensure(!common::alive(orphan), || format!("the orphaned container init {orphan} still runs"))?;
        let left = net.leftovers(&state);
        ensure(left.is_empty(), || format!("left behind: {left:?}"))?;
        ensure(!overlay.exists(), || format!("{} left behind", overlay.display()))?;
        ensure(net.state_file().is_none(), || "the state file is still there".into())
    });

    steps.finish();
}

/// Where the operator's copy lives on the host acting as the operator's machine.
const OP: &str = "/root/op";

/// `timectl ARGS` on `host` as the operator would run it there: a clean environment, the copied
/// inventory, state and key, `--json` output.
fn op_timectl(net: &Rehearsal, host: &HostState, args: &str) -> Result<(i32, String), String> {
    let script = format!(
        "cd {OP} && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root NO_COLOR=1 \
         TIMECTL_STATE_DIR={OP}/state TIMECTL_INVENTORY_DIR={OP}/inventories \
         {OP}/timectl --json --network {} --ssh-identity {OP}/id_ed25519 {args}",
        net.network
    );
    let out = net.exec(host, &script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && code != 5 {
        // 5 is a stall verdict, which the caller judges from the JSON.
        return Err(format!(
            "`timectl {args}` on {} exited {code}:\n{stdout}{}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((code, stdout))
}

fn log_records(net: &Rehearsal, host: &HostState) -> Vec<Value> {
    let out = net.exec(host, &format!("cat {OP}/run.jsonl 2>/dev/null || true"));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn wait_records(
    net: &Rehearsal,
    host: &HostState,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = log_records(net, host);
        if done(&records) {
            return Ok(records);
        }
        if Instant::now() > deadline {
            let tail: Vec<String> = records.iter().rev().take(5).map(|r| r.to_string()).collect();
            return Err(format!("{what}: not within {}s; last records: {tail:?}", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn record_kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or_default()
}

fn unit_props(net: &Rehearsal, host: &HostState, unit: &str) -> String {
    String::from_utf8_lossy(
        &net.exec(host, &format!("systemctl show {unit} -p ActiveState,SubState,MainPID,ControlGroup")).stdout,
    )
    .into_owned()
}

fn start_detached(net: &Rehearsal, host: &HostState, args: &str) -> Result<String, String> {
    let (_, out) = op_timectl(net, host, &format!("stability {args} --detach"))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("--detach --json is not JSON ({e}): {out}"))?;
    let unit = v["unit"].as_str().ok_or_else(|| format!("no unit in {v}"))?.to_string();
    ensure(v["log"].as_str() == Some(&format!("{OP}/run.jsonl")), || format!("log path: {v}"))?;
    // The command has returned; the monitor must now be systemd's, in the unit's own cgroup.
    let props = unit_props(net, host, &unit);
    ensure(props.contains("ActiveState=active") || props.contains("ActiveState=activating"), || {
        format!("{unit} is not running once --detach returned:\n{props}")
    })?;
    ensure(props.contains(&format!("ControlGroup=/system.slice/{unit}.service")), || {
        format!("{unit} does not run in its own cgroup:\n{props}")
    })?;
    let pid = props
        .lines()
        .find_map(|l| l.strip_prefix("MainPID="))
        .ok_or_else(|| format!("no MainPID:\n{props}"))?
        .trim()
        .to_string();
    let cmdline = net.sh(host, &format!("tr '\\0' ' ' < /proc/{pid}/cmdline"));
    ensure(cmdline.contains(" stability ") && !cmdline.contains("--detach"), || format!("the unit runs `{cmdline}`"))?;
    Ok(unit)
}

/// `stability --detach` on a machine whose PID 1 is systemd: the run outlives the command that
/// started it, `--status` reads its unit and log, a stopped unit ends the log as interrupted,
/// and `--detach --resume` finishes the same run in a new unit.
fn detached_monitor(net: &Rehearsal, op: &HostState) -> Result<(), String> {
    let exe = std::fs::read(env!("CARGO_BIN_EXE_timectl")).map_err(|e| e.to_string())?;
    let out = net.exec_with_input(op, &format!("mkdir -p {OP} && cat > {OP}/timectl && chmod 755 {OP}/timectl"), exe);
    ensure(out.status.success(), || format!("copy timectl: {}", String::from_utf8_lossy(&out.stderr)))?;
    let key = std::fs::read(&net.key).map_err(|e| e.to_string())?;
    let out = net.exec_with_input(op, &format!("umask 077 && cat > {OP}/id_ed25519"), key);
    ensure(out.status.success(), || format!("copy key: {}", String::from_utf8_lossy(&out.stderr)))?;
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(net.env.path())
        .args(["-cf", "-", "inventories", "state"])
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    ensure(tar.status.success(), || format!("tar: {}", String::from_utf8_lossy(&tar.stderr)))?;
    let out = net.exec_with_input(op, &format!("tar -C {OP} -xf -"), tar.stdout);
    ensure(out.status.success(), || format!("untar: {}", String::from_utf8_lossy(&out.stderr)))?;

    // 72 s in all, samples every 2 s, a probe every 3 samples.
    let unit = start_detached(
        net,
        op,
        &format!("--hours 0.02 --interval 2 --probe-every 3 --probe-timeout 30 --report {OP}/run.jsonl"),
    )?;
    let records = wait_records(net, op, "three samples", Duration::from_secs(60), |r| {
        r.iter().filter(|x| record_kind(x) == "tick").count() >= 3
    })?;
    ensure(records.first().and_then(|r| r["unit"].as_str()) == Some(unit.as_str()), || {
        format!("the start record does not name {unit}: {:?}", records.first())
    })?;

    let (_, status) = op_timectl(net, op, &format!("stability --status {OP}/run.jsonl"))?;
    let v: Value = serde_json::from_str(&status).map_err(|e| format!("--status --json ({e}): {status}"))?;
    ensure(v["unit"].as_str() == Some(unit.as_str()), || format!("--status names another unit: {v}"))?;
    ensure(v["unit_state"]["ActiveState"] == "active" && v["state"] == "active (running)", || {
        format!("--status does not see the unit running: {}", v["state"])
    })?;

    // A stop (as at a reboot or by the operator) ends the log cleanly; --resume continues it.
    net.sh(op, &format!("systemctl stop {unit}"));
    let records = wait_records(net, op, "an end record after systemctl stop", Duration::from_secs(60), |r| {
        r.last().is_some_and(|x| record_kind(x) == "end")
    })?;
    ensure(records.last().and_then(|r| r["reason"].as_str()) == Some("interrupted"), || {
        format!("stopped run ended as {:?}", records.last())
    })?;
    let ticks_before = records.iter().filter(|x| record_kind(x) == "tick").count();

    let resumed = start_detached(net, op, &format!("--resume {OP}/run.jsonl"))?;
    ensure(resumed != unit, || "--resume reused the stopped unit's name".into())?;
    let records = wait_records(net, op, "the resumed run to complete", Duration::from_secs(180), |r| {
        r.last().is_some_and(|x| record_kind(x) == "end" && x["reason"] == "completed")
    })?;
    ensure(records.iter().any(|x| record_kind(x) == "resume"), || "no resume record".into())?;
    let ticks_after = records.iter().filter(|x| record_kind(x) == "tick").count();
    ensure(ticks_after > ticks_before, || format!("no samples after the resume ({ticks_before} before)"))?;

    let (code, status) = op_timectl(net, op, &format!("stability --status {OP}/run.jsonl"))?;
    let v: Value = serde_json::from_str(&status).map_err(|e| format!("--status --json ({e}): {status}"))?;
    ensure(v["state"] == "ended (completed)", || format!("final state: {}", v["state"]))?;
    ensure(code == 0 && v["passed_so_far"] == true, || {
        format!("the detached run did not pass (exit {code}): {}", v["analysis"]["findings"])
    })?;
    let probes = records.iter().filter(|x| record_kind(x) == "probe_result").count();
    ensure(probes >= 3, || format!("only {probes} probe results in the run"))?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn snapshot(env: &common::Env, name: &str, text: &str) {
    let mut s = insta::Settings::clone_current();
    for (re, with) in common::filters(env) {
        s.add_filter(&re, with);
    }
    s.bind(|| insta::assert_snapshot!(name, text));
}

/// Refusals that happen before anything is made: not root, a missing tool, a bad name. Each
/// names the cause and what to do, and leaves no state behind.
#[test]
fn rehearsal_refuses_clearly_and_makes_nothing() {
    rehearsal::require_root();
    let env = common::Env::new();
    // The unprivileged run must be able to read the key and the binaries.
    std::fs::set_permissions(env.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let key = env.path().join("key.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ test\n")
        .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let deploy = |network: &str| {
        let mut c = env.cmd();
        c.args([
            "--network",
            network,
            "deploy",
            "--provider",
            "rehearsal",
            "--nodes",
            "1",
            "--yes",
            "--ssh-public-key",
        ])
        .arg(&key)
        .stdin(std::process::Stdio::null());
        c
    };

    // As nobody: setpriv (util-linux) drops to uid/gid 65534 for this one process.
    let c = deploy("nr");
    let args: Vec<String> = std::iter::once(c.get_program().to_string_lossy().into_owned())
        .chain(c.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    // The checkout may sit in a directory nobody cannot enter (/root): run a copy from here.
    // timed goes beside it, where timectl looks for the binary to install.
    let exe = env.path().join("timectl");
    for (from, to) in
        [(std::path::PathBuf::from(&args[0]), exe.clone()), (common::timed_path(), env.path().join("timed"))]
    {
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    let mut nobody = std::process::Command::new("setpriv");
    nobody.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&exe).args(&args[1..]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => nobody.env(k, v),
            None => nobody.env_remove(k),
        };
    }
    nobody.env("TIMECTL_TIMED", env.path().join("timed")).current_dir(env.path()).stdin(std::process::Stdio::null());
    let r: common::Run = nobody.output().expect("setpriv (util-linux)").into();
    assert_eq!(r.code, 1, "{}", r.screen());
    snapshot(&env, "rehearsal_not_root", &r.screen());

    let r: common::Run = deploy("nr").env("PATH", "/nonexistent").output().unwrap().into();
    assert_eq!(r.code, 1, "{}", r.screen());
    snapshot(&env, "rehearsal_no_nspawn", &r.screen());

    let r: common::Run = deploy("Bad_Name").output().unwrap().into();
    assert_eq!(r.code, 1, "{}", r.screen());
    snapshot(&env, "rehearsal_bad_network_name", &r.screen());

    // Nothing was made: no provider record, no namespace of that name.
    let state = env.path().join("state");
    let records: Vec<_> = walk(&state).into_iter().filter(|p| p.ends_with("rehearsal.json")).collect();
    assert!(records.is_empty(), "{records:?}");
    assert!(!std::path::Path::new("/run/netns/nr-node-1").exists());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}
