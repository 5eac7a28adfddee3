//! HTTP in front of the JSON-RPC server: `/` and `/rpc` take JSON-RPC (any POST body is read
//! as JSON, so `curl -d` without a content type works), `GET /metrics` serves Prometheus text,
//! and HTTP basic credentials are checked here and passed on as a request extension.
//!
//! Browsers are kept out before anything else: a request with an `Origin` not on the
//! allow-list, a `Sec-Fetch-Site: cross-site` request, or a `Host` that is neither an IP
//! literal, `localhost` nor a configured name (DNS rebinding) gets 403, over HTTP and for
//! WebSocket upgrades alike.
//!
//! It also fills gaps of the underlying server: request ids may be any JSON number and come
//! back byte for byte (jsonrpsee only takes unsigned integers and strings), a request made
//! only of notifications is answered with `204 No Content`, an oversized `Content-Length`
//! gets 413 before the body is read, a body that does not arrive in time gets 408, and a
//! WebSocket upgrade with a bad key gets 400.

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
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
    /// Time allowed for a request body to arrive.
    pub read_timeout: std::time::Duration,
    /// Exact `Origin` values allowed (browser pages); empty refuses every page.
    pub allow_origins: Arc<Vec<String>>,
    /// Host names served besides IP literals and `localhost`.
    pub allow_hosts: Arc<Vec<String>>,
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

/// Ids jsonrpsee cannot carry exactly (anything but strings and integers that fit in a u64),
/// swapped for tokens and put back, byte for byte, in the response.
struct IdMap(HashMap<String, Box<RawValue>>);

const ID_TOKEN_PREFIX: &str = "\u{1}timed-id-";

/// Rewrites the ids of a request body that jsonrpsee would change or merge. `None` when the
/// body is not JSON (the server reports that itself) or nothing needs rewriting.
fn rewrite_ids(body: &[u8]) -> Option<(Vec<u8>, IdMap)> {
    let mut map = IdMap(HashMap::new());
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    let rewritten = if *first == b'[' {
        let mut calls: Vec<Box<RawValue>> = serde_json::from_slice(body).ok()?;
        let mut changed = false;
        for c in calls.iter_mut() {
            if let Ok(mut call) = serde_json::from_str::<Call>(c.get()) {
                if fix_id(&mut call, &mut map) {
                    *c = serde_json::value::to_raw_value(&call).ok()?;
                    changed = true;
                }
            }
        }
        if !changed {
            return None;
        }
        serde_json::to_vec(&calls).ok()?
    } else {
        let mut call: Call = serde_json::from_slice(body).ok()?;
        if !fix_id(&mut call, &mut map) {
            return None;
        }
        serde_json::to_vec(&call).ok()?
    };
    Some((rewritten, map))
}

type Call = BTreeMap<String, Box<RawValue>>;

