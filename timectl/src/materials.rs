//! A deployed network's materials, generated on the operator's machine: one validator key and
//! one wallet key per node, a genesis listing every validator with its tier and funding its
//! wallet, and one `timed` config per node. They live in the network's state directory (mode
//! 0700, outside `inventories/`), are made once and reused, so a re-run deploys the same chain.
//! Keys are written 0600 and never printed.

use crate::inventory::Inventory;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use timed::chain::amount::COIN;
use timed::chain::genesis::{Allocation, GenesisConfig};
use timed::chain::{Address, Keypair, Network, Tier, ValidatorInfo};

/// Where the files go on each host (the unit and `timed`'s defaults agree with these).
pub const REMOTE_BINARY: &str = "/usr/local/bin/timed";
pub const REMOTE_CONFIG: &str = "/etc/timed/timed.toml";
pub const REMOTE_GENESIS: &str = "/etc/timed/genesis.toml";
pub const REMOTE_DATA: &str = "/var/lib/timed";
pub const REMOTE_UNIT: &str = "/etc/systemd/system/timed.service";
pub const SERVICE_USER: &str = "timecoin";

#[derive(Debug, thiserror::Error)]
pub enum MaterialsError {
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable key file")]
    BadKey { path: PathBuf },
    #[error("{path} is not a valid genesis: {message}")]
    BadGenesis { path: PathBuf, message: String },
    #[error("the network's genesis ({path}) lists validators {had}, the inventory {want}")]
    Mismatch { path: PathBuf, had: String, want: String },
}

impl MaterialsError {
    pub fn hint(&self) -> Option<String> {
        match self {
            MaterialsError::Mismatch { .. } => Some(
                "a network's validators are fixed by its genesis: `timectl destroy` it (which also removes its materials) and deploy again, or use another --network name"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// One node's secret keys, as the hex files `timed` reads from its data directory.
pub struct NodeKeys {
    pub validator_id: String,
    pub validator_key: Vec<u8>,
    pub wallet_key: Vec<u8>,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKeys({}, <redacted>)", self.validator_id)
    }
}

#[derive(Debug)]
pub struct Materials {
    pub genesis_toml: String,
    pub keys: Vec<NodeKeys>,
}

impl Materials {
    pub fn keys_of(&self, validator_id: &str) -> Option<&NodeKeys> {
        self.keys.iter().find(|k| k.validator_id == validator_id)
    }
}

/// The per-node `timed` config (the keys of `timed --config`).
#[derive(Serialize)]
struct NodeConfigFile<'a> {
    validator_id: &'a str,
    port: u16,
    peers: Vec<String>,
    rpc_bind: &'a str,
    data_dir: &'a str,
    genesis: &'a str,
}

/// `timed`'s config for `node_index` of the inventory: its P2P port, every other node as a
/// peer, RPC on loopback.
pub fn node_config(inv: &Inventory, node_index: usize) -> String {
    let n = &inv.nodes[node_index];
    let port = n.p2p.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(8001);
    let cfg = NodeConfigFile {
        validator_id: &n.validator_id,
        port,
        peers: inv.nodes.iter().filter(|o| o.name != n.name).map(|o| o.p2p.clone()).collect(),
        rpc_bind: &n.rpc,
        data_dir: REMOTE_DATA,
        genesis: REMOTE_GENESIS,
    };
    format!(
        "# timed configuration for {} ({}), written by timectl.\n{}",
        n.name,
        n.validator_id,
        toml::to_string(&cfg).expect("config serializes")
    )
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), MaterialsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| MaterialsError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the hex key at `path`, or makes a random one there.
fn key_file(path: &Path) -> Result<(Keypair, Vec<u8>), MaterialsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|_| MaterialsError::BadKey { path: path.into() })?;
            let secret: [u8; 32] = bytes.try_into().map_err(|_| MaterialsError::BadKey { path: path.into() })?;
            Ok((Keypair::from_secret(secret), text.into_bytes()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate();
            let text = format!("{}\n", hex::encode(key.secret_bytes())).into_bytes();
            write_private(path, &text)?;
            Ok((key, text))
        }
        Err(source) => Err(MaterialsError::Io { path: path.into(), source }),
    }
}

