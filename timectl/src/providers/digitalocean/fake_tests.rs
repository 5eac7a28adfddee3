//! The provider against a stateful fake of the API (`tests/common/do_fake.rs`) whose every
//! request is checked against DigitalOcean's OpenAPI description.

#[allow(dead_code)] // each test file uses a different part of the fake
#[path = "../../../tests/common/do_fake.rs"]
mod do_fake;
#[path = "../../../tests/common/do_openapi.rs"]
mod do_openapi;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use do_fake::{FakeDo, Fault};
use do_openapi::Spec;
use serde_json::json;

use super::*;
use crate::providers::cloud::NoDetection;
use crate::providers::NoProgress;

const TOKEN: &str = "dop_v1_0123456789abcdeffedcba9876543210";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFv1ChDaPpZgMjQH5tcdQn5/4jXPqo+w0sBRllJnNrC test@timectl";
const KEY_FP: &str = "02:13:5d:cb:c1:c6:47:0c:12:d9:f2:9a:e7:bc:3f:f3";

fn spec() -> Arc<Spec> {
    static SPEC: OnceLock<Arc<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| Arc::new(Spec::load())).clone()
}

#[derive(Default)]
struct Steps(Mutex<Vec<(String, String)>>);

impl Progress for Steps {
    fn step(&self, host: &str, step: &str) {
        self.0.lock().unwrap().push((host.to_string(), step.to_string()));
    }
}

fn provider(fake: &FakeDo, token: &str) -> DigitalOcean {
    let settings = DoSettings {
        api_url: fake.url.clone(),
        wait_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_millis(20),
        // Small pages so that five droplets already span three pages.
        page_size: 2,
        backoff: Duration::from_millis(20),
        ..DoSettings::default()
    };
    DigitalOcean::new(settings, Token::new(token), Arc::new(NoDetection::default())).unwrap()
}

fn request(network: &str, nodes: usize) -> ProvisionRequest {
    ProvisionRequest {
        network: network.into(),
        nodes,
        ssh_public_key: KEY.into(),
        p2p_port: 24100,
        allow_from: Some("198.51.100.7/32".into()),
    }
}

