//! Test harness: real `timed` processes on 127.0.0.1 with port 0 and temp data dirs, killed
//! when the handle drops (also when a test fails).

#![allow(dead_code)]

use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use timed::api::TimeRpcClient;

pub struct Node {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub id: String,
    pub rpc: String,
    pub p2p: String,
    pub args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn timed_bin() -> &'static str {
    env!("CARGO_BIN_EXE_timed")
}

/// Starts `timed` with `args` plus a data dir and port-0 listeners, and waits until it serves.
pub fn start(id: &str, extra: &[&str]) -> Node {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join(id);
    let mut node = spawn_in(&dir, id, extra);
    node._tmp = Some(tmp);
    node
}

pub fn spawn_in(dir: &Path, id: &str, extra: &[&str]) -> Node {
    let mut args: Vec<String> = vec![
        "--validator-id".into(),
        id.into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--p2p-bind".into(),
        "127.0.0.1".into(),
    ];
    if !extra.contains(&"--port") {
        args.extend(["--port".into(), "0".into()]);
    }
    if !extra.contains(&"--rpc-bind") {
        args.extend(["--rpc-bind".into(), "127.0.0.1:0".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    timed::node_info::NodeInfo::remove(dir).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::File::create(dir.join("timed.log")).unwrap();
    let child = Command::new(timed_bin())
        .args(&args)
        .env("RUST_LOG", std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn timed");
    let mut node = Node {
        child: Some(child),
        dir: dir.to_path_buf(),
        id: id.into(),
        rpc: String::new(),
        p2p: String::new(),
        args,
        _tmp: None,
    };
    node.wait_ready();
    node
}

impl Node {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(info) = timed::node_info::NodeInfo::read(&self.dir).expect("node.json") {
                self.rpc = info.rpc.to_string();
                self.p2p = info.p2p.to_string();
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("timed {} exited with {status}: {}", self.id, self.log());
            }
            assert!(Instant::now() < deadline, "timed {} did not start: {}", self.id, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("timed.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.rpc)
    }

    pub fn client(&self) -> HttpClient {
        HttpClientBuilder::default().request_timeout(Duration::from_secs(60)).build(self.url()).unwrap()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id() as i32;
        // SAFETY-free: `kill` via the command line keeps the test free of libc.
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("timed {} ignored SIGTERM: {}", self.id, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same node again on the same data dir and arguments, and on the same P2P port
    /// as a restarted server would be: peers keep redialling the address they knew (a node
    /// started without --peers could not rejoin otherwise). The RPC port is chosen anew.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let port = self.p2p.rsplit(':').next().unwrap().to_string();
        if let Some(i) = self.args.iter().position(|a| a == "--port") {
            self.args[i + 1] = port;
        }
        timed::node_info::NodeInfo::remove(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.join("timed.log")).unwrap();
        self.child = Some(
            Command::new(timed_bin())
                .args(&self.args)
                .env("RUST_LOG", std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        self.wait_ready();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn height(n: &Node) -> u64 {
    n.client().get_block_count().await.unwrap()
}

/// Waits until the node's height reaches `h`.
pub async fn wait_height(n: &Node, h: u64, secs: u64) {
    let c = n.client();
    eventually(secs, &format!("{} to reach height {h}", n.id), || {
        let c = c.clone();
        async move { (c.get_block_count().await.ok()? >= h).then_some(()) }
    })
    .await
}

/// Waits until `txid` is in a block on `n`; returns its finality record.
pub async fn wait_confirmed(n: &Node, txid: &str, secs: u64) -> timed::api::TxFinality {
    let c = n.client();
    eventually(secs, &format!("{txid} confirmed on {}", n.id), || {
        let c = c.clone();
        let txid = txid.to_string();
        async move {
            let f = c.get_transaction_finality(txid).await.ok()?;
            (f.status == "confirmed").then_some(f)
        }
    })
    .await
}
