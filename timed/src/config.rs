//! Node configuration: command-line flags over an optional TOML file over defaults. With no
//! file and no genesis, the flags alone describe a devnet (see [`GenesisSource::Devnet`]).

use crate::chain::genesis::{valid_validator_id, GenesisConfig};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_P2P_PORT: u16 = 8001;
pub const DEFAULT_RPC_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_BLOCK_TIME: u64 = 10;
/// Default of `--max-pending-txs`. By Little's law the wait of an admitted transaction is about
/// this over the finalized rate: 2,000 is under 2 s at the 1,000+ tx/s measured on a quiet
/// machine (docs/benchmarks.md) and still lets 5,000 tx/s through at a 0.4 s finality.
pub const DEFAULT_MAX_PENDING_TXS: usize = 2_000;
/// Upper bound of `--threads`: a typo such as 80000 should fail at start, not exhaust the machine.
pub const MAX_THREADS: usize = 1024;
/// Heartbeats follow the block time but come at most every 5 s by default: each one costs
/// every other validator a signed attestation to all its peers (n·(n-1)² messages a round),
/// which at 1 s blocks was half of an idle node's traffic. Liveness is then noticed within
/// 15 s, in step with the P2P ping that drops a silent peer.
pub const HEARTBEAT_FLOOR_MS: u64 = 5_000;

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "timed",
    version,
    about = "TIME Coin validator node",
    after_help = "Examples:\n  \
    timed --validator-id validator1 --port 8001 --peers localhost:8002,localhost:8003 --rpc-bind 127.0.0.1:8081\n  \
    timed --config /etc/timed/timed.toml\n  \
    timed keygen --data-dir /var/lib/timed\n\n\
    Without --genesis, the node runs a devnet of validator1..validatorN whose keys anyone can derive (insecure, devnet only);\n\
    N is --devnet-validators, or 1 + the number of --peers."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML file with the same keys as these flags (snake_case); flags override it.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// This validator's id in the genesis (devnet: validator1..validatorN).
    #[arg(long, global = true)]
    pub validator_id: Option<String>,
    /// P2P listen port.
    #[arg(long)]
    pub port: Option<u16>,
    /// P2P listen address (port from --port).
    #[arg(long)]
    pub p2p_bind: Option<std::net::IpAddr>,
    /// Peers to dial at start, comma-separated host:port.
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// JSON-RPC (HTTP and WebSocket) listen address; also serves /metrics.
    #[arg(long)]
    pub rpc_bind: Option<SocketAddr>,
    /// Directory for the chain database, keys and the RPC cookie.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Seconds per slot (devnet genesis only; a genesis file sets its own).
    #[arg(long)]
    pub block_time: Option<u64>,
    /// Genesis file (TOML). Without it the node derives a devnet genesis.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Number of devnet validators (default: 1 + number of --peers).
    #[arg(long)]
    pub devnet_validators: Option<usize>,
    /// RPC user for wallet methods (with --rpc-password); otherwise a cookie file is used.
    #[arg(long)]
    pub rpc_user: Option<String>,
    #[arg(long, env = "TIMED_RPC_PASSWORD", hide_env_values = true)]
    pub rpc_password: Option<String>,
    /// Open RPC connections (HTTP and WebSocket), counted from accept [default: 128]. At the
    /// limit the least recently active connection is closed for the newcomer.
    #[arg(long)]
    pub rpc_max_connections: Option<u32>,
    /// Largest request body; a larger Content-Length gets 413 before the body is read [default: 1048576].
    #[arg(long)]
    pub rpc_max_request_bytes: Option<u32>,
    /// Calls in one batch [default: 100].
    #[arg(long)]
    pub rpc_max_batch: Option<u32>,
    /// Seconds a client has to send a request's headers and body [default: 10].
    #[arg(long)]
    pub rpc_read_timeout_secs: Option<u64>,
    /// Seconds an HTTP connection may sit idle between requests [default: 30].
    #[arg(long)]
    pub rpc_idle_timeout_secs: Option<u64>,
    /// Calls in flight on one WebSocket connection; more are refused at once [default: 16].
    #[arg(long)]
    pub rpc_max_ws_calls: Option<u32>,
    /// Long polls (waittransactionfinality) in flight on the whole node [default: 64].
    #[arg(long)]
    pub rpc_max_long_polls: Option<u32>,
    /// Browser origins allowed to call RPC (e.g. https://wallet.example); none by default.
    #[arg(long, value_delimiter = ',')]
    pub rpc_allow_origin: Option<Vec<String>>,
    /// Host names RPC answers to besides IP literals and localhost (DNS rebinding guard).
    #[arg(long, value_delimiter = ',')]
    pub rpc_allow_host: Option<Vec<String>>,
    /// Inbound P2P handshakes in progress at once [default: 64].
    #[arg(long)]
    pub p2p_max_pending: Option<usize>,
    /// Inbound P2P handshakes in progress from one non-loopback IP [default: 4].
    #[arg(long)]
    pub p2p_max_pending_per_ip: Option<usize>,
    /// Milliseconds a P2P handshake may take [default: 3000].
    #[arg(long)]
    pub p2p_handshake_timeout_ms: Option<u64>,
    /// Seconds between masternode heartbeats (default: the block time, at least 5).
    #[arg(long)]
    pub heartbeat_secs: Option<u64>,
    /// Milliseconds a slot leader has before the next-ranked backup may propose.
    #[arg(long)]
    pub propose_timeout_ms: Option<u64>,
    #[arg(long)]
    pub avalanche_k: Option<usize>,
    #[arg(long)]
    pub avalanche_alpha_preference: Option<usize>,
    #[arg(long)]
    pub avalanche_alpha_confidence: Option<usize>,
    #[arg(long)]
    pub avalanche_beta: Option<u32>,
    /// Transactions waiting for finality before clients get `mempool-full` (peers get 3x).
    #[arg(long)]
    pub max_pending_txs: Option<usize>,
    /// Seconds an undecided transaction waits before it is rejected as expired.
    #[arg(long)]
    pub tx_expiry_secs: Option<u64>,
    /// Worker threads of the node's async runtime [default: the machine's cores]. Lower it
    /// when several nodes share one machine. Signature checks run on their own threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Create (or show) random validator and wallet keys in --data-dir and print this
    /// validator's [[validators]] entry for a genesis file.
    Keygen,
    /// Print the genesis this configuration would use, as TOML.
    ShowGenesis,
}