/// Swaps one call's id for a token when needed; true if it did.
fn fix_id(call: &mut Call, map: &mut IdMap) -> bool {
    // Neither a call nor a notification (`{}`): an invalid request, answered with a null id;
    // without an id the server would call it a parse error.
    if !call.contains_key("id") && !call.contains_key("method") {
        call.insert("id".into(), RawValue::from_string("null".into()).expect("valid JSON"));
        return true;
    }
    {
        let Some(id) = call.get("id") else { return false };
        let text = id.get();
        let keep = match text.as_bytes().first() {
            // Our own token shape in a client id would be mistaken for one of ours.
            Some(b'"') => !serde_json::from_str::<String>(text).is_ok_and(|s| s.starts_with(ID_TOKEN_PREFIX)),
            Some(b'0'..=b'9') => text.parse::<u64>().is_ok(),
            _ => text == "null",
        };
        if keep {
            return false;
        }
        let token = format!("{ID_TOKEN_PREFIX}{}", map.0.len());
        // JSON-RPC ids are strings, numbers or null; anything else is an invalid request,
        // answered with a null id. A bad version makes the server say so.
        let allowed = matches!(text.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'));
        let original = if allowed { id.clone() } else { RawValue::from_string("null".into()).expect("valid JSON") };
        map.0.insert(token.clone(), original);
        call.insert("id".into(), RawValue::from_string(serde_json::to_string(&token).expect("string")).expect("valid"));
        if !allowed {
            call.insert("jsonrpc".into(), RawValue::from_string("\"invalid-id\"".into()).expect("valid JSON"));
        }
        true
    }
}

fn restore_ids(body: &[u8], map: &IdMap) -> Option<Vec<u8>> {
    type Resp = BTreeMap<String, Box<RawValue>>;
    let put_back = |resp: &mut Resp| {
        let token = resp.get("id").and_then(|i| serde_json::from_str::<String>(i.get()).ok());
        if let Some(orig) = token.and_then(|t| map.0.get(&t)) {
            resp.insert("id".into(), orig.clone());
        }
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first == b'[' {
        let mut items: Vec<Resp> = serde_json::from_slice(body).ok()?;
        items.iter_mut().for_each(put_back);
        serde_json::to_vec(&items).ok()
    } else {
        let mut item: Resp = serde_json::from_slice(body).ok()?;
        put_back(&mut item);
        serde_json::to_vec(&item).ok()
    }
}

/// For fuzzing: rewrites the ids of `body`, answers every rewritten call the way the server
/// would (echoing its id), restores, and checks that each answer carries its call's own id.
#[doc(hidden)]
pub fn check_id_roundtrip(body: &[u8]) {
    let Some((rewritten, map)) = rewrite_ids(body) else { return };
    let as_list = |b: &[u8]| -> Vec<Option<Call>> {
        match serde_json::from_slice::<Vec<Box<RawValue>>>(b) {
            Ok(items) => items.iter().map(|i| serde_json::from_str::<Call>(i.get()).ok()).collect(),
            Err(_) => vec![serde_json::from_slice::<Call>(b).ok()],
        }
    };
    let (before, after) = (as_list(body), as_list(&rewritten));
    assert_eq!(before.len(), after.len(), "rewriting keeps every call");
    let null = || RawValue::from_string("null".into()).expect("valid JSON");
    let answers: Vec<Call> = after
        .iter()
        .flatten()
        .map(|c| Call::from([("id".to_string(), c.get("id").cloned().unwrap_or_else(null))]))
        .collect();
    let restored = restore_ids(&serde_json::to_vec(&answers).expect("in memory"), &map).expect("restores");
    let restored: Vec<Call> = serde_json::from_slice(&restored).expect("restored answers are JSON");
    for (orig, answer) in before.iter().flatten().zip(&restored) {
        let want = orig.get("id").map(|i| i.get()).unwrap_or("null");
        let valid = matches!(want.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')) || want == "null";
        let got = answer.get("id").map(|i| i.get()).unwrap_or("null");
        assert_eq!(got, if valid { want } else { "null" }, "an answer carries another call's id");
    }
}

/// Why a request is refused before it reaches JSON-RPC.
fn browser_refusal<B>(req: &HttpRequest<B>, door: &FrontDoor) -> Option<&'static str> {
    let headers = req.headers();
    // A browser names the page that sent a request; only pages on the allow-list may call.
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| door.allow_origins.iter().any(|a| a == o));
        if !ok {
            return Some("cross-origin requests are refused (the Origin is not in --rpc-allow-origin)\n");
        }
    } else if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return Some("cross-site requests are refused\n");
    }
    // DNS rebinding: a page that got its own name to resolve to this node still sends its name.
    let host = match headers.get(http::header::HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().host(),
    };
    match host {
        Some(h) if host_allowed(h, &door.allow_hosts) => None,
        Some(_) => Some("unknown Host; IP literals, localhost and --rpc-allow-host names are served\n"),
        // HTTP/1.0 clients may omit Host; no browser does.
        None => None,
    }
}

