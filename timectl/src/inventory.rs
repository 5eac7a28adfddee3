//! Inventories: one TOML file per network naming its nodes and how to reach them. Provisioning
//! (local now, cloud providers later) writes one; every other command reads it. Secrets never
//! belong here, so unknown keys are rejected rather than silently carried along.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Who created a network's hosts, and so who may delete them. The names are the command
/// line's (`--provider NAME`); older inventories' names still load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum ProviderKind {
    /// Processes on this machine, started by `timectl local up`.
    #[serde(rename = "local")]
    #[value(skip)]
    Local,
    /// Hosts someone else provisioned, listed by hand.
    #[serde(rename = "ssh", alias = "static")]
    #[value(name = "ssh")]
    Ssh,
    /// Containers with systemd and sshd on this machine (`timectl deploy --provider rehearsal`).
    #[serde(rename = "rehearsal")]
    #[value(name = "rehearsal")]
    Rehearsal,
    /// DigitalOcean droplets.
    #[serde(rename = "do", alias = "digitalocean")]
    #[value(name = "do")]
    Do,
    /// AWS EC2 instances.
    #[serde(rename = "aws", alias = "ec2")]
    #[value(name = "aws")]
    Aws,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Ssh => "ssh",
            ProviderKind::Rehearsal => "rehearsal",
            ProviderKind::Do => "do",
            ProviderKind::Aws => "aws",
        }
    }

    /// Whether the operator reaches the nodes' RPC through an SSH local forward (every
    /// provider but `local`, whose processes listen on this machine).
    pub fn tunnels_rpc(self) -> bool {
        self != ProviderKind::Local
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub network: String,
    pub provider: ProviderKind,
    /// RFC 3339 UTC time the network was provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// What one host costs per hour in USD, as the cloud's price list said when provisioned
    /// (`status` shows the network's cost from it). Absent where unknown or free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_usd_per_host: Option<f64>,
    /// The operator's private key file the hosts accept (`--ssh-identity` at provisioning), so
    /// later commands reach them without the flag. A path only: the key stays where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_identity: Option<PathBuf>,
    #[serde(default)]
    pub nodes: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// "host:port" other nodes dial.
    pub p2p: String,
    /// "host:port" the JSON-RPC (and /metrics) listener binds on the node's own host. On
    /// remote hosts this is loopback (`127.0.0.1:PORT`): the operator reaches it through an SSH
    /// local forward (see `ProviderKind::tunnels_rpc`), never directly.
    pub rpc: String,
    pub validator_id: String,
    /// Droplet or instance id, so teardown deletes exactly what provisioning made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// Credentials for the node's wallet methods, read at run time (the RPC cookie over SSH);
    /// never written to or read from the file.
    #[serde(skip)]
    pub rpc_auth: Option<RpcAuth>,
}

/// `user:password` for HTTP basic auth. Its `Debug` hides the value so that no log line or
/// error message can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct RpcAuth(pub String);

impl std::fmt::Debug for RpcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcAuth(<redacted>)")
    }
}

impl Node {
    pub fn rpc_url(&self) -> String {
        format!("http://{}/", self.rpc)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("no inventory given")]
    NoneGiven,
    #[error("cannot read inventory {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write inventory {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory {path} has no node named {name:?} (it has: {known})")]
    UnknownNode { path: PathBuf, name: String, known: String },
}

impl InventoryError {
    pub fn hint(&self) -> Option<String> {
        match self {
            InventoryError::NoneGiven => {
                Some("pass --inventory FILE or --network NAME, or run `timectl local up`".into())
            }
            InventoryError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Some(
                "list the inventories with `ls inventories/`, or start a local network with `timectl local up`".into(),
            ),
            InventoryError::Parse { .. } => Some("the format is described in docs/inventory.md".into()),
            _ => None,
        }
    }
}

/// 1-based line and column of a byte offset, the way editors count.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// "host:port" with a non-empty host and a numeric port; hosts may be names (static inventories
/// often use DNS) or IPv6 in brackets.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not host:port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{s:?} has no valid host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("{s:?}: IPv6 hosts need brackets, like [::1]:8080"));
    }
    port.parse::<u16>().map_err(|_| format!("{s:?} has no valid port"))?;
    Ok(())
}

