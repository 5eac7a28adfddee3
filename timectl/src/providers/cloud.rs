//! What the cloud providers (DigitalOcean, EC2) share: the operator's SSH public key, the
//! operator's address for the SSH firewall rule, the cloud-init user data, names and the cost
//! cap. Nothing here talks to a cloud API.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;

use super::ProviderError;

/// The cloud providers' flags (beside `--provider`, `--ssh-public-key` and `--allow-from`).
/// Unset values take each provider's defaults.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CloudArgs {
    /// Cloud region (do: default sfo3; aws: default from AWS_REGION or the profile).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// DigitalOcean droplet size (default s-2vcpu-4gb).
    #[arg(long, value_name = "SLUG")]
    pub size: Option<String>,
    /// Image: a DigitalOcean image slug (default ubuntu-22-04-x64) or an AWS AMI id (default:
    /// the newest Ubuntu 22.04 image from Canonical in the region).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// AWS instance type (default t3.small).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
}

/// `deploy` refuses more hosts than this without `--yes`: a typo in `--nodes` should not
/// start a bill of hundreds of machines.
pub const MAX_NODES_WITHOUT_YES: usize = 20;

/// Cost safety check for the command that turns flags into a `ProvisionRequest`.
pub fn check_node_cap(provider: &'static str, nodes: usize, yes: bool) -> Result<(), ProviderError> {
    if nodes > MAX_NODES_WITHOUT_YES && !yes {
        return Err(ProviderError::new(
            provider,
            format!("{nodes} nodes is more than {MAX_NODES_WITHOUT_YES}; refusing without confirmation"),
        )
        .with_hint("pass --yes if you really want to pay for that many hosts"));
    }
    Ok(())
}

/// The dry-run line about money: what the network costs per hour once created, or that the
/// provider cannot say.
pub fn price_line(hourly_usd: Option<f64>, nodes: usize) -> String {
    match hourly_usd {
        Some(p) => format!("price: ${p:.4}/hour for the network ({nodes} hosts), about ${:.2} for 72 hours", p * 72.0),
        None => format!("price: unknown for this type and region ({nodes} hosts); see the provider's price list"),
    }
}

/// The cloud-init user data every cloud host boots with (`templates/cloud-init.yaml`).
const CLOUD_INIT_TEMPLATE: &str = include_str!("../../../templates/cloud-init.yaml");

/// The user data for a network: the template with its P2P port filled in. It holds no secret;
/// clouds keep user data readable in their consoles and metadata services.
pub fn render_cloud_init(p2p_port: u16) -> String {
    CLOUD_INIT_TEMPLATE.replace("{{p2p_port}}", &p2p_port.to_string())
}

/// `NETWORK-node-N`, the name a host has on every provider.
pub fn host_name(network: &str, index: usize) -> String {
    format!("{network}-node-{index}")
}

/// N from `NETWORK-node-N`, or `None` for a name of another network or shape.
pub fn host_index(network: &str, name: &str) -> Option<usize> {
    let rest = name.strip_prefix(network)?.strip_prefix("-node-")?;
    let n: usize = rest.parse().ok()?;
    (n >= 1 && n.to_string() == rest).then_some(n)
}

/// Network names end up in host names, tags, firewall and key names on both clouds; the
/// narrowest rule all of them accept.
pub fn check_network_name(provider: &'static str, network: &str) -> Result<(), ProviderError> {
    let ok = !network.is_empty()
        && network.len() <= 40
        && network.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !network.starts_with('-')
        && !network.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::new(provider, format!("network name {network:?} cannot be used for cloud hosts"))
            .with_hint("use 1 to 40 lowercase letters, digits and inner dashes, e.g. `tn1`"))
    }
}

/// The key type and base64 blob of an OpenSSH public key line, checked.
pub fn parse_public_key(provider: &'static str, text: &str) -> Result<String, ProviderError> {
    if text.contains("PRIVATE KEY") {
        return Err(ProviderError::new(provider, "this is a private key; give the `.pub` file")
            .with_hint("--ssh-public-key ~/.ssh/id_ed25519.pub"));
    }
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(ProviderError::new(provider, "not an OpenSSH public key line (`TYPE BASE64 [COMMENT]`)"));
    };
    let known = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"];
    if !known.contains(&kind) {
        return Err(ProviderError::new(provider, format!("unsupported SSH key type {kind:?}"))
            .with_hint("use an ed25519 or RSA key (ssh-keygen -t ed25519)"));
    }
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| ProviderError::new(provider, "the public key's base64 part does not decode"))?;
    // The blob starts with its own type name; a mismatch means a damaged or edited line.
    let inner = raw.get(4..).and_then(|r| r.get(..kind.len()));
    if inner != Some(kind.as_bytes()) {
        return Err(ProviderError::new(provider, "the public key's type and content disagree"));
    }
    Ok(line.to_string())
}