/// Whether `host` (with an optional port) names this node: an IP literal, `localhost`, or a
/// configured name.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || tail.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, port)) if port.parse::<u16>().is_ok() => n,
            _ => host,
        }
    };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || allowed.contains(&name)
}

/// A WebSocket upgrade must carry a key of 16 base64-encoded bytes and version 13
/// (RFC 6455 4.2.1); the server underneath would answer 200 otherwise.
fn bad_websocket_upgrade<B>(req: &HttpRequest<B>) -> bool {
    let h = req.headers();
    let key_ok = h
        .get("sec-websocket-key")
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k.as_bytes()).ok())
        .is_some_and(|k| k.len() == 16);
    let version_ok = h.get("sec-websocket-version").is_some_and(|v| v.as_bytes() == b"13");
    !(key_ok && version_ok)
}

fn is_websocket_upgrade<B>(req: &HttpRequest<B>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|u| u.to_str().ok())
        .is_some_and(|u| u.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}

fn too_big(max: usize) -> HttpResponse {
    plain(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        "application/json",
        format!("{{\"jsonrpc\":\"2.0\",\"error\":{{\"code\":-32007,\"message\":\"Request is too big\",\"data\":\"Exceeded max limit of {max}\"}},\"id\":null}}"),
    )
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
        if let Some(why) = browser_refusal(&req, &self.door) {
            let resp = plain(http::StatusCode::FORBIDDEN, "text/plain", why.into());
            return Box::pin(async move { Ok(resp) });
        }
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
        if is_websocket_upgrade(&req) && bad_websocket_upgrade(&req) {
            let resp = plain(
                http::StatusCode::BAD_REQUEST,
                "text/plain",
                "WebSocket upgrade needs Sec-WebSocket-Version: 13 and a 16-byte base64 Sec-WebSocket-Key\n".into(),
            );
            return Box::pin(async move { Ok(resp) });
        }
        if req.method() != http::Method::POST {
            // WebSocket upgrades and anything else go to the server untouched.
            let fut = self.inner.call(req.map(HttpBody::new));
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        let max = self.door.max_body as usize;
        // Refused before a byte of the body is read, so a huge claim costs nothing.
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            let resp = too_big(max);
            return Box::pin(async move { Ok(resp) });
        }
        // JSON-RPC bodies are JSON whatever the client claims: curl -d sends a form type.
        req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let mut inner = self.inner.clone();
        let read_timeout = self.door.read_timeout;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let collected = tokio::time::timeout(read_timeout, http_body_util::Limited::new(body, max).collect()).await;
            let bytes = match collected {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    return Ok(too_big(max))
                }
                // The client went away mid-body; nobody reads an answer.
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Ok(plain(
                        http::StatusCode::REQUEST_TIMEOUT,
                        "text/plain",
                        format!("request body not received within {} s\n", read_timeout.as_secs()),
                    ))
                }
            };
            let seen = rewrite_ids(&bytes);
            let body = match &seen {
                Some((rewritten, _)) => HttpBody::from(rewritten.clone()),
                None => HttpBody::from(bytes.to_vec()),
            };
            let resp = inner.call(http::Request::from_parts(parts, body)).await.map_err(Into::into)?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            // Only notifications (valid ones) leave the server with nothing to say.
            // (the server writes an empty body or a bare `null` for them).
            let nothing = bytes.is_empty() || bytes.trim_ascii() == b"null";
            if parts.status == http::StatusCode::OK && nothing {
                let mut r = http::Response::new(HttpBody::from(Vec::new()));
                *r.status_mut() = http::StatusCode::NO_CONTENT;
                return Ok(r);
            }
            let fixed = match &seen {
                Some((_, map)) => restore_ids(&bytes, map).unwrap_or_else(|| bytes.to_vec()),
                None => bytes.to_vec(),
            };
            Ok(http::Response::from_parts(parts, HttpBody::from(fixed)))
        })
    }
}
