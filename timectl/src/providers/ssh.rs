//! The `ssh` provider: hosts you already have, listed by hand in an inventory. It creates
//! nothing and deletes nothing: `create` checks that every listed host answers SSH (with its
//! host key pinned), `list` reads the inventory, and `destroy` keeps the hosts (the `destroy`
//! command has already removed what install put on them).

use super::{Host, Plan, Progress, Provider, ProviderError, ProvisionRequest};
use crate::inventory::Inventory;
use crate::ssh::{Pool, SshOptions, Target};
use async_trait::async_trait;

const NAME: &str = "ssh";

pub struct SshHosts {
    inventory: Inventory,
    ssh: SshOptions,
}

impl SshHosts {
    pub fn new(inventory: Inventory, ssh: SshOptions) -> Self {
        SshHosts { inventory, ssh }
    }

    fn hosts(&self) -> Vec<Host> {
        self.inventory
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Host {
                name: n.name.clone(),
                index: i + 1,
                ssh_host: n.host.clone(),
                ssh_port: n.ssh_port.unwrap_or(22),
                ssh_user: n.ssh_user.clone().unwrap_or_else(|| "root".into()),
                p2p_host: n.p2p.rsplit_once(':').map_or(n.host.clone(), |(h, _)| h.to_string()),
                provider_id: n.provider_id.clone(),
            })
            .collect()
    }

    fn check_network(&self, network: &str) -> Result<(), ProviderError> {
        if network != self.inventory.network {
            return Err(ProviderError::new(
                NAME,
                format!("the inventory describes network {:?}, not {network:?}", self.inventory.network),
            )
            .with_hint("pass the inventory of that network with --inventory FILE"));
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for SshHosts {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn plan(&self, req: &ProvisionRequest) -> Result<Plan, ProviderError> {
        self.check_network(&req.network)?;
        Ok(Plan { existing: self.hosts(), create: Vec::new(), hourly_usd: None })
    }

    async fn create(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError> {
        self.check_network(&req.network)?;
        let hosts = self.hosts();
        if req.nodes > hosts.len() {
            return Err(ProviderError::new(
                NAME,
                format!("{} nodes asked for, the inventory lists {} hosts", req.nodes, hosts.len()),
            )
            .with_hint("the ssh provider creates no hosts: add them to the inventory, or ask for fewer"));
        }
        for h in &hosts {
            progress.step(&h.name, "checking SSH");
        }
        let targets: Vec<Target> = self.inventory.nodes.iter().map(Target::of).collect();
        match Pool::connect(&targets, &self.ssh).await {
            Ok(pool) => {
                pool.close().await;
                for h in &hosts {
                    progress.step(&h.name, "answers");
                }
                Ok(hosts)
            }
            Err(mut errors) => {
                let first = errors.remove(0);
                let hint = first.hint();
                let mut e = ProviderError::new(NAME, first.to_string());
                e.hint = hint;
                Err(e)
            }
        }
    }

    async fn list(&self, network: &str) -> Result<Vec<Host>, ProviderError> {
        self.check_network(network)?;
        Ok(self.hosts())
    }

    async fn destroy(&self, network: &str, _progress: &dyn Progress) -> Result<Vec<String>, ProviderError> {
        self.check_network(network)?;
        Ok(self.hosts().iter().map(|h| format!("kept host {} ({}): not made by timectl", h.name, h.ssh_host)).collect())
    }
}