/// The key's MD5 fingerprint as DigitalOcean and EC2 (for imported keys) show it:
/// colon-separated hex of the MD5 of the decoded blob.
pub fn md5_fingerprint(public_key_line: &str) -> Option<String> {
    use base64::Engine as _;
    use md5::Digest as _;
    let blob = public_key_line.split_whitespace().nth(1)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    let digest = md5::Md5::digest(&raw);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

/// Checks an `--allow-from` value: an IPv4 or IPv6 address with a prefix length, or a bare
/// address (made a single-host CIDR).
pub fn normalize_cidr(provider: &'static str, value: &str) -> Result<String, ProviderError> {
    let bad = || {
        ProviderError::new(provider, format!("--allow-from {value:?} is not an address or CIDR"))
            .with_hint("e.g. --allow-from 198.51.100.7/32")
    };
    let (addr, prefix) = match value.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (value, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok(format!("{ip}/{prefix}"))
}

/// Finds the operator's public address for the SSH rule when `--allow-from` is not given.
/// Injectable so that tests, which always pass `--allow-from`, can prove nothing is asked.
#[async_trait]
pub trait AddressDetector: Send + Sync {
    async fn detect(&self, provider: &'static str) -> Result<String, ProviderError>;
}

/// For tests: refuses every detection and counts the attempts. Tests always pass
/// `--allow-from`, and a detection would leave 127.0.0.1.
#[cfg(test)]
#[derive(Default)]
pub struct NoDetection(pub std::sync::atomic::AtomicUsize);

#[cfg(test)]
#[async_trait]
impl AddressDetector for NoDetection {
    async fn detect(&self, provider: &'static str) -> Result<String, ProviderError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(ProviderError::new(provider, "address detection is not allowed in tests"))
    }
}

/// Asks a "what is my IP" service over HTTPS (Amazon's, which answers with the bare address).
pub struct HttpAddressDetector {
    pub url: String,
}

impl Default for HttpAddressDetector {
    fn default() -> Self {
        HttpAddressDetector { url: "https://checkip.amazonaws.com/".into() }
    }
}

#[async_trait]
impl AddressDetector for HttpAddressDetector {
    async fn detect(&self, provider: &'static str) -> Result<String, ProviderError> {
        let hint = "pass --allow-from CIDR with the address you will SSH from";
        let fail = |what: &str| {
            ProviderError::new(provider, format!("cannot detect your public address ({what})")).with_hint(hint)
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| fail("HTTP client").with_source(e))?;
        let resp = client.get(&self.url).send().await.map_err(|e| fail(&self.url).with_source(e))?;
        let text = resp.text().await.map_err(|e| fail(&self.url).with_source(e))?;
        let ip: IpAddr = text.trim().parse().map_err(|_| fail("unexpected answer"))?;
        normalize_cidr(provider, &ip.to_string())
    }
}

/// The SSH rule's CIDR: `--allow-from` when given, else detected.
pub async fn ssh_cidr(
    provider: &'static str,
    allow_from: Option<&str>,
    detector: &dyn AddressDetector,
) -> Result<String, ProviderError> {
    match allow_from {
        Some(v) => normalize_cidr(provider, v),
        None => detector.detect(provider).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real ed25519 public key (generated for these tests; its private half was discarded).
    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFv1ChDaPpZgMjQH5tcdQn5/4jXPqo+w0sBRllJnNrC test@timectl";

    #[test]
    fn names_round_trip_and_reject_other_networks() {
        assert_eq!(host_name("tn", 3), "tn-node-3");
        assert_eq!(host_index("tn", "tn-node-3"), Some(3));
        assert_eq!(host_index("tn", "tn2-node-3"), None);
        assert_eq!(host_index("tn", "tn-node-03"), None);
        assert_eq!(host_index("tn", "tn-node-0"), None);
        assert!(check_network_name("do", "tn-1").is_ok());
        assert!(check_network_name("do", "Tn").is_err());
        assert!(check_network_name("do", "a b").is_err());
        assert!(check_network_name("do", "-x").is_err());
    }

    #[test]
    fn public_keys_are_checked_and_private_keys_refused() {
        assert_eq!(parse_public_key("do", &format!("{ED25519}\n")).unwrap(), ED25519);
        let private =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        let err = parse_public_key("do", private).unwrap_err();
        assert!(err.message.contains("private key"), "{err}");
        assert!(!err.to_string().contains("b3BlbnNzaC1rZXktdjEAAAAA"));
        assert!(parse_public_key("do", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ x").is_err());
        assert!(parse_public_key("do", "ssh-dss AAAA").is_err());
        assert!(parse_public_key("do", "").is_err());
    }

    #[test]
    fn md5_fingerprint_matches_ssh_keygen() {
        // `ssh-keygen -E md5 -lf` printed this for ED25519 above when it was generated.
        assert_eq!(md5_fingerprint(ED25519).unwrap(), "02:13:5d:cb:c1:c6:47:0c:12:d9:f2:9a:e7:bc:3f:f3");
        assert_eq!(md5_fingerprint("ssh-ed25519 !!"), None);
    }

    #[test]
    fn cidrs_are_normalized_or_refused() {
        assert_eq!(normalize_cidr("do", "198.51.100.7").unwrap(), "198.51.100.7/32");
        assert_eq!(normalize_cidr("do", "10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(normalize_cidr("do", "2001:db8::1").unwrap(), "2001:db8::1/128");
        assert!(normalize_cidr("do", "10.0.0.0/33").is_err());
        assert!(normalize_cidr("do", "example.com").is_err());
    }

    #[test]
    fn node_cap_needs_yes() {
        assert!(check_node_cap("do", 20, false).is_ok());
        let err = check_node_cap("do", 21, false).unwrap_err();
        assert!(err.hint.unwrap().contains("--yes"));
        assert!(check_node_cap("do", 21, true).is_ok());
    }
}
