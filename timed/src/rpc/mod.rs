//! The JSON-RPC server: the [`crate::api`] trait implemented over the node, behind the HTTP
//! front door (paths, content type, credentials, /metrics) and the guard middleware.

pub mod guard;
pub mod http;
pub mod listener;
pub mod methods;

use crate::api::TimeRpcServer;
use crate::metrics::Snapshot;
use crate::node::Shared;
use anyhow::Context;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{BatchRequestConfig, PingConfig, ServerConfig, ServerHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for RPC on {addr}"))
}

/// Writes a bitcoind-style cookie (`__cookie__:<random>`, mode 0600) and returns it.
fn write_cookie(data_dir: &Path) -> anyhow::Result<(String, String)> {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let pass = hex::encode(secret);
    let path = data_dir.join(".cookie");
    let tmp = data_dir.join(".cookie.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        write!(f, "__cookie__:{pass}")?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(("__cookie__".into(), pass))
}

pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> anyhow::Result<ServerHandle> {
    let cfg = &shared.cfg;
    let mut credentials = vec![write_cookie(&cfg.data_dir)?];
    if let Some(c) = &cfg.rpc_credentials {
        credentials.push(c.clone());
    }
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            rpc = %local,
            "RPC listens beyond loopback: read methods are open to anyone who can reach it; wallet methods need credentials (cookie {})",
            cfg.data_dir.join(".cookie").display()
        );
    }
    let limits = &cfg.rpc_limits;
    let metrics_shared = shared.clone();
    let door = http::FrontDoor {
        credentials: Arc::new(credentials),
        max_body: cfg.rpc_max_request_bytes,
        read_timeout: limits.read_timeout,
        allow_origins: Arc::new(limits.allow_origins.clone()),
        allow_hosts: Arc::new(limits.allow_hosts.clone()),
        metrics: Arc::new(move || {
            let s = &metrics_shared;
            let (height, mempool) = {
                let st = s.state();
                (s.ledger.store.tip().map(|t| t.0).unwrap_or(0), st.mempool.len())
            };
            // Kinds before totals: each frame is added to its total first (p2p/conn.rs).
            let p2p_messages = s.p2p.message_counts();
            s.metrics.render(Snapshot {
                height,
                peers: s.p2p.connected().len(),
                mempool,
                p2p_sent: s.p2p.bytes_sent(),
                p2p_received: s.p2p.bytes_received(),
                p2p_messages,
            })
        }),
    };
    let metrics = shared.metrics.clone();
    let long_polls = Arc::new(Semaphore::new(limits.max_long_polls as usize));
    let ws_calls = limits.max_ws_calls as usize;
    // Built once per WebSocket connection (per request over HTTP): the call cap is per
    // connection, the long-poll budget is the node's.
    let rpc_mw = RpcServiceBuilder::new().layer_fn(move |inner| guard::Guard {
        inner,
        metrics: metrics.clone(),
        conn_calls: Arc::new(Semaphore::new(ws_calls)),
        long_polls: long_polls.clone(),
    });
    let config = ServerConfig::builder()
        // Connections are counted (and limited) by our own accept loop; jsonrpsee's count is
        // of requests in flight, which long polls would exhaust.
        .max_connections(u32::MAX / 2)
        .max_request_body_size(cfg.rpc_max_request_bytes)
        .max_response_body_size(16 * 1024 * 1024)
        .set_batch_request_config(BatchRequestConfig::Limit(cfg.rpc_max_batch))
        // A WebSocket client that stops answering pings is gone; its calls are dropped.
        .enable_ws_ping(PingConfig::new())
        .build();
    let builder = jsonrpsee::server::Server::builder()
        .set_config(config)
        .set_http_middleware(tower::ServiceBuilder::new().layer(door))
        .set_rpc_middleware(rpc_mw)
        .to_service_builder();
    let methods: jsonrpsee::Methods =
        methods::RpcImpl { s: shared.clone(), wallet_spend: Default::default() }.into_rpc().into();
    let (stop, handle) = jsonrpsee::server::stop_channel();
    let stop_for_services = stop.clone();
    listener::spawn(
        listener,
        listener::Limits {
            max_connections: cfg.rpc_max_connections as usize,
            read_timeout: limits.read_timeout,
            idle_timeout: limits.idle_timeout,
        },
        stop,
        move || builder.clone().build(methods.clone(), stop_for_services.clone()),
    );
    Ok(handle)
}
