//! The install stage's bad-input cases against real `sshd`s on 127.0.0.1 (keys made here, host
//! keys pinned in the network's own known_hosts): an unreachable host, a wrong key, the same
//! host twice, the P2P port already taken, a host without systemd (this machine's sshd: its
//! PID 1 is not systemd), a changed host key. Each error names the host and the step, and
//! says what was left on the host.

mod common;

use common::{filters, Env, Run};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Kills the sshd it holds when the test ends, pass or fail.
struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().unwrap();
    assert!(ok.success());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real sshd on loopback accepting `client_key.pub`, with host key `host_key`.
fn sshd(dir: &Path, host_key: &Path) -> Sshd {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f", "/dev/null", "-o", "ListenAddress=127.0.0.1", "-o", &format!("Port={port}")])
        .arg("-o")
        .arg(format!("HostKey={}", host_key.display()))
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", dir.join("authorized_keys").display()))
        .arg("-o")
        .arg(format!("PidFile={}", dir.join(format!("sshd-{port}.pid")).display()))
        .args(["-o", "StrictModes=no", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"])
        .args(["-o", "PermitRootLogin=prohibit-password", "-o", "UsePAM=no"])
        .stderr(std::fs::File::create(dir.join(format!("sshd-{port}.log"))).unwrap())
        .spawn()
        .expect("sshd (package openssh-server, installed by .ci/setup.sh)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { child, port }
}

fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

/// A hand-written inventory of the `ssh` provider: one node per (name, ssh port, p2p port).
fn inventory(env: &Env, network: &str, nodes: &[(&str, u16, u16)]) -> PathBuf {
    let mut text = format!("network = \"{network}\"\nprovider = \"ssh\"\n");
    for (i, (name, ssh_port, p2p)) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nssh_user = \"{}\"\nssh_port = {ssh_port}\np2p = \"127.0.0.1:{p2p}\"\nrpc = \"127.0.0.1:8080\"\nvalidator_id = \"validator{}\"\n",
            user(),
            i + 1
        ));
    }
    let path = env.path().join(format!("{network}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn install(env: &Env, inv: &Path, key: &Path) -> Run {
    env.cmd()
        .arg("--inventory")
        .arg(inv)
        .arg("--ssh-identity")
        .arg(key)
        .args(["install", "--wait", "5"])
        .output()
        .unwrap()
        .into()
}

fn snapshot(env: &Env, name: &str, run: &Run) {
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(env) {
        s.add_filter(&re, with);
    }
    s.add_filter(&format!("{}@", common::regex_escape(&user())), "[USER]@");
    s.add_filter(r"SHA256:[A-Za-z0-9+/=]+", "SHA256:[FP]");
    s.add_filter(r"\[127\.0\.0\.1\]:\d+", "[127.0.0.1]:[PORT]");
    s.add_filter(r"port \d+", "port [PORT]");
    s.add_filter(r"PID 1 is \S+\)", "PID 1 is [INIT])");
    s.bind(|| insta::assert_snapshot!(name, run.screen()));
}

#[test]
fn install_refuses_bad_hosts_clearly() {
    let env = Env::new();
    let dir = env.path();
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    keygen(&dir.join("other_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let a = sshd(dir, &dir.join("host_key"));
    let key = dir.join("client_key");
    let known = dir.join("state/networks/hand/known_hosts");

    // The same host twice: refused before anything is touched.
    let inv = inventory(&env, "twice", &[("n1", a.port, 18001), ("n2", a.port, 18002)]);
    let r = install(&env, &inv, &key);
    assert_eq!(r.code, 1, "{}", r.screen());
    snapshot(&env, "same_host_twice", &r);
    assert!(!known.exists() && !dir.join("state/networks/twice").exists(), "nothing was made or contacted");

    // Nothing listens: the connect step fails, naming the host.
    let dead = free_port();
    let inv = inventory(&env, "hand", &[("n1", dead, 18001)]);
    let r = install(&env, &inv, &key);
    assert_eq!(r.code, 1, "{}", r.screen());
    assert!(r.stderr.contains("n1") && r.stderr.contains("connect"), "{}", r.screen());
    snapshot(&env, "unreachable", &r);

    // A key the host does not accept.
    let inv = inventory(&env, "hand", &[("n1", a.port, 18001)]);
    let r = install(&env, &inv, &dir.join("other_key"));
    assert_eq!(r.code, 1, "{}", r.screen());
    assert!(r.stderr.contains("login refused"), "{}", r.screen());
    snapshot(&env, "wrong_key", &r);
    // First contact pinned the host key (accept-new).
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", a.port))
        .arg("-f")
        .arg(&known)
        .output()
        .unwrap();
    assert!(found.status.success(), "host key pinned in {}", known.display());

    // The P2P port is taken on the host: said before anything is installed.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let inv = inventory(&env, "hand", &[("n1", a.port, taken_port)]);
    let r = install(&env, &inv, &key);
    assert_eq!(r.code, 1, "{}", r.screen());
    assert!(r.stderr.contains(&format!("P2P port {taken_port} is already in use")), "{}", r.screen());
    assert!(r.stderr.contains("nothing was changed on the host"), "{}", r.screen());
    snapshot(&env, "p2p_port_taken", &r);
    drop(taken);

    // The host's key changes (a rebuilt host, or someone in the middle): a hard error naming
    // both fingerprints, and the pinned key stays.
    drop(a);
    keygen(&dir.join("new_host_key"));
    let b = sshd(dir, &dir.join("new_host_key"));
    let inv = inventory(&env, "hand", &[("n1", b.port, 18001)]);
    // Pin the old key under the new port, as if this were the same host.
    let old_line = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
    std::fs::write(&known, format!("[127.0.0.1]:{} {old_line}", b.port)).unwrap();
    let r = install(&env, &inv, &key);
    assert_eq!(r.code, 1, "{}", r.screen());
    let fp = |pubkey: &Path| {
        let out = Command::new("ssh-keygen").arg("-lf").arg(pubkey).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_string()
    };
    assert!(r.stderr.contains(&fp(&dir.join("host_key.pub"))), "old fingerprint: {}", r.screen());
    assert!(r.stderr.contains(&fp(&dir.join("new_host_key.pub"))), "new fingerprint: {}", r.screen());
    assert!(r.stderr.contains("ssh-keygen -R"), "{}", r.screen());
    snapshot(&env, "host_key_changed", &r);
    assert!(std::fs::read_to_string(&known).unwrap().contains(old_line.split_whitespace().nth(1).unwrap()));
    // No secret ever reached the output.
    for k in std::fs::read_dir(dir.join("state/networks/hand/keys")).unwrap() {
        let secret = std::fs::read_to_string(k.unwrap().path()).unwrap();
        assert!(!r.screen().contains(secret.trim()));
    }

    // This machine's sshd runs without systemd as init. On a machine that boots systemd the
    // install would go ahead onto this very machine: never do that from a test.
    if Path::new("/run/systemd/system").exists() {
        eprintln!("this machine runs systemd: the no-systemd case is covered only where it does not");
        return;
    }
    std::fs::remove_file(&known).unwrap();
    let r = install(&env, &inv, &key);
    assert_eq!(r.code, 1, "{}", r.screen());
    assert!(r.stderr.contains("does not run systemd"), "{}", r.screen());
    snapshot(&env, "no_systemd", &r);
}

#[path = "common/rehearsal.rs"]
mod rehearsal;

/// The `ssh` provider installs onto hosts it did not make, listed by hand (two rehearsal
/// hosts stand in for them), reaches their RPC only through SSH forwards, changes nothing on
/// a second run, and `destroy` removes what it installed but keeps the hosts.
#[test]
fn ssh_provider_installs_onto_listed_hosts() {
    let net = rehearsal::Rehearsal::new("hs");
    let r = net.timectl(&["provision", "--provider", "rehearsal", "--nodes", "2"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    let hosts: Vec<rehearsal::HostState> = (1..=2).map(|i| net.host(i)).collect();

    // The second host is reached as an ordinary user with passwordless sudo, as on most
    // servers; the first as root. Hosts one is given have finished booting: until then
    // pam_nologin turns away every login but root's (/run/nologin), and on a loaded machine
    // that outlasted deploy's minute of retries (one CI run beside a release build).
    net.sh(&hosts[1], "timeout 300 systemctl is-system-running --wait >/dev/null || true; test ! -e /run/nologin");
    net.sh(
        &hosts[1],
        "useradd -m -s /bin/sh deployer && echo 'deployer ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deployer \
         && chmod 0440 /etc/sudoers.d/deployer && install -d -o deployer -m 0700 ~deployer/.ssh \
         && install -o deployer -m 0600 /etc/ssh/rehearsal/authorized_keys ~deployer/.ssh/authorized_keys",
    );
    // box1 stands in for a cloud host still in its first boot: a stand-in `cloud-init` says
    // "running" twice, then whatever /run/fake-cloud-init holds.
    net.sh(
        &hosts[0],
        "printf '%s\\n' '#!/bin/sh' 'n=$(cat /run/fake-cloud-init-calls 2>/dev/null || echo 0)' \
         'echo $((n + 1)) > /run/fake-cloud-init-calls' \
         'if [ \"$n\" -lt 2 ]; then echo \"status: running\"; exit 0; fi' \
         'cat /run/fake-cloud-init; grep -q error /run/fake-cloud-init && exit 1; exit 0' > /usr/local/bin/cloud-init \
         && chmod 0755 /usr/local/bin/cloud-init && echo 'status: done' > /run/fake-cloud-init",
    );
    let network = format!("{}h", net.network);
    let mut text = format!("# hosts we were given\nnetwork = \"{network}\"\nprovider = \"ssh\"\n");
    for (i, h) in hosts.iter().enumerate() {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"box{n}\"\nhost = \"{a}\"\nssh_user = \"{u}\"\np2p = \"{a}:8001\"\nrpc = \"127.0.0.1:8080\"\nvalidator_id = \"validator{n}\"\n",
            n = i + 1,
            a = h.host_addr,
            u = if i == 1 { "deployer" } else { "root" },
        ));
    }
    let inv = net.env.path().join("given.toml");
    std::fs::write(&inv, &text).unwrap();
    let timectl = |args: &[&str]| -> Run {
        net.env
            .cmd()
            .arg("--inventory")
            .arg(&inv)
            .arg("--ssh-identity")
            .arg(&net.key)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
            .into()
    };

    let r = timectl(&["deploy", "--provider", "ssh", "--block-time", "2", "--wait", "90"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    assert!(r.stdout.contains("network ") && r.stdout.contains("is running (2 nodes"), "{}", r.screen());
    assert_eq!(net.sh(&hosts[0], "cat /run/fake-cloud-init-calls").trim(), "3", "waited out the first boot");
    for h in &hosts {
        assert_eq!(net.sh(h, "systemctl is-active timed").trim(), "active");
        assert_eq!(net.sh(h, "systemctl show -p Type --value timed").trim(), "notify");
        assert_eq!(net.sh(h, "stat -c '%a %U' /var/lib/timed/validator.key").trim(), "600 timecoin");
        assert_eq!(net.sh(h, "ps -o user= -p $(systemctl show -p MainPID --value timed)").trim(), "timecoin");
        // RPC listens on loopback only.
        let listen = net.sh(h, "ss -Hltn 'sport = :8080'");
        assert!(listen.contains("127.0.0.1:8080") && !listen.contains("0.0.0.0:8080"), "{listen}");
    }
    // The hand-written inventory is the input: left as written.
    assert_eq!(std::fs::read_to_string(&inv).unwrap(), text);

    // Through the tunnels.
    let r = timectl(&["--json", "rpc", "getblockcount", "--all"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    let rows = r.json();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows.as_array().unwrap().iter().all(|row| row["ok"] == true), "{rows}");

    // The journal, over SSH (through sudo on box2).
    let r = timectl(&["logs", "box2", "-n", "5"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    assert!(r.stdout.contains("timed"), "{}", r.screen());

    // A first boot that failed stops the install on that host before it changes anything.
    net.sh(&hosts[0], "echo 2 > /run/fake-cloud-init-calls; printf 'status: error\\nerror: package install failed\\n' > /run/fake-cloud-init");
    let r = timectl(&["deploy", "--provider", "ssh", "--wait", "60"]);
    assert_ne!(r.code, 0, "{}", r.screen());
    assert!(r.stderr.contains("box1") && r.stderr.contains("first boot failed"), "{}", r.screen());
    assert!(
        r.stderr.contains("package install failed") && r.stderr.contains("cloud-init-output.log"),
        "{}",
        r.screen()
    );
    net.sh(&hosts[0], "echo 'status: done' > /run/fake-cloud-init");

    // A second run changes nothing.
    let r = timectl(&["--json", "deploy", "--provider", "ssh", "--wait", "60"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    let done: serde_json::Value =
        serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(done["event"], "done");
    for h in done["hosts"].as_array().unwrap() {
        assert_eq!(h["uploaded"].as_array().unwrap().len(), 0, "{done}");
        assert_eq!(h["restarted"], false, "{done}");
    }

    // destroy removes the service and its files, keeps the hosts and the inventory.
    let r = timectl(&["destroy", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.screen());
    for h in &hosts {
        let left = net.sh(
            h,
            "ls /etc/systemd/system/timed.service /usr/local/bin/timed /var/lib/timed 2>/dev/null; id -u timecoin 2>/dev/null; true",
        );
        assert!(left.trim().is_empty(), "left on {}: {left}", h.name);
        assert_eq!(net.sh(h, "systemctl is-active sshd || systemctl is-active ssh").trim(), "active");
    }
    assert!(inv.exists());
    assert!(!net.env.path().join(format!("state/networks/{network}")).exists(), "materials removed");
}

/// `--dry-run` prints the hosts, the files each would get and the unit, and touches nothing:
/// no host is contacted, no materials are made.
#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let env = Env::new();
    let inv = inventory(&env, "dry", &[("n1", 2201, 8001), ("n2", 2202, 8001)]);
    let r: Run = env
        .cmd()
        .arg("--inventory")
        .arg(&inv)
        .args(["deploy", "--provider", "ssh", "--dry-run"])
        .arg("--timed")
        .arg(common::timed_path())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.screen());
    for want in [
        "keep    n1 (127.0.0.1)",
        "upload /usr/local/bin/timed 755 root:root",
        "/etc/systemd/system/timed.service",
        "nothing was changed",
    ] {
        assert!(r.stdout.contains(want), "{want}: {}", r.screen());
    }
    assert!(!env.path().join("state/networks/dry").exists(), "no materials for a dry run");
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(&env) {
        s.add_filter(&re, with);
    }
    s.add_filter(&format!("{}@", common::regex_escape(&user())), "[USER]@");
    s.add_filter(r", \d+ bytes\)", ", [N] bytes)");
    s.bind(|| insta::assert_snapshot!("dry_run", r.screen()));
}

/// A host that cannot be reached does not stop `status`: its node shows as unreachable, the
/// SSH failure is logged naming it, and the command fails with the table printed.
#[test]
fn status_shows_a_down_host_as_unreachable() {
    let env = Env::new();
    let dir = env.path();
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let up = sshd(dir, &dir.join("host_key"));
    let inv = inventory(&env, "half", &[("up", up.port, 18001), ("down", free_port(), 18002)]);
    let r: Run = env
        .cmd()
        .arg("--inventory")
        .arg(&inv)
        .arg("--ssh-identity")
        .arg(dir.join("client_key"))
        .args(["--json", "status", "--timeout", "3"])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{}", r.screen());
    let rows = r.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", r.screen());
    assert!(rows.iter().all(|row| row["reachable"] == false), "{}", r.screen());
    assert!(r.stderr.contains("down (") && r.stderr.contains("cannot connect over SSH"), "{}", r.screen());
    assert!(r.stderr.contains("2 of 2 nodes did not answer"), "{}", r.screen());
}

/// `destroy` asks first: with no terminal to ask and no `--yes` it refuses and removes nothing.
#[test]
fn destroy_without_yes_and_without_a_terminal_refuses() {
    let env = Env::new();
    let inv = inventory(&env, "keep", &[("n1", 2201, 8001)]);
    let r: Run = env
        .cmd()
        .arg("--inventory")
        .arg(&inv)
        .arg("destroy")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{}", r.screen());
    assert!(inv.exists());
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(&env) {
        s.add_filter(&re, with);
    }
    s.bind(|| insta::assert_snapshot!("destroy_needs_yes", r.screen()));
}
