//! Provisioning: a provider's hosts -> the inventory. Shared by `deploy` and `provision`.
//! Whatever happens, the inventory of what exists is written, so `destroy` can clean up.

use crate::inventory::{Inventory, Node, ProviderKind};
use crate::providers::{Host, Progress, Provider, ProviderError, ProvisionRequest};
use std::path::Path;

/// Default ports of `timed` on a deployed host (the plan's).
pub const P2P_PORT: u16 = 8001;
pub const RPC_PORT: u16 = 8080;

/// The inventory of `hosts`: node N is `validatorN`, P2P on the host's network address, RPC
/// on the host's loopback only.
pub fn inventory_from_hosts(network: &str, kind: ProviderKind, hosts: &[Host], created: Option<String>) -> Inventory {
    Inventory {
        network: network.to_string(),
        provider: kind,
        created,
        hourly_usd_per_host: None,
        ssh_identity: None,
        nodes: hosts
            .iter()
            .map(|h| Node {
                name: h.name.clone(),
                host: h.ssh_host.clone(),
                ssh_user: Some(h.ssh_user.clone()),
                ssh_port: Some(h.ssh_port),
                p2p: format!("{}:{P2P_PORT}", bracket(&h.p2p_host)),
                rpc: format!("127.0.0.1:{RPC_PORT}"),
                validator_id: format!("validator{}", h.index),
                provider_id: h.provider_id.clone(),
                pid: None,
                data_dir: None,
                log: None,
                rpc_auth: None,
            })
            .collect(),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Creates what is missing and writes the inventory to `path`. On failure the inventory of
/// what exists (per `list`) is written anyway, and the error returned. `ssh_identity` (the
/// operator's `--ssh-identity`) is recorded so later commands need not repeat it.
pub async fn provision(
    provider: &dyn Provider,
    kind: ProviderKind,
    req: &ProvisionRequest,
    ssh_identity: Option<&Path>,
    path: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<Inventory> {
    let created = Some(crate::output::rfc3339(crate::output::now_ms()));
    let previous = Inventory::load(path).ok();
    // Keep the first creation time, and the key named before, across re-runs.
    let created = previous.as_ref().and_then(|i| i.created.clone()).or(created);
    let ssh_identity = match ssh_identity {
        Some(p) => Some(std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())),
        None => previous.and_then(|i| i.ssh_identity),
    };
    let per_host = hourly_per_host(provider, kind, req).await;
    let inventory_of = |hosts: &[Host]| Inventory {
        hourly_usd_per_host: per_host,
        ssh_identity: ssh_identity.clone(),
        ..inventory_from_hosts(&req.network, kind, hosts, created.clone())
    };
    match provider.create(req, progress).await {
        Ok(hosts) => {
            let inv = inventory_of(&hosts);
            inv.save(path)?;
            Ok(inv)
        }
        Err(e) => {
            match provider.list(&req.network).await {
                Ok(hosts) if !hosts.is_empty() => {
                    let inv = inventory_of(&hosts);
                    if let Err(w) = inv.save(path) {
                        tracing::error!("cannot write the inventory of what exists: {w}");
                    } else {
                        return Err(anyhow::Error::new(e).context(format!(
                            "provisioning failed; the {} hosts that exist are in {}",
                            hosts.len(),
                            path.display()
                        )));
                    }
                }
                Ok(_) => {}
                Err(l) => tracing::error!("cannot list what exists after the failure: {l}"),
            }
            Err(e.into())
        }
    }
}

/// A cloud host's hourly price from the provider's plan, for `status`. Best effort: a price
/// list that does not answer must not stop provisioning.
async fn hourly_per_host(provider: &dyn Provider, kind: ProviderKind, req: &ProvisionRequest) -> Option<f64> {
    if !matches!(kind, ProviderKind::Do | ProviderKind::Aws) || req.nodes == 0 {
        return None;
    }
    match provider.plan(req).await {
        Ok(plan) => plan.hourly_usd.map(|network| network / req.nodes as f64),
        Err(e) => {
            tracing::warn!("no price for the inventory: {e}");
            None
        }
    }
}

/// `status`'s line about what a cloud network costs: provider, hosts, price.
pub fn cost_line(inv: &Inventory) -> Option<String> {
    if !matches!(inv.provider, ProviderKind::Do | ProviderKind::Aws) {
        return None;
    }
    let n = inv.nodes.len();
    Some(format!(
        "provider {}, {n} hosts, {}",
        inv.provider.name(),
        match inv.hourly_usd_per_host {
            Some(p) => format!("${:.4}/hour (about ${:.2} a day)", p * n as f64, p * n as f64 * 24.0),
            None => "price unknown".into(),
        }
    ))
}

/// The operator's public key: the flag, else the identity's `.pub`, else ssh's defaults.
pub fn public_key(flag: Option<&Path>, identity: Option<&Path>) -> Result<String, ProviderError> {
    let mut tried = Vec::new();
    if let Some(f) = flag {
        tried.push(f.to_path_buf());
    } else {
        if let Some(i) = identity {
            tried.push(i.with_extension("pub"));
            let mut s = i.as_os_str().to_owned();
            s.push(".pub");
            tried.push(s.into());
        }
        if let Some(home) = std::env::var_os("HOME") {
            let home = std::path::PathBuf::from(home);
            tried.push(home.join(".ssh/id_ed25519.pub"));
            tried.push(home.join(".ssh/id_rsa.pub"));
        }
    }
    for p in &tried {
        if let Ok(text) = std::fs::read_to_string(p) {
            let line = text.lines().find(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-")).unwrap_or_default();
            if !line.is_empty() {
                return Ok(line.trim().to_string());
            }
        }
    }
    Err(ProviderError::new(
        "timectl",
        format!(
            "no SSH public key found (looked at: {})",
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    )
    .with_hint("make one with `ssh-keygen -t ed25519`, or pass --ssh-public-key FILE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_map_to_nodes_with_loopback_rpc() {
        let hosts = vec![
            Host {
                name: "t-node-1".into(),
                index: 1,
                ssh_host: "203.0.113.5".into(),
                ssh_port: 22,
                ssh_user: "root".into(),
                p2p_host: "10.0.0.5".into(),
                provider_id: Some("123".into()),
            },
            Host {
                name: "t-node-2".into(),
                index: 2,
                ssh_host: "2001:db8::2".into(),
                ssh_port: 2222,
                ssh_user: "admin".into(),
                p2p_host: "2001:db8::2".into(),
                provider_id: None,
            },
        ];
        let inv = inventory_from_hosts("t", ProviderKind::Do, &hosts, None);
        inv.validate().unwrap();
        assert_eq!(inv.nodes[0].p2p, "10.0.0.5:8001");
        assert_eq!(inv.nodes[0].rpc, "127.0.0.1:8080");
        assert_eq!(inv.nodes[0].validator_id, "validator1");
        assert_eq!(inv.nodes[0].provider_id.as_deref(), Some("123"));
        assert_eq!(inv.nodes[1].p2p, "[2001:db8::2]:8001");
        assert_eq!(inv.nodes[1].ssh_user.as_deref(), Some("admin"));
        assert_eq!(inv.nodes[1].ssh_port, Some(2222));
        assert!(inv.provider.tunnels_rpc());

        // What status says a cloud network costs, from the per-host price provisioning stored.
        assert_eq!(cost_line(&inv).unwrap(), "provider do, 2 hosts, price unknown");
        let priced = Inventory { hourly_usd_per_host: Some(0.03571), ..inv.clone() };
        assert_eq!(cost_line(&priced).unwrap(), "provider do, 2 hosts, $0.0714/hour (about $1.71 a day)");
        let saved = tempfile::tempdir().unwrap().keep().join("t.toml");
        priced.save(&saved).unwrap();
        assert_eq!(Inventory::load(&saved).unwrap().hourly_usd_per_host, Some(0.03571));
        let local = Inventory { provider: ProviderKind::Rehearsal, ..priced };
        assert_eq!(cost_line(&local), None);
    }

    #[test]
    fn public_key_from_flag_or_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k.pub");
        std::fs::write(&k, "ssh-ed25519 AAAAC3Nz op@host\n").unwrap();
        assert_eq!(public_key(Some(&k), None).unwrap(), "ssh-ed25519 AAAAC3Nz op@host");
        let id = dir.path().join("k");
        assert_eq!(public_key(None, Some(&id)).unwrap(), "ssh-ed25519 AAAAC3Nz op@host");
        let e = public_key(Some(&dir.path().join("missing.pub")), None).unwrap_err();
        assert!(e.to_string().contains("missing.pub"), "{e}");
    }
}
