//! HTTP in front of the JSON-RPC server: `/` and `/rpc` take JSON-RPC (any POST body is read
//! as JSON, so `curl -d` without a content type works), `GET /metrics` serves Prometheus text,
//! and HTTP basic credentials are checked here and passed on as a request extension.

use base64::Engine;
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Marker put in request extensions when the request carried valid credentials.
#[derive(Clone, Copy, Debug)]
pub struct Authenticated;

/// Accepted credentials ("user", "password") and how metrics are rendered.
#[derive(Clone)]
pub struct FrontDoor {
    pub credentials: Arc<Vec<(String, String)>>,
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

impl<S> Layer<S> for FrontDoor {
    type Service = FrontDoorService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FrontDoorService { inner, door: self.clone() }
    }
}

#[derive(Clone)]
pub struct FrontDoorService<S> {
    inner: S,
    door: FrontDoor,
}

fn plain(status: http::StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(HttpBody::from(body))
        .expect("static response parts are valid")
}

/// Compares without an early exit so timing does not reveal a matching prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Some(true)` valid, `Some(false)` present but wrong, `None` absent.
fn check_basic_auth<B>(req: &HttpRequest<B>, creds: &[(String, String)]) -> Option<bool> {
    let value = req.headers().get(http::header::AUTHORIZATION)?;
    let ok = (|| {
        let text = value.to_str().ok()?;
        let encoded = text.strip_prefix("Basic ").or_else(|| text.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        Some(creds.iter().any(|(u, p)| same(u.as_bytes(), user.as_bytes()) & same(p.as_bytes(), pass.as_bytes())))
    })();
    Some(ok.unwrap_or(false))
}

impl<S, B> Service<HttpRequest<B>> for FrontDoorService<S>
where
    S: Service<HttpRequest<B>, Response = HttpResponse>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: HttpRequest<B>) -> Self::Future {
        let path = req.uri().path();
        if path == "/metrics" {
            let resp = if req.method() == http::Method::GET {
                plain(http::StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", (self.door.metrics)())
            } else {
                plain(http::StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET for /metrics\n".into())
            };
            return Box::pin(async move { Ok(resp) });
        }
        if path != "/" && path != "/rpc" {
            let resp = plain(http::StatusCode::NOT_FOUND, "text/plain", "JSON-RPC is served at / and /rpc; metrics at /metrics\n".into());
            return Box::pin(async move { Ok(resp) });
        }
        match check_basic_auth(&req, &self.door.credentials) {
            Some(true) => {
                req.extensions_mut().insert(Authenticated);
            }
            Some(false) => {
                let resp = http::Response::builder()
                    .status(http::StatusCode::UNAUTHORIZED)
                    .header(http::header::WWW_AUTHENTICATE, "Basic realm=\"timed\"")
                    .body(HttpBody::from("invalid RPC credentials\n"))
                    .expect("static response parts are valid");
                return Box::pin(async move { Ok(resp) });
            }
            None => {}
        }
        // JSON-RPC bodies are JSON whatever the client claims: curl -d sends a form type.
        if req.method() == http::Method::POST {
            let is_json = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if !is_json {
                req.headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            }
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
