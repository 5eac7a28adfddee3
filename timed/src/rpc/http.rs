//! HTTP in front of the JSON-RPC server: `/` and `/rpc` take JSON-RPC (any POST body is read
//! as JSON, so `curl -d` without a content type works), `GET /metrics` serves Prometheus text,
//! and HTTP basic credentials are checked here and passed on as a request extension.
//!
//! It also fills two gaps of the underlying server: request ids may be any JSON number
//! (jsonrpsee only takes unsigned integers and strings), and a request made only of
//! notifications is answered with `204 No Content` instead of a body.

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde_json::Value;
use std::collections::HashMap;
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
    /// Largest request body read here; larger ones get 413 like the server would give.
    pub max_body: u32,
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

/// Ids jsonrpsee cannot carry (negative or fractional numbers) swapped for strings, to be
/// swapped back in the response.
struct IdMap(HashMap<String, Value>);

/// Looks at a request body: rewrites unsupported ids, and tells whether it holds only
/// notifications. `None` when the body is not JSON (the server reports that itself).
fn inspect(body: &[u8]) -> Option<(Option<Vec<u8>>, IdMap, bool)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let mut map = IdMap(HashMap::new());
    let mut all_notifications = true;
    let mut fix = |call: &mut Value| {
        let Some(obj) = call.as_object_mut() else {
            all_notifications = false;
            return;
        };
        match obj.get("id") {
            None => {}
            Some(id) => {
                all_notifications = false;
                let unsupported_number = id.is_number() && id.as_u64().is_none();
                // JSON-RPC allows only strings, numbers and null: anything else is an invalid
                // request, answered with a null id. A bad version makes the server say so.
                let not_allowed = id.is_object() || id.is_array() || id.is_boolean();
                if unsupported_number || not_allowed {
                    let token = format!("\u{1}timed-id-{}", map.0.len());
                    map.0.insert(token.clone(), if not_allowed { Value::Null } else { id.clone() });
                    obj.insert("id".into(), Value::String(token));
                    if not_allowed {
                        obj.insert("jsonrpc".into(), Value::String("invalid-id".into()));
                    }
                }
            }
        }
    };
    match &mut v {
        Value::Array(calls) if !calls.is_empty() => calls.iter_mut().for_each(&mut fix),
        Value::Object(_) => fix(&mut v),
        _ => return None,
    }
    let rewritten = (!map.0.is_empty()).then(|| serde_json::to_vec(&v).expect("re-encoding parsed JSON"));
    Some((rewritten, map, all_notifications))
}

fn restore_ids(body: &[u8], map: &IdMap) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let mut put_back = |resp: &mut Value| {
        if let Some(obj) = resp.as_object_mut() {
            if let Some(orig) = obj.get("id").and_then(|i| i.as_str()).and_then(|t| map.0.get(t)) {
                obj.insert("id".into(), orig.clone());
            }
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(&mut put_back),
        other => put_back(other),
    }
    Some(serde_json::to_vec(&v).expect("re-encoding parsed JSON"))
}

impl<S, B> Service<HttpRequest<B>> for FrontDoorService<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
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
                plain(
                    http::StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    (self.door.metrics)(),
                )
            } else {
                plain(http::StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET for /metrics\n".into())
            };
            return Box::pin(async move { Ok(resp) });
        }
        if path != "/" && path != "/rpc" {
            let resp = plain(
                http::StatusCode::NOT_FOUND,
                "text/plain",
                "JSON-RPC is served at / and /rpc; metrics at /metrics\n".into(),
            );
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
        if req.method() != http::Method::POST {
            // WebSocket upgrades and anything else go to the server untouched.
            let fut = self.inner.call(req.map(HttpBody::new));
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        // JSON-RPC bodies are JSON whatever the client claims: curl -d sends a form type.
        req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let mut inner = self.inner.clone();
        let max = self.door.max_body as usize;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match http_body_util::Limited::new(body, max).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return Ok(plain(
                        http::StatusCode::PAYLOAD_TOO_LARGE,
                        "application/json",
                        format!("{{\"jsonrpc\":\"2.0\",\"error\":{{\"code\":-32007,\"message\":\"Request is too big\",\"data\":\"Exceeded max limit of {max}\"}},\"id\":null}}"),
                    ))
                }
            };
            let seen = inspect(&bytes);
            let body = match &seen {
                Some((Some(rewritten), _, _)) => HttpBody::from(rewritten.clone()),
                _ => HttpBody::from(bytes.to_vec()),
            };
            let resp = inner.call(http::Request::from_parts(parts, body)).await.map_err(Into::into)?;
            match seen {
                Some((_, _, true)) if resp.status() == http::StatusCode::OK => {
                    let mut r = http::Response::new(HttpBody::from(Vec::new()));
                    *r.status_mut() = http::StatusCode::NO_CONTENT;
                    Ok(r)
                }
                Some((Some(_), map, _)) => {
                    let (parts, body) = resp.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    let fixed = restore_ids(&bytes, &map).unwrap_or_else(|| bytes.to_vec());
                    Ok(http::Response::from_parts(parts, HttpBody::from(fixed)))
                }
                _ => Ok(resp),
            }
        })
    }
}
