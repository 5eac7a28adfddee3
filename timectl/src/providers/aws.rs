//! The AWS EC2 provider: instances, one security group and one key pair per network, through
//! the official SDK.
//!
//! Credentials and region come from the SDK's standard chain (environment, `AWS_PROFILE`,
//! config and credentials files, SSO, instance roles); an endpoint override goes through the
//! SDK's own `AWS_ENDPOINT_URL_EC2`. timectl never reads or stores a credential itself.
//! Everything the provider makes carries the tags `managed-by=timectl` and
//! `timectl-network=NETWORK`, so `create` and `destroy` find it after any crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    ArchitectureType, Filter, HttpTokensState, Instance, InstanceMetadataOptionsRequest, InstanceStateName,
    InstanceType, IpPermission, IpRange, Ipv6Range, ResourceType, Tag, TagSpecification, UserIdGroupPair,
};
use aws_sdk_ec2::Client;

use super::cloud::{self, AddressDetector};
use super::{Host, Plan, Progress, Provider, ProviderError, ProvisionRequest};

pub const NAME: &str = "aws";
/// Canonical's account, which publishes the official Ubuntu images.
pub const CANONICAL_OWNER: &str = "099720112770";
/// Ubuntu 22.04 server images (`hvm-ssd` and the newer `hvm-ssd-gp3`).
const UBUNTU_JAMMY: &str = "ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-{arch}-server-*";
const TAG_NETWORK: &str = "timectl-network";
const TAG_MANAGED: &str = "managed-by";

/// On-demand Linux prices in USD per hour, identical in us-east-1, us-east-2 and us-west-2
/// (AWS price list, checked 2025-06). Other regions and types: unknown rather than a guess.
pub const PRICES_DATE: &str = "2025-06";
const PRICE_REGIONS: [&str; 3] = ["us-east-1", "us-east-2", "us-west-2"];
const PRICES: [(&str, f64); 12] = [
    ("t3.micro", 0.0104),
    ("t3.small", 0.0208),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3a.small", 0.0188),
    ("t3a.medium", 0.0376),
    ("t4g.small", 0.0168),
    ("t4g.medium", 0.0336),
    ("m5.large", 0.096),
    ("m6i.large", 0.096),
    ("c5.large", 0.085),
    ("c6i.large", 0.085),
];

/// The hourly price of one instance, when the table knows it.
pub fn hourly_price(region: &str, instance_type: &str) -> Option<f64> {
    if !PRICE_REGIONS.contains(&region) {
        return None;
    }
    PRICES.iter().find(|(t, _)| *t == instance_type).map(|(_, p)| *p)
}

#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// `--region`; `None`: the SDK's chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    pub instance_type: String,
    /// `--image`: an AMI id; `None`: the newest Ubuntu 22.04 image of the region.
    pub image: Option<String>,
    /// Bound of every single SDK call, retries included.
    pub call_timeout: Duration,
    /// How long `create` waits for instances to run with an address, and `destroy` for them
    /// to terminate.
    pub wait_timeout: Duration,
    pub poll_interval: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: None,
            instance_type: "t3.small".into(),
            image: None,
            call_timeout: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(5),
        }
    }
}

pub struct Aws {
    client: Client,
    /// Asks the partition's home region which regions exist: an unknown region cannot answer
    /// that itself.
    regions_client: Client,
    region: String,
    settings: AwsSettings,
    detector: Arc<dyn AddressDetector>,
}

