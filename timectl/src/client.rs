//! Talking to nodes: JSON-RPC clients (the generated `TimeRpcClient` works on these), a bounded
//! concurrent fan-out, and a plain HTTP GET for `/metrics`.

use crate::inventory::Node;
use base64::Engine as _;
use jsonrpsee::core::ClientError;
use jsonrpsee::http_client::{HeaderMap, HeaderValue, HttpClient, HttpClientBuilder};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Credentials for wallet methods given by the operator. Taken from the environment so they
/// never land in an inventory or a shell history of flags.
fn auth_header() -> Option<HeaderValue> {
    let user = std::env::var("TIMECTL_RPC_USER").ok()?;
    let pass = std::env::var("TIMECTL_RPC_PASSWORD").unwrap_or_default();
    basic(&format!("{user}:{pass}"))
}

/// A sensitive `Basic` header (never printed by the HTTP stack's debug output).
fn basic(user_pass: &str) -> Option<HeaderValue> {
    let token = base64::engine::general_purpose::STANDARD.encode(user_pass.trim());
    let mut v = HeaderValue::from_str(&format!("Basic {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The node's own cookie, for nodes this machine runs (the inventory of a local network names
/// their data dirs). Wallet methods need credentials on every bind.
fn cookie_header(node: &Node) -> Option<HeaderValue> {
    let cookie = std::fs::read_to_string(node.data_dir.as_ref()?.join(".cookie")).ok()?;
    basic(&cookie)
}

pub fn rpc_client(node: &Node, timeout: Duration) -> Result<HttpClient, String> {
    let mut headers = HeaderMap::new();
    // The operator's explicit credentials win; else the cookie read over SSH (remote nodes),
    // else the cookie in the data dir (local nodes).
    let auth =
        auth_header().or_else(|| node.rpc_auth.as_ref().and_then(|a| basic(&a.0))).or_else(|| cookie_header(node));
    if let Some(v) = auth {
        headers.insert("authorization", v);
    }
    HttpClientBuilder::default()
        .request_timeout(timeout)
        .connect_timeout(timeout)
        .set_headers(headers)
        .build(node.rpc_url())
        .map_err(|e| format!("bad RPC address {}: {}", node.rpc, compact_error(&e)))
}

/// One line for a table cell: the RPC error itself, or the root cause of a transport failure.
pub fn compact_error(e: &ClientError) -> String {
    match e {
        ClientError::Call(obj) => format!("rpc error {}: {}", obj.code(), obj.message()),
        ClientError::RequestTimeout => "timeout".into(),
        ClientError::Transport(t) => {
            let mut root: &dyn std::error::Error = t.as_ref();
            while let Some(next) = root.source() {
                root = next;
            }
            format!("unreachable: {root}")
        }
        other => other.to_string(),
    }
}

/// The HTTP status a node refused a call with, if that is what failed (401: our credentials
/// are stale, as after a restart wrote a new cookie).
pub fn rejected_status(e: &ClientError) -> Option<u16> {
    let ClientError::Transport(t) = e else { return None };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(t.as_ref());
    while let Some(err) = cur {
        if let Some(jsonrpsee::http_client::transport::Error::Rejected { status_code }) = err.downcast_ref() {
            return Some(*status_code);
        }
        cur = err.source();
    }
    None
}

/// Runs `f` against every node concurrently, each bounded by `timeout`, keeping inventory
/// order. Latency is measured per node.
pub async fn fan_out<T, F, Fut>(nodes: &[Node], timeout: Duration, f: F) -> Vec<(Result<T, String>, Duration)>
where
    F: Fn(Node) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let calls = nodes.iter().cloned().map(|n| {
        let fut = f(n);
        async move {
            let t0 = Instant::now();
            let r = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err("timeout".to_string()),
            };
            (r, t0.elapsed())
        }
    });
    futures::future::join_all(calls).await
}

/// GET over HTTP/1.0, which makes the server send the body plainly and close: enough for
/// Prometheus text without pulling in an HTTP client stack.
pub async fn http_get(host_port: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(host_port).await.map_err(|e| format!("unreachable: {e}"))?;
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: {host_port}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        parse_http_response(&buf)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "timeout".to_string())?
}

fn parse_http_response(buf: &[u8]) -> Result<String, String> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let body = &buf[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("HTTP {}", status.trim()));
    }
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    String::from_utf8(body).map_err(|_| "response is not UTF-8".to_string())
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\na 1\n";
        assert_eq!(parse_http_response(plain).unwrap(), "a 1\n");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\na 1\n\r\n3\r\nb 2\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), "a 1\nb 2");
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\n";
        assert!(parse_http_response(missing).unwrap_err().contains("404"));
    }

    #[tokio::test]
    async fn a_refused_call_carries_its_status() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for status in ["401 Unauthorized", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await.unwrap();
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let node = Node {
            name: "n".into(),
            host: "127.0.0.1".into(),
            ssh_user: None,
            ssh_port: None,
            p2p: "127.0.0.1:1".into(),
            rpc: addr,
            validator_id: String::new(),
            provider_id: None,
            pid: None,
            data_dir: None,
            log: None,
            rpc_auth: None,
        };
        let c = rpc_client(&node, Duration::from_secs(5)).unwrap();
        use jsonrpsee::core::client::ClientT;
        for want in [401, 503] {
            let e = c.request::<u64, _>("getblockcount", jsonrpsee::rpc_params![]).await.unwrap_err();
            assert_eq!(rejected_status(&e), Some(want), "{e:?}");
        }
        assert_eq!(rejected_status(&ClientError::RequestTimeout), None);
    }

    #[tokio::test]
    async fn http_get_against_local_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nup 1\n").await.unwrap();
        });
        let body = http_get(&addr, "/metrics", Duration::from_secs(5)).await.unwrap();
        assert_eq!(body, "up 1\n");
    }
}