#[tokio::test]
async fn provision_five_then_rerun_is_a_noop_then_destroy_leaves_nothing() {
    let fake = FakeDo::start(TOKEN, spec()).await;
    // One 429 on a create (nothing done, must be retried after the reset) and one 500 on a
    // list (retried with backoff).
    fake.inject("POST", "/v2/droplets", Fault::RateLimit);
    fake.inject("GET", "/v2/droplets", Fault::ServerError);
    let p = provider(&fake, TOKEN);
    let req = request("tn", 5);

    let plan = p.plan(&req).await.unwrap();
    assert!(plan.existing.is_empty());
    assert_eq!(plan.create.iter().filter(|l| l.starts_with("droplet tn-node-")).count(), 5, "{:?}", plan.create);
    assert!(plan.create.iter().any(|l| l.starts_with("ssh key timectl-02135dcbc1c6")), "{:?}", plan.create);
    assert!(plan.create.iter().any(|l| l.starts_with("firewall timectl-tn")), "{:?}", plan.create);
    assert!((plan.hourly_usd.unwrap() - 5.0 * 0.03571).abs() < 1e-9);
    assert!(fake.writes().is_empty(), "plan changed something: {:?}", fake.writes());

    let steps = Steps::default();
    let started = Instant::now();
    let hosts = p.create(&req, &steps).await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    for h in &hosts {
        assert_eq!(h.name, format!("tn-node-{}", h.index));
        assert!(h.ssh_host.starts_with("203.0.113."), "{h:?}");
        assert!(h.p2p_host.starts_with("10.124.0."), "{h:?}");
        assert_eq!((h.ssh_user.as_str(), h.ssh_port), ("root", 22));
        assert!(h.provider_id.is_some());
    }
    assert_eq!(fake.droplet_names(), (1..=5).map(|i| format!("tn-node-{i}")).collect::<Vec<_>>());

    let reqs = fake.requests();
    let creates: Vec<_> = reqs.iter().filter(|r| r.method == "POST" && r.path == "/v2/droplets").collect();
    assert_eq!(creates.iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 202], "429 then retried");
    assert!(started.elapsed() >= Duration::from_millis(200), "the retry after 429 waited for the reset");
    let body = creates[1].body.as_ref().unwrap();
    assert_eq!(body["names"], json!(["tn-node-1", "tn-node-2", "tn-node-3", "tn-node-4", "tn-node-5"]));
    assert_eq!(body["tags"], json!(["timectl", "timectl-tn"]));
    assert_eq!(
        (body["region"].as_str(), body["size"].as_str(), body["image"].as_str()),
        (Some("sfo3"), Some("s-2vcpu-4gb"), Some("ubuntu-22-04-x64"))
    );
    assert_eq!((&body["monitoring"], &body["ipv6"]), (&json!(true), &json!(true)));
    let user_data = body["user_data"].as_str().unwrap();
    assert!(user_data.starts_with("#cloud-config\n") && user_data.contains("tcp dport 24100 accept"), "{user_data}");
    assert!(!user_data.contains(TOKEN));
    let key_id = fake.state.lock().unwrap().keys[0]["id"].clone();
    assert_eq!(body["ssh_keys"], json!([key_id]));
    let lists: Vec<_> = reqs.iter().filter(|r| r.method == "GET" && r.path == "/v2/droplets").collect();
    assert_eq!(lists[0].status, 500, "the injected 5xx");
    assert_eq!(lists[1].status, 200, "retried");
    assert!(lists.iter().any(|r| r.query.contains(&("page".into(), "3".into()))), "followed links.pages.next");

    let fw = fake.state.lock().unwrap().firewalls[0].clone();
    assert_eq!(fw["tags"], json!(["timectl-tn"]));
    assert_eq!(
        fw["inbound_rules"],
        json!([
            { "protocol": "tcp", "ports": "22", "sources": { "addresses": ["198.51.100.7/32"] } },
            { "protocol": "tcp", "ports": "24100", "sources": { "tags": ["timectl-tn"] } },
        ]),
        "SSH from the operator, P2P from the network, nothing else (no RPC)"
    );
    let seen = steps.0.lock().unwrap().clone();
    for i in 1..=5 {
        let host = format!("tn-node-{i}");
        let mine: Vec<&str> = seen.iter().filter(|(h, _)| *h == host).map(|(_, s)| s.as_str()).collect();
        assert_eq!(mine.first(), Some(&"creating droplet"), "{host}: {mine:?}");
        assert!(
            mine.contains(&"droplet new") && mine.last().unwrap().starts_with("active at 203.0.113."),
            "{host}: {mine:?}"
        );
    }

    // A second run finds everything by tag and changes nothing.
    let writes = fake.writes().len();
    let again = p.create(&req, &NoProgress).await.unwrap();
    assert_eq!(again, hosts);
    assert_eq!(fake.writes().len(), writes, "re-run wrote: {:?}", &fake.writes()[writes..]);
    let plan = p.plan(&req).await.unwrap();
    assert!(plan.create.is_empty(), "{:?}", plan.create);
    assert_eq!(plan.existing, hosts);
    assert_eq!(p.list("tn").await.unwrap(), hosts);

    let deleted = p.destroy("tn", &NoProgress).await.unwrap();
    for i in 1..=5 {
        assert!(deleted.iter().any(|l| l.starts_with(&format!("droplet tn-node-{i} "))), "{deleted:?}");
    }
    assert!(deleted.iter().any(|l| l.starts_with("firewall timectl-tn")), "{deleted:?}");
    assert!(deleted.contains(&"tag timectl-tn".to_string()), "{deleted:?}");
    assert!(deleted.iter().any(|l| l.starts_with("ssh key timectl-") && l.contains(KEY_FP)), "{deleted:?}");
    {
        let s = fake.state.lock().unwrap();
        assert!(s.droplets.is_empty() && s.firewalls.is_empty() && s.keys.is_empty(), "left behind");
        assert!(!s.tags.contains("timectl-tn"));
    }
    assert!(p.list("tn").await.unwrap().is_empty());
    assert!(p.destroy("tn", &NoProgress).await.unwrap().is_empty(), "a second destroy finds nothing");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn twelve_nodes_go_out_ten_names_per_request() {
    let fake = FakeDo::start(TOKEN, spec()).await;
    // The fake enforces the API's limit: eleven names in one request are refused.
    let names: Vec<String> = (1..=11).map(|i| format!("x-node-{i}")).collect();
    let resp = reqwest::Client::new()
        .post(format!("{}/v2/droplets", fake.url))
        .bearer_auth(TOKEN)
        .json(&json!({ "names": names, "region": "sfo3", "size": "s-2vcpu-4gb", "image": "ubuntu-22-04-x64" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);

    let p = provider(&fake, TOKEN);
    let hosts = p.create(&request("big", 12), &NoProgress).await.unwrap();
    assert_eq!(hosts.len(), 12);
    let sizes: Vec<usize> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v2/droplets" && r.status == 202)
        .map(|r| r.body.as_ref().unwrap()["names"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![10, 2]);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn an_existing_key_is_reused_and_kept_and_a_new_address_updates_the_firewall() {
    let fake = FakeDo::start(TOKEN, spec()).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v2/account/keys", fake.url))
        .bearer_auth(TOKEN)
        .json(&json!({ "name": "laptop", "public_key": KEY }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let p = provider(&fake, TOKEN);
    p.create(&request("tn", 1), &NoProgress).await.unwrap();
    assert_eq!(fake.state.lock().unwrap().keys.len(), 1, "the operator's key was reused");
    assert!(!fake.writes().iter().any(|r| r.path == "/v2/account/keys"
        && r.method == "POST"
        && r.status == 201
        && r.body.as_ref().unwrap()["name"] != "laptop"));

    let mut moved = request("tn", 1);
    moved.allow_from = Some("192.0.2.9".into());
    p.create(&moved, &NoProgress).await.unwrap();
    let fw = fake.state.lock().unwrap().firewalls[0].clone();
    assert_eq!(fw["inbound_rules"][0]["sources"]["addresses"], json!(["192.0.2.9/32"]));
    assert_eq!(fake.state.lock().unwrap().firewalls.len(), 1);

    let deleted = p.destroy("tn", &NoProgress).await.unwrap();
    assert!(!deleted.iter().any(|l| l.starts_with("ssh key")), "a key timectl did not register is kept: {deleted:?}");
    assert_eq!(fake.state.lock().unwrap().keys.len(), 1);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn api_errors_show_digitaloceans_id_and_message_never_the_token() {
    let fake = FakeDo::start(TOKEN, spec()).await;
    let wrong = "dop_v1_wrongwrongwrongwrong";
    let p = provider(&fake, wrong);
    let err = p.create(&request("tn", 1), &NoProgress).await.unwrap_err();
    let shown = format!("{err} {err:?} {:?}", err.hint);
    assert!(err.message.contains("401 unauthorized: Unable to authenticate you"), "{err}");
    assert!(err.hint.as_deref().unwrap().contains("DIGITALOCEAN_ACCESS_TOKEN"), "{err:?}");
    assert!(!shown.contains(wrong) && !shown.contains("Bearer"), "{shown}");

    // A size the API does not offer is refused before anything is created.
    let settings = DoSettings { api_url: fake.url.clone(), size: "s-99vcpu".into(), ..DoSettings::default() };
    let p = DigitalOcean::new(settings, Token::new(TOKEN), Arc::new(NoDetection::default())).unwrap();
    let err = p.plan(&request("tn", 1)).await.unwrap_err();
    assert!(err.message.contains("size \"s-99vcpu\" is not offered"), "{err}");

    // Without --allow-from the detector is asked (and here refuses), before anything is made.
    let detector = Arc::new(NoDetection::default());
    let settings = DoSettings { api_url: fake.url.clone(), ..DoSettings::default() };
    let p = DigitalOcean::new(settings, Token::new(TOKEN), detector.clone()).unwrap();
    let mut req = request("tn", 1);
    req.allow_from = None;
    assert!(p.create(&req, &NoProgress).await.is_err());
    assert_eq!(detector.0.load(Ordering::SeqCst), 1);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
}

#[tokio::test]
async fn a_5xx_on_create_is_followed_by_a_list_not_a_second_create() {
    let fake = FakeDo::start(TOKEN, spec()).await;
    // The droplets are made, but the answer is a 500: posting the names again would double them.
    fake.inject("POST", "/v2/droplets", Fault::ServerErrorAfterWork);
    let p = provider(&fake, TOKEN);
    let hosts = p.create(&request("tn", 3), &NoProgress).await.unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(fake.droplet_names(), vec!["tn-node-1", "tn-node-2", "tn-node-3"]);
    let posts: Vec<u16> =
        fake.requests().iter().filter(|r| r.method == "POST" && r.path == "/v2/droplets").map(|r| r.status).collect();
    assert_eq!(posts, vec![500], "listed after the 500 and found every droplet");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[test]
fn the_spec_check_refuses_what_the_api_would_refuse() {
    let spec = spec();
    let ok = json!({ "names": ["a-node-1"], "region": "sfo3", "size": "s-2vcpu-4gb", "image": "ubuntu-22-04-x64", "tags": ["timectl"] });
    spec.check("POST", "/v2/droplets", &[], Some(&ok)).unwrap();
    let bad_name = json!({ "names": ["not a hostname!"], "size": "s-2vcpu-4gb", "image": "ubuntu-22-04-x64" });
    assert!(spec.check("POST", "/v2/droplets", &[], Some(&bad_name)).is_err());
    let no_size = json!({ "names": ["a"], "image": "ubuntu-22-04-x64" });
    assert!(spec.check("POST", "/v2/droplets", &[], Some(&no_size)).is_err());
    let no_rules = json!({ "name": "fw" });
    assert!(spec.check("POST", "/v2/firewalls", &[], Some(&no_rules)).is_err());
    assert!(spec.check("GET", "/v2/dropletz", &[], None).is_err());
    assert!(spec.check("GET", "/v2/droplets", &[("colour".into(), "red".into())], None).is_err());
    assert!(spec.check("DELETE", "/v2/droplets", &[], None).is_err(), "tag_name is required");
    spec.check("DELETE", "/v2/droplets", &[("tag_name".into(), "x".into())], None).unwrap();
}
