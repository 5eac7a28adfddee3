//! The DigitalOcean provider: droplets, one Cloud Firewall and one tag per network, through
//! the public API v2 (https://docs.digitalocean.com/reference/api/).
//!
//! Everything a network owns carries the tag `timectl-NETWORK` (droplets also `timectl`), so
//! `create` and `destroy` find it by tag after any crash. The API token comes from the
//! environment only and is held in a header value marked sensitive: it never reaches an
//! inventory, a log line, an error message or a host.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use super::cloud::{self, AddressDetector};
use super::{Host, Plan, Progress, Provider, ProviderError, ProvisionRequest};

pub const NAME: &str = "do";
pub const DEFAULT_API_URL: &str = "https://api.digitalocean.com";
/// doctl's variable first, then the one Terraform and others use.
pub const TOKEN_VARS: [&str; 2] = ["DIGITALOCEAN_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN"];
/// Test and debug setting: where the API is (the tests point it at a local fake).
pub const API_URL_VAR: &str = "DIGITALOCEAN_API_URL";
/// The API creates at most this many droplets per `names[]` request.
pub const MAX_NAMES_PER_REQUEST: usize = 10;
/// Every droplet timectl makes has this tag, whatever its network.
pub const COMMON_TAG: &str = "timectl";

/// The API token. Its `Debug` is redacted so that no `{:?}` of a settings struct leaks it.
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    #[cfg(test)]
    pub fn new(value: impl Into<String>) -> Token {
        Token(value.into())
    }

    /// The token from `DIGITALOCEAN_ACCESS_TOKEN` or `DIGITALOCEAN_TOKEN`.
    pub fn from_env() -> Result<Token, ProviderError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Token, ProviderError> {
        TOKEN_VARS
            .iter()
            .filter_map(|k| lookup(k))
            .map(|v| v.trim().to_string())
            .find(|v| !v.is_empty())
            .map(Token)
            .ok_or_else(|| {
                ProviderError::new(
                    NAME,
                    format!("no DigitalOcean API token: set {} (or {})", TOKEN_VARS[0], TOKEN_VARS[1]),
                )
                .with_hint(format!(
                    "create a token with read and write scope at https://cloud.digitalocean.com/account/api/tokens, \
                         then `read -rs {v} && export {v}` (keeps it out of your shell history)",
                    v = TOKEN_VARS[0]
                ))
            })
    }
}

/// The provider's flags and tunables.
#[derive(Clone, Debug)]
pub struct DoSettings {
    pub region: String,
    pub size: String,
    pub image: String,
    pub api_url: String,
    /// How long `create` waits for droplets to be active with an address, and `destroy` for
    /// them to be gone.
    pub wait_timeout: Duration,
    pub poll_interval: Duration,
    /// `per_page` of list requests (the API allows up to 200).
    pub page_size: u32,
    /// Retries of one request on 429, 5xx and connection errors.
    pub max_retries: u32,
    /// First delay of the exponential backoff on 5xx and connection errors.
    pub backoff: Duration,
}

