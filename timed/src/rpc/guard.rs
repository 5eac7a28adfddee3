//! JSON-RPC middleware: wallet methods need credentials when the server listens beyond
//! loopback, and every call's handling time goes to the RPC latency histogram.

use super::http::Authenticated;
use crate::api::{codes, WALLET_METHODS};
use crate::metrics::Metrics;
use jsonrpsee::server::middleware::rpc::{Batch, BatchEntry, BatchEntryErr, Notification, RpcServiceT};
use jsonrpsee::server::MethodResponse;
use jsonrpsee::types::{ErrorObject, Request};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct Guard<S> {
    pub inner: S,
    pub require_auth: bool,
    pub metrics: Arc<Metrics>,
}

fn unauthorized() -> ErrorObject<'static> {
    ErrorObject::owned(
        codes::UNAUTHORIZED,
        "wallet methods need RPC credentials when the server listens beyond loopback (HTTP basic auth: cookie file or --rpc-user/--rpc-password)",
        None::<()>,
    )
}

impl<S> Guard<S> {
    fn refused(&self, method: &str, ext: &jsonrpsee::types::Extensions) -> bool {
        self.require_auth && WALLET_METHODS.contains(&method) && ext.get::<Authenticated>().is_none()
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
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        async move {
            if refused {
                return MethodResponse::error(req.id, unauthorized());
            }
            let method = req.method_name().to_string();
            let start = Instant::now();
            let resp = inner.call(req).await;
            metrics.observe_rpc(&method, start.elapsed().as_secs_f64());
            resp
        }
    }

    fn batch<'a>(&self, mut batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // Calls inside a batch bypass `call`, so the same check is applied entry by entry.
        for entry in batch.iter_mut() {
            let refuse = match entry {
                Ok(BatchEntry::Call(req)) => self.refused(req.method_name(), req.extensions()).then(|| req.id.clone()),
                _ => None,
            };
            if let Some(id) = refuse {
                *entry = Err(BatchEntryErr::new(id, unauthorized()));
            }
        }
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        async move {
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
