//! `timectl provision|deploy --dry-run|destroy --provider aws` end to end: the real binary
//! against `moto_server` on 127.0.0.1, reached through the SDK's own `AWS_ENDPOINT_URL_EC2`.

#[path = "common/isolated.rs"]
mod isolated;
#[path = "common/moto.rs"]
mod moto;

use std::path::Path;
use std::process::Output;

use aws_sdk_ec2::types::Filter;
use moto::Moto;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFv1ChDaPpZgMjQH5tcdQn5/4jXPqo+w0sBRllJnNrC test@timectl";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";

async fn timectl(dir: &Path, moto: &Moto, args: &[&str]) -> Output {
    let out = isolated::timectl(dir)
        .args(args)
        .env("AWS_ENDPOINT_URL_EC2", &moto.url)
        .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains(SECRET), "secret shown: {all}");
    out
}

fn text(o: &Output) -> String {
    format!("exit {:?}\n{}{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_rerun_dry_run_and_destroy_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("id.pub"), format!("{KEY}\n")).unwrap();
    let moto = Moto::start(false);
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("AKIAIOSFODNN7EXAMPLE", SECRET, None, None, "test"))
        .load()
        .await;
    let client = aws_sdk_ec2::Client::new(&conf);
    let args = |cmd: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec![
            "--network",
            "tn",
            cmd,
            "--provider",
            "aws",
            "--ssh-public-key",
            "id.pub",
            "--allow-from",
            "198.51.100.7/32",
        ];
        v.extend_from_slice(extra);
        v
    };

    let dry = timectl(d, &moto, &args("provision", &["--region", "us-east-1", "--nodes", "5", "--dry-run"])).await;
    assert!(dry.status.success(), "{}", text(&dry));
    let out = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert_eq!(out.matches("create  instance tn-node-").count(), 5, "{out}");
    assert!(out.contains(moto::NEWEST_JAMMY), "{out}");
    assert!(out.contains("price: $0.1040/hour for the network (5 hosts)"), "{out}");
    assert_eq!(moto::live_instance_ids(&client, "tn").await.len(), 0);

    let first = timectl(d, &moto, &args("provision", &["--region", "us-east-1", "--nodes", "5"])).await;
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(moto::live_instance_ids(&client, "tn").await.len(), 5);
    let inv_path = d.join("inventories/tn.toml");
    let inv = std::fs::read_to_string(&inv_path).unwrap();
    assert_eq!(inv.matches("[[nodes]]").count(), 5, "{inv}");
    assert!(inv.contains("provider = \"aws\"") && inv.contains("ssh_user = \"ubuntu\""), "{inv}");
    assert!(!inv.contains(SECRET) && !inv.contains("AKIA"));

    // Without --region: the region recorded at creation is used.
    let again = timectl(d, &moto, &args("provision", &["--nodes", "5"])).await;
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(moto::live_instance_ids(&client, "tn").await.len(), 5, "a re-run launched something");
    let plan = timectl(d, &moto, &args("deploy", &["--nodes", "5", "--dry-run"])).await;
    assert!(plan.status.success(), "{}", text(&plan));
    let out = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert_eq!(out.matches("  keep    tn-node-").count(), 5, "{out}");
    assert!(!out.contains("  create  "), "{out}");
    let elsewhere = timectl(d, &moto, &args("provision", &["--region", "eu-west-1", "--nodes", "5"])).await;
    assert!(
        !elsewhere.status.success() && text(&elsewhere).contains("network tn is in region us-east-1"),
        "{}",
        text(&elsewhere)
    );

    let gone = timectl(d, &moto, &["--network", "tn", "destroy", "--yes"]).await;
    assert!(gone.status.success(), "{}", text(&gone));
    let out = String::from_utf8_lossy(&gone.stdout).into_owned();
    assert_eq!(out.matches("instance tn-node-").count(), 5, "{out}");
    assert!(out.contains("security group timectl-tn") && out.contains("key pair timectl-tn"), "{out}");
    assert_eq!(moto::live_instance_ids(&client, "tn").await.len(), 0);
    let groups = client
        .describe_security_groups()
        .filters(Filter::builder().name("group-name").values("timectl-tn").build())
        .send()
        .await
        .unwrap();
    assert!(groups.security_groups().is_empty());
    assert!(client.describe_key_pairs().send().await.unwrap().key_pairs().is_empty());
    assert!(!inv_path.exists());
}
