//! `timectl destroy`: back to nothing. Removes what install put on the hosts (for hosts
//! timectl did not make), the hosts the provider made, the network's materials and its
//! inventory (a hand-written one is kept). Asks first unless `--yes`.

use crate::context::Ctx;
use crate::error::{Hinted, EXIT_OK};
use crate::install;
use crate::inventory::{self, ProviderKind};
use crate::materials;
use crate::output::HostProgress;
use crate::providers::{self, BuildContext, Progress};
use crate::ssh::{self, Target};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  sudo timectl destroy --network rehearsal
  timectl destroy --inventory inventories/mine.toml --yes")]
pub struct DestroyArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Hinted {
            message: "destroy needs confirmation and there is no terminal to ask".into(),
            hint: "pass --yes to confirm in scripts".into(),
        }
        .into());
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

pub async fn run(a: DestroyArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let (path, inv) = ctx.inventory()?;
    let (path, inv) = (path.to_path_buf(), inv.clone());
    if inv.provider == ProviderKind::Local {
        anyhow::bail!("{} is a local network: stop it with `timectl local down`", path.display());
    }
    if !a.yes
        && !confirm(&format!(
            "destroy network {} ({} nodes, provider {}), its keys and its inventory?",
            inv.network,
            inv.nodes.len(),
            inv.provider.name()
        ))?
    {
        anyhow::bail!("nothing was destroyed");
    }
    let network_dir = inventory::network_state_dir(&inv.network);
    let ssh_opts = ctx.ssh_options(&inv.network);
    let progress = HostProgress::new(ui);
    let mut done = Vec::new();
    if inv.provider == ProviderKind::Ssh {
        // Hosts timectl did not make stay; what install put there goes.
        let targets: Vec<Target> = inv.nodes.iter().map(Target::of).collect();
        let pool = ssh::Pool::connect(&targets, &ssh_opts).await.map_err(crate::context::first_of)?;
        let mut failed = None;
        for h in &pool.hosts {
            progress.step(h.name(), "removing timed");
            match install::uninstall(h).await {
                Ok(()) => done.push(format!("removed timed, its unit, files and user from {}", h.name())),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        pool.close().await;
        if let Some(e) = failed {
            progress.finish();
            return Err(e.into());
        }
    }
    let provider = providers::build(
        inv.provider,
        BuildContext {
            networks_dir: network_dir.parent().map(PathBuf::from).unwrap_or_default(),
            inventory: Some(inv.clone()),
            ssh: ssh_opts,
        },
    )?;
    let deleted = provider.destroy(&inv.network, &progress).await;
    progress.finish();
    done.extend(deleted?);
    materials::remove(&network_dir)?;
    done.push(format!("removed the network's materials {}", network_dir.display()));
    if inv.provider != ProviderKind::Ssh {
        std::fs::remove_file(&path)?;
        done.push(format!("removed the inventory {}", path.display()));
    }
    inventory::forget(&path);
    if ui.json {
        ui.print_json(&serde_json::json!({ "network": inv.network, "done": done }));
    } else {
        for d in &done {
            println!("{d}");
        }
        println!("network {} is gone", inv.network);
    }
    Ok(EXIT_OK)
}
