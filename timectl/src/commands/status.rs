//! `timectl status`: one row per node, each node asked concurrently.

use crate::client;
use crate::context::Ctx;
use crate::error::{Reported, EXIT_OK};
use crate::output::{human_duration, short_hash, Ui};
use clap::Args;
use serde::Serialize;
use std::time::Duration;
use timed::api::TimeRpcClient;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  timectl status
  timectl status --network local --json

Exits 1 when a node does not answer.")]
pub struct StatusArgs {
    /// Seconds to wait for each node.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStatus {
    pub node: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub height: Option<u64>,
    pub tip: Option<String>,
    pub peers: Option<usize>,
    pub mempool: Option<usize>,
    pub finality_mode: Option<String>,
    pub version: Option<String>,
    pub uptime_secs: Option<u64>,
}

impl NodeStatus {
    /// A row for a node that did not answer.
    pub fn unreachable(node: String, error: String) -> Self {
        NodeStatus {
            node,
            reachable: false,
            error: Some(error),
            height: None,
            tip: None,
            peers: None,
            mempool: None,
            finality_mode: None,
            version: None,
            uptime_secs: None,
        }
    }
}

async fn query(n: crate::inventory::Node, timeout: Duration) -> Result<NodeStatus, String> {
    let c = client::rpc_client(&n, timeout)?;
    let e = |e: jsonrpsee::core::ClientError| client::compact_error(&e);
    let (height, tip, net, mempool, consensus, uptime) = tokio::try_join!(
        async { c.get_block_count().await.map_err(e) },
        async { c.get_best_block_hash().await.map_err(e) },
        async { c.get_network_info().await.map_err(e) },
        async { c.get_mempool_info().await.map_err(e) },
        async { c.get_consensus_info().await.map_err(e) },
        async { c.uptime().await.map_err(e) },
    )?;
    Ok(NodeStatus {
        node: n.name,
        reachable: true,
        error: None,
        height: Some(height),
        tip: Some(tip),
        peers: Some(net.connections),
        mempool: Some(mempool.size),
        finality_mode: Some(consensus.mode),
        version: Some(net.subversion),
        uptime_secs: Some(uptime),
    })
}

pub fn render(rows: &[NodeStatus], ui: Ui) -> String {
    let mut t = ui.table(&["node", "reachable", "height", "tip", "peers", "mempool", "finality", "version", "uptime"]);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in rows {
        let reach = if r.reachable {
            ui.colored("yes", comfy_table::Color::Green)
        } else {
            ui.colored(format!("no: {}", r.error.clone().unwrap_or_default()), comfy_table::Color::Red)
        };
        t.add_row(vec![
            comfy_table::Cell::new(&r.node),
            reach,
            comfy_table::Cell::new(opt(r.height.map(|h| h.to_string()))),
            comfy_table::Cell::new(opt(r.tip.as_deref().map(short_hash))),
            comfy_table::Cell::new(opt(r.peers.map(|p| p.to_string()))),
            comfy_table::Cell::new(opt(r.mempool.map(|p| p.to_string()))),
            comfy_table::Cell::new(opt(r.finality_mode.clone())),
            comfy_table::Cell::new(opt(r.version.clone())),
            comfy_table::Cell::new(opt(r.uptime_secs.map(human_duration))),
        ]);
    }
    t.to_string()
}

pub async fn run(a: StatusArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let (_, inv) = ctx.inventory()?;
    let nodes = ctx.reach(inv, &inv.nodes).await?;
    let timeout = Duration::from_secs_f64(a.timeout);
    let spinner = ui.spinner(format!("asking {} nodes", nodes.len()));
    let results = client::fan_out(&nodes, timeout, |n| query(n, timeout)).await;
    spinner.finish_and_clear();
    let rows: Vec<NodeStatus> = nodes
        .iter()
        .zip(results)
        .map(|(n, (r, _))| r.unwrap_or_else(|error| NodeStatus::unreachable(n.name.clone(), error)))
        .collect();
    if ui.json {
        ui.print_json(&rows);
    } else {
        // Cloud networks cost money while they run: say how much, every time.
        if let Some(line) = crate::provision::cost_line(inv) {
            println!("{line}");
        }
        println!("{}", render(&rows, ui));
    }
    let down = rows.iter().filter(|r| !r.reachable).count();
    if down > 0 {
        return Err(Reported(format!("{down} of {} nodes did not answer", rows.len())).into());
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_snapshot() {
        let ui = Ui { json: false, color: false, progress: false };
        let rows = vec![
            NodeStatus {
                node: "node1".into(),
                reachable: true,
                error: None,
                height: Some(42),
                tip: Some("00ab34cd56ef7890aa".into()),
                peers: Some(2),
                mempool: Some(0),
                finality_mode: Some("avalanche+bft".into()),
                version: Some("/timed:0.1.0/".into()),
                uptime_secs: Some(3725),
            },
            NodeStatus::unreachable("node2".into(), "unreachable: Connection refused (os error 111)".into()),
        ];
        insta::assert_snapshot!(render(&rows, ui));
    }
}
