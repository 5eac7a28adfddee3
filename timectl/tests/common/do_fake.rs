//! A small stateful fake of the DigitalOcean API v2 endpoints the `do` provider calls, on
//! 127.0.0.1 with an ephemeral port. It follows the published API where the provider depends
//! on it: status codes and error bodies (`id`, `message`), the ten-name limit of `names[]`,
//! `tag_name` filters, `per_page`/`page` pagination with absolute `links.pages` URLs, firewalls
//! that need their tags to exist, droplets that start `new` and become `active` with addresses.
//! Every request is checked against DigitalOcean's OpenAPI description (`do_openapi`); a request
//! the API would not accept is answered 400 and recorded as a violation.
//!
//! Faults are injected once each: a 429 with `ratelimit-reset`, a 500.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::do_openapi::Spec;

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub status: u16,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// 429 with `ratelimit-reset` one second ahead and nothing done.
    RateLimit,
    /// 500 with nothing done.
    ServerError,
    /// 500 after the request was carried out (a gateway timing out on a slow backend).
    ServerErrorAfterWork,
}

#[derive(Default)]
pub struct FakeState {
    pub token: String,
    next_id: u64,
    /// List requests a droplet must appear in before it is `active` with addresses.
    pub boot_polls: u32,
    pub droplets: Vec<(Value, u32)>,
    pub keys: Vec<Value>,
    pub tags: BTreeSet<String>,
    pub firewalls: Vec<Value>,
    pub requests: Vec<Recorded>,
    pub violations: Vec<String>,
    /// (method, path, fault): the next matching request gets the fault, then it is removed.
    pub faults: Vec<(String, String, Fault)>,
}

pub struct FakeDo {
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = (Arc<Mutex<FakeState>>, Arc<Spec>);

impl FakeDo {
    pub async fn start(token: &str, spec: Arc<Spec>) -> FakeDo {
        let state = Arc::new(Mutex::new(FakeState {
            token: token.into(),
            next_id: 3_000_000,
            boot_polls: 2,
            ..Default::default()
        }));
        let app = axum::Router::new().fallback(handle).with_state((state.clone(), spec));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeDo { url, state, task }
    }

    pub fn inject(&self, method: &str, path: &str, fault: Fault) {
        self.state.lock().unwrap().faults.push((method.into(), path.into(), fault));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests that changed something (everything but GET).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method != "GET").collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub fn droplet_names(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        let mut n: Vec<String> = s.droplets.iter().map(|(d, _)| d["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    }
}

fn error(status: StatusCode, id: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "id": id, "message": message, "request_id": "00000000-fake" }))).into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "The resource you were accessing could not be found.")
}

fn unprocessable(message: &str) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity", message)
}

async fn handle(
    State((state, spec)): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: Vec<(String, String)> = uri.query().map(url_pairs).unwrap_or_default();
    let body_json: Option<Value> = if body.is_empty() { None } else { serde_json::from_slice(&body).ok() };
    let mut s = state.lock().unwrap();
    let mut record = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body_json.clone(),
        status: 0,
    };

    let resp = (|| {
        if !body.is_empty() && body_json.is_none() {
            return error(StatusCode::BAD_REQUEST, "bad_request", "request body is not JSON");
        }
        if let Err(v) = spec.check(method.as_str(), &path, &query, body_json.as_ref()) {
            s.violations.push(v.clone());
            return error(StatusCode::BAD_REQUEST, "bad_request", &v);
        }
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {}", s.token)) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized", "Unable to authenticate you");
        }
        if let Some(pos) = s.faults.iter().position(|(m, p, _)| *m == method.as_str() && *p == path) {
            let (_, _, fault) = s.faults.remove(pos);
            return match fault {
                Fault::RateLimit => {
                    let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 1;
                    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "API Rate limit exceeded.");
                    let h = r.headers_mut();
                    h.insert("ratelimit-limit", "5000".parse().unwrap());
                    h.insert("ratelimit-remaining", "0".parse().unwrap());
                    h.insert("ratelimit-reset", reset.to_string().parse().unwrap());
                    r
                }
                Fault::ServerError => {
                    error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "Unexpected server-side error")
                }
                Fault::ServerErrorAfterWork => {
                    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1").to_string();
                    route(&mut s, &method, &path, &query, body_json.as_ref(), &host);
                    error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "Unexpected server-side error")
                }
            };
        }
        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1").to_string();
        route(&mut s, &method, &path, &query, body_json.as_ref(), &host)
    })();
    record.status = resp.status().as_u16();
    s.requests.push(record);
    resp
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://fake/?{q}")).unwrap();
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// One page of `items` as the API paginates: `per_page` (default 20, at most 200) and `page`,
/// with absolute `first`/`prev`/`next`/`last` links that keep the other query parameters.
fn page(key: &str, items: Vec<Value>, path: &str, query: &[(String, String)], host: &str) -> Response {
    let per_page: usize = param(query, "per_page").and_then(|v| v.parse().ok()).unwrap_or(20).clamp(1, 200);
    let page: usize = param(query, "page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let link = |p: usize| {
        let mut q: Vec<String> =
            query.iter().filter(|(k, _)| k != "page" && k != "per_page").map(|(k, v)| format!("{k}={v}")).collect();
        q.push(format!("page={p}"));
        q.push(format!("per_page={per_page}"));
        format!("http://{host}{path}?{}", q.join("&"))
    };
    let mut pages = serde_json::Map::new();
    if page > 1 {
        pages.insert("first".into(), json!(link(1)));
        pages.insert("prev".into(), json!(link(page - 1)));
    }
    if page < last {
        pages.insert("next".into(), json!(link(page + 1)));
        pages.insert("last".into(), json!(link(last)));
    }
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    axum::Json(json!({ key: slice, "links": { "pages": pages }, "meta": { "total": total } })).into_response()
}

