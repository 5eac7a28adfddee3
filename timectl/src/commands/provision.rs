//! `timectl provision`: provider -> hosts -> inventory (the first half of `deploy`).

use crate::context::Ctx;
use crate::error::EXIT_OK;
use crate::inventory::{self, ProviderKind};
use crate::output::HostProgress;
use crate::providers::{self, BuildContext, ProviderArgs, ProvisionRequest};
use crate::provision;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  sudo timectl provision --provider rehearsal --nodes 5 --network rehearsal
  timectl provision --provider rehearsal --nodes 5 --dry-run")]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Hosts the network should have.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub nodes: usize,
    /// Print what would be created; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Answer every confirmation (needed for more than 20 cloud hosts).
    #[arg(long)]
    pub yes: bool,
}

pub async fn run(a: ProvisionArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let kind = a.provider.provider.ok_or_else(|| crate::error::Hinted {
        message: "--provider is required".into(),
        hint: "use --provider rehearsal".into(),
    })?;
    if kind == ProviderKind::Ssh {
        anyhow::bail!("the ssh provider's hosts already exist: write their inventory by hand (docs/inventory.md), then `timectl install`");
    }
    let network = ctx.network.clone().unwrap_or_else(|| "testnet".into());
    let inv_path = ctx.inventory_file.clone().unwrap_or_else(|| inventory::network_path(&network));
    let network_dir = inventory::network_state_dir(&network);
    let provider = providers::build(
        kind,
        BuildContext {
            networks_dir: network_dir.parent().map(PathBuf::from).unwrap_or_default(),
            inventory: None,
            ssh: ctx.ssh_options(&network),
            cloud: a.provider.cloud.clone(),
        },
    )?;
    if matches!(kind, ProviderKind::Do | ProviderKind::Aws) {
        providers::cloud::check_node_cap(kind.name(), a.nodes, a.yes)?;
    }
    let req = ProvisionRequest {
        network: network.clone(),
        nodes: a.nodes,
        ssh_public_key: provision::public_key(a.provider.ssh_public_key.as_deref(), ctx.ssh_identity.as_deref())?,
        p2p_port: provision::P2P_PORT,
        allow_from: a.provider.allow_from.clone(),
    };
    tracing::info!(provider = provider.name(), network = %network, nodes = a.nodes, "provisioning");
    if a.dry_run {
        let plan = provider.plan(&req).await?;
        if ui.json {
            ui.print_json(&serde_json::json!({
                "network": network, "keep": plan.existing.iter().map(|h| &h.name).collect::<Vec<_>>(),
                "create": plan.create, "hourly_usd": plan.hourly_usd,
            }));
        } else {
            for h in &plan.existing {
                println!("keep    {} ({})", h.name, h.ssh_host);
            }
            for c in &plan.create {
                println!("create  {c}");
            }
            if matches!(kind, ProviderKind::Do | ProviderKind::Aws) {
                println!("{}", providers::cloud::price_line(plan.hourly_usd, a.nodes));
            }
            println!("nothing was changed");
        }
        return Ok(EXIT_OK);
    }
    let progress = HostProgress::new(ui);
    let result =
        provision::provision(provider.as_ref(), kind, &req, ctx.ssh_identity.as_deref(), &inv_path, &progress).await;
    progress.finish();
    let inv = result?;
    inventory::remember(&inv_path);
    if ui.json {
        println!("{}", serde_json::json!({ "event": "done", "inventory": inv_path, "network": inv }));
    } else {
        let mut t = ui.table(&["node", "ssh", "p2p"]);
        for n in &inv.nodes {
            t.add_row(vec![
                n.name.clone(),
                format!("{}@{}:{}", n.ssh_user.as_deref().unwrap_or("root"), n.host, n.ssh_port.unwrap_or(22)),
                n.p2p.clone(),
            ]);
        }
        println!("{t}");
        println!("inventory: {}\nnext: timectl install --inventory {}", inv_path.display(), inv_path.display());
    }
    Ok(EXIT_OK)
}