impl Default for DoSettings {
    fn default() -> Self {
        DoSettings {
            region: "sfo3".into(),
            size: "s-2vcpu-4gb".into(),
            image: "ubuntu-22-04-x64".into(),
            api_url: DEFAULT_API_URL.into(),
            wait_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(5),
            page_size: 200,
            max_retries: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

impl DoSettings {
    /// Defaults with `DIGITALOCEAN_API_URL` applied when set.
    pub fn from_env() -> DoSettings {
        let mut s = DoSettings::default();
        if let Some(url) = std::env::var(API_URL_VAR).ok().filter(|u| !u.trim().is_empty()) {
            s.api_url = url.trim().to_string();
        }
        s
    }
}

pub struct DigitalOcean {
    api: Api,
    settings: DoSettings,
    detector: Arc<dyn AddressDetector>,
}

impl DigitalOcean {
    pub fn new(settings: DoSettings, token: Token, detector: Arc<dyn AddressDetector>) -> Result<Self, ProviderError> {
        let base = Url::parse(&settings.api_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                ProviderError::new(NAME, format!("API URL {:?} is not an http(s) URL", settings.api_url))
                    .with_hint(format!("unset {API_URL_VAR} to use {DEFAULT_API_URL}"))
            })?;
        if settings.api_url != DEFAULT_API_URL {
            tracing::warn!(url = %base, "using a DigitalOcean API other than the public one ({API_URL_VAR})");
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.0))
            .map_err(|_| ProviderError::new(NAME, "the API token contains characters a token cannot have"))?;
        // Keeps the value out of the header map's Debug output.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .user_agent(concat!("timectl/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ProviderError::new(NAME, "cannot build the HTTP client").with_source(e))?;
        let api = Api {
            http,
            base,
            page_size: settings.page_size.clamp(1, 200),
            retries: settings.max_retries,
            backoff: settings.backoff,
        };
        Ok(DigitalOcean { api, settings, detector })
    }

    /// The provider as `deploy` builds it: token and API URL from the environment, the
    /// operator's address detected over HTTPS unless `--allow-from` is given.
    pub fn from_env(settings: DoSettings) -> Result<Self, ProviderError> {
        Self::new(settings, Token::from_env()?, Arc::new(cloud::HttpAddressDetector::default()))
    }

    fn network_tag(network: &str) -> String {
        format!("timectl-{network}")
    }

    fn firewall_name(network: &str) -> String {
        format!("timectl-{network}")
    }

    fn key_name(fingerprint: &str) -> String {
        format!("timectl-{}", fingerprint.replace(':', "").chars().take(12).collect::<String>())
    }

    /// Every droplet with the network's tag.
    async fn droplets(&self, network: &str) -> Result<Vec<Droplet>, ProviderError> {
        let tag = Self::network_tag(network);
        let all = self.api.get_all("/v2/droplets", &[("tag_name", &tag)], "droplets").await?;
        Ok(all.iter().filter_map(Droplet::parse).collect())
    }

    fn host(network: &str, d: &Droplet) -> Option<Host> {
        let index = cloud::host_index(network, &d.name)?;
        let public = d.public_v4.clone()?;
        Some(Host {
            name: d.name.clone(),
            index,
            ssh_host: public.clone(),
            ssh_port: 22,
            // Ubuntu droplets take the account's keys for root.
            ssh_user: "root".into(),
            // The VPC address keeps P2P traffic off the public interface where there is one.
            p2p_host: d.private_v4.clone().unwrap_or(public),
            provider_id: Some(d.id.to_string()),
        })
    }

    fn hosts(network: &str, droplets: &[Droplet]) -> Vec<Host> {
        let mut hosts: Vec<Host> =
            droplets.iter().filter(|d| d.status == "active").filter_map(|d| Self::host(network, d)).collect();
        hosts.sort_by_key(|h| h.index);
        hosts
    }

    /// The account's key with this fingerprint, if any.
    async fn find_key(&self, fingerprint: &str) -> Result<Option<u64>, ProviderError> {
        match self.api.call(Method::GET, self.api.url(&format!("/v2/account/keys/{fingerprint}"), &[]), None).await {
            Ok(v) => Ok(v["ssh_key"]["id"].as_u64()),
            Err(e) if e.status == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e.into_provider("looking up your SSH key")),
        }
    }

    async fn ensure_key(&self, public_key: &str) -> Result<u64, ProviderError> {
        let fp = cloud::md5_fingerprint(public_key)
            .ok_or_else(|| ProviderError::new(NAME, "cannot fingerprint the SSH public key"))?;
        if let Some(id) = self.find_key(&fp).await? {
            tracing::info!(fingerprint = %fp, "reusing the account's SSH key");
            return Ok(id);
        }
        let body = json!({ "name": Self::key_name(&fp), "public_key": public_key });
        let v = self
            .api
            .call(Method::POST, self.api.url("/v2/account/keys", &[]), Some(&body))
            .await
            .map_err(|e| e.into_provider("registering your SSH key"))?;
        tracing::info!(fingerprint = %fp, "registered the SSH key");
        v["ssh_key"]["id"]
            .as_u64()
            .ok_or_else(|| ProviderError::new(NAME, "the API answered a key creation without an id"))
    }