fn droplet_json(id: u64, name: &str, body: &Value) -> Value {
    json!({
        "id": id,
        "name": name,
        "memory": 4096, "vcpus": 2, "disk": 80, "locked": false,
        "status": "new",
        "created_at": "2026-01-01T00:00:00Z",
        "features": ["monitoring", "ipv6"],
        "backup_ids": [], "snapshot_ids": [], "volume_ids": [],
        "image": { "slug": body["image"] },
        "size_slug": body["size"],
        "region": { "slug": body["region"] },
        "networks": { "v4": [], "v6": [] },
        "tags": body["tags"].clone(),
    })
}

fn route(
    s: &mut FakeState,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: Option<&Value>,
    host: &str,
) -> Response {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["v2", "sizes"]) => {
            let sizes = ["s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb"]
                .iter()
                .zip([0.00893, 0.01786, 0.02679, 0.03571, 0.07143])
                .map(|(slug, price)| {
                    json!({ "slug": slug, "price_hourly": price, "price_monthly": (price * 672.0_f64).round(),
                            "available": true, "regions": ["nyc1", "sfo3", "ams3", "fra1"], "vcpus": 2,
                            "memory": 4096, "disk": 80, "transfer": 4.0, "description": "Basic" })
                })
                .collect();
            page("sizes", sizes, path, query, host)
        }
        ("GET", ["v2", "account", "keys"]) => page("ssh_keys", s.keys.clone(), path, query, host),
        ("GET", ["v2", "account", "keys", id]) => {
            match s.keys.iter().find(|k| id.parse::<u64>().ok() == k["id"].as_u64() || k["fingerprint"] == *id) {
                Some(k) => axum::Json(json!({ "ssh_key": k })).into_response(),
                None => not_found(),
            }
        }
        ("POST", ["v2", "account", "keys"]) => {
            let body = body.unwrap();
            let public_key = body["public_key"].as_str().unwrap_or_default();
            let Some(fp) = fingerprint(public_key) else { return unprocessable("Key invalid, type not supported") };
            if s.keys.iter().any(|k| k["fingerprint"] == fp.as_str()) {
                return unprocessable("SSH Key is already in use on your account");
            }
            s.next_id += 1;
            let k = json!({ "id": s.next_id, "fingerprint": fp, "public_key": public_key, "name": body["name"] });
            s.keys.push(k.clone());
            (StatusCode::CREATED, axum::Json(json!({ "ssh_key": k }))).into_response()
        }
        ("DELETE", ["v2", "account", "keys", id]) => {
            let before = s.keys.len();
            s.keys.retain(|k| !(id.parse::<u64>().ok() == k["id"].as_u64() || k["fingerprint"] == *id));
            if s.keys.len() == before {
                not_found()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        ("GET", ["v2", "tags", name]) => {
            if s.tags.contains(*name) {
                let count = s.droplets.iter().filter(|(d, _)| has_tag(d, name)).count();
                axum::Json(
                    json!({ "tag": { "name": name, "resources": { "count": count, "droplets": { "count": count } } } }),
                )
                .into_response()
            } else {
                not_found()
            }
        }
        ("POST", ["v2", "tags"]) => {
            let name = body.unwrap()["name"].as_str().unwrap_or_default().to_string();
            s.tags.insert(name.clone());
            (StatusCode::CREATED, axum::Json(json!({ "tag": { "name": name, "resources": { "count": 0 } } })))
                .into_response()
        }
        ("DELETE", ["v2", "tags", name]) => {
            if !s.tags.remove(*name) {
                return not_found();
            }
            for (d, _) in s.droplets.iter_mut() {
                if let Some(t) = d["tags"].as_array_mut() {
                    t.retain(|t| t != name);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["v2", "firewalls"]) => page("firewalls", s.firewalls.clone(), path, query, host),
        ("POST", ["v2", "firewalls"]) => {
            let mut fw = body.unwrap().clone();
            for t in fw["tags"].as_array().cloned().unwrap_or_default() {
                if !s.tags.contains(t.as_str().unwrap_or_default()) {
                    return unprocessable(&format!("tag {t} does not exist"));
                }
            }
            s.next_id += 1;
            fw["id"] = json!(format!("fb6045f1-cf1d-4ca3-bfac-{:012}", s.next_id));
            fw["status"] = json!("waiting");
            fw["created_at"] = json!("2026-01-01T00:00:00Z");
            fw["droplet_ids"] = json!([]);
            fw["pending_changes"] = json!([]);
            s.firewalls.push(fw.clone());
            (StatusCode::ACCEPTED, axum::Json(json!({ "firewall": fw }))).into_response()
        }
        ("PUT", ["v2", "firewalls", id]) => {
            let Some(fw) = s.firewalls.iter_mut().find(|f| f["id"] == *id) else { return not_found() };
            let id = fw["id"].clone();
            *fw = body.unwrap().clone();
            fw["id"] = id;
            fw["status"] = json!("succeeded");
            axum::Json(json!({ "firewall": fw })).into_response()
        }
        ("DELETE", ["v2", "firewalls", id]) => {
            let before = s.firewalls.len();
            s.firewalls.retain(|f| f["id"] != *id);
            if s.firewalls.len() == before {
                not_found()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        ("GET", ["v2", "droplets"]) => {
            let tag = param(query, "tag_name");
            let boot = s.boot_polls;
            // Time passes per listing, not per page: a droplet boots after `boot_polls` lists.
            let first_page = param(query, "page").is_none_or(|p| p == "1");
            let mut listed = Vec::new();
            for (d, polls) in s.droplets.iter_mut() {
                if tag.is_some_and(|t| !has_tag(d, t)) {
                    continue;
                }
                if first_page {
                    *polls += 1;
                }
                if *polls > boot && d["status"] == "new" {
                    let id = d["id"].as_u64().unwrap();
                    d["status"] = json!("active");
                    d["networks"] = json!({
                        "v4": [
                            { "ip_address": format!("10.124.0.{}", id % 250), "netmask": "255.255.240.0", "gateway": "10.124.0.1", "type": "private" },
                            { "ip_address": format!("203.0.113.{}", id % 250), "netmask": "255.255.255.0", "gateway": "203.0.113.1", "type": "public" },
                        ],
                        "v6": [{ "ip_address": format!("2001:db8::{id:x}"), "netmask": 64, "gateway": "2001:db8::1", "type": "public" }],
                    });
                }
                listed.push(d.clone());
            }
            page("droplets", listed, path, query, host)
        }
        ("POST", ["v2", "droplets"]) => {
            let body = body.unwrap();
            let names: Vec<String> = match (&body["names"], &body["name"]) {
                (Value::Array(n), _) => n.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
                (_, Value::String(n)) => vec![n.clone()],
                _ => return unprocessable("name is required"),
            };
            if names.len() > 10 {
                return unprocessable("You may only create 10 Droplets per request.");
            }
            let mut created = Vec::new();
            for name in &names {
                s.next_id += 1;
                let d = droplet_json(s.next_id, name, body);
                for t in d["tags"].as_array().cloned().unwrap_or_default() {
                    s.tags.insert(t.as_str().unwrap_or_default().to_string());
                }
                s.droplets.push((d.clone(), 0));
                created.push(d);
            }
            let resp = if body["names"].is_array() {
                json!({ "droplets": created, "links": { "actions": [] } })
            } else {
                json!({ "droplet": created[0], "links": { "actions": [] } })
            };
            (StatusCode::ACCEPTED, axum::Json(resp)).into_response()
        }
        ("DELETE", ["v2", "droplets"]) => {
            let tag = param(query, "tag_name").unwrap_or_default().to_string();
            s.droplets.retain(|(d, _)| !has_tag(d, &tag));
            StatusCode::NO_CONTENT.into_response()
        }
        _ => not_found(),
    }
}

fn has_tag(d: &Value, tag: &str) -> bool {
    d["tags"].as_array().is_some_and(|t| t.iter().any(|x| x == tag))
}

/// MD5 fingerprint of an OpenSSH public key line, computed here independently of the provider.
fn fingerprint(line: &str) -> Option<String> {
    use base64::Engine as _;
    use md5::Digest as _;
    let blob = line.split_whitespace().nth(1)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    Some(md5::Md5::digest(&raw).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}
