//! `node.json`: what a running `timed` writes into its data dir once RPC and P2P listen, so
//! tools learn the ports that port 0 picked. One type for the writer (`timed`) and every reader
//! (`timectl local`, the tests, the benchmarks), so the format cannot drift between them.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file's name inside the data dir.
pub const FILE_NAME: &str = "node.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Process id of the `timed` that wrote the file.
    pub pid: u32,
    pub validator_id: String,
    /// Where P2P listens (the bound address, not an advertised one).
    pub p2p: SocketAddr,
    /// Where JSON-RPC listens.
    pub rpc: SocketAddr,
    /// Hex hash of the genesis this node runs.
    pub genesis_hash: String,
    pub chain_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeInfoError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid node.json")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NodeInfo {
    /// `DIR/node.json`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Reads `DIR/node.json`; `Ok(None)` while the node has not written it yet.
    pub fn read(data_dir: &Path) -> Result<Option<NodeInfo>, NodeInfoError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(NodeInfoError::Read { path, source }),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| NodeInfoError::Parse { path, source })
    }

    /// Writes `DIR/node.json` through a temporary file and a rename, so a reader polling for
    /// it never sees half a file.
    pub fn write(&self, data_dir: &Path) -> Result<(), NodeInfoError> {
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("NodeInfo always serializes");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| NodeInfoError::Write { path, source })
    }

    /// Removes `DIR/node.json` (on shutdown, and before a start so a stale file is not read
    /// as the new process's ports). A missing file is fine.
    pub fn remove(data_dir: &Path) -> Result<(), NodeInfoError> {
        let path = Self::path(data_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NodeInfoError::Write { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeInfo {
        NodeInfo {
            pid: 123,
            validator_id: "validator1".into(),
            p2p: "127.0.0.1:40001".parse().unwrap(),
            rpc: "127.0.0.1:40081".parse().unwrap(),
            genesis_hash: "ab".into(),
            chain_id: "timecoin-devnet".into(),
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeInfo::read(dir.path()).unwrap(), None);
        sample().write(dir.path()).unwrap();
        assert_eq!(NodeInfo::read(dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join("node.json.tmp").exists());
        NodeInfo::remove(dir.path()).unwrap();
        NodeInfo::remove(dir.path()).unwrap();
        assert_eq!(NodeInfo::read(dir.path()).unwrap(), None);
    }

    #[test]
    fn addresses_are_plain_strings_on_disk() {
        // Shell scripts read node.json with jq; keep the fields plain "ip:port" strings.
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["rpc"], "127.0.0.1:40081");
        assert_eq!(v["p2p"], "127.0.0.1:40001");
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node.json"), r#"{"pid":1}"#).unwrap();
        let e = NodeInfo::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("node.json"), "{e}");
        assert!(matches!(e, NodeInfoError::Parse { .. }));
    }
}