    async fn tag_exists(&self, tag: &str) -> Result<bool, ProviderError> {
        match self.api.call(Method::GET, self.api.url(&format!("/v2/tags/{tag}"), &[]), None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(e) => Err(e.into_provider("looking up the network's tag")),
        }
    }

    async fn find_firewall(&self, network: &str) -> Result<Option<Value>, ProviderError> {
        let name = Self::firewall_name(network);
        let all = self.api.get_all("/v2/firewalls", &[], "firewalls").await?;
        Ok(all.into_iter().find(|f| f["name"].as_str() == Some(name.as_str())))
    }

    /// The firewall a network should have: SSH from the operator, P2P from the network's own
    /// droplets, nothing else inbound (RPC stays on loopback and goes through SSH); all
    /// outbound, which apt, NTP and dialing peers need.
    fn firewall_body(network: &str, p2p_port: u16, ssh_cidr: &str) -> Value {
        let tag = Self::network_tag(network);
        let everywhere = json!({ "addresses": ["0.0.0.0/0", "::/0"] });
        json!({
            "name": Self::firewall_name(network),
            "tags": [tag],
            "inbound_rules": [
                { "protocol": "tcp", "ports": "22", "sources": { "addresses": [ssh_cidr] } },
                { "protocol": "tcp", "ports": p2p_port.to_string(), "sources": { "tags": [tag] } },
            ],
            "outbound_rules": [
                { "protocol": "tcp", "ports": "0", "destinations": everywhere },
                { "protocol": "udp", "ports": "0", "destinations": everywhere },
                { "protocol": "icmp", "ports": "0", "destinations": everywhere },
            ],
        })
    }

