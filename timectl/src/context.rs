//! What every command receives: the global flags, the output settings and the inventory
//! (opened on first use, so commands that need none, like `report`, never touch it).
//! Commands depend on this and on the shared modules, never on each other or on `cli.rs`.

use crate::inventory::{self, Inventory, InventoryError, Node, RpcAuth};
use crate::output::Ui;
use crate::ssh::{self, SshOptions, Target};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Where the node's RPC cookie lives on a deployed host (timed's data directory).
pub const REMOTE_COOKIE: &str = "/var/lib/timed/.cookie";

pub struct Ctx {
    /// `--inventory FILE`.
    pub inventory_file: Option<PathBuf>,
    /// `--network NAME`.
    pub network: Option<String>,
    pub ui: Ui,
    /// `--ssh-identity FILE`: the key remote hosts accept.
    pub ssh_identity: Option<PathBuf>,
    /// `--ssh-known-hosts FILE`: overrides the network's own pinned host keys.
    pub ssh_known_hosts: Option<PathBuf>,
    opened: OnceLock<(PathBuf, Inventory)>,
    /// Sessions opened for tunnels, closed by `close`.
    sessions: tokio::sync::Mutex<Vec<Arc<ssh::Host>>>,
}

impl Ctx {
    pub fn new(inventory_file: Option<PathBuf>, network: Option<String>, ui: Ui) -> Self {
        Ctx {
            inventory_file,
            network,
            ui,
            ssh_identity: None,
            ssh_known_hosts: None,
            opened: OnceLock::new(),
            sessions: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn with_ssh(mut self, identity: Option<PathBuf>, known_hosts: Option<PathBuf>) -> Self {
        self.ssh_identity = identity;
        self.ssh_known_hosts = known_hosts;
        self
    }

    /// SSH settings for a network's hosts: its pinned keys, the operator's key (`--ssh-identity`,
    /// else the one its inventory recorded at provisioning, else ssh's own defaults).
    pub fn ssh_options(&self, network: &str) -> SshOptions {
        let known =
            self.ssh_known_hosts.clone().unwrap_or_else(|| inventory::network_state_dir(network).join("known_hosts"));
        let identity = self.ssh_identity.clone().or_else(|| {
            let recorded = |i: &Inventory| (i.network == network).then(|| i.ssh_identity.clone()).flatten();
            match self.opened.get() {
                Some((_, inv)) => recorded(inv),
                None => {
                    let path = self.inventory_file.clone().unwrap_or_else(|| inventory::network_path(network));
                    Inventory::load(&path).ok().as_ref().and_then(recorded)
                }
            }
        });
        SshOptions::new(known, identity)
    }

    /// The nodes as the operator reaches them. For remote providers this opens one SSH session
    /// per host, forwards a local port to each node's loopback RPC, reads its RPC cookie over
    /// the same session (wallet methods need it), and returns the nodes with `rpc` pointing
    /// at the forward. The sessions stay open until `close`.
    pub async fn reach(&self, inv: &Inventory, nodes: &[Node]) -> anyhow::Result<Vec<Node>> {
        if !inv.provider.tunnels_rpc() || nodes.is_empty() {
            return Ok(nodes.to_vec());
        }
        let opts = self.ssh_options(&inv.network);
        // Every host at once: connect, forward, read the cookie.
        let results = futures::future::join_all(nodes.iter().map(|n| {
            let opts = opts.clone();
            async move {
                let h = ssh::Host::connect(&Target::of(n), &opts).await?;
                let reached = async {
                    let local = h.forward(&n.rpc).await?;
                    // Absent before the node first started; read methods work without it.
                    let (code, cookie, _) =
                        h.exec("read the RPC cookie", &format!("cat {REMOTE_COOKIE}"), None).await?;
                    let mut reached = n.clone();
                    reached.rpc = local.to_string();
                    reached.rpc_auth = (code == 0 && cookie.contains(':')).then(|| RpcAuth(cookie.trim().to_string()));
                    Ok::<Node, ssh::SshError>(reached)
                }
                .await;
                match reached {
                    Ok(r) => Ok((r, h)),
                    Err(e) => {
                        h.close().await;
                        Err(e)
                    }
                }
            }
        }))
        .await;
        let mut out = Vec::with_capacity(nodes.len());
        let mut hard = None;
        for (n, r) in nodes.iter().zip(results) {
            match r {
                Ok((reached, h)) => {
                    out.push(reached);
                    self.sessions.lock().await.push(Arc::new(h));
                }
                // A changed host key or a refused login is never papered over.
                Err(e @ (ssh::SshError::HostKeyChanged { .. } | ssh::SshError::Auth { .. })) => {
                    hard.get_or_insert(e);
                }
                // A host that is down shows as an unreachable node, as a local one would.
                Err(e) => {
                    tracing::warn!("{e}");
                    let mut down = n.clone();
                    down.rpc = unreachable_addr();
                    out.push(down);
                }
            }
        }
        if let Some(e) = hard {
            return Err(e.into());
        }
        Ok(out)
    }

    /// The open sessions of `nodes` (as the inventory has them: `rpc` is the address on the
    /// host), by node name; empty before `reach`.
    pub async fn sessions_for(&self, nodes: &[Node]) -> HashMap<String, (Arc<ssh::Host>, String)> {
        let open = self.sessions.lock().await;
        nodes
            .iter()
            .filter_map(|n| {
                open.iter().find(|h| h.name() == n.name).map(|h| (n.name.clone(), (h.clone(), n.rpc.clone())))
            })
            .collect()
    }

    /// Ends every SSH session this invocation opened.
    pub async fn close(&self) {
        for host in self.sessions.lock().await.drain(..) {
            match Arc::try_unwrap(host) {
                Ok(h) => h.close().await,
                // Still shared by a task that outlived its command: dropping ends it too.
                Err(h) => drop(h),
            }
        }
    }

    /// Whether the operator named an inventory (by file or network) on the command line.
    pub fn names_inventory(&self) -> bool {
        self.inventory_file.is_some() || self.network.is_some()
    }

    /// The path the global flags point at (or the one used last), without reading it.
    pub fn inventory_path(&self) -> Result<PathBuf, InventoryError> {
        inventory::resolve_path(self.inventory_file.as_deref(), self.network.as_deref())
    }

    /// The inventory the global flags point at, loaded once and remembered as the default.
    pub fn inventory(&self) -> Result<(&Path, &Inventory), InventoryError> {
        if self.opened.get().is_none() {
            let opened = inventory::open(self.inventory_file.as_deref(), self.network.as_deref())?;
            let _ = self.opened.set(opened);
        }
        let (p, i) = self.opened.get().expect("set above");
        Ok((p.as_path(), i))
    }
}

/// A loopback address nothing listens on (bound, then released), so calls to a node whose
/// host could not be reached fail at once as "unreachable".
fn unreachable_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or_else(|_| "127.0.0.1:1".to_string(), |a| a.to_string())
}

/// The first failure (one per host) as the error; the rest as log lines.
pub fn first_of(mut errors: Vec<ssh::SshError>) -> anyhow::Error {
    let first = errors.remove(0);
    for e in &errors {
        tracing::error!("{e}");
    }
    first.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_recorded_at_provisioning_is_used_unless_a_flag_names_another() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        let mut inv = crate::materials::tests::inventory(1);
        inv.network = "n".into();
        inv.ssh_identity = Some(dir.path().join("id_n"));
        inv.save(&file).unwrap();
        let ui = Ui { json: false, color: false, progress: false };
        // Before the inventory is opened (deploy re-runs) and after (every other command).
        let ctx = Ctx::new(Some(file.clone()), None, ui);
        assert_eq!(ctx.ssh_options("n").identity, Some(dir.path().join("id_n")));
        ctx.inventory().unwrap();
        assert_eq!(ctx.ssh_options("n").identity, Some(dir.path().join("id_n")));
        // Another network's inventory lends it nothing; the flag wins over the record.
        assert_eq!(ctx.ssh_options("other").identity, None);
        let flagged = Ctx::new(Some(file), None, ui).with_ssh(Some("/keys/op".into()), None);
        assert_eq!(flagged.ssh_options("n").identity, Some(PathBuf::from("/keys/op")));
    }
}
