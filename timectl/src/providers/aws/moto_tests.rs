//! The provider against `moto_server`, a local EC2 implementation, on 127.0.0.1.

#[path = "../../../tests/common/moto.rs"]
mod moto;

use aws_sdk_ec2::config::Credentials;
use moto::Moto;

use super::*;
use crate::providers::cloud::NoDetection;
use crate::providers::NoProgress;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFv1ChDaPpZgMjQH5tcdQn5/4jXPqo+w0sBRllJnNrC test@timectl";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";

fn settings(region: &str) -> AwsSettings {
    AwsSettings {
        region: Some(region.into()),
        call_timeout: Duration::from_secs(30),
        wait_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_millis(100),
        ..AwsSettings::default()
    }
}

async fn sdk_config(moto: &Moto, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(&moto.url)
        .credentials_provider(Credentials::new("AKIAIOSFODNN7EXAMPLE", SECRET, None, None, "test"))
        .load()
        .await
}

async fn provider(moto: &Moto, region: &str) -> Aws {
    Aws::from_sdk_config(&sdk_config(moto, region).await, settings(region), Arc::new(NoDetection::default())).unwrap()
}

fn request(nodes: usize) -> ProvisionRequest {
    ProvisionRequest {
        network: "tn".into(),
        nodes,
        ssh_public_key: KEY.into(),
        p2p_port: 24100,
        allow_from: Some("198.51.100.7/32".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_five_then_rerun_is_a_noop_then_destroy_leaves_nothing() {
    let moto = Moto::start(false);
    let p = provider(&moto, "us-east-1").await;
    let client = Client::new(&sdk_config(&moto, "us-east-1").await);
    let req = request(5);

    let plan = p.plan(&req).await.unwrap();
    let instances: Vec<&String> = plan.create.iter().filter(|l| l.starts_with("instance tn-node-")).collect();
    assert_eq!(instances.len(), 5, "{:?}", plan.create);
    assert!(instances.iter().all(|l| l.contains(moto::NEWEST_JAMMY) && l.contains("t3.small")), "{instances:?}");
    assert!(plan.create.iter().any(|l| l.starts_with("key pair timectl-tn")));
    assert!(plan.create.iter().any(|l| l.starts_with("security group timectl-tn")));
    assert!((plan.hourly_usd.unwrap() - 5.0 * 0.0208).abs() < 1e-9);
    assert!(moto::live_instance_ids(&client, "tn").await.is_empty(), "plan launched something");

    let hosts = p.create(&req, &NoProgress).await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    for h in &hosts {
        assert_eq!((h.ssh_user.as_str(), h.ssh_port), ("ubuntu", 22));
        assert!(h.ssh_host.parse::<std::net::Ipv4Addr>().is_ok(), "{h:?}");
        assert!(h.p2p_host.parse::<std::net::Ipv4Addr>().is_ok(), "{h:?}");
    }
    let ids = moto::live_instance_ids(&client, "tn").await;
    assert_eq!(ids.len(), 5);

    let out = client.describe_instances().set_instance_ids(Some(ids.clone())).send().await.unwrap();
    let group_id = p.find_group("tn").await.unwrap().unwrap().group_id().unwrap().to_string();
    for i in out.reservations().iter().flat_map(|r| r.instances()) {
        let name = Aws::tag_value(i, "Name").unwrap();
        assert!(name.starts_with("tn-node-"), "{name}");
        assert_eq!(Aws::tag_value(i, "timectl-network"), Some("tn"));
        assert_eq!(Aws::tag_value(i, "managed-by"), Some("timectl"));
        assert_eq!(i.image_id(), Some(moto::NEWEST_JAMMY), "the newest Canonical 22.04 image");
        assert_eq!(i.key_name(), Some("timectl-tn"));
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t3.small"));
        assert!(i.security_groups().iter().any(|g| g.group_id() == Some(group_id.as_str())));
        let attr = client
            .describe_instance_attribute()
            .instance_id(i.instance_id().unwrap())
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        use base64::Engine as _;
        let encoded = attr.user_data().and_then(|u| u.value()).unwrap();
        let user_data = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
        assert!(
            user_data.starts_with("#cloud-config\n") && user_data.contains("tcp dport 24100 accept"),
            "{user_data}"
        );
        assert!(!user_data.contains(SECRET));
    }

    let g = p.find_group("tn").await.unwrap().unwrap();
    let rules: Vec<String> = g
        .ip_permissions()
        .iter()
        .map(|r| {
            format!(
                "{} {}-{} {:?} {:?}",
                r.ip_protocol().unwrap_or(""),
                r.from_port().unwrap_or(-1),
                r.to_port().unwrap_or(-1),
                r.ip_ranges().iter().filter_map(|x| x.cidr_ip()).collect::<Vec<_>>(),
                r.user_id_group_pairs().iter().filter_map(|x| x.group_id()).collect::<Vec<_>>()
            )
        })
        .collect();
    let mut rules = rules;
    rules.sort();
    assert_eq!(
        rules,
        vec![format!("tcp 22-22 [\"198.51.100.7/32\"] []"), format!("tcp 24100-24100 [] [\"{group_id}\"]")],
        "SSH from the operator, P2P from the group, no RPC"
    );

    // Re-run: the same hosts, nothing launched, no rule added.
    let again = p.create(&req, &NoProgress).await.unwrap();
    assert_eq!(again, hosts);
    assert_eq!(moto::live_instance_ids(&client, "tn").await, ids);
    assert_eq!(p.find_group("tn").await.unwrap().unwrap().ip_permissions().len(), 2);
    assert!(p.plan(&req).await.unwrap().create.is_empty());
    assert_eq!(p.list("tn").await.unwrap(), hosts);

    let deleted = p.destroy("tn", &NoProgress).await.unwrap();
    assert_eq!(deleted.iter().filter(|l| l.starts_with("instance tn-node-")).count(), 5, "{deleted:?}");
    assert!(deleted.iter().any(|l| l.starts_with("security group timectl-tn")), "{deleted:?}");
    assert!(deleted.contains(&"key pair timectl-tn".to_string()), "{deleted:?}");
    assert!(moto::live_instance_ids(&client, "tn").await.is_empty(), "instances left pending or running");
    let groups = client
        .describe_security_groups()
        .filters(Filter::builder().name("group-name").values("timectl-tn").build())
        .send()
        .await
        .unwrap();
    assert!(groups.security_groups().is_empty(), "security group left");
    let keys = client.describe_key_pairs().send().await.unwrap();
    assert!(!keys.key_pairs().iter().any(|k| k.key_name() == Some("timectl-tn")), "key pair left");
    assert!(p.destroy("tn", &NoProgress).await.unwrap().is_empty(), "a second destroy finds nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_an_unknown_region_give_clear_errors() {
    let strict = Moto::start(true);
    let p = provider(&strict, "us-east-1").await;
    let err = p.create(&request(1), &NoProgress).await.unwrap_err();
    let shown = format!("{err} {err:?} {:?}", err.hint);
    assert!(err.message.contains("AuthFailure") || err.message.contains("InvalidClientTokenId"), "{err}");
    assert!(err.hint.as_deref().unwrap_or("").contains("AWS_PROFILE"), "{err:?}");
    assert!(!shown.contains(SECRET), "{shown}");

    let moto = Moto::start(false);
    let p = provider(&moto, "xx-nowhere-1").await;
    let err = p.plan(&request(1)).await.unwrap_err();
    assert!(err.message.contains("unknown region \"xx-nowhere-1\""), "{err}");
    assert!(err.hint.as_deref().unwrap().contains("us-east-1"), "{err:?}");
    let err = p.create(&request(1), &NoProgress).await.unwrap_err();
    assert!(err.message.contains("unknown region"), "{err}");
    let client = Client::new(&sdk_config(&moto, "us-east-1").await);
    assert!(client.describe_key_pairs().send().await.unwrap().key_pairs().is_empty(), "nothing was created");
}

#[tokio::test]
async fn no_region_is_a_clear_error() {
    let conf = aws_config::SdkConfig::builder().behavior_version(BehaviorVersion::latest()).build();
    let err = Aws::from_sdk_config(&conf, AwsSettings::default(), Arc::new(NoDetection::default())).err().unwrap();
    assert!(err.message.contains("no AWS region"), "{err}");
    assert!(err.hint.unwrap().contains("--region"));
}

/// The production path: the SDK's own chain reads `AWS_ENDPOINT_URL_EC2`, the region and the
/// credentials from the environment. Run in a child process of this test binary so that the
/// variables touch no other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_environment_chain_and_endpoint_override_are_used() {
    let moto = Moto::start(false);
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "providers::aws::moto_tests::env_child", "--ignored", "--nocapture"])
        .env("AWS_ENDPOINT_URL_EC2", &moto.url)
        // us-east-1 only: moto 5.2 fails to set up a second region's backend when its AMIs
        // carry creation dates (it parses the shared list in place).
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(&moto.log).unwrap_or_default();
    assert!(out.status.success() && text.contains("1 passed"), "{text}\nmoto_server:\n{log}");
    // What the child made is in the moto server this test started, in the region of the env.
    let client = Client::new(&sdk_config(&moto, "us-east-1").await);
    let keys = client.describe_key_pairs().send().await.unwrap();
    assert!(keys.key_pairs().iter().any(|k| k.key_name() == Some("timectl-envnet")));
}

#[tokio::test]
#[ignore = "run by the_sdk_environment_chain_and_endpoint_override_are_used in a child process"]
async fn env_child() {
    let p = Aws::from_env(
        AwsSettings { poll_interval: Duration::from_millis(100), ..AwsSettings::default() },
        Arc::new(NoDetection::default()),
    )
    .await
    .unwrap();
    assert_eq!(p.region(), "us-east-1");
    let mut req = request(1);
    req.network = "envnet".into();
    let hosts = p.create(&req, &NoProgress).await.unwrap();
    assert_eq!(hosts.len(), 1);
}
