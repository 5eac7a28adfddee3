//! The RPC accept loop. jsonrpsee's own loop counts a connection only while a request is
//! being handled and has no idle or header timeouts, so a client that opens sockets and sends
//! nothing (or half a body) holds memory and descriptors for free. Here every connection is
//! counted from accept until its socket closes (WebSocket included), and:
//! - at the limit, the connection that has gone longest without sending a byte is closed to
//!   make room, so stalled clients can never lock out a live one;
//! - headers must arrive within the read timeout (hyper), bodies too (the front door), and an
//!   HTTP connection with no request in flight closes after the idle timeout;
//! - running out of descriptors is survived: the least recently active connection is closed to
//!   make room (or, with none of ours open, a descriptor held in reserve lets the loop
//!   accept-and-close), and it is logged (rate-limited) instead of spinning silently.

use crate::ratelog::RateLimited;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// One open connection as the accept loop sees it.
struct Conn {
    /// Milliseconds since the registry's epoch when the client last sent a byte.
    last_read: AtomicU64,
    /// Requests being handled (HTTP); a busy connection is never idle.
    busy: AtomicUsize,
    kill: CancellationToken,
}

#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Shared {
    limits: Limits,
    epoch: Instant,
    registry: Registry,
    next_id: AtomicU64,
    full_log: RateLimited,
    fd_log: RateLimited,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Opens connections currently counted (for tests and metrics).
#[derive(Clone)]
pub struct Stats(Arc<Shared>);

impl Stats {
    pub fn open_connections(&self) -> usize {
        self.0.registry.lock().len()
    }
}

/// The socket of a counted connection: notes when the client last sent something, fails
/// reads once the connection is evicted, and leaves the registry when dropped (which for a
/// WebSocket is when its session ends, long after the HTTP upgrade).
struct Tracked {
    inner: TcpStream,
    id: u64,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.shared.registry.lock().remove(&self.id);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "evicted")));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.shared.now_ms();
            self.conn.last_read.store(now, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Marks its connection busy while a request is handled.
struct BusyGuard(Arc<Conn>);

impl BusyGuard {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(conn.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Descriptor exhaustion: EMFILE (24, this process) and ENFILE (23, the whole system).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

fn reserve_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Runs the accept loop until `stop` resolves. `make_service` builds the per-connection
/// jsonrpsee service.
pub fn spawn<F, S, B>(
    listener: TcpListener,
    limits: Limits,
    stop: jsonrpsee::server::StopHandle,
    make_service: F,
) -> Stats
where
    F: Fn() -> S + Send + 'static,
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<jsonrpsee::core::BoxError>,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<jsonrpsee::core::BoxError>,
{
    let shared = Arc::new(Shared {
        limits,
        epoch: Instant::now(),
        registry: Registry::default(),
        next_id: AtomicU64::new(1),
        full_log: RateLimited::new(Duration::from_secs(10)),
        fd_log: RateLimited::new(Duration::from_secs(10)),
    });
    let stats = Stats(shared.clone());
    tokio::spawn(async move {
        let mut reserve = reserve_fd();
        let stopped = stop.clone().shutdown();
        tokio::pin!(stopped);
        loop {
            let accepted = tokio::select! {
                _ = &mut stopped => break,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) if out_of_descriptors(&e) => {
                    // Make room as at the connection limit: close the least recently active
                    // connection, and accept again once its descriptor is free. With nothing
                    // of ours to close, free the spare descriptor to take the waiting
                    // connection off the queue and close it, rather than leave clients
                    // hanging and the loop spinning.
                    let victim = {
                        let conns = shared.registry.lock();
                        conns
                            .values()
                            .filter(|c| !c.kill.is_cancelled())
                            .min_by_key(|c| c.last_read.load(Ordering::Relaxed))
                            .cloned()
                    };
                    match victim {
                        Some(v) => v.kill.cancel(),
                        None => {
                            drop(reserve.take());
                            if let Ok((s, _)) = listener.accept().await {
                                drop(s);
                            }
                            reserve = reserve_fd();
                        }
                    }
                    if let Some(n) = shared.fd_log.hit() {
                        tracing::warn!(
                            events = n,
                            open = shared.registry.lock().len(),
                            "RPC: out of file descriptors; closing the least recently active connections (raise the descriptor limit or lower --rpc-max-connections)"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "RPC accept failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let conn = Arc::new(Conn {
                last_read: AtomicU64::new(shared.now_ms()),
                busy: AtomicUsize::new(0),
                kill: CancellationToken::new(),
            });
            let evicted = {
                let mut conns = shared.registry.lock();
                let victim = if conns.len() >= shared.limits.max_connections {
                    conns
                        .iter()
                        .min_by_key(|(_, c)| c.last_read.load(Ordering::Relaxed))
                        .map(|(id, c)| (*id, c.clone()))
                } else {
                    None
                };
                if let Some((vid, _)) = &victim {
                    conns.remove(vid);
                }
                conns.insert(id, conn.clone());
                victim
            };
            if let Some((_, victim)) = evicted {
                victim.kill.cancel();
                if let Some(n) = shared.full_log.hit() {
                    tracing::warn!(
                        limit = shared.limits.max_connections,
                        events = n,
                        "RPC connection limit reached; closing the least recently active connections"
                    );
                }
            }
            let io = Tracked {
                inner: stream,
                id,
                conn: conn.clone(),
                shared: shared.clone(),
                killed: Box::pin(conn.kill.clone().cancelled_owned()),
            };
            let service = make_service();
            tokio::spawn(serve(io, conn, shared.clone(), service, stop.clone()));
        }
        tracing::debug!("RPC listener closed");
    });
    stats
}

async fn serve<S, B>(io: Tracked, conn: Arc<Conn>, shared: Arc<Shared>, service: S, stop: jsonrpsee::server::StopHandle)
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<jsonrpsee::core::BoxError>,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<jsonrpsee::core::BoxError>,
{
    let limits = shared.limits;
    let busy_conn = conn.clone();
    let counted = tower::service_fn(move |req| {
        let guard = BusyGuard::new(&busy_conn);
        let mut svc = service.clone();
        async move {
            let r = tower::Service::call(&mut svc, req).await;
            drop(guard);
            r
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.read_timeout);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(counted));
    tokio::pin!(connection);
    let stopped = stop.shutdown();
    tokio::pin!(stopped);
    let tick = (limits.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut connection => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "RPC connection ended");
                }
                return;
            }
            _ = &mut stopped => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                return;
            }
            _ = conn.kill.cancelled() => return,
            _ = tokio::time::sleep(tick) => {
                let quiet = shared.now_ms().saturating_sub(conn.last_read.load(Ordering::Relaxed));
                if conn.busy.load(Ordering::Relaxed) == 0 && quiet >= limits.idle_timeout.as_millis() as u64 {
                    return;
                }
            }
        }
    }
}
