//! Checks requests against DigitalOcean's official OpenAPI description, read at test time from
//! `../shared/digitalocean-openapi/specification/` beside the workspace (never copied into the
//! repository). A request must name a documented path and method, use only documented query
//! parameters (and every required one), and carry a body the operation's request schema
//! accepts, checked with a real JSON Schema validator that follows `$ref`s across the
//! specification's files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Where the specification lives: `../shared/digitalocean-openapi` relative to the workspace
/// root (as in CI), else the nearest `shared/digitalocean-openapi` above it (a git worktree
/// kept deeper than the checkout).
pub fn spec_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let rel = Path::new("shared/digitalocean-openapi/specification");
    workspace
        .ancestors()
        .skip(1)
        .map(|a| a.join(rel))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| workspace.join("..").join(rel))
}

/// YAML to JSON, with non-string keys (YAML allows `200:`) turned into strings as OpenAPI means.
fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0)).map(Value::Number).unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(s) => Value::Array(s.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Y::String(s) => s,
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        other => serde_yaml::to_string(&other).unwrap_or_default().trim().to_string(),
                    };
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

fn load_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let y: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(yaml_to_json(y))
}

/// Files of the specification, parsed once; shared by the loader and the schema retriever.
#[derive(Clone, Default)]
struct Files(Arc<Mutex<HashMap<PathBuf, Value>>>);

impl Files {
    fn get(&self, path: &Path) -> Result<Value, String> {
        let path = normalize(path);
        if let Some(v) = self.0.lock().unwrap().get(&path) {
            return Ok(v.clone());
        }
        let v = load_yaml(&path)?;
        self.0.lock().unwrap().insert(path, v.clone());
        Ok(v)
    }

    /// Follows a `$ref` written in `from` ("file.yml#/a/b", "#/a", "../x.yml") to its target
    /// and the file the target lives in.
    fn resolve(&self, from: &Path, reference: &str) -> Result<(PathBuf, Value), String> {
        let (file, pointer) = reference.split_once('#').unwrap_or((reference, ""));
        let path = if file.is_empty() { from.to_path_buf() } else { normalize(&from.parent().unwrap().join(file)) };
        let doc = self.get(&path)?;
        let target = if pointer.is_empty() {
            doc
        } else {
            doc.pointer(pointer).cloned().ok_or_else(|| format!("{reference} not found"))?
        };
        Ok((path, target))
    }

    /// A node with any `$ref` chain at its top followed.
    fn deref(&self, from: &Path, node: &Value) -> Result<(PathBuf, Value), String> {
        let mut at = (from.to_path_buf(), node.clone());
        for _ in 0..20 {
            match at.1.get("$ref").and_then(Value::as_str) {
                Some(r) => at = self.resolve(&at.0, r)?,
                None => return Ok(at),
            }
        }
        Err("$ref chain too long".into())
    }
}

/// `a/b/../c` to `a/c` without touching the filesystem, so cache keys and URIs agree.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Serves `file://` URIs of the specification to the JSON Schema validator.
struct Retriever(Files);

impl jsonschema::Retrieve for Retriever {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.scheme().as_str() != "file" {
            return Err(format!("refusing to fetch {}", uri.as_str()).into());
        }
        Ok(self.0.get(Path::new(uri.path().as_str()))?)
    }
}

struct Operation {
    file: PathBuf,
    op: Value,
}

/// Method, path template split on '/', the file the operation is written in, the operation.
type Entry = (String, Vec<String>, PathBuf, Value);

pub struct Spec {
    files: Files,
    /// (method, path template split on '/') -> the operation's `$ref` or inline object.
    operations: Vec<Entry>,
    validators: Mutex<HashMap<(String, String), Arc<jsonschema::Validator>>>,
}