/// The file form: the same settings as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub validator_id: Option<String>,
    pub port: Option<u16>,
    pub p2p_bind: Option<std::net::IpAddr>,
    pub peers: Option<Vec<String>>,
    pub rpc_bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub block_time: Option<u64>,
    pub genesis: Option<PathBuf>,
    pub devnet_validators: Option<usize>,
    pub rpc_user: Option<String>,
    pub rpc_max_connections: Option<u32>,
    pub rpc_max_request_bytes: Option<u32>,
    pub rpc_max_batch: Option<u32>,
    pub rpc_read_timeout_secs: Option<u64>,
    pub rpc_idle_timeout_secs: Option<u64>,
    pub rpc_max_ws_calls: Option<u32>,
    pub rpc_max_long_polls: Option<u32>,
    pub rpc_allow_origin: Option<Vec<String>>,
    pub rpc_allow_host: Option<Vec<String>>,
    pub p2p_max_pending: Option<usize>,
    pub p2p_max_pending_per_ip: Option<usize>,
    pub p2p_handshake_timeout_ms: Option<u64>,
    pub heartbeat_secs: Option<u64>,
    pub propose_timeout_ms: Option<u64>,
    pub avalanche_k: Option<usize>,
    pub avalanche_alpha_preference: Option<usize>,
    pub avalanche_alpha_confidence: Option<usize>,
    pub avalanche_beta: Option<u32>,
    pub max_pending_txs: Option<usize>,
    pub tx_expiry_secs: Option<u64>,
    pub threads: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot read genesis file {path}")]
    ReadGenesis { path: PathBuf, source: std::io::Error },
    #[error("genesis file {path} is not valid: {message}")]
    ParseGenesis { path: PathBuf, message: String },
    #[error("genesis is not valid")]
    Genesis(#[from] crate::chain::genesis::GenesisError),
    #[error("--validator-id is required")]
    MissingValidatorId,
    #[error("validator id {0:?} must be 1-64 characters of [A-Za-z0-9._-]")]
    BadValidatorId(String),
    #[error("validator {id:?} is not in the genesis (its validators: {known})")]
    NotInGenesis { id: String, known: String },
    #[error("--rpc-user and --rpc-password must be given together")]
    PartialCredentials,
    #[error("{0}")]
    Invalid(String),
}

