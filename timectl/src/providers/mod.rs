//! Providers: where hosts come from. A provider turns a request ("network N, 5 hosts, this SSH
//! key") into hosts that answer SSH, lists a network's hosts, and destroys them. It knows
//! nothing of `timed`; installing knows nothing of providers. The inventory, written by
//! provisioning from the `Host`s returned here, is the only thing handed from one to the other.
//!
//! Every provider must be idempotent: `create` finds what exists (by name or tag) and creates
//! only what is missing; `destroy` finds what to delete the same way, so it also cleans up
//! after a crash between "created" and "inventory written".

pub mod aws;
pub mod cloud;
pub mod digitalocean;

use async_trait::async_trait;

pub mod rehearsal;
pub mod ssh;

/// What to provision.
#[derive(Clone, Debug)]
pub struct ProvisionRequest {
    pub network: String,
    /// Total hosts the network should have (existing ones count).
    pub nodes: usize,
    /// The operator's SSH public key, one OpenSSH line; hosts must accept it for `Host::ssh_user`.
    pub ssh_public_key: String,
    /// The P2P port `timed` will listen on; firewalls open it between the network's own hosts.
    pub p2p_port: u16,
    /// CIDR allowed to reach SSH on cloud firewalls; `None`: the provider detects the
    /// operator's address.
    pub allow_from: Option<String>,
}

/// One host as a provider knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Stable name, `NETWORK-node-N`; also the inventory's node name.
    pub name: String,
    /// N in the name (1-based), so a re-run maps each host to the same validator.
    pub index: usize,
    /// Address the operator's SSH connects to.
    pub ssh_host: String,
    pub ssh_port: u16,
    pub ssh_user: String,
    /// Address the network's other hosts dial for P2P (a private address where there is one).
    pub p2p_host: String,
    /// The provider's id (droplet id, instance id, container name), for exact teardown.
    pub provider_id: Option<String>,
}

/// What `create` would do, for `--dry-run`.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Hosts of the network that already exist and would be kept.
    pub existing: Vec<Host>,
    /// One line per thing that would be created ("droplet tn-node-4 s-2vcpu-4gb sfo3").
    pub create: Vec<String>,
    /// Hourly price in USD of the whole network once created, when the provider knows it.
    pub hourly_usd: Option<f64>,
}

/// Per-host progress while a provider waits (one bar per host in a terminal, one JSON event
/// per line with `--json`).
pub trait Progress: Send + Sync {
    fn step(&self, host: &str, step: &str);
}

/// A progress sink that drops everything (provider tests).
#[cfg(test)]
pub struct NoProgress;

#[cfg(test)]
impl Progress for NoProgress {
    fn step(&self, _host: &str, _step: &str) {}
}

#[derive(Debug, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    pub provider: &'static str,
    pub message: String,
    /// What the operator can do about it, printed as `hint:`.
    pub hint: Option<String>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    pub fn new(provider: &'static str, message: impl Into<String>) -> Self {
        ProviderError { provider, message: message.into(), hint: None, source: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The name used on the command line and in the inventory.
    fn name(&self) -> &'static str;

    /// What `create` would do; changes nothing.
    async fn plan(&self, req: &ProvisionRequest) -> Result<Plan, ProviderError>;

    /// Creates what is missing and returns every host of the network, sorted by index.
    /// On error, provisioning calls `list` and writes the inventory of what exists anyway.
    async fn create(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError>;

    /// The network's hosts that exist now, sorted by index.
    async fn list(&self, network: &str) -> Result<Vec<Host>, ProviderError>;

    /// Deletes everything the provider made for the network (hosts and any firewall, key or
    /// network of its own) and returns one line per thing deleted.
    async fn destroy(&self, network: &str, progress: &dyn Progress) -> Result<Vec<String>, ProviderError>;
}

/// The provider flags shared by `deploy`, `provision` and `destroy`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProviderArgs {
    /// Where hosts come from: `rehearsal` (containers on this machine, needs root) or `ssh`
    /// (the hosts listed in --inventory FILE).
    #[arg(long, value_name = "NAME")]
    pub provider: Option<crate::inventory::ProviderKind>,
    /// SSH public key the hosts should accept (default: --ssh-identity's .pub, else
    /// ~/.ssh/id_ed25519.pub or ~/.ssh/id_rsa.pub).
    #[arg(long, value_name = "FILE")]
    pub ssh_public_key: Option<std::path::PathBuf>,
    /// CIDR allowed to reach SSH on cloud firewalls (default: detected).
    #[arg(long, value_name = "CIDR")]
    pub allow_from: Option<String>,
    #[command(flatten)]
    pub cloud: cloud::CloudArgs,
}

/// What a provider needs besides its flags: the network's state directory and, for `ssh`,
/// the hand-written inventory and how to reach its hosts.
pub struct BuildContext {
    pub networks_dir: std::path::PathBuf,
    pub inventory: Option<crate::inventory::Inventory>,
    pub ssh: crate::ssh::SshOptions,
    /// `--region`, `--size`, `--image`, `--instance-type` (empty where a command has none).
    pub cloud: cloud::CloudArgs,
}

/// The provider `kind` names. Cloud providers add their arms here.
pub fn build(kind: crate::inventory::ProviderKind, cx: BuildContext) -> Result<Box<dyn Provider>, ProviderError> {
    use crate::inventory::ProviderKind;
    match kind {
        ProviderKind::Rehearsal => Ok(Box::new(rehearsal::Rehearsal::new(cx.networks_dir))),
        ProviderKind::Ssh => match cx.inventory {
            Some(inv) => Ok(Box::new(ssh::SshHosts::new(inv, cx.ssh))),
            None => Err(ProviderError::new("ssh", "the ssh provider needs an inventory listing the hosts")
                .with_hint("write one (docs/inventory.md) and pass it with --inventory FILE")),
        },
        ProviderKind::Do => {
            let c = cx.cloud;
            let d = digitalocean::DoSettings::from_env();
            let settings = digitalocean::DoSettings {
                region: c.region.unwrap_or(d.region),
                size: c.size.unwrap_or(d.size),
                image: c.image.unwrap_or(d.image),
                ..d
            };
            Ok(Box::new(digitalocean::DigitalOcean::from_env(settings)?))
        }
        ProviderKind::Aws => {
            let c = cx.cloud;
            let d = aws::AwsSettings::default();
            let settings = aws::AwsSettings {
                region: c.region,
                instance_type: c.instance_type.unwrap_or(d.instance_type),
                image: c.image,
                ..d
            };
            Ok(Box::new(aws::AwsProvider::new(
                settings,
                std::sync::Arc::new(cloud::HttpAddressDetector::default()),
                cx.networks_dir,
            )))
        }
        other => {
            Err(ProviderError::new("timectl", format!("provider {:?} is not available in this build", other.name()))
                .with_hint("use --provider rehearsal, ssh, do or aws"))
        }
    }
}