impl Spec {
    pub fn load() -> Spec {
        let dir = spec_dir();
        let root = dir.join("DigitalOcean-public.v2.yaml");
        assert!(
            root.is_file(),
            "DigitalOcean's OpenAPI description is expected at {} (clone digitalocean/openapi beside the workspace)",
            root.display()
        );
        let files = Files::default();
        let doc = files.get(&root).unwrap();
        let mut operations = Vec::new();
        for (template, item) in doc["paths"].as_object().expect("paths") {
            let segments: Vec<String> = template.trim_matches('/').split('/').map(String::from).collect();
            for (method, op) in item.as_object().into_iter().flatten() {
                if ["get", "put", "post", "delete", "patch", "head"].contains(&method.as_str()) {
                    operations.push((method.to_uppercase(), segments.clone(), root.clone(), op.clone()));
                }
            }
        }
        Spec { files, operations, validators: Mutex::new(HashMap::new()) }
    }

    fn find(&self, method: &str, path: &str) -> Result<(String, Operation), String> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        // Literal segments beat parameters (`/v2/droplets/actions` vs `/v2/droplets/{id}`).
        let mut best: Option<(usize, &Entry)> = None;
        for entry in &self.operations {
            let (m, segs, _, _) = entry;
            if m != method || segs.len() != parts.len() {
                continue;
            }
            let mut literal = 0;
            let fits = segs.iter().zip(&parts).all(|(s, p)| {
                if s.starts_with('{') && s.ends_with('}') {
                    !p.is_empty()
                } else {
                    literal += 1;
                    s == p
                }
            });
            if fits && best.is_none_or(|(l, _)| literal > l) {
                best = Some((literal, entry));
            }
        }
        let (_, (_, segs, file, op)) = best.ok_or_else(|| format!("{method} {path} is not in DigitalOcean's API"))?;
        let (file, op) = self.files.deref(file, op)?;
        Ok((format!("/{}", segs.join("/")), Operation { file, op }))
    }

    /// Checks one request; `Err` says what is wrong with it.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<(), String> {
        let (template, Operation { file, op }) = self.find(method, path)?;
        let what = format!("{method} {template}");
        let mut declared = Vec::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            let (_, p) = self.files.deref(&file, p)?;
            if p["in"] == "query" {
                let name = p["name"].as_str().unwrap_or_default().to_string();
                let required = p["required"].as_bool().unwrap_or(false);
                if required && !query.iter().any(|(k, _)| *k == name) {
                    return Err(format!("{what}: required query parameter {name} missing"));
                }
                declared.push(name);
            }
        }
        for (k, _) in query {
            if !declared.contains(k) {
                return Err(format!("{what}: query parameter {k} is not documented (documented: {declared:?})"));
            }
        }
        let request_body = &op["requestBody"];
        match (body, request_body.is_null()) {
            (None, true) => Ok(()),
            (Some(_), true) => Err(format!("{what} takes no request body")),
            (None, false) => {
                let (_, rb) = self.files.deref(&file, request_body)?;
                if rb["required"].as_bool().unwrap_or(false) {
                    Err(format!("{what} requires a body"))
                } else {
                    Ok(())
                }
            }
            (Some(body), false) => {
                let validator = self.validator(&what, &file, request_body)?;
                let errors: Vec<String> =
                    validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path)).collect();
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{what}: body does not match the API's schema: {}", errors.join("; ")))
                }
            }
        }
    }

    fn validator(&self, what: &str, file: &Path, request_body: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        let key = (what.to_string(), file.display().to_string());
        if let Some(v) = self.validators.lock().unwrap().get(&key) {
            return Ok(v.clone());
        }
        let (rb_file, rb) = self.files.deref(file, request_body)?;
        let schema = rb["content"]["application/json"]["schema"].clone();
        if schema.is_null() {
            return Err(format!("{what}: the specification has no JSON schema for the body"));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .with_base_uri(format!("file://{}", rb_file.display()))
            .with_retriever(Retriever(self.files.clone()))
            .build(&schema)
            .map_err(|e| format!("{what}: cannot compile the body schema: {e}"))?;
        let v = Arc::new(validator);
        self.validators.lock().unwrap().insert(key, v.clone());
        Ok(v)
    }
}