fn private_dir(dir: &Path) -> Result<(), MaterialsError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| MaterialsError::Io { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// The materials for `inv` in `dir`: read when they exist, made (keys first, then the genesis
/// naming them) when they do not. `block_time_secs` only matters the first time.
pub fn ensure(dir: &Path, inv: &Inventory, block_time_secs: u64) -> Result<Materials, MaterialsError> {
    private_dir(dir)?;
    let keys_dir = dir.join("keys");
    private_dir(&keys_dir)?;
    let mut keys = Vec::new();
    let mut validators = Vec::new();
    for n in &inv.nodes {
        let (vk, vk_text) = key_file(&keys_dir.join(format!("{}.validator.key", n.validator_id)))?;
        let (wk, wk_text) = key_file(&keys_dir.join(format!("{}.wallet.key", n.validator_id)))?;
        validators.push(ValidatorInfo {
            id: n.validator_id.clone(),
            pubkey: vk.public(),
            tier: Tier::Free,
            reward_address: Address::from_pubkey(Network::Testnet, &wk.public()),
        });
        keys.push(NodeKeys { validator_id: n.validator_id.clone(), validator_key: vk_text, wallet_key: wk_text });
    }
    let path = dir.join("genesis.toml");
    // An existing genesis must name exactly these validators; a new one is written.
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let g: GenesisConfig = toml::from_str(&text)
                .map_err(|e| MaterialsError::BadGenesis { path: path.clone(), message: e.message().to_string() })?;
            let had: Vec<&str> = g.validators.iter().map(|v| v.id.as_str()).collect();
            let want: Vec<&str> = validators.iter().map(|v| v.id.as_str()).collect();
            if had != want || g.validators.iter().zip(&validators).any(|(a, b)| a.pubkey != b.pubkey) {
                return Err(MaterialsError::Mismatch { path, had: had.join(","), want: want.join(",") });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let allocations = validators
                .iter()
                .map(|v| Allocation { address: v.reward_address, amount: 50_000 * COIN, outputs: 20 })
                .collect();
            let g = GenesisConfig {
                chain_id: format!("timecoin-{}", inv.network),
                network: Network::Testnet,
                timestamp_ms: crate::output::now_ms() / 1000 * 1000,
                block_time_secs,
                validators,
                allocations,
            };
            g.validate().map_err(|e| MaterialsError::BadGenesis { path: path.clone(), message: e.to_string() })?;
            let text = format!(
                "# Genesis of network {}, written by timectl. Public: no secrets here.\n{}",
                inv.network,
                toml::to_string(&g).expect("genesis serializes")
            );
            write_private(&path, text.as_bytes())?;
        }
        Err(source) => return Err(MaterialsError::Io { path, source }),
    };
    let genesis_toml =
        std::fs::read_to_string(&path).map_err(|source| MaterialsError::Io { path: path.clone(), source })?;
    let configs = dir.join("configs");
    private_dir(&configs)?;
    for (i, n) in inv.nodes.iter().enumerate() {
        write_private(&configs.join(format!("{}.toml", n.name)), node_config(inv, i).as_bytes())?;
    }
    Ok(Materials { genesis_toml, keys })
}

/// Removes a network's materials (after `destroy`).
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inventory::{Node, ProviderKind};
    use std::os::unix::fs::PermissionsExt;

    pub fn inventory(n: usize) -> Inventory {
        Inventory {
            network: "t".into(),
            provider: ProviderKind::Ssh,
            created: None,
            hourly_usd_per_host: None,
            ssh_identity: None,
            nodes: (1..=n)
                .map(|i| Node {
                    name: format!("t-node-{i}"),
                    host: format!("10.9.0.{i}"),
                    ssh_user: Some("root".into()),
                    ssh_port: Some(22),
                    p2p: format!("10.9.0.{i}:8001"),
                    rpc: "127.0.0.1:8080".into(),
                    validator_id: format!("validator{i}"),
                    provider_id: None,
                    pid: None,
                    data_dir: None,
                    log: None,
                    rpc_auth: None,
                })
                .collect(),
        }
    }

    #[test]
    fn materials_are_private_stable_and_match_timed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let inv = inventory(3);
        let m = ensure(&dir, &inv, 2).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let key = dir.join("keys/validator1.validator.key");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        // timed reads the genesis and validates it the same way.
        let g = timed::config::load_genesis(&dir.join("genesis.toml")).unwrap();
        assert_eq!(toml::from_str::<GenesisConfig>(&m.genesis_toml).unwrap(), g);
        assert_eq!(g.validators.len(), 3);
        assert!(g.allocations.iter().all(|a| a.amount > 0));
        // The keys in the files are the ones the genesis names.
        let text = std::fs::read_to_string(&key).unwrap();
        let secret: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
        assert_eq!(Keypair::from_secret(secret).public(), g.validators[0].pubkey);
        // A second call reuses everything: same chain.
        let again = ensure(&dir, &inv, 7).unwrap();
        assert_eq!(again.genesis_toml, m.genesis_toml);
        assert_eq!(again.keys_of("validator2").unwrap().wallet_key, m.keys_of("validator2").unwrap().wallet_key);
        // No secret in the Debug form.
        assert!(!format!("{m:?}").contains(text.trim()));
        // Another set of validators is refused, not silently re-keyed.
        let e = ensure(&dir, &inventory(4), 2).unwrap_err();
        assert!(matches!(e, MaterialsError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn node_config_is_what_timed_accepts() {
        let inv = inventory(3);
        let text = node_config(&inv, 1);
        let cfg: timed::config::FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.validator_id.as_deref(), Some("validator2"));
        assert_eq!(cfg.port, Some(8001));
        assert_eq!(cfg.peers.unwrap(), vec!["10.9.0.1:8001", "10.9.0.3:8001"]);
        assert_eq!(cfg.rpc_bind.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.genesis.unwrap(), PathBuf::from(REMOTE_GENESIS));
    }
}