/// RPC front-door limits and browser rules (see docs/security.md).
#[derive(Debug, Clone)]
pub struct RpcLimits {
    pub read_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub max_ws_calls: u32,
    pub max_long_polls: u32,
    /// Exact `Origin` values allowed; empty refuses every browser page.
    pub allow_origins: Vec<String>,
    /// Host names accepted besides IP literals and `localhost`.
    pub allow_hosts: Vec<String>,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            read_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(30),
            max_ws_calls: 16,
            max_long_polls: 64,
            allow_origins: Vec::new(),
            allow_hosts: Vec::new(),
        }
    }
}

/// P2P admission limits (see docs/security.md).
#[derive(Debug, Clone, Copy)]
pub struct P2pLimits {
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
    pub handshake_timeout: std::time::Duration,
}

impl Default for P2pLimits {
    fn default() -> Self {
        P2pLimits { max_pending: 64, max_pending_per_ip: 4, handshake_timeout: std::time::Duration::from_millis(3000) }
    }
}

/// Where the genesis came from; devnets have public keys that anyone can derive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenesisSource {
    Devnet,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub validator_id: String,
    pub p2p_listen: SocketAddr,
    pub peers: Vec<String>,
    pub rpc_bind: SocketAddr,
    pub data_dir: PathBuf,
    pub genesis: GenesisConfig,
    pub genesis_source: GenesisSource,
    pub rpc_credentials: Option<(String, String)>,
    pub rpc_max_connections: u32,
    pub rpc_max_request_bytes: u32,
    pub rpc_max_batch: u32,
    pub rpc_limits: RpcLimits,
    pub p2p_limits: P2pLimits,
    pub heartbeat_ms: u64,
    pub propose_timeout_ms: u64,
    pub avalanche: crate::consensus::snowball::SnowballParams,
    /// See `--max-pending-txs`.
    pub max_pending_txs: usize,
    /// See `--threads`.
    pub threads: usize,
}

impl NodeConfig {
    pub fn is_devnet(&self) -> bool {
        self.genesis_source == GenesisSource::Devnet
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, (bool, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| (true, e.to_string()))?;
    toml::from_str(&text).map_err(|e| (false, e.to_string()))
}

pub fn load_genesis(path: &Path) -> Result<GenesisConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::ReadGenesis { path: path.into(), source })?;
    let g: GenesisConfig =
        toml::from_str(&text).map_err(|e| ConfigError::ParseGenesis { path: path.into(), message: e.to_string() })?;
    g.validate()?;
    Ok(g)
}

fn clean_list(v: Option<Vec<String>>) -> Vec<String> {
    v.unwrap_or_default().into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn default_data_dir(validator_id: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".timecoin").join(validator_id)
}