impl Aws {
    /// The SDK's standard configuration chain, with `--region` on top and a timeout on every
    /// call.
    pub async fn from_env(settings: AwsSettings, detector: Arc<dyn AddressDetector>) -> Result<Self, ProviderError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(Self::timeouts(&settings));
        if let Some(r) = &settings.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let conf = tokio::time::timeout(settings.call_timeout, loader.load())
            .await
            .map_err(|_| ProviderError::new(NAME, "loading the AWS configuration timed out"))?;
        Self::from_sdk_config(&conf, settings, detector)
    }

    fn timeouts(settings: &AwsSettings) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_timeout(settings.call_timeout)
            .build()
    }

    pub fn from_sdk_config(
        conf: &SdkConfig,
        settings: AwsSettings,
        detector: Arc<dyn AddressDetector>,
    ) -> Result<Self, ProviderError> {
        let region = conf.region().map(|r| r.to_string()).ok_or_else(|| {
            ProviderError::new(NAME, "no AWS region configured")
                .with_hint("pass --region (e.g. us-east-1), or set AWS_REGION or a region in your AWS profile")
        })?;
        let ec2_conf = aws_sdk_ec2::config::Builder::from(conf).timeout_config(Self::timeouts(&settings));
        let home = if region.starts_with("cn-") {
            "cn-north-1"
        } else if region.starts_with("us-gov-") {
            "us-gov-west-1"
        } else {
            "us-east-1"
        };
        let regions_client = Client::from_conf(ec2_conf.clone().region(Region::new(home)).build());
        Ok(Aws { client: Client::from_conf(ec2_conf.build()), regions_client, region, settings, detector })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn group_name(network: &str) -> String {
        format!("timectl-{network}")
    }

    fn key_name(network: &str) -> String {
        format!("timectl-{network}")
    }

    /// One SDK call under the call timeout, its error turned into one the operator can act on.
    async fn call<T, E, F>(&self, doing: &str, fut: F) -> Result<T, ProviderError>
    where
        F: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match tokio::time::timeout(self.settings.call_timeout, fut).await {
            Err(_) => Err(ProviderError::new(
                NAME,
                format!("{doing}: no answer from EC2 within {} s", self.settings.call_timeout.as_secs()),
            )
            .with_hint("check your network connection and the region")),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.sdk_error(doing, e)),
        }
    }

    fn sdk_error<E>(&self, doing: &str, e: SdkError<E>) -> ProviderError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = e.code().map(String::from);
        let detail = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => DisplayErrorContext(&e).to_string(),
        };
        let hint = match code.as_deref() {
            Some("AuthFailure" | "InvalidClientTokenId" | "SignatureDoesNotMatch" | "UnrecognizedClientException") => Some(
                "check the AWS credentials in use (AWS_PROFILE, AWS_ACCESS_KEY_ID, ~/.aws/credentials; `aws sts get-caller-identity` shows who you are)"
                    .to_string(),
            ),
            Some("UnauthorizedOperation") => Some("the credentials lack an EC2 permission; see docs/providers.md for the policy".to_string()),
            Some("RequestLimitExceeded") => Some("EC2 throttled the requests; wait a minute and run again".to_string()),
            Some("InstanceLimitExceeded" | "VcpuLimitExceeded") => {
                Some("the account's instance quota is reached; ask AWS for more or use fewer --nodes".to_string())
            }
            _ => None,
        };
        let hint = hint.or_else(|| match &e {
            SdkError::ConstructionFailure(_) if detail.contains("credentials") => {
                Some("no AWS credentials found: run `aws configure` or `aws sso login`, or set AWS_PROFILE".to_string())
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Some(format!(
                "cannot reach EC2 in region {}; check the region name (`aws ec2 describe-regions`) and your connection",
                self.region
            )),
            _ => None,
        });
        let mut err = ProviderError::new(NAME, format!("{doing}: {detail}"));
        if let Some(h) = hint {
            err = err.with_hint(h);
        }
        err
    }

    /// Refuses a region EC2 does not list, with the list, instead of failing later in some
    /// less obvious way.
    async fn check_region(&self) -> Result<(), ProviderError> {
        let out =
            self.call("listing EC2 regions", self.regions_client.describe_regions().all_regions(true).send()).await?;
        let names: Vec<&str> = out.regions().iter().filter_map(|r| r.region_name()).collect();
        if names.contains(&self.region.as_str()) {
            return Ok(());
        }
        Err(ProviderError::new(NAME, format!("unknown region {:?}", self.region))
            .with_hint(format!("EC2 regions: {}", names.join(", "))))
    }

    /// The architecture of the instance type, which also proves the type exists.
    async fn architecture(&self) -> Result<&'static str, ProviderError> {
        let t = InstanceType::from(self.settings.instance_type.as_str());
        let out = self
            .call("describing the instance type", self.client.describe_instance_types().instance_types(t).send())
            .await
            .map_err(|e| {
                if e.message.contains("InvalidInstanceType") {
                    ProviderError {
                        hint: Some(
                            "see `aws ec2 describe-instance-types` or https://aws.amazon.com/ec2/instance-types/"
                                .into(),
                        ),
                        ..e
                    }
                } else {
                    e
                }
            })?;
        let info = out.instance_types().first().ok_or_else(|| {
            ProviderError::new(
                NAME,
                format!("instance type {:?} is not offered in {}", self.settings.instance_type, self.region),
            )
        })?;
        let archs = info.processor_info().map(|p| p.supported_architectures()).unwrap_or_default();
        if archs.contains(&ArchitectureType::X8664) || archs.is_empty() {
            Ok("amd64")
        } else if archs.contains(&ArchitectureType::Arm64) {
            Ok("arm64")
        } else {
            Err(ProviderError::new(
                NAME,
                format!("instance type {:?} has no architecture Ubuntu supports", self.settings.instance_type),
            ))
        }
    }

    /// `--image`, else the newest Ubuntu 22.04 image Canonical publishes in the region.
    async fn image(&self, arch: &str) -> Result<String, ProviderError> {
        if let Some(id) = &self.settings.image {
            return Ok(id.clone());
        }
        let pattern = UBUNTU_JAMMY.replace("{arch}", arch);
        let out = self
            .call(
                "finding the Ubuntu 22.04 image",
                self.client
                    .describe_images()
                    .owners(CANONICAL_OWNER)
                    .filters(Filter::builder().name("name").values(pattern).build())
                    .filters(Filter::builder().name("state").values("available").build())
                    .send(),
            )
            .await?;
        let mut images: Vec<_> = out.images().iter().filter(|i| i.image_id().is_some()).collect();
        // ISO 8601 dates sort as strings.
        images.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
        let newest = images.first().ok_or_else(|| {
            ProviderError::new(NAME, format!("no Ubuntu 22.04 ({arch}) image from Canonical found in {}", self.region))
                .with_hint("pass --image AMI_ID")
        })?;
        tracing::info!(
            image = newest.image_id().unwrap_or(""),
            name = newest.name().unwrap_or(""),
            "using Ubuntu 22.04 image"
        );
        Ok(newest.image_id().unwrap_or_default().to_string())
    }

    fn network_filter(network: &str) -> Filter {
        Filter::builder().name(format!("tag:{TAG_NETWORK}")).values(network).build()
    }

    fn tags(network: &str, resource: ResourceType, name: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(resource)
            .tags(Tag::builder().key("Name").value(name).build())
            .tags(Tag::builder().key(TAG_NETWORK).value(network).build())
            .tags(Tag::builder().key(TAG_MANAGED).value("timectl").build())
            .build()
    }

    /// The network's instances in the given states.
    async fn instances(&self, network: &str, states: &[&str]) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .call(
                    "listing the network's instances",
                    self.client
                        .describe_instances()
                        .filters(Self::network_filter(network))
                        .filters(
                            Filter::builder()
                                .name("instance-state-name")
                                .set_values(Some(states.iter().map(|s| s.to_string()).collect()))
                                .build(),
                        )
                        .set_next_token(token.clone())
                        .send(),
                )
                .await?;
            out.extend(resp.reservations().iter().flat_map(|r| r.instances().iter().cloned()));
            token = resp.next_token().filter(|t| !t.is_empty()).map(String::from);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    fn tag_value<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
        i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
    }

    fn state(i: &Instance) -> &str {
        i.state().and_then(|s| s.name()).map(|n| n.as_str()).unwrap_or("")
    }

    fn host(network: &str, i: &Instance) -> Option<Host> {
        let name = Self::tag_value(i, "Name")?;
        let index = cloud::host_index(network, name)?;
        let public = i.public_ip_address()?.to_string();
        Some(Host {
            name: name.to_string(),
            index,
            ssh_host: public.clone(),
            ssh_port: 22,
            // Ubuntu's images put the key pair on the `ubuntu` user, which has sudo.
            ssh_user: "ubuntu".into(),
            p2p_host: i.private_ip_address().map(String::from).unwrap_or(public),
            provider_id: i.instance_id().map(String::from),
        })
    }

    fn hosts(network: &str, instances: &[Instance]) -> Vec<Host> {
        let mut hosts: Vec<Host> = instances
            .iter()
            .filter(|i| Self::state(i) == InstanceStateName::Running.as_str())
            .filter_map(|i| Self::host(network, i))
            .collect();
        hosts.sort_by_key(|h| h.index);
        hosts
    }

    async fn key_exists(&self, network: &str) -> Result<bool, ProviderError> {
        let r = self.client.describe_key_pairs().key_names(Self::key_name(network)).send();
        match tokio::time::timeout(self.settings.call_timeout, r).await {
            Err(_) => Err(ProviderError::new(NAME, "looking up the key pair: no answer from EC2")),
            Ok(Ok(out)) => Ok(!out.key_pairs().is_empty()),
            Ok(Err(e)) if e.code() == Some("InvalidKeyPair.NotFound") => Ok(false),
            Ok(Err(e)) => Err(self.sdk_error("looking up the key pair", e)),
        }
    }

    async fn ensure_key(&self, network: &str, public_key: &str) -> Result<String, ProviderError> {
        let name = Self::key_name(network);
        if self.key_exists(network).await? {
            return Ok(name);
        }
        self.call(
            "importing your SSH public key",
            self.client
                .import_key_pair()
                .key_name(&name)
                .public_key_material(Blob::new(public_key.as_bytes()))
                .tag_specifications(Self::tags(network, ResourceType::KeyPair, &name))
                .send(),
        )
        .await?;
        tracing::info!(key_pair = %name, "imported the SSH public key");
        Ok(name)
    }

    async fn find_group(&self, network: &str) -> Result<Option<aws_sdk_ec2::types::SecurityGroup>, ProviderError> {
        let out = self
            .call(
                "looking up the security group",
                self.client
                    .describe_security_groups()
                    .filters(Filter::builder().name("group-name").values(Self::group_name(network)).build())
                    .filters(Self::network_filter(network))
                    .send(),
            )
            .await?;
        Ok(out.security_groups().first().cloned())
    }

    fn ssh_permission(cidr: &str) -> IpPermission {
        let b = IpPermission::builder().ip_protocol("tcp").from_port(22).to_port(22);
        if cidr.contains(':') {
            b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(cidr).description("SSH from the operator").build()).build()
        } else {
            b.ip_ranges(IpRange::builder().cidr_ip(cidr).description("SSH from the operator").build()).build()
        }
    }

    fn p2p_permission(group_id: &str, port: u16) -> IpPermission {
        IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port as i32)
            .to_port(port as i32)
            .user_id_group_pairs(
                UserIdGroupPair::builder().group_id(group_id).description("P2P within the network").build(),
            )
            .build()
    }

    /// The security group: SSH from the operator only, P2P from the group's own members only,
    /// no RPC rule (RPC stays on loopback and goes through SSH). A changed operator address
    /// replaces the old SSH rule.
    async fn ensure_group(&self, network: &str, p2p_port: u16, ssh_cidr: &str) -> Result<String, ProviderError> {
        let name = Self::group_name(network);
        let (id, perms) = match self.find_group(network).await? {
            Some(g) => (g.group_id().unwrap_or_default().to_string(), g.ip_permissions().to_vec()),
            None => {
                let out = self
                    .call(
                        "creating the security group",
                        self.client
                            .create_security_group()
                            .group_name(&name)
                            .description(format!(
                                "timectl network {network}: SSH from the operator, P2P within the network"
                            ))
                            .tag_specifications(Self::tags(network, ResourceType::SecurityGroup, &name))
                            .send(),
                    )
                    .await?;
                tracing::info!(group = %name, "created the security group");
                (out.group_id().unwrap_or_default().to_string(), Vec::new())
            }
        };
        let port = |p: &IpPermission, n: i32| {
            p.ip_protocol() == Some("tcp") && p.from_port() == Some(n) && p.to_port() == Some(n)
        };
        let ssh_cidrs: BTreeSet<String> = perms
            .iter()
            .filter(|p| port(p, 22))
            .flat_map(|p| {
                p.ip_ranges()
                    .iter()
                    .filter_map(|r| r.cidr_ip().map(String::from))
                    .chain(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6().map(String::from)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let has_p2p = perms.iter().any(|p| {
            port(p, p2p_port as i32) && p.user_id_group_pairs().iter().any(|g| g.group_id() == Some(id.as_str()))
        });
        let mut add = Vec::new();
        if !ssh_cidrs.contains(ssh_cidr) {
            add.push(Self::ssh_permission(ssh_cidr));
        }
        if !has_p2p {
            add.push(Self::p2p_permission(&id, p2p_port));
        }
        if !add.is_empty() {
            self.call(
                "opening SSH and P2P in the security group",
                self.client.authorize_security_group_ingress().group_id(&id).set_ip_permissions(Some(add)).send(),
            )
            .await?;
        }
        let stale: Vec<IpPermission> =
            ssh_cidrs.iter().filter(|c| c.as_str() != ssh_cidr).map(|c| Self::ssh_permission(c)).collect();
        if !stale.is_empty() {
            self.call(
                "removing SSH rules for old addresses",
                self.client.revoke_security_group_ingress().group_id(&id).set_ip_permissions(Some(stale)).send(),
            )
            .await?;
        }
        Ok(id)
    }

    /// Launches the instances among `1..=nodes` that do not exist.
    async fn create_missing(
        &self,
        req: &ProvisionRequest,
        image: &str,
        key: &str,
        group_id: &str,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        use base64::Engine as _;
        let existing: BTreeSet<usize> = self
            .instances(&req.network, &["pending", "running", "stopping", "stopped"])
            .await?
            .iter()
            .filter_map(|i| cloud::host_index(&req.network, Self::tag_value(i, "Name")?))
            .collect();
        let user_data = base64::engine::general_purpose::STANDARD.encode(cloud::render_cloud_init(req.p2p_port));
        // One token per launch so that the SDK's own retries cannot start an instance twice.
        let run: u64 = rand::random();
        for i in (1..=req.nodes).filter(|i| !existing.contains(i)) {
            let name = cloud::host_name(&req.network, i);
            progress.step(&name, "launching instance");
            self.call(
                &format!("launching {name}"),
                self.client
                    .run_instances()
                    .image_id(image)
                    .instance_type(InstanceType::from(self.settings.instance_type.as_str()))
                    .min_count(1)
                    .max_count(1)
                    .key_name(key)
                    .security_group_ids(group_id)
                    .user_data(user_data.clone())
                    .metadata_options(
                        InstanceMetadataOptionsRequest::builder().http_tokens(HttpTokensState::Required).build(),
                    )
                    .tag_specifications(Self::tags(&req.network, ResourceType::Instance, &name))
                    .tag_specifications(Self::tags(&req.network, ResourceType::Volume, &name))
                    .client_token(format!("timectl-{}-{i}-{run:016x}", req.network))
                    .send(),
            )
            .await?;
        }
        Ok(())
    }

    async fn wait_ready(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError> {
        let deadline = Instant::now() + self.settings.wait_timeout;
        let mut shown: HashMap<String, String> = HashMap::new();
        loop {
            let instances = self.instances(&req.network, &["pending", "running"]).await?;
            let by_index: BTreeMap<usize, &Instance> = instances
                .iter()
                .filter_map(|i| Some((cloud::host_index(&req.network, Self::tag_value(i, "Name")?)?, i)))
                .collect();
            let mut waiting = Vec::new();
            for n in 1..=req.nodes {
                let name = cloud::host_name(&req.network, n);
                let step = match by_index.get(&n) {
                    None => "not listed yet".to_string(),
                    Some(i) if Self::state(i) != "running" => format!("instance {}", Self::state(i)),
                    Some(i) => match i.public_ip_address() {
                        None => "running, waiting for a public address".to_string(),
                        Some(ip) => format!("running at {ip}"),
                    },
                };
                if !step.starts_with("running at") {
                    waiting.push(name.clone());
                }
                if shown.get(&name) != Some(&step) {
                    progress.step(&name, &step);
                    shown.insert(name, step);
                }
            }
            if waiting.is_empty() {
                return Ok(Self::hosts(&req.network, &instances));
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::new(
                    NAME,
                    format!(
                        "{} instance(s) not running with a public address after {} s: {}",
                        waiting.len(),
                        self.settings.wait_timeout.as_secs(),
                        waiting.join(", ")
                    ),
                )
                .with_hint("run the same command again (it launches only what is missing), or `timectl destroy` to remove everything"));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }
}

#[async_trait]
impl Provider for Aws {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn plan(&self, req: &ProvisionRequest) -> Result<Plan, ProviderError> {
        cloud::check_network_name(NAME, &req.network)?;
        cloud::parse_public_key(NAME, &req.ssh_public_key)?;
        self.check_region().await?;
        let arch = self.architecture().await?;
        let image = self.image(arch).await?;
        let instances = self.instances(&req.network, &["pending", "running", "stopping", "stopped"]).await?;
        let existing = Self::hosts(&req.network, &instances);
        let have: BTreeSet<usize> =
            instances.iter().filter_map(|i| cloud::host_index(&req.network, Self::tag_value(i, "Name")?)).collect();
        let mut create = Vec::new();
        if !self.key_exists(&req.network).await? {
            create.push(format!("key pair {} (your SSH public key)", Self::key_name(&req.network)));
        }
        if self.find_group(&req.network).await?.is_none() {
            let from = req.allow_from.as_deref().unwrap_or("your detected address");
            create.push(format!(
                "security group {} (in: tcp 22 from {from}, tcp {} from the group itself)",
                Self::group_name(&req.network),
                req.p2p_port
            ));
        }
        let price = hourly_price(&self.region, &self.settings.instance_type);
        let price_text =
            price.map(|p| format!("${p:.4}/h as of {PRICES_DATE}")).unwrap_or_else(|| "price unknown".into());
        for i in (1..=req.nodes).filter(|i| !have.contains(i)) {
            create.push(format!(
                "instance {} {} {} {image} ({price_text})",
                cloud::host_name(&req.network, i),
                self.settings.instance_type,
                self.region
            ));
        }
        let total = req.nodes + have.iter().filter(|i| **i > req.nodes).count();
        Ok(Plan { existing, create, hourly_usd: price.map(|p| p * total as f64) })
    }

    async fn create(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError> {
        cloud::check_network_name(NAME, &req.network)?;
        let public_key = cloud::parse_public_key(NAME, &req.ssh_public_key)?;
        // Everything that can be refused is checked before anything is created.
        let ssh_cidr = cloud::ssh_cidr(NAME, req.allow_from.as_deref(), self.detector.as_ref()).await?;
        self.check_region().await?;
        let arch = self.architecture().await?;
        let image = self.image(arch).await?;
        let key = self.ensure_key(&req.network, &public_key).await?;
        let group_id = self.ensure_group(&req.network, req.p2p_port, &ssh_cidr).await?;
        self.create_missing(req, &image, &key, &group_id, progress).await?;
        self.wait_ready(req, progress).await
    }

    async fn list(&self, network: &str) -> Result<Vec<Host>, ProviderError> {
        cloud::check_network_name(NAME, network)?;
        Ok(Self::hosts(network, &self.instances(network, &["pending", "running"]).await?))
    }

    async fn destroy(&self, network: &str, progress: &dyn Progress) -> Result<Vec<String>, ProviderError> {
        cloud::check_network_name(NAME, network)?;
        let mut deleted = Vec::new();
        let live = self.instances(network, &["pending", "running", "stopping", "stopped", "shutting-down"]).await?;
        let ids: Vec<String> = live.iter().filter_map(|i| i.instance_id().map(String::from)).collect();
        if !ids.is_empty() {
            for i in &live {
                progress.step(Self::tag_value(i, "Name").unwrap_or("?"), "terminating");
            }
            self.call(
                "terminating instances",
                self.client.terminate_instances().set_instance_ids(Some(ids.clone())).send(),
            )
            .await?;
            let deadline = Instant::now() + self.settings.wait_timeout;
            loop {
                let left =
                    self.instances(network, &["pending", "running", "stopping", "stopped", "shutting-down"]).await?;
                if left.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    let names: Vec<&str> = left.iter().filter_map(|i| Self::tag_value(i, "Name")).collect();
                    return Err(ProviderError::new(
                        NAME,
                        format!("instances not terminated in time: {}", names.join(", ")),
                    )
                    .with_hint("run `timectl destroy` again; it finds them by tag"));
                }
                tokio::time::sleep(self.settings.poll_interval).await;
            }
            for i in &live {
                let name = Self::tag_value(i, "Name").unwrap_or("?");
                progress.step(name, "terminated");
                deleted.push(format!("instance {name} ({})", i.instance_id().unwrap_or("")));
            }
        }
        if let Some(g) = self.find_group(network).await? {
            let id = g.group_id().unwrap_or_default().to_string();
            // Network interfaces of terminated instances let go of the group a little later.
            let deadline = Instant::now() + self.settings.wait_timeout;
            loop {
                let r = self.client.delete_security_group().group_id(&id).send();
                match tokio::time::timeout(self.settings.call_timeout, r).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) if e.code() == Some("DependencyViolation") && Instant::now() < deadline => {
                        tokio::time::sleep(self.settings.poll_interval).await;
                    }
                    Ok(Err(e)) => return Err(self.sdk_error("deleting the security group", e)),
                    Err(_) => return Err(ProviderError::new(NAME, "deleting the security group: no answer from EC2")),
                }
            }
            deleted.push(format!("security group {} ({id})", Self::group_name(network)));
        }
        if self.key_exists(network).await? {
            self.call("deleting the key pair", self.client.delete_key_pair().key_name(Self::key_name(network)).send())
                .await?;
            deleted.push(format!("key pair {}", Self::key_name(network)));
        }
        Ok(deleted)
    }
}

/// The provider as the command line builds it: the SDK configuration is loaded on first use,
/// and the region a network was created in is remembered in the network's state directory
/// (`aws.json`, no secret in it), so `destroy` and `list` look in the right region without
/// `--region`.
pub struct AwsProvider {
    settings: AwsSettings,
    detector: Arc<dyn AddressDetector>,
    networks_dir: std::path::PathBuf,
    built: tokio::sync::Mutex<HashMap<Option<String>, Arc<Aws>>>,
}

impl AwsProvider {
    pub fn new(settings: AwsSettings, detector: Arc<dyn AddressDetector>, networks_dir: std::path::PathBuf) -> Self {
        AwsProvider { settings, detector, networks_dir, built: tokio::sync::Mutex::new(HashMap::new()) }
    }

    fn state_file(&self, network: &str) -> std::path::PathBuf {
        self.networks_dir.join(network).join("aws.json")
    }

    fn recorded_region(&self, network: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.state_file(network)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["region"].as_str().map(String::from)
    }

    fn record_region(&self, network: &str, region: &str) -> Result<(), ProviderError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let file = self.state_file(network);
        let fail =
            |e: std::io::Error| ProviderError::new(NAME, format!("cannot write {}", file.display())).with_source(e);
        if let Some(dir) = file.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
        }
        std::fs::write(&file, serde_json::json!({ "region": region }).to_string()).map_err(fail)
    }

    /// The provider for the network's region: `--region`, else the recorded one, else the
    /// SDK's chain.
    async fn aws(&self, network: &str) -> Result<Arc<Aws>, ProviderError> {
        cloud::check_network_name(NAME, network)?;
        let recorded = self.recorded_region(network);
        if let (Some(flag), Some(rec)) = (&self.settings.region, &recorded) {
            if flag != rec {
                return Err(ProviderError::new(NAME, format!("network {network} is in region {rec}, not {flag}"))
                    .with_hint(format!("drop --region, or pass --region {rec}")));
            }
        }
        let region = self.settings.region.clone().or(recorded);
        let mut built = self.built.lock().await;
        if let Some(a) = built.get(&region) {
            return Ok(a.clone());
        }
        let settings = AwsSettings { region: region.clone(), ..self.settings.clone() };
        let a = Arc::new(Aws::from_env(settings, self.detector.clone()).await?);
        built.insert(region, a.clone());
        Ok(a)
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn plan(&self, req: &ProvisionRequest) -> Result<Plan, ProviderError> {
        self.aws(&req.network).await?.plan(req).await
    }

    async fn create(&self, req: &ProvisionRequest, progress: &dyn Progress) -> Result<Vec<Host>, ProviderError> {
        let aws = self.aws(&req.network).await?;
        // Recorded before anything exists, so a crash part-way still leaves the region known.
        self.record_region(&req.network, aws.region())?;
        aws.create(req, progress).await
    }

    async fn list(&self, network: &str) -> Result<Vec<Host>, ProviderError> {
        self.aws(network).await?.list(network).await
    }

    async fn destroy(&self, network: &str, progress: &dyn Progress) -> Result<Vec<String>, ProviderError> {
        let deleted = self.aws(network).await?.destroy(network, progress).await?;
        let _ = std::fs::remove_file(self.state_file(network));
        Ok(deleted)
    }
}

#[cfg(test)]
mod moto_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_known_only_where_the_table_is_true() {
        assert_eq!(hourly_price("us-east-1", "t3.small"), Some(0.0208));
        assert_eq!(hourly_price("eu-west-1", "t3.small"), None);
        assert_eq!(hourly_price("us-east-1", "x9.huge"), None);
    }

    #[test]
    fn ssh_rules_follow_the_address_family() {
        let v4 = Aws::ssh_permission("198.51.100.7/32");
        assert_eq!(v4.ip_ranges()[0].cidr_ip(), Some("198.51.100.7/32"));
        let v6 = Aws::ssh_permission("2001:db8::1/128");
        assert_eq!(v6.ipv6_ranges()[0].cidr_ipv6(), Some("2001:db8::1/128"));
        assert!(v6.ip_ranges().is_empty());
    }
}
