//! JSON-RPC middleware: wallet methods need credentials on every bind (loopback included:
//! any web page the operator opens can reach loopback), calls in flight are capped per
//! connection and long polls per node, and every call's handling time goes to the RPC latency
//! histogram.

use super::http::Authenticated;
use crate::api::{codes, WALLET_METHODS};
use crate::metrics::Metrics;
use jsonrpsee::server::middleware::rpc::{Batch, BatchEntry, BatchEntryErr, Notification, RpcServiceT};
use jsonrpsee::server::MethodResponse;
use jsonrpsee::types::error::SERVER_IS_BUSY_CODE;
use jsonrpsee::types::{ErrorObject, Request};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Methods that may wait a long time for news; they draw on their own node-wide budget so
/// that they can never hold every slot that quick calls need.
pub const LONG_POLL_METHODS: &[&str] = &["waittransactionfinality"];

/// One per connection for WebSocket (per request for HTTP, where calls arrive one at a time).
#[derive(Clone)]
pub struct Guard<S> {
    pub inner: S,
    pub metrics: Arc<Metrics>,
    /// Calls in flight on this connection.
    pub conn_calls: Arc<Semaphore>,
    /// Long polls in flight on the whole node.
    pub long_polls: Arc<Semaphore>,
}

fn unauthorized() -> ErrorObject<'static> {
    ErrorObject::owned(
        codes::UNAUTHORIZED,
        "wallet methods need RPC credentials (HTTP basic auth: the cookie file DATA_DIR/.cookie or --rpc-user/--rpc-password)",
        None::<()>,
    )
}

fn busy(what: &str) -> ErrorObject<'static> {
    ErrorObject::owned(SERVER_IS_BUSY_CODE, format!("server is busy: {what}; retry later"), None::<()>)
}

impl<S> Guard<S> {
    fn refused(&self, method: &str, ext: &jsonrpsee::types::Extensions) -> bool {
        WALLET_METHODS.contains(&method) && ext.get::<Authenticated>().is_none()
    }
}

impl<S> RpcServiceT for Guard<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, req: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let refused = self.refused(req.method_name(), req.extensions());
        // Permits are taken now, not when the future first runs, and dropped with it: a call
        // cancelled because its client left gives its slot back at once.
        let conn_permit = self.conn_calls.clone().try_acquire_owned();
        let long_poll = LONG_POLL_METHODS.contains(&req.method_name());
        let poll_permit = long_poll.then(|| self.long_polls.clone().try_acquire_owned());
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        async move {
            if refused {
                return MethodResponse::error(req.id, unauthorized());
            }
            let Ok(_conn_permit) = conn_permit else {
                return MethodResponse::error(req.id, busy("too many calls in flight on this connection"));
            };
            if let Some(Err(_)) = poll_permit {
                return MethodResponse::error(req.id, busy("too many long polls in flight on this node"));
            }
            let method = req.method_name().to_string();
            let start = Instant::now();
            let resp = inner.call(req).await;
            metrics.observe_rpc(&method, start.elapsed().as_secs_f64());
            resp
        }
    }

    fn batch<'a>(&self, mut batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // Calls inside a batch bypass `call`, so the same checks are applied entry by entry:
        // the batch holds one connection slot, and each long poll in it one long-poll slot.
        let mut polls = Vec::new();
        for entry in batch.iter_mut() {
            let refuse = match entry {
                Ok(BatchEntry::Call(req)) if self.refused(req.method_name(), req.extensions()) => {
                    Some((req.id.clone(), unauthorized()))
                }
                Ok(BatchEntry::Call(req)) if LONG_POLL_METHODS.contains(&req.method_name()) => {
                    match self.long_polls.clone().try_acquire_owned() {
                        Ok(p) => {
                            polls.push(p);
                            None
                        }
                        Err(_) => Some((req.id.clone(), busy("too many long polls in flight on this node"))),
                    }
                }
                _ => None,
            };
            if let Some((id, e)) = refuse {
                *entry = Err(BatchEntryErr::new(id, e));
            }
        }
        let conn_permit = self.conn_calls.clone().try_acquire_owned();
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        async move {
            let Ok(_conn_permit) = conn_permit else {
                return MethodResponse::error(
                    jsonrpsee::types::Id::Null,
                    busy("too many calls in flight on this connection"),
                );
            };
            let _polls = polls;
            let start = Instant::now();
            let resp = inner.batch(batch).await;
            metrics.observe_rpc("batch", start.elapsed().as_secs_f64());
            resp
        }
    }

    fn notification<'a>(&self, n: Notification<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.inner.notification(n)
    }
}
