//! `timectl rpc METHOD [PARAMS...]`: any method, on chosen nodes at once. The plan's
//! `curl | jq` loop, concurrent and with a timeout per node.

use crate::client;
use crate::context::Ctx;
use crate::error::{Reported, EXIT_OK};
use clap::{ArgGroup, Args};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ArrayParams;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("target").required(true).args(["all", "node"])),
    after_help = "\
Each PARAM is read as JSON when it parses (5, true, [1,2], {\"a\":1}) and as a string
otherwise; quote a number as '\"5\"' to pass it as a string.

Examples:
  timectl rpc getblockcount --all
  timectl rpc getblock 5 1 --node node1
  timectl rpc validateaddress TIME0abc... --node node2 --json
  timectl rpc sendtoaddress TIME0abc... 1.5 --node node1

Wallet methods on a node whose RPC listens beyond loopback need credentials:
set TIMECTL_RPC_USER and TIMECTL_RPC_PASSWORD."
)]
pub struct RpcArgs {
    /// The JSON-RPC method, e.g. getblockcount.
    pub method: String,
    /// Positional parameters.
    #[arg(allow_negative_numbers = true)]
    pub params: Vec<String>,
    /// Call every node in the inventory.
    #[arg(long)]
    pub all: bool,
    /// Call this node (repeatable).
    #[arg(long = "node", value_name = "NAME")]
    pub node: Vec<String>,
    /// Seconds to wait for each node.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
}

/// JSON when it parses, a plain string otherwise.
pub fn parse_param(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

#[derive(Debug, Serialize)]
pub struct CallResult {
    pub node: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// Strings print bare, everything else as (pretty) JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

pub async fn run(a: RpcArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let (path, inv) = ctx.inventory()?;
    let nodes = inv.select(&a.node, path)?;
    let nodes = ctx.reach(inv, &nodes).await?;
    let params: Vec<Value> = a.params.iter().map(|p| parse_param(p)).collect();
    let timeout = Duration::from_secs_f64(a.timeout);
    let spinner = ui.spinner(format!("{} on {} nodes", a.method, nodes.len()));
    let method = a.method.clone();
    let results = client::fan_out(&nodes, timeout, |n| {
        let params = params.clone();
        let method = method.clone();
        async move {
            let c = client::rpc_client(&n, timeout)?;
            let mut p = ArrayParams::new();
            for v in params {
                p.insert(v).map_err(|e| e.to_string())?;
            }
            c.request::<Value, _>(&method, p).await.map_err(|e| client::compact_error(&e))
        }
    })
    .await;
    spinner.finish_and_clear();

    let rows: Vec<CallResult> = nodes
        .iter()
        .zip(results)
        .map(|(n, (r, lat))| CallResult {
            node: n.name.clone(),
            ok: r.is_ok(),
            latency_ms: lat.as_millis() as u64,
            error: r.as_ref().err().cloned(),
            result: r.ok(),
        })
        .collect();
    if ui.json {
        ui.print_json(&rows);
    } else {
        let mut t = ui.table(&["node", "result", "ms"]);
        for r in &rows {
            let cell = match (&r.result, &r.error) {
                (Some(v), _) => ui.colored(show(v), comfy_table::Color::Reset),
                (None, Some(e)) => ui.colored(format!("error: {e}"), comfy_table::Color::Red),
                _ => comfy_table::Cell::new(""),
            };
            t.add_row(vec![comfy_table::Cell::new(&r.node), cell, comfy_table::Cell::new(r.latency_ms)]);
        }
        println!("{t}");
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(Reported(format!("{failed} of {} nodes failed {}", rows.len(), a.method)).into());
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_are_json_when_they_parse() {
        assert_eq!(parse_param("5"), json!(5));
        assert_eq!(parse_param("1.5"), json!(1.5));
        assert_eq!(parse_param("true"), json!(true));
        assert_eq!(parse_param("[1,2]"), json!([1, 2]));
        assert_eq!(parse_param("\"5\""), json!("5"));
        assert_eq!(parse_param("TIME0abcdef"), json!("TIME0abcdef"));
        assert_eq!(parse_param("-x"), json!("-x"));
        assert_eq!(show(&json!("abc")), "abc");
        assert_eq!(show(&json!(7)), "7");
    }
}
