//! `timed` under systemd (`Type=notify`): a real node started with a `NOTIFY_SOCKET` this test
//! listens on says `READY=1` only once its RPC answers, and `STOPPING=1` on SIGTERM. Its log
//! lines carry no colour codes when stderr is a file (the journal).

mod common;

use common::timed_bin;
use jsonrpsee::http_client::HttpClientBuilder;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use timed::api::TimeRpcClient;
use timed::node_info::NodeInfo;

/// Kills the node if the test fails half-way.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 256];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv on the notify socket: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_after_rpc_answers_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let data = tmp.path().join("node");
    let log = tmp.path().join("timed.log");
    let child = Command::new(timed_bin())
        .args(["--validator-id", "validator1", "--devnet-validators", "1", "--block-time", "1"])
        .args(["--port", "0", "--p2p-bind", "127.0.0.1", "--rpc-bind", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut reap = Reap(Some(child));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Generous: two cores shared with other builds.
    let msg = recv(&sock, Duration::from_secs(60)).unwrap_or_else(|| panic!("no READY=1 within 60 s:\n{}", log_text()));
    assert_eq!(msg, "READY=1");

    // By the time systemd hears READY=1, node.json is there and RPC answers at once.
    let info = NodeInfo::read(&data).unwrap().expect("node.json exists at READY=1");
    assert_eq!(info.pid, reap.0.as_ref().unwrap().id());
    let client = HttpClientBuilder::default()
        .request_timeout(Duration::from_secs(10))
        .build(format!("http://{}", info.rpc))
        .unwrap();
    client.get_block_count().await.expect("RPC answers once READY=1 was sent");
    // P2P listens too: a TCP connect succeeds.
    std::net::TcpStream::connect_timeout(&info.p2p, Duration::from_secs(5)).expect("P2P listens at READY=1");
    // Nothing else arrives while the node runs.
    assert_eq!(recv(&sock, Duration::from_millis(300)), None);

    let pid = reap.0.as_ref().unwrap().id();
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let msg = recv(&sock, Duration::from_secs(30)).unwrap_or_else(|| panic!("no STOPPING=1:\n{}", log_text()));
    assert_eq!(msg, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = reap.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "timed ignored SIGTERM:\n{}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    reap.0 = None;
    assert!(exit.success(), "exit {exit}:\n{}", log_text());
    assert_eq!(NodeInfo::read(&data).unwrap(), None, "node.json is removed on a clean stop");

    // The journal gets plain lines: stderr was a file, so no ANSI escapes.
    let text = log_text();
    assert!(text.contains("node ready"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a non-terminal log:\n{text}");
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_node_runs() {
    // The common harness starts nodes without NOTIFY_SOCKET; that must keep working unchanged.
    let mut node = common::start("validator1", &["--devnet-validators", "1", "--block-time", "1"]);
    assert!(node.stop().success(), "{}", node.log());
}

#[test]
fn a_dead_notify_socket_is_logged_not_fatal_and_journal_lines_have_no_timestamp() {
    // systemd gone or a wrong path: the node still serves, and says why it could not notify.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let log = tmp.path().join("timed.log");
    let child = Command::new(timed_bin())
        .args(["--validator-id", "validator1", "--devnet-validators", "1", "--block-time", "1"])
        .args(["--port", "0", "--p2p-bind", "127.0.0.1", "--rpc-bind", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("NOTIFY_SOCKET", tmp.path().join("nobody-listens"))
        // As under systemd with StandardError=journal.
        .env("JOURNAL_STREAM", "8:12345")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut reap = Reap(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("cannot notify the service manager") {
            break;
        }
        assert!(reap.0.as_mut().unwrap().try_wait().unwrap().is_none(), "timed exited:\n{text}");
        assert!(Instant::now() < deadline, "no warning about the notify socket:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(NodeInfo::read(&data).unwrap().is_some(), "the node kept running and serving");
    // The journal stamps each line: timed adds no timestamp of its own there.
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains("cannot notify")).unwrap();
    assert!(line.trim_start().starts_with("WARN"), "{line}");
    assert!(!text.contains('\u{1b}'), "{text}");
}
