//! Tools the hardening tests share: raw HTTP over a socket (to send exactly what an attacker
//! or a browser would), RSS of a process we started, and a larger descriptor limit for the
//! test process itself.

#![allow(dead_code)]

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` (request line and headers, without the blank line) and `body`, and returns
/// the status code and body of the answer. The connection is closed afterwards.
pub async fn http(addr: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.expect("write");
    read_response(&mut s, Duration::from_secs(20)).await.expect("response")
}

/// A JSON-RPC POST as a browser page would send it: `text/plain`, no preflight needed.
pub fn browser_head(rpc: &str, origin: Option<&str>, extra: &str) -> String {
    let mut h = format!("POST / HTTP/1.1\r\nHost: {rpc}\r\nContent-Type: text/plain;charset=UTF-8");
    if let Some(o) = origin {
        h.push_str(&format!("\r\nOrigin: {o}"));
    }
    if !extra.is_empty() {
        h.push_str("\r\n");
        h.push_str(extra);
    }
    h
}

/// Reads one HTTP/1.1 response (Content-Length or close-delimited).
pub async fn read_response(s: &mut TcpStream, within: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let code: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or(format!("bad head {head}"))?;
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            if let Some(len) = len {
                if buf.len() >= end + 4 + len {
                    return Ok((code, String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string()));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok((code, String::from_utf8_lossy(&buf[end + 4..]).to_string())),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Err("timed out reading the body".into()),
            }
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err(format!("closed after {} bytes", buf.len())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".into()),
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Resident memory of `pid` in bytes, from /proc.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process is running");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Raises this test process's descriptor limit to at least `n` (up to the hard limit), so
/// that it can hold the attack's sockets. Returns the new soft limit.
pub fn raise_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// getblockcount over a fresh connection, as a monitoring client would; returns how long it took.
pub async fn timed_getblockcount(addr: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let body = br#"{"jsonrpc":"2.0","method":"getblockcount","params":[],"id":1}"#;
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let (code, text) = read_response(&mut s, Duration::from_secs(10)).await?;
    if code != 200 || !text.contains("\"result\"") {
        return Err(format!("{code} {text}"));
    }
    Ok(start.elapsed())
}

/// Median of `n` getblockcount round trips, each on a fresh connection; every one must succeed.
pub async fn median_getblockcount(addr: &str, n: usize) -> Duration {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(timed_getblockcount(addr).await.unwrap_or_else(|e| panic!("getblockcount failed: {e}")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    v.sort();
    v[v.len() / 2]
}
