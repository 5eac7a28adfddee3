//! `timectl resources` on a remote-provider inventory reads memory and CPU from the node's
//! `/proc` over real SSH: a real `sshd` on 127.0.0.1 with keys made here, host keys checked.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills what it holds when the test ends, pass or fail.
struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().unwrap();
    assert!(ok.success());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn resources(dir: &Path, inventory: &Path, known_hosts: &Path, identity: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_timectl"))
        .args(["--json", "--inventory"])
        .arg(inventory)
        .args(["resources", "--interval", "1", "--ssh-identity"])
        .arg(identity)
        .arg("--ssh-known-hosts")
        .arg(known_hosts)
        .env("TIMECTL_STATE_DIR", dir.join("state"))
        .output()
        .unwrap()
}

#[test]
fn resources_reads_proc_over_ssh_and_checks_host_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut reap = Reap(Vec::new());

    // A real sshd on loopback that accepts only the key made here.
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    let sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f", "/dev/null", "-o", "ListenAddress=127.0.0.1", "-o", &format!("Port={port}")])
        .arg("-o")
        .arg(format!("HostKey={}", dir.join("host_key").display()))
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", dir.join("authorized_keys").display()))
        .arg("-o")
        .arg(format!("PidFile={}", dir.join("sshd.pid").display()))
        .args(["-o", "StrictModes=no", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"])
        .args(["-o", "PermitRootLogin=prohibit-password", "-o", "UsePAM=no"])
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .expect("sshd (package openssh-server, installed by .ci/setup.sh)");
    reap.0.push(sshd);
    wait_for("sshd to listen", 10, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
    let known = dir.join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();

    // One node, standing in for a remote host's.
    let data = dir.join("node");
    let node = Command::new(common::timed_path())
        .args(["--validator-id", "validator1", "--devnet-validators", "1", "--block-time", "1"])
        .args(["--port", "0", "--p2p-bind", "127.0.0.1", "--rpc-bind", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    reap.0.push(node);
    wait_for("node.json", 30, || data.join("node.json").exists());
    let info = timed::node_info::NodeInfo::read(&data).unwrap().expect("node.json");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let inventory = dir.join("remote.toml");
    std::fs::write(
        &inventory,
        format!(
            "network = \"remote\"\nprovider = \"static\"\n\n[[nodes]]\nname = \"node1\"\nhost = \"127.0.0.1\"\nssh_user = \"{user}\"\nssh_port = {port}\np2p = \"{}\"\nrpc = \"{}\"\nvalidator_id = \"validator1\"\n",
            info.p2p, info.rpc
        ),
    )
    .unwrap();

    let out = resources(dir, &inventory, &known, &dir.join("client_key"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["source"], "metrics+proc-over-ssh");
    let memory = v["nodes"][0]["values"].as_array().unwrap().iter().find(|m| m["metric"] == "memory").unwrap().clone();
    let mib = memory["value"].as_f64().unwrap();
    assert!((1.0..500.0).contains(&mib), "RSS from /proc over SSH: {memory}");

    // A host key that does not match is refused, not accepted.
    keygen(&dir.join("other_host_key"));
    let wrong = dir.join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!("[127.0.0.1]:{port} {}", std::fs::read_to_string(dir.join("other_host_key.pub")).unwrap()),
    )
    .unwrap();
    let out = resources(dir, &inventory, &wrong, &dir.join("client_key"));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.to_lowercase().contains("host key"), "{text}");
}
