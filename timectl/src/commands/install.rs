//! `timectl install`: inventory -> running services, on hosts that already exist (the second
//! half of `deploy`). Knows nothing of providers.

use crate::context::Ctx;
use crate::error::EXIT_OK;
use crate::install::{self, InstallOptions};
use crate::inventory;
use crate::output::HostProgress;
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  timectl install --inventory inventories/mine.toml
  timectl install --network rehearsal --timed target/release/timed
  timectl install --dry-run")]
pub struct InstallArgs {
    #[command(flatten)]
    pub install: install::InstallFlags,
    /// Print the files and units each host would get; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(a: InstallArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let (path, inv) = ctx.inventory()?;
    if !inv.provider.tunnels_rpc() {
        anyhow::bail!("{} is a local network; `timectl local up` runs it", path.display());
    }
    let binary = install::find_timed(a.install.timed.as_deref())?;
    let network_dir = inventory::network_state_dir(&inv.network);
    if a.dry_run {
        let bin = install::Blob::new(std::fs::read(&binary)?);
        let m = crate::materials::ensure(&network_dir, inv, a.install.block_time)?;
        let plan = install::plan(inv, &m, &bin)?;
        if ui.json {
            ui.print_json(&plan);
        } else {
            for (node, steps) in plan {
                println!("{node}:");
                for s in steps {
                    println!("  {s}");
                }
            }
            println!("nothing was changed on the hosts");
        }
        return Ok(EXIT_OK);
    }
    let progress = HostProgress::new(ui);
    let opts = InstallOptions { binary, ssh: ctx.ssh_options(&inv.network), wait: Duration::from_secs(a.install.wait) };
    let result = install::install_network(inv, &network_dir, a.install.block_time, &opts, &progress).await;
    progress.finish();
    let hosts = result?;
    if ui.json {
        println!("{}", serde_json::json!({ "event": "done", "network": inv.network, "hosts": hosts }));
    } else {
        let mut t = ui.table(&["node", "changed", "restarted"]);
        for h in &hosts {
            let changed = if h.uploaded.is_empty() { "nothing".to_string() } else { h.uploaded.join(", ") };
            t.add_row(vec![h.node.clone(), changed, if h.restarted { "yes" } else { "no" }.to_string()]);
        }
        println!("{t}");
        println!("network {} is running ({} nodes)", inv.network, hosts.len());
    }
    Ok(EXIT_OK)
}
