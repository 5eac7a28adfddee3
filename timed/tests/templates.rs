//! The systemd unit in `templates/` must be valid for systemd itself and well sandboxed:
//! `systemd-analyze verify` without complaints and an exposure score of at most 2.0.

use std::process::Command;

fn render(dir: &std::path::Path) -> std::path::PathBuf {
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates/timed.service")).unwrap();
    let unit = template
        .replace("{{validator_id}}", "validator1")
        .replace("{{p2p_port}}", "8001")
        .replace("{{peers}}", "192.0.2.2:8001,192.0.2.3:8001")
        .replace("{{rpc_bind}}", "127.0.0.1:8080")
        // verify checks that ExecStart exists and is executable: point it at the built node.
        .replace("/usr/local/bin/timed", env!("CARGO_BIN_EXE_timed"));
    assert!(!unit.contains("{{"), "every field is filled in:\n{unit}");
    let path = dir.join("timed.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn unit_verifies_cleanly_and_is_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let unit = render(dir.path());
    let out =
        Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // verify only warns about unknown keys and bad values; any output is a finding.
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("timed.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze verify complained: {stderr}");

    let out =
        Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for timed.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{text}");
}

#[test]
fn cloud_init_is_yaml_with_the_cloud_config_header() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates/cloud-init.yaml")).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    // Nothing secret goes into user data: it is stored by the provider and shown in consoles.
    for word in ["password", "private_key", "secret", "cookie"] {
        assert!(!text.to_lowercase().contains(word), "{word} in cloud-init");
    }
}
