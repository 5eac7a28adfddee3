//! The CLI without any node: help texts, usage errors and the errors an operator meets first.

mod common;

use common::{filters, Env};

fn snapshot(env: &Env, name: &str, text: &str) {
    let mut s = insta::Settings::clone_current();
    for (re, with) in filters(env) {
        s.add_filter(&re, with);
    }
    s.bind(|| insta::assert_snapshot!(name, text));
}

#[test]
fn help_texts() {
    let env = Env::new();
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help_local_up", vec!["local", "up", "--help"]),
        ("help_local_down", vec!["local", "down", "--help"]),
        ("help_rpc", vec!["rpc", "--help"]),
        ("help_status", vec!["status", "--help"]),
        ("help_stability", vec!["stability", "--help"]),
        ("help_resources", vec!["resources", "--help"]),
        ("help_report", vec!["report", "--help"]),
    ] {
        let r = env.run(&args);
        assert_eq!(r.code, 0, "{}", r.screen());
        assert!(r.stdout.contains("Examples:"), "{name} has no examples");
        snapshot(&env, name, &r.stdout);
    }
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    let r = env.run(&["rpc", "getblockcount"]);
    assert_eq!(r.code, 2, "{}", r.screen());
    snapshot(&env, "rpc_without_target", &r.screen());
    let r = env.run(&["status", "--inventory", "a.toml", "--network", "b"]);
    assert_eq!(r.code, 2, "{}", r.screen());
}

#[test]
fn no_inventory_gives_a_hint() {
    let env = Env::new();
    let r = env.run(&["status"]);
    assert_eq!(r.code, 1);
    snapshot(&env, "no_inventory", &r.screen());
    let r = env.run(&["rpc", "getblockcount", "--all", "--network", "nowhere"]);
    assert_eq!(r.code, 1);
    snapshot(&env, "missing_network", &r.screen());
}

#[test]
fn inventory_with_a_secret_is_rejected_with_file_and_line() {
    let env = Env::new();
    let path = env.inventory("leaky");
    std::fs::write(
        &path,
        "network = \"leaky\"\nprovider = \"static\"\n\n[[nodes]]\nname = \"a\"\nhost = \"192.0.2.1\"\n\
         p2p = \"192.0.2.1:8001\"\nrpc = \"192.0.2.1:8080\"\nvalidator_id = \"validator1\"\n\
         password = \"hunter2\"\n",
    )
    .unwrap();
    let r = env.run(&["status", "--network", "leaky"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("leaky.toml:10:1: unknown field `password`"), "{}", r.stderr);
    assert!(!r.stderr.contains("hunter2"));
    snapshot(&env, "secret_in_inventory", &r.screen());
}

#[test]
fn unknown_node_is_named() {
    let env = Env::new();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../inventories/example-static.toml"), env.inventory("ex"))
        .unwrap();
    let r = env.run(&["rpc", "getblockcount", "--node", "node9", "--network", "ex"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no node named \"node9\" (it has: node1, node2, node3, node4, node5)"), "{}", r.stderr);
}

#[test]
fn report_of_a_missing_log_fails_cleanly() {
    let env = Env::new();
    let r = env.run(&["report", "nope.jsonl"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: cannot read run log nope.jsonl\ncaused by: "), "{}", r.stderr);
}