impl Cli {
    /// Merges flags, file and defaults into a checked configuration.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let file: FileConfig = match &self.config {
            Some(path) => read_toml(path).map_err(|(io, message)| {
                if io {
                    ConfigError::Read { path: path.clone(), source: std::io::Error::other(message) }
                } else {
                    ConfigError::Parse { path: path.clone(), message }
                }
            })?,
            None => FileConfig::default(),
        };
        let validator_id = self.validator_id.clone().or(file.validator_id).ok_or(ConfigError::MissingValidatorId)?;
        if !valid_validator_id(&validator_id) {
            return Err(ConfigError::BadValidatorId(validator_id));
        }
        let peers: Vec<String> = self.peers.clone().or(file.peers).unwrap_or_default();
        let peers: Vec<String> = peers.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
        for p in &peers {
            let ok = p.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::Invalid(format!("peer {p:?} is not host:port")));
            }
        }
        let port = self.port.or(file.port).unwrap_or(DEFAULT_P2P_PORT);
        let p2p_ip = self.p2p_bind.or(file.p2p_bind).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let rpc_bind =
            self.rpc_bind.or(file.rpc_bind).unwrap_or_else(|| DEFAULT_RPC_BIND.parse().expect("valid default"));
        let block_time = self.block_time.or(file.block_time);
        let genesis_path = self.genesis.clone().or(file.genesis);
        let (genesis, genesis_source) = match genesis_path {
            Some(path) => {
                let g = load_genesis(&path)?;
                if let Some(bt) = block_time {
                    if bt != g.block_time_secs {
                        return Err(ConfigError::Invalid(format!(
                            "--block-time {bt} differs from the genesis block time {}; the genesis decides",
                            g.block_time_secs
                        )));
                    }
                }
                (g, GenesisSource::File(path))
            }
            None => {
                let n = self.devnet_validators.or(file.devnet_validators).unwrap_or(peers.len() + 1);
                if !(1..=100).contains(&n) {
                    return Err(ConfigError::Invalid(format!("--devnet-validators must be 1..=100, got {n}")));
                }
                let g = GenesisConfig::devnet(n, block_time.unwrap_or(DEFAULT_BLOCK_TIME));
                g.validate()?;
                (g, GenesisSource::Devnet)
            }
        };
        if genesis.validator_index(&validator_id).is_none() {
            let known: Vec<&str> = genesis.validators.iter().map(|v| v.id.as_str()).collect();
            let mut known = known.join(", ");
            if genesis_source == GenesisSource::Devnet {
                known.push_str("; pass --devnet-validators N for a larger devnet");
            }
            return Err(ConfigError::NotInGenesis { id: validator_id, known });
        }
        let rpc_credentials = match (self.rpc_user.clone().or(file.rpc_user), self.rpc_password.clone()) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(ConfigError::PartialCredentials),
        };
        let bt_ms = genesis.block_time_secs * 1000;
        let heartbeat_ms = self
            .heartbeat_secs
            .or(file.heartbeat_secs)
            .map(|s| s * 1000)
            .unwrap_or(bt_ms.max(HEARTBEAT_FLOOR_MS))
            .max(500);
        // The leader gets 40% of a slot before the first backup may step in.
        let propose_timeout_ms =
            self.propose_timeout_ms.or(file.propose_timeout_ms).unwrap_or((bt_ms * 2 / 5).max(500));
        let mut avalanche = crate::consensus::snowball::SnowballParams::default();
        if let Some(k) = self.avalanche_k.or(file.avalanche_k) {
            avalanche.k = k;
        }
        if let Some(a) = self.avalanche_alpha_preference.or(file.avalanche_alpha_preference) {
            avalanche.alpha_preference = a;
        }
        if let Some(a) = self.avalanche_alpha_confidence.or(file.avalanche_alpha_confidence) {
            avalanche.alpha_confidence = a;
        }
        if let Some(b) = self.avalanche_beta.or(file.avalanche_beta) {
            avalanche.beta = b;
        }
        if let Some(x) = self.tx_expiry_secs.or(file.tx_expiry_secs) {
            avalanche.expiry_secs = x;
        }
        let max_pending_txs = self.max_pending_txs.or(file.max_pending_txs).unwrap_or(DEFAULT_MAX_PENDING_TXS);
        if max_pending_txs == 0 {
            return Err(ConfigError::Invalid("--max-pending-txs must be at least 1".into()));
        }
        avalanche.validate().map_err(|e| ConfigError::Invalid(format!("avalanche parameters: {e}")))?;
        let threads = match self.threads.or(file.threads) {
            Some(n) if n == 0 || n > MAX_THREADS => {
                return Err(ConfigError::Invalid(format!("--threads must be between 1 and {MAX_THREADS}, not {n}")))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        };
        let d = RpcLimits::default();
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid(format!("--{name} must be at least 1")))
            } else {
                Ok(v)
            }
        };
        let secs = std::time::Duration::from_secs;
        let rpc_limits = RpcLimits {
            read_timeout: match self.rpc_read_timeout_secs.or(file.rpc_read_timeout_secs) {
                Some(v) => secs(positive("rpc-read-timeout-secs", v)?),
                None => d.read_timeout,
            },
            idle_timeout: match self.rpc_idle_timeout_secs.or(file.rpc_idle_timeout_secs) {
                Some(v) => secs(positive("rpc-idle-timeout-secs", v)?),
                None => d.idle_timeout,
            },
            max_ws_calls: positive(
                "rpc-max-ws-calls",
                self.rpc_max_ws_calls.or(file.rpc_max_ws_calls).unwrap_or(d.max_ws_calls).into(),
            )? as u32,
            max_long_polls: positive(
                "rpc-max-long-polls",
                self.rpc_max_long_polls.or(file.rpc_max_long_polls).unwrap_or(d.max_long_polls).into(),
            )? as u32,
            allow_origins: clean_list(self.rpc_allow_origin.clone().or(file.rpc_allow_origin)),
            allow_hosts: clean_list(self.rpc_allow_host.clone().or(file.rpc_allow_host))
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        };
        let pd = P2pLimits::default();
        let p2p_limits = P2pLimits {
            max_pending: positive(
                "p2p-max-pending",
                self.p2p_max_pending.or(file.p2p_max_pending).unwrap_or(pd.max_pending) as u64,
            )? as usize,
            max_pending_per_ip: positive(
                "p2p-max-pending-per-ip",
                self.p2p_max_pending_per_ip.or(file.p2p_max_pending_per_ip).unwrap_or(pd.max_pending_per_ip) as u64,
            )? as usize,
            handshake_timeout: match self.p2p_handshake_timeout_ms.or(file.p2p_handshake_timeout_ms) {
                Some(ms) => std::time::Duration::from_millis(positive("p2p-handshake-timeout-ms", ms)?),
                None => pd.handshake_timeout,
            },
        };
        let rpc_max_connections = self.rpc_max_connections.or(file.rpc_max_connections).unwrap_or(128);
        positive("rpc-max-connections", rpc_max_connections.into())?;
        Ok(NodeConfig {
            data_dir: self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| default_data_dir(&validator_id)),
            validator_id,
            p2p_listen: SocketAddr::new(p2p_ip, port),
            peers,
            rpc_bind,
            genesis,
            genesis_source,
            rpc_credentials,
            rpc_max_connections,
            rpc_max_request_bytes: self.rpc_max_request_bytes.or(file.rpc_max_request_bytes).unwrap_or(1024 * 1024),
            rpc_max_batch: self.rpc_max_batch.or(file.rpc_max_batch).unwrap_or(100),
            rpc_limits,
            p2p_limits,
            heartbeat_ms,
            propose_timeout_ms,
            avalanche,
            max_pending_txs,
            threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("timed").chain(args.iter().copied()))
    }

    #[test]
    fn plan_command_line_gives_a_devnet_of_three() {
        let c = cli(&[
            "--validator-id",
            "validator1",
            "--port",
            "8001",
            "--peers",
            "localhost:8002,localhost:8003",
            "--rpc-bind",
            "0.0.0.0:8081",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.genesis.validators.len(), 3);
        assert_eq!(c.peers, vec!["localhost:8002", "localhost:8003"]);
        assert_eq!(c.p2p_listen.port(), 8001);
        assert!(c.is_devnet());
        let other = cli(&["--validator-id", "validator3", "--peers", "a:1,b:2"]).resolve().unwrap();
        assert_eq!(c.genesis.genesis_hash(), other.genesis.genesis_hash());
    }

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "validator_id = \"validator2\"\nport = 9000\ndevnet_validators = 4\n").unwrap();
        let c = cli(&["--config", f.to_str().unwrap(), "--port", "9100"]).resolve().unwrap();
        assert_eq!(c.validator_id, "validator2");
        assert_eq!(c.p2p_listen.port(), 9100);
        assert_eq!(c.genesis.validators.len(), 4);
        std::fs::write(&f, "validator_id = \"validator2\"\nrpc_pasword = \"x\"\n").unwrap();
        let err = cli(&["--config", f.to_str().unwrap()]).resolve().unwrap_err();
        assert!(err.to_string().contains("t.toml"), "{err}");
    }

    #[test]
    fn limits_have_defaults_flags_and_file_keys() {
        let c = cli(&["--validator-id", "validator1"]).resolve().unwrap();
        assert_eq!(c.rpc_limits.max_ws_calls, 16);
        assert_eq!(c.rpc_limits.max_long_polls, 64);
        assert!(c.rpc_limits.allow_origins.is_empty(), "no web page may call by default");
        assert_eq!(c.p2p_limits.max_pending, 64);
        let c = cli(&[
            "--validator-id",
            "validator1",
            "--rpc-allow-origin",
            "https://a.example, https://b.example",
            "--rpc-allow-host",
            "Node.Example",
            "--rpc-idle-timeout-secs",
            "5",
            "--p2p-handshake-timeout-ms",
            "900",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.rpc_limits.allow_origins, vec!["https://a.example", "https://b.example"]);
        assert_eq!(c.rpc_limits.allow_hosts, vec!["node.example"]);
        assert_eq!(c.rpc_limits.idle_timeout.as_secs(), 5);
        assert_eq!(c.p2p_limits.handshake_timeout.as_millis(), 900);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "validator_id = \"validator1\"\nrpc_max_long_polls = 3\np2p_max_pending_per_ip = 2\n")
            .unwrap();
        let c = cli(&["--config", f.to_str().unwrap()]).resolve().unwrap();
        assert_eq!((c.rpc_limits.max_long_polls, c.p2p_limits.max_pending_per_ip), (3, 2));
        for flag in ["--rpc-max-ws-calls", "--rpc-read-timeout-secs", "--p2p-max-pending", "--rpc-max-connections"] {
            let err = cli(&["--validator-id", "validator1", flag, "0"]).resolve().unwrap_err();
            assert!(err.to_string().contains(&flag[2..]), "{flag}: {err}");
        }
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        assert!(matches!(cli(&[]).resolve(), Err(ConfigError::MissingValidatorId)));
        assert!(matches!(cli(&["--validator-id", "validator9"]).resolve(), Err(ConfigError::NotInGenesis { .. })));
        assert!(matches!(
            cli(&["--validator-id", "validator1", "--peers", "nohost"]).resolve(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(cli(&["--validator-id", "bad id"]).resolve(), Err(ConfigError::BadValidatorId(_))));
        assert!(matches!(
            cli(&["--validator-id", "validator1", "--rpc-user", "u"]).resolve(),
            Err(ConfigError::PartialCredentials)
        ));
    }

    #[test]
    fn heartbeats_follow_the_block_time_but_not_below_five_seconds() {
        let hb = |extra: &[&str]| {
            let mut args = vec!["--validator-id", "validator1"];
            args.extend_from_slice(extra);
            cli(&args).resolve().unwrap().heartbeat_ms
        };
        assert_eq!(hb(&["--block-time", "10"]), 10_000);
        assert_eq!(hb(&["--block-time", "1"]), 5_000);
        assert_eq!(hb(&["--block-time", "1", "--heartbeat-secs", "1"]), 1_000);
        assert_eq!(hb(&["--block-time", "10", "--heartbeat-secs", "0"]), 500);
    }

    #[test]
    fn threads_default_to_the_cores_and_are_bounded() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(cli(&["--validator-id", "validator1"]).resolve().unwrap().threads, cores);
        assert_eq!(cli(&["--validator-id", "validator1", "--threads", "1"]).resolve().unwrap().threads, 1);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "validator_id = \"validator1\"\nthreads = 3\n").unwrap();
        assert_eq!(cli(&["--config", f.to_str().unwrap()]).resolve().unwrap().threads, 3);
        for bad in ["0", "1025"] {
            let err = cli(&["--validator-id", "validator1", "--threads", bad]).resolve().unwrap_err();
            assert_eq!(err.to_string(), format!("--threads must be between 1 and 1024, not {bad}"));
        }
    }
}