impl Inventory {
    pub fn parse(src: &str, path: &Path) -> Result<Self, InventoryError> {
        let inv: Inventory = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(src, s.start));
            InventoryError::Parse { path: path.to_path_buf(), line, column, message: e.message().trim().to_string() }
        })?;
        inv.validate().map_err(|message| InventoryError::Invalid { path: path.to_path_buf(), message })?;
        Ok(inv)
    }

    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let src = std::fs::read_to_string(path)
            .map_err(|source| InventoryError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&src, path)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.network.trim().is_empty() {
            return Err("network must not be empty".into());
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for n in &self.nodes {
            if n.name.trim().is_empty() {
                return Err("a node has an empty name".into());
            }
            if !names.insert(n.name.as_str()) {
                return Err(format!("node name {:?} appears more than once", n.name));
            }
            if !ids.insert(n.validator_id.as_str()) {
                return Err(format!("validator_id {:?} appears more than once (node {:?})", n.validator_id, n.name));
            }
            check_host_port(&n.p2p).map_err(|e| format!("node {:?}: p2p: {e}", n.name))?;
            check_host_port(&n.rpc).map_err(|e| format!("node {:?}: rpc: {e}", n.name))?;
        }
        Ok(())
    }

    /// Writes atomically (temp file + rename) so a crash never leaves half an inventory.
    pub fn save(&self, path: &Path) -> Result<(), InventoryError> {
        let werr = |source| InventoryError::Write { path: path.to_path_buf(), source };
        let text = toml::to_string_pretty(self).expect("inventory serializes");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(werr)
    }

    /// The nodes named, in inventory order, or all of them when `names` is empty.
    pub fn select(&self, names: &[String], path: &Path) -> Result<Vec<Node>, InventoryError> {
        for name in names {
            if !self.nodes.iter().any(|n| &n.name == name) {
                return Err(InventoryError::UnknownNode {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    known: self.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
                });
            }
        }
        Ok(self.nodes.iter().filter(|n| names.is_empty() || names.contains(&n.name)).cloned().collect())
    }
}

/// Where `--network NAME` looks: `inventories/` under the working directory unless
/// `TIMECTL_INVENTORY_DIR` says otherwise.
pub fn inventory_dir() -> PathBuf {
    std::env::var_os("TIMECTL_INVENTORY_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("inventories"))
}

pub fn network_path(name: &str) -> PathBuf {
    inventory_dir().join(format!("{name}.toml"))
}

/// State that outlives one invocation (the last inventory used).
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TIMECTL_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("timectl"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/timectl"))
}

/// A deployed network's materials (keys, genesis, configs, pinned host keys), outside
/// `inventories/` so that inventories can be shared without secrets: `STATE/networks/NAME`.
pub fn network_state_dir(network: &str) -> PathBuf {
    state_dir().unwrap_or_else(|| PathBuf::from(".timectl")).join("networks").join(network)
}

fn last_inventory_file() -> Option<PathBuf> {
    state_dir().map(|d| d.join("last-inventory"))
}

/// Remembers `path` as the default for later commands. Best effort: failing to remember must
/// not fail the command that just worked.
pub fn remember(path: &Path) {
    let Some(file) = last_inventory_file() else {
        return;
    };
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let result = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&file, abs.to_string_lossy().as_bytes()));
    if let Err(e) = result {
        tracing::warn!("cannot remember the last inventory in {}: {e}", file.display());
    }
}

/// Drops the remembered default if it is `path` (its network was just wiped).
pub fn forget(path: &Path) {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if let (Some(file), Some(last)) = (last_inventory_file(), last_used()) {
        if last == abs {
            let _ = std::fs::remove_file(file);
        }
    }
}

pub fn last_used() -> Option<PathBuf> {
    let text = std::fs::read_to_string(last_inventory_file()?).ok()?;
    let p = text.trim();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

/// The inventory a command should use: `--inventory`, else `--network`, else the last used.
pub fn resolve_path(file: Option<&Path>, network: Option<&str>) -> Result<PathBuf, InventoryError> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    if let Some(n) = network {
        return Ok(network_path(n));
    }
    last_used().ok_or(InventoryError::NoneGiven)
}

