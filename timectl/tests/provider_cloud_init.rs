//! The cloud-init user data every cloud host boots with: valid YAML that cloud-init accepts as
//! cloud-config, creating the `timecoin` service user the install stage runs `timed` as.

use std::path::Path;

fn template() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/cloud-init.yaml")).unwrap()
}

fn rendered() -> serde_yaml::Value {
    // The providers fill in the P2P port; the result must still be YAML.
    let text = template().replace("{{p2p_port}}", "24100");
    serde_yaml::from_str(&text).expect("cloud-init template is valid YAML")
}

#[test]
fn starts_with_the_cloud_config_header() {
    // cloud-init ignores user data without this exact first line.
    assert_eq!(template().lines().next(), Some("#cloud-config"));
}

#[test]
fn creates_the_timecoin_user_and_keeps_the_default_user() {
    let doc = rendered();
    let users = doc["users"].as_sequence().expect("users list");
    assert!(users.iter().any(|u| u.as_str() == Some("default")), "the image's login user must stay");
    let timecoin = users.iter().find(|u| u["name"].as_str() == Some("timecoin")).expect("timecoin user");
    assert_eq!(timecoin["system"].as_bool(), Some(true));
    assert_eq!(timecoin["shell"].as_str(), Some("/usr/sbin/nologin"));
    assert_eq!(timecoin["homedir"].as_str(), Some("/var/lib/timed"));
    assert!(
        timecoin.get("sudo").is_none() && timecoin.get("ssh_authorized_keys").is_none(),
        "a service user, no login"
    );
}

#[test]
fn host_firewall_opens_only_ssh_and_the_p2p_port() {
    let doc = rendered();
    let nft = doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some("/etc/nftables.conf"))
        .expect("nftables.conf");
    let content = nft["content"].as_str().unwrap();
    let opened: Vec<&str> = content.lines().map(str::trim).filter(|l| l.starts_with("tcp dport")).collect();
    assert_eq!(opened, vec!["tcp dport 22 accept", "tcp dport 24100 accept"]);
    assert!(content.contains("policy drop"));
}

#[test]
fn holds_no_secret_and_no_unfilled_template_field() {
    let text = template().replace("{{p2p_port}}", "24100");
    assert!(!text.contains("{{"), "unfilled template field");
    // User data is readable in cloud consoles and metadata services: keys and passwords arrive
    // over SSH later, never here.
    let doc = rendered();
    for key in ["chpasswd", "password", "ssh_keys", "ssh_authorized_keys"] {
        assert!(doc.get(key).is_none(), "{key} in user data");
    }
    assert!(!text.contains("PRIVATE KEY"));
}
