//! The unit `timectl deploy` installs, checked by systemd itself on a real host: the file on a
//! rehearsal host is exactly what deploy's renderer produced, and `systemd-analyze` there sees
//! the host's real systemd (online, not `--offline`). It must verify without complaints and
//! score an exposure of 2.0 or lower. Needs root (rehearsal hosts): fails loudly without it.

mod common;
#[path = "common/rehearsal.rs"]
mod rehearsal;

use rehearsal::Rehearsal;

const UNIT: &str = "/etc/systemd/system/timed.service";

#[test]
fn installed_unit_verifies_and_scores_at_most_2_on_a_rehearsal_host() {
    let net = Rehearsal::new("us");
    let r = net.timectl(&["deploy", "--provider", "rehearsal", "--nodes", "1", "--yes"]);
    assert_eq!(r.code, 0, "deploy failed:\n{}", r.screen());
    let host = net.host(1);

    let unit = net.sh(&host, &format!("cat {UNIT}"));
    assert!(unit.contains("Type=notify"), "the unit is not Type=notify:\n{unit}");
    assert!(!unit.contains("{{"), "unrendered fields:\n{unit}");

    let out = net.exec(&host, &format!("systemd-analyze verify {UNIT}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    // verify exits 0 on unknown keys and bad values, only warning: any line about our unit
    // is a finding.
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("timed.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze verify complained:\n{stderr}");

    let out = net.exec(&host, "systemd-analyze security --no-pager timed.service");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for timed.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    eprintln!("exposure of the installed unit on {}: {score}", host.name);
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{text}");

    // The sandbox still lets the node run.
    let active = net.sh(&host, "systemctl is-active timed");
    assert_eq!(active.trim(), "active");

    let state = net.state().expect("state");
    let r = net.timectl(&["destroy", "--yes"]);
    assert_eq!(r.code, 0, "destroy failed:\n{}", r.screen());
    assert_eq!(net.leftovers(&state), Vec::<String>::new());
}
