//! `timectl restart|stop|start NODE...|--all`: systemctl on the nodes' hosts, over SSH. One
//! module for the three verbs: they differ only in the word passed to systemctl.

use crate::context::{first_of, Ctx};
use crate::error::{Reported, EXIT_OK};
use crate::ssh::{self, Target};
use clap::{ArgGroup, Args};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["nodes", "all"])))]
pub struct ServiceArgs {
    /// Nodes to act on.
    pub nodes: Vec<String>,
    /// Every node of the inventory.
    #[arg(long)]
    pub all: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Verb {
    Restart,
    Stop,
    Start,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Restart => "restart",
            Verb::Stop => "stop",
            Verb::Start => "start",
        }
    }
}

pub async fn run(verb: Verb, a: ServiceArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let (path, inv) = ctx.inventory()?;
    if !inv.provider.tunnels_rpc() {
        anyhow::bail!("{} is a local network: use `timectl local up/down`", path.display());
    }
    let nodes = inv.select(if a.all { &[] } else { &a.nodes }, path)?;
    let targets: Vec<Target> = nodes.iter().map(Target::of).collect();
    let pool = ssh::Pool::connect(&targets, &ctx.ssh_options(&inv.network)).await.map_err(first_of)?;
    let script = format!("systemctl {} timed\nsystemctl is-active timed || true", verb.word());
    let results = futures::future::join_all(pool.hosts.iter().map(|h| h.run(verb.word(), &script))).await;
    pool.close().await;
    let rows: Vec<(String, Result<String, String>)> = nodes
        .iter()
        .zip(results)
        .map(|(n, r)| (n.name.clone(), r.map(|out| out.trim().to_string()).map_err(|e| e.to_string())))
        .collect();
    if ui.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, r)| serde_json::json!({ "node": n, "ok": r.is_ok(), "state": r.as_ref().ok(), "error": r.as_ref().err() }))
            .collect();
        ui.print_json(&v);
    } else {
        let mut t = ui.table(&["node", &format!("{} ->", verb.word())]);
        for (n, r) in &rows {
            t.add_row(vec![n.clone(), r.clone().unwrap_or_else(|e| format!("error: {e}"))]);
        }
        println!("{t}");
    }
    let failed = rows.iter().filter(|(_, r)| r.is_err()).count();
    if failed > 0 {
        return Err(Reported(format!("{failed} of {} nodes failed to {}", rows.len(), verb.word())).into());
    }
    Ok(EXIT_OK)
}