    /// Inbound rules reduced to what decides access, so that fields the API adds do not make
    /// an unchanged firewall look changed.
    fn inbound_key(fw: &Value) -> BTreeSet<String> {
        let list = |v: &Value| -> Vec<String> {
            let mut l: Vec<String> =
                v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect();
            l.sort();
            l
        };
        fw["inbound_rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let ports = r["ports"].as_str().unwrap_or("");
                format!(
                    "{} {} {:?} {:?}",
                    r["protocol"].as_str().unwrap_or(""),
                    if ports == "all" { "0" } else { ports },
                    list(&r["sources"]["addresses"]),
                    list(&r["sources"]["tags"])
                )
            })
            .collect()
    }

    async fn ensure_firewall(&self, network: &str, p2p_port: u16, ssh_cidr: &str) -> Result<(), ProviderError> {
        let want = Self::firewall_body(network, p2p_port, ssh_cidr);
        match self.find_firewall(network).await? {
            None => {
                self.api
                    .call(Method::POST, self.api.url("/v2/firewalls", &[]), Some(&want))
                    .await
                    .map_err(|e| e.into_provider("creating the Cloud Firewall"))?;
                tracing::info!(firewall = %Self::firewall_name(network), "created the Cloud Firewall");
            }
            Some(fw) if Self::inbound_key(&fw) != Self::inbound_key(&want) => {
                let id = fw["id"].as_str().unwrap_or_default();
                self.api
                    .call(Method::PUT, self.api.url(&format!("/v2/firewalls/{id}"), &[]), Some(&want))
                    .await
                    .map_err(|e| e.into_provider("updating the Cloud Firewall"))?;
                tracing::info!(firewall = %Self::firewall_name(network), "updated the Cloud Firewall's rules");
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn droplet_body(&self, req: &ProvisionRequest, names: &[String], key_id: u64) -> Value {
        let s = &self.settings;
        json!({
            "names": names,
            "region": s.region,
            "size": s.size,
            "image": s.image,
            "ssh_keys": [key_id],
            "backups": false,
            "ipv6": true,
            "monitoring": true,
            "tags": [COMMON_TAG, Self::network_tag(&req.network)],
            "user_data": cloud::render_cloud_init(req.p2p_port),
        })
    }

    /// Creates the droplets among `1..=nodes` that do not exist. A 5xx or a dropped connection
    /// on a create leaves it unknown whether droplets were made, so the list is read again
    /// before retrying instead of posting the same names twice.
    async fn create_missing(
        &self,
        req: &ProvisionRequest,
        key_id: u64,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let mut attempts = 0;
        loop {
            let existing: BTreeSet<usize> = self
                .droplets(&req.network)
                .await?
                .iter()
                .filter_map(|d| cloud::host_index(&req.network, &d.name))
                .collect();
            let missing: Vec<String> =
                (1..=req.nodes).filter(|i| !existing.contains(i)).map(|i| cloud::host_name(&req.network, i)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            let mut uncertain = None;
            for chunk in missing.chunks(MAX_NAMES_PER_REQUEST) {
                for n in chunk {
                    progress.step(n, "creating droplet");
                }
                let body = self.droplet_body(req, chunk, key_id);
                match self.api.call(Method::POST, self.api.url("/v2/droplets", &[]), Some(&body)).await {
                    Ok(_) => {}
                    Err(e) if e.is_uncertain() => {
                        uncertain = Some(e);
                        break;
                    }
                    Err(e) => return Err(e.into_provider("creating droplets")),
                }
            }
            match uncertain {
                None => return Ok(()),
                Some(e) if attempts >= self.settings.max_retries => return Err(e.into_provider("creating droplets")),
                Some(e) => {
                    attempts += 1;
                    tracing::warn!(error = %e.describe(), "droplet creation may have failed; listing before retrying");
                    tokio::time::sleep(self.api.backoff_delay(attempts)).await;
                }
            }
        }
    }

    /// Polls until every droplet of `1..=nodes` is active with a public IPv4, reporting each
    /// droplet's state as it changes.
    async fn wait_ready(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError> {
        let deadline = Instant::now() + self.settings.wait_timeout;
        let mut shown: HashMap<String, String> = HashMap::new();
        loop {
            let droplets = self.droplets(&req.network).await?;
            let by_index: BTreeMap<usize, &Droplet> =
                droplets.iter().filter_map(|d| Some((cloud::host_index(&req.network, &d.name)?, d))).collect();
            let mut waiting = Vec::new();
            for i in 1..=req.nodes {
                let name = cloud::host_name(&req.network, i);
                let step = match by_index.get(&i) {
                    None => "not listed yet".to_string(),
                    Some(d) if d.status != "active" => format!("droplet {}", d.status),
                    Some(d) => match &d.public_v4 {
                        None => "active, waiting for an address".to_string(),
                        Some(ip) => format!("active at {ip}"),
                    },
                };
                if !step.starts_with("active at") {
                    waiting.push(name.clone());
                }
                if shown.get(&name) != Some(&step) {
                    progress.step(&name, &step);
                    shown.insert(name, step);
                }
            }
            if waiting.is_empty() {
                return Ok(Self::hosts(&req.network, &droplets));
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::new(
                    NAME,
                    format!(
                        "{} droplet(s) not active with an address after {} s: {}",
                        waiting.len(),
                        self.settings.wait_timeout.as_secs(),
                        waiting.join(", ")
                    ),
                )
                .with_hint("run the same command again (it creates only what is missing), or `timectl destroy` to remove everything"));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// Hourly price of one droplet of the configured size, checking the size is offered in
    /// the configured region.
    async fn size_price(&self) -> Result<f64, ProviderError> {
        let s = &self.settings;
        let sizes = self.api.get_all("/v2/sizes", &[], "sizes").await?;
        let size = sizes.iter().find(|z| z["slug"].as_str() == Some(s.size.as_str())).ok_or_else(|| {
            ProviderError::new(NAME, format!("size {:?} is not offered", s.size))
                .with_hint("list sizes with `doctl compute size list`")
        })?;
        let in_region = size["regions"].as_array().map(|r| r.iter().any(|x| x.as_str() == Some(s.region.as_str())));
        if in_region == Some(false) || size["available"].as_bool() == Some(false) {
            return Err(ProviderError::new(
                NAME,
                format!("size {:?} is not available in region {:?}", s.size, s.region),
            )
            .with_hint("choose another --region or --size (`doctl compute size list`)"));
        }
        size["price_hourly"]
            .as_f64()
            .ok_or_else(|| ProviderError::new(NAME, format!("the API gave no hourly price for size {:?}", s.size)))
    }

    /// Keys timectl registered (`timectl-…`), deleted once no droplet tagged `timectl` is left
    /// in the account: the key is shared by every network of the same operator.
    async fn destroy_keys_if_unused(&self, deleted: &mut Vec<String>) -> Result<(), ProviderError> {
        let still_used = !self.api.get_all("/v2/droplets", &[("tag_name", COMMON_TAG)], "droplets").await?.is_empty();
        if still_used {
            tracing::info!("keeping timectl's SSH key: other timectl droplets still use it");
            return Ok(());
        }
        let keys = self.api.get_all("/v2/account/keys", &[], "ssh_keys").await?;
        for k in keys.iter().filter(|k| k["name"].as_str().is_some_and(|n| n.starts_with("timectl-"))) {
            let id = k["id"].as_u64().unwrap_or_default();
            self.api
                .call(Method::DELETE, self.api.url(&format!("/v2/account/keys/{id}"), &[]), None)
                .await
                .map_err(|e| e.into_provider("deleting timectl's SSH key"))?;
            deleted.push(format!(
                "ssh key {} ({})",
                k["name"].as_str().unwrap_or(""),
                k["fingerprint"].as_str().unwrap_or("")
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for DigitalOcean {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn plan(&self, req: &ProvisionRequest) -> Result<Plan, ProviderError> {
        cloud::check_network_name(NAME, &req.network)?;
        cloud::parse_public_key(NAME, &req.ssh_public_key)?;
        let price = self.size_price().await?;
        let droplets = self.droplets(&req.network).await?;
        let existing = Self::hosts(&req.network, &droplets);
        let have: BTreeSet<usize> = droplets.iter().filter_map(|d| cloud::host_index(&req.network, &d.name)).collect();
        let s = &self.settings;
        let mut create = Vec::new();
        let fp = cloud::md5_fingerprint(&req.ssh_public_key).unwrap_or_default();
        if self.find_key(&fp).await?.is_none() {
            create.push(format!("ssh key {} ({fp})", Self::key_name(&fp)));
        }
        let tag = Self::network_tag(&req.network);
        if !self.tag_exists(&tag).await? {
            create.push(format!("tag {tag}"));
        }
        if self.find_firewall(&req.network).await?.is_none() {
            let from = req.allow_from.as_deref().unwrap_or("your detected address");
            create.push(format!(
                "firewall {} (in: tcp 22 from {from}, tcp {} from tag {tag})",
                Self::firewall_name(&req.network),
                req.p2p_port
            ));
        }
        for i in (1..=req.nodes).filter(|i| !have.contains(i)) {
            create.push(format!(
                "droplet {} {} {} {} (${price:.5}/h)",
                cloud::host_name(&req.network, i),
                s.size,
                s.region,
                s.image
            ));
        }
        // Droplets beyond `nodes` are kept, so they are paid for too.
        let total = req.nodes + have.iter().filter(|i| **i > req.nodes).count();
        Ok(Plan { existing, create, hourly_usd: Some(price * total as f64) })
    }

    async fn create(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError> {
        cloud::check_network_name(NAME, &req.network)?;
        let public_key = cloud::parse_public_key(NAME, &req.ssh_public_key)?;
        // Resolved before anything is created, so a bad --allow-from costs nothing.
        let ssh_cidr = cloud::ssh_cidr(NAME, req.allow_from.as_deref(), self.detector.as_ref()).await?;
        let key_id = self.ensure_key(&public_key).await?;
        let tag = Self::network_tag(&req.network);
        // The firewall names the tag, which must exist first; creating it before the droplets
        // means they are behind the firewall from their first boot.
        if !self.tag_exists(&tag).await? {
            self.api
                .call(Method::POST, self.api.url("/v2/tags", &[]), Some(&json!({ "name": tag })))
                .await
                .map_err(|e| e.into_provider("creating the network's tag"))?;
        }
        self.ensure_firewall(&req.network, req.p2p_port, &ssh_cidr).await?;
        self.create_missing(req, key_id, progress).await?;
        self.wait_ready(req, progress).await
    }

    async fn list(&self, network: &str) -> Result<Vec<Host>, ProviderError> {
        cloud::check_network_name(NAME, network)?;
        Ok(Self::hosts(network, &self.droplets(network).await?))
    }

    async fn destroy(&self, network: &str, progress: &dyn Progress) -> Result<Vec<String>, ProviderError> {
        cloud::check_network_name(NAME, network)?;
        let tag = Self::network_tag(network);
        let mut deleted = Vec::new();
        let droplets = self.droplets(network).await?;
        if !droplets.is_empty() {
            for d in &droplets {
                progress.step(&d.name, "deleting droplet");
            }
            self.api
                .call(Method::DELETE, self.api.url("/v2/droplets", &[("tag_name", &tag)]), None)
                .await
                .map_err(|e| e.into_provider("deleting the network's droplets"))?;
            let deadline = Instant::now() + self.settings.wait_timeout;
            loop {
                let left = self.droplets(network).await?;
                if left.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    let names: Vec<&str> = left.iter().map(|d| d.name.as_str()).collect();
                    return Err(ProviderError::new(
                        NAME,
                        format!("droplets still listed after deletion: {}", names.join(", ")),
                    )
                    .with_hint("run `timectl destroy` again; it deletes by tag"));
                }
                tokio::time::sleep(self.settings.poll_interval).await;
            }
            for d in &droplets {
                progress.step(&d.name, "deleted");
                deleted.push(format!("droplet {} (id {})", d.name, d.id));
            }
        }
        if let Some(fw) = self.find_firewall(network).await? {
            let id = fw["id"].as_str().unwrap_or_default();
            self.api
                .call(Method::DELETE, self.api.url(&format!("/v2/firewalls/{id}"), &[]), None)
                .await
                .map_err(|e| e.into_provider("deleting the Cloud Firewall"))?;
            deleted.push(format!("firewall {} (id {id})", Self::firewall_name(network)));
        }
        if self.tag_exists(&tag).await? {
            self.api
                .call(Method::DELETE, self.api.url(&format!("/v2/tags/{tag}"), &[]), None)
                .await
                .map_err(|e| e.into_provider("deleting the network's tag"))?;
            deleted.push(format!("tag {tag}"));
        }
        self.destroy_keys_if_unused(&mut deleted).await?;
        Ok(deleted)
    }
}

/// The fields of a droplet the provider uses.
#[derive(Clone, Debug)]
struct Droplet {
    id: u64,
    name: String,
    status: String,
    public_v4: Option<String>,
    private_v4: Option<String>,
}

impl Droplet {
    fn parse(v: &Value) -> Option<Droplet> {
        let v4 = v["networks"]["v4"].as_array();
        let addr = |kind: &str| {
            v4.into_iter()
                .flatten()
                .find(|n| n["type"].as_str() == Some(kind))
                .and_then(|n| n["ip_address"].as_str())
                .map(String::from)
        };
        Some(Droplet {
            id: v["id"].as_u64()?,
            name: v["name"].as_str()?.to_string(),
            status: v["status"].as_str().unwrap_or("").to_string(),
            public_v4: addr("public"),
            private_v4: addr("private"),
        })
    }
}

/// A failed API request: the HTTP status (none when no answer came) and DigitalOcean's own
/// error `id` and `message`.
#[derive(Debug)]
struct ApiError {
    status: Option<StatusCode>,
    id: String,
    message: String,
    source: Option<reqwest::Error>,
}

impl ApiError {
    /// A 5xx or a lost connection: the request may or may not have been carried out.
    fn is_uncertain(&self) -> bool {
        self.status.is_none_or(|s| s.is_server_error())
    }

    fn describe(&self) -> String {
        match self.status {
            Some(s) => format!("DigitalOcean answered {} {}: {}", s.as_u16(), self.id, self.message),
            None => format!("no answer from DigitalOcean: {}", self.message),
        }
    }

    fn into_provider(self, doing: &str) -> ProviderError {
        let hint = match self.status.map(|s| s.as_u16()) {
            Some(401) => Some(format!("check the token in {} (it may be expired or revoked)", TOKEN_VARS[0])),
            Some(403) => Some("the token needs read and write scope".to_string()),
            Some(429) => Some("the account's rate limit was hit; wait a minute and run again".to_string()),
            Some(s) if s >= 500 => Some("DigitalOcean had a problem; run again later (it is idempotent)".to_string()),
            None => Some("check your network connection".to_string()),
            _ => None,
        };
        let describe = self.describe();
        let mut e = ProviderError::new(NAME, format!("{doing}: {describe}"));
        if let Some(h) = hint {
            e = e.with_hint(h);
        }
        if let Some(s) = self.source {
            // reqwest's error names the URL, never the headers, so the token cannot appear.
            e = e.with_source(s.without_url());
        }
        e
    }
}

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> Self {
        e.into_provider("calling the API")
    }
}

struct Api {
    http: reqwest::Client,
    base: Url,
    page_size: u32,
    retries: u32,
    backoff: Duration,
}

impl Api {
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{}", self.base.path().trim_end_matches('/'), path));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn backoff_delay(&self, attempt: u32) -> Duration {
        (self.backoff * 2u32.saturating_pow(attempt.saturating_sub(1))).min(Duration::from_secs(16))
    }

    /// How long a 429 asks to wait: `retry-after` seconds, else until `ratelimit-reset` (a
    /// Unix time), within reason.
    fn rate_limit_wait(headers: &HeaderMap) -> Duration {
        let num = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let secs = if let Some(s) = num("retry-after") {
            s as f64
        } else if let Some(reset) = num("ratelimit-reset") {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            reset as f64 - now
        } else {
            1.0
        };
        Duration::from_secs_f64(secs.clamp(0.2, 120.0))
    }

    /// One request with DigitalOcean's retry rules: 429 always waits and retries (nothing was
    /// done); 5xx and lost connections retry with backoff only for GET, PUT and DELETE, whose
    /// repetition is harmless. Creates are retried by the caller after listing.
    async fn call(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Value, ApiError> {
        let repeatable = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let may_retry = attempt <= self.retries;
            let mut rb = self.http.request(method.clone(), url.clone());
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    if repeatable && may_retry && (e.is_connect() || e.is_timeout()) {
                        tracing::warn!(%method, path = url.path(), "no answer from DigitalOcean; retrying");
                        tokio::time::sleep(self.backoff_delay(attempt)).await;
                        continue;
                    }
                    return Err(ApiError { status: None, id: String::new(), message: e.to_string(), source: Some(e) });
                }
            };
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS && may_retry {
                let wait = Self::rate_limit_wait(resp.headers());
                tracing::warn!(%method, path = url.path(), wait_ms = wait.as_millis() as u64, "rate limited by DigitalOcean; waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_server_error() && repeatable && may_retry {
                tracing::warn!(%method, path = url.path(), status = status.as_u16(), "DigitalOcean server error; retrying");
                tokio::time::sleep(self.backoff_delay(attempt)).await;
                continue;
            }
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text).map_err(|e| ApiError {
                    status: Some(status),
                    id: "invalid_json".into(),
                    message: format!("unreadable answer to {method} {}: {e}", url.path()),
                    source: None,
                });
            }
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(ApiError {
                status: Some(status),
                id: v["id"].as_str().unwrap_or("unknown").to_string(),
                message: v["message"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("{} (no error body)", status.canonical_reason().unwrap_or("error"))),
                source: None,
            });
        }
    }

    /// Every item of a paginated list, following `links.pages.next`. Links are followed only
    /// on the API's own origin: the token goes with every request.
    async fn get_all(&self, path: &str, query: &[(&str, &str)], key: &str) -> Result<Vec<Value>, ProviderError> {
        let per_page = self.page_size.to_string();
        let mut q = query.to_vec();
        q.push(("per_page", &per_page));
        let mut url = self.url(path, &q);
        let mut items = Vec::new();
        for _ in 0..10_000 {
            let v = self
                .call(Method::GET, url.clone(), None)
                .await
                .map_err(|e| e.into_provider(&format!("listing {path}")))?;
            items.extend(v[key].as_array().cloned().unwrap_or_default());
            let Some(next) = v["links"]["pages"]["next"].as_str() else {
                return Ok(items);
            };
            let next = Url::parse(next)
                .ok()
                .filter(|n| n.origin() == self.base.origin())
                .ok_or_else(|| ProviderError::new(NAME, format!("pagination link {next:?} leaves the API")))?;
            url = next;
        }
        Err(ProviderError::new(NAME, format!("listing {path} did not end after 10000 pages")))
    }
}

#[cfg(test)]
mod fake_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comes_from_either_variable_and_is_never_shown() {
        let t = Token::from_lookup(|k| (k == "DIGITALOCEAN_TOKEN").then(|| "dop_v1_secret".to_string())).unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        let first = Token::from_lookup(|k| Some(format!("{k}-value"))).unwrap();
        assert_eq!(first.0, "DIGITALOCEAN_ACCESS_TOKEN-value");
        let err = Token::from_lookup(|_| Some("  ".into())).unwrap_err();
        assert!(err.message.contains("DIGITALOCEAN_ACCESS_TOKEN"), "{err}");
        assert!(err.hint.unwrap().contains("https://cloud.digitalocean.com/account/api/tokens"));
    }

    #[test]
    fn rate_limit_wait_prefers_retry_after_then_reset() {
        let mut h = HeaderMap::new();
        assert_eq!(Api::rate_limit_wait(&h), Duration::from_secs(1));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        h.insert("ratelimit-reset", HeaderValue::from_str(&(now + 3).to_string()).unwrap());
        let w = Api::rate_limit_wait(&h);
        assert!(w > Duration::from_millis(1500) && w <= Duration::from_secs(3), "{w:?}");
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(Api::rate_limit_wait(&h), Duration::from_secs(2));
    }

    #[test]
    fn unchanged_firewall_is_recognized_and_a_new_address_is_not() {
        let a = DigitalOcean::firewall_body("tn", 24100, "198.51.100.7/32");
        let b = DigitalOcean::firewall_body("tn", 24100, "198.51.100.8/32");
        assert_eq!(DigitalOcean::inbound_key(&a), DigitalOcean::inbound_key(&a.clone()));
        assert_ne!(DigitalOcean::inbound_key(&a), DigitalOcean::inbound_key(&b));
        // No RPC rule: exactly SSH and P2P inbound.
        assert_eq!(a["inbound_rules"].as_array().unwrap().len(), 2);
    }
}
