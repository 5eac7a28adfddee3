//! `timectl upgrade --binary PATH`: a rolling upgrade of `timed`, one node at a time; each
//! must catch up and the network finalize again before the next is touched.

use crate::context::Ctx;
use crate::error::EXIT_OK;
use crate::install::{self, InstallOptions};
use crate::output::HostProgress;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  timectl upgrade --binary target/release/timed
  timectl upgrade --binary ./timed --network rehearsal --wait 60")]
pub struct UpgradeArgs {
    /// The new timed binary.
    #[arg(long, value_name = "PATH")]
    pub binary: PathBuf,
    /// Seconds to wait, per node, for the network to finalize again.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub wait: u64,
}

pub async fn run(a: UpgradeArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let (path, inv) = ctx.inventory()?;
    if !inv.provider.tunnels_rpc() {
        anyhow::bail!("{} is a local network: restart it with `timectl local up`", path.display());
    }
    let opts = InstallOptions {
        binary: install::find_timed(Some(&a.binary))?,
        ssh: ctx.ssh_options(&inv.network),
        wait: Duration::from_secs(a.wait),
    };
    let progress = HostProgress::new(ui);
    let result = install::upgrade(inv, &opts, &progress).await;
    progress.finish();
    let hosts = result?;
    if ui.json {
        println!("{}", serde_json::json!({ "event": "done", "hosts": hosts }));
    } else {
        let mut t = ui.table(&["node", "upgraded"]);
        for h in &hosts {
            t.add_row(vec![h.node.clone(), if h.restarted { "yes" } else { "already had it" }.to_string()]);
        }
        println!("{t}");
    }
    Ok(EXIT_OK)
}