/// Resolves, loads and remembers the inventory.
pub fn open(file: Option<&Path>, network: Option<&str>) -> Result<(PathBuf, Inventory), InventoryError> {
    let path = resolve_path(file, network)?;
    let inv = Inventory::load(&path)?;
    remember(&path);
    Ok((path, inv))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
network = "t"
provider = "static"

[[nodes]]
name = "a"
host = "192.0.2.1"
ssh_user = "timecoin"
ssh_port = 22
p2p = "192.0.2.1:8001"
rpc = "127.0.0.1:8080"
validator_id = "validator1"

[[nodes]]
name = "b"
host = "node-b.example.com"
p2p = "node-b.example.com:8001"
rpc = "[::1]:8080"
validator_id = "validator2"
"#;

    fn p() -> &'static Path {
        Path::new("inventories/t.toml")
    }

    #[test]
    fn parses_good_inventory() {
        let inv = Inventory::parse(GOOD, p()).unwrap();
        assert_eq!(inv.provider, ProviderKind::Ssh);
        assert_eq!(inv.nodes.len(), 2);
        assert_eq!(inv.nodes[0].ssh_port, Some(22));
        assert_eq!(inv.nodes[1].rpc_url(), "http://[::1]:8080/");
    }

    #[test]
    fn parse_error_names_file_and_line() {
        let src = "network = \"t\"\nprovider = \"static\"\n[[nodes]]\nname = \n";
        let e = Inventory::parse(src, p()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("inventories/t.toml:4:"), "{msg}");
    }

    #[test]
    fn secret_is_rejected_as_unknown_key() {
        let src =
            GOOD.replace("validator_id = \"validator1\"", "validator_id = \"validator1\"\npassword = \"hunter2\"");
        let e = Inventory::parse(&src, p()).unwrap_err();
        match &e {
            InventoryError::Parse { line, message, .. } => {
                assert_eq!(*line, 13);
                assert!(message.contains("unknown field `password`"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // The value never shows in the message.
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn provider_names_and_old_aliases() {
        for (text, kind) in [
            ("local", ProviderKind::Local),
            ("ssh", ProviderKind::Ssh),
            ("static", ProviderKind::Ssh),
            ("rehearsal", ProviderKind::Rehearsal),
            ("do", ProviderKind::Do),
            ("digitalocean", ProviderKind::Do),
            ("aws", ProviderKind::Aws),
            ("ec2", ProviderKind::Aws),
        ] {
            let inv = Inventory::parse(&GOOD.replace("\"static\"", &format!("\"{text}\"")), p()).unwrap();
            assert_eq!(inv.provider, kind, "{text}");
            // Written back under the command line's name.
            let written = toml::to_string(&inv).unwrap();
            assert!(written.contains(&format!("provider = \"{}\"", kind.name())), "{written}");
        }
        assert!(!ProviderKind::Local.tunnels_rpc());
        assert!(ProviderKind::Ssh.tunnels_rpc() && ProviderKind::Rehearsal.tunnels_rpc());
    }

    #[test]
    fn unknown_provider_rejected() {
        let src = GOOD.replace("\"static\"", "\"gcp\"");
        let e = Inventory::parse(&src, p()).unwrap_err();
        assert!(matches!(e, InventoryError::Parse { line: 3, .. }), "{e}");
    }

    #[test]
    fn duplicates_and_bad_addresses_rejected() {
        let dup_name = GOOD.replace("name = \"b\"", "name = \"a\"");
        assert!(Inventory::parse(&dup_name, p())
            .unwrap_err()
            .to_string()
            .contains("node name \"a\" appears more than once"));
        let dup_id = GOOD.replace("\"validator2\"", "\"validator1\"");
        assert!(Inventory::parse(&dup_id, p()).unwrap_err().to_string().contains("validator_id \"validator1\""));
        let bad = GOOD.replace("192.0.2.1:8001", "192.0.2.1");
        assert!(Inventory::parse(&bad, p()).unwrap_err().to_string().contains("p2p"));
        let bad_port = GOOD.replace("127.0.0.1:8080", "127.0.0.1:99999");
        assert!(Inventory::parse(&bad_port, p()).is_err());
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/t.toml");
        let inv = Inventory::parse(GOOD, p()).unwrap();
        inv.save(&path).unwrap();
        assert_eq!(Inventory::load(&path).unwrap(), inv);
    }

    #[test]
    fn checked_in_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventories");
        for name in ["example-static.toml", "example-digitalocean.toml"] {
            let inv = Inventory::load(&dir.join(name)).unwrap();
            assert!(inv.nodes.len() >= 5, "{name}");
        }
    }

    #[test]
    fn select_unknown_node_lists_known() {
        let inv = Inventory::parse(GOOD, p()).unwrap();
        let e = inv.select(&["z".into()], p()).unwrap_err().to_string();
        assert!(e.contains("it has: a, b"), "{e}");
        assert_eq!(inv.select(&["b".into()], p()).unwrap().len(), 1);
        assert_eq!(inv.select(&[], p()).unwrap().len(), 2);
    }
}
