//! `timectl provision|deploy --dry-run|destroy --provider do` end to end: the real binary
//! against the stateful DigitalOcean fake (tests/common/do_fake.rs) on 127.0.0.1, every request
//! checked against DigitalOcean's OpenAPI description.

#[allow(dead_code)] // each test file uses a different part of the fake
#[path = "common/do_fake.rs"]
mod do_fake;
#[path = "common/do_openapi.rs"]
mod do_openapi;
#[path = "common/isolated.rs"]
mod isolated;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use do_fake::FakeDo;

const TOKEN: &str = "dop_v1_e2e0123456789abcdef0123456789abcdef";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFv1ChDaPpZgMjQH5tcdQn5/4jXPqo+w0sBRllJnNrC test@timectl";

struct Run {
    out: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

async fn timectl(dir: &Path, api: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = isolated::timectl(dir);
    cmd.args(args).env("DIGITALOCEAN_API_URL", api);
    if let Some(t) = token {
        cmd.env("DIGITALOCEAN_ACCESS_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    let run = Run { out };
    // The token never reaches the screen or the logs, whatever happened.
    assert!(
        !run.stdout().contains(TOKEN) && !run.stderr().contains(TOKEN),
        "token shown:\n{}{}",
        run.stdout(),
        run.stderr()
    );
    run
}

fn screen(run: &Run, dir: &Path, api: &str) -> String {
    format!("exit: {}\n--- stdout\n{}--- stderr\n{}", run.out.status.code().unwrap_or(-1), run.stdout(), run.stderr())
        .replace(&dir.display().to_string(), "[DIR]")
        .replace(api, "[API]")
}

/// Snapshots without the log lines' times.
fn snapshot(name: &str, text: String) {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]");
    s.bind(|| insta::assert_snapshot!(name, text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_rerun_dry_run_and_destroy_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("id.pub"), format!("{KEY}\n")).unwrap();
    let spec = Arc::new(do_openapi::Spec::load());
    let fake = FakeDo::start(TOKEN, spec).await;
    let api = fake.url.clone();
    let common =
        ["--network", "tn", "--provider", "do", "--ssh-public-key", "id.pub", "--allow-from", "198.51.100.7/32"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = vec!["provision"];
        v.extend_from_slice(&common);
        v.extend_from_slice(extra);
        v
    };

    let dry = timectl(d, &api, Some(TOKEN), &with(&["--nodes", "5", "--dry-run"])).await;
    assert!(dry.out.status.success(), "{}", screen(&dry, d, &api));
    snapshot("do_provision_dry_run", screen(&dry, d, &api));
    assert!(fake.writes().is_empty(), "--dry-run changed something");

    let too_many = timectl(d, &api, Some(TOKEN), &with(&["--nodes", "21"])).await;
    assert!(!too_many.out.status.success());
    snapshot("do_provision_refuses_21_without_yes", screen(&too_many, d, &api));
    assert!(fake.writes().is_empty());

    let first = timectl(d, &api, Some(TOKEN), &with(&["--nodes", "5"])).await;
    assert!(first.out.status.success(), "{}", screen(&first, d, &api));
    assert_eq!(fake.droplet_names().len(), 5);
    let inv_path = d.join("inventories/tn.toml");
    let inv = std::fs::read_to_string(&inv_path).unwrap();
    assert_eq!(inv.matches("[[nodes]]").count(), 5, "{inv}");
    assert!(
        inv.contains("provider = \"do\"") && inv.contains("203.0.113.") && inv.contains("ssh_user = \"root\""),
        "{inv}"
    );
    assert!(!inv.contains(TOKEN));
    // The size's price_hourly from /v2/sizes (the fake's s-2vcpu-4gb) is kept for `status`.
    let per_host = inv.parse::<toml::Table>().unwrap()["hourly_usd_per_host"].as_float().unwrap();
    assert!((per_host - 0.03571).abs() < 1e-9, "{inv}");

    let writes = fake.writes().len();
    let again = timectl(d, &api, Some(TOKEN), &with(&["--nodes", "5"])).await;
    assert!(again.out.status.success(), "{}", screen(&again, d, &api));
    assert_eq!(fake.writes().len(), writes, "a re-run changed something");
    assert_eq!(std::fs::read_to_string(&inv_path).unwrap(), inv);

    let mut deploy = vec!["deploy"];
    deploy.extend_from_slice(&common);
    deploy.extend_from_slice(&["--nodes", "5", "--dry-run"]);
    let plan = timectl(d, &api, Some(TOKEN), &deploy).await;
    assert!(plan.out.status.success(), "{}", screen(&plan, d, &api));
    let text = plan.stdout();
    assert_eq!(text.matches("  keep    tn-node-").count(), 5, "{text}");
    assert!(!text.contains("  create  "), "{text}");
    assert!(text.contains("price: $0.1785/hour for the network (5 hosts)"), "{text}");
    assert_eq!(fake.writes().len(), writes);

    let gone = timectl(d, &api, Some(TOKEN), &["--network", "tn", "destroy", "--yes"]).await;
    assert!(gone.out.status.success(), "{}", screen(&gone, d, &api));
    let text = gone.stdout();
    for i in 1..=5 {
        assert!(text.contains(&format!("droplet tn-node-{i} (id ")), "{text}");
    }
    assert!(
        text.contains("firewall timectl-tn") && text.contains("tag timectl-tn") && text.contains("ssh key timectl-"),
        "{text}"
    );
    {
        let s = fake.state.lock().unwrap();
        assert!(s.droplets.is_empty() && s.firewalls.is_empty() && s.keys.is_empty() && !s.tags.contains("timectl-tn"));
    }
    assert!(!inv_path.exists());
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_a_clear_error_and_nothing_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("id.pub"), format!("{KEY}\n")).unwrap();
    let fake = FakeDo::start(TOKEN, Arc::new(do_openapi::Spec::load())).await;
    let api = fake.url.clone();
    let run = timectl(
        d,
        &api,
        None,
        &[
            "--network",
            "tn",
            "provision",
            "--provider",
            "do",
            "--ssh-public-key",
            "id.pub",
            "--allow-from",
            "198.51.100.7/32",
        ],
    )
    .await;
    assert!(!run.out.status.success());
    snapshot("do_provision_without_token", screen(&run, d, &api));
    assert!(fake.requests().is_empty(), "asked the API without a token");
}
