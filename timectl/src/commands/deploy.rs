//! `timectl deploy`: provision (provider -> hosts -> inventory) then install (inventory ->
//! running services), from nothing to a network that agrees and advances. Idempotent: a
//! re-run finds what exists and changes only what differs.

use crate::context::Ctx;
use crate::error::EXIT_OK;
use crate::install::{self, InstallOptions};
use crate::inventory::{self, Inventory, ProviderKind};
use crate::output::HostProgress;
use crate::providers::{self, BuildContext, ProviderArgs, ProvisionRequest};
use crate::provision;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  sudo timectl deploy --provider rehearsal --nodes 5 --network rehearsal
  timectl deploy --provider ssh --inventory inventories/mine.toml
  timectl deploy --provider rehearsal --nodes 3 --dry-run

Materials (keys, genesis, configs, pinned host keys) are kept in the network's state
directory, $TIMECTL_STATE_DIR/networks/NAME (default ~/.local/state/timectl/...), mode 0700.")]
pub struct DeployArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Hosts the network should have.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub nodes: usize,
    #[command(flatten)]
    pub install: install::InstallFlags,
    /// Print what would be created and installed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Answer every confirmation (for scripts and CI).
    #[arg(long)]
    pub yes: bool,
}

pub async fn run(a: DeployArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let kind = a.provider.provider.ok_or_else(|| crate::error::Hinted {
        message: "--provider is required".into(),
        hint: "use --provider rehearsal or --provider ssh".into(),
    })?;
    // The ssh provider's inventory is its input; the others write one.
    let given = if kind == ProviderKind::Ssh { Some(ctx.inventory()?.1.clone()) } else { None };
    let network = match (&given, &ctx.network, &ctx.inventory_file) {
        (Some(inv), _, _) => inv.network.clone(),
        (None, Some(n), _) => n.clone(),
        (None, None, Some(f)) => f.file_stem().map_or("testnet".into(), |s| s.to_string_lossy().into_owned()),
        (None, None, None) => "testnet".into(),
    };
    let inv_path = ctx.inventory_file.clone().unwrap_or_else(|| inventory::network_path(&network));
    let nodes = if kind == ProviderKind::Ssh { given.as_ref().map_or(0, |i| i.nodes.len()) } else { a.nodes };
    let network_dir = inventory::network_state_dir(&network);
    let mut ssh = ctx.ssh_options(&network);
    // Hosts a provider has just made may still be booting: keep knocking for a while. A
    // cloud host's first boot is slower (cloud-init), and until boot ends pam_nologin turns
    // away every login but root's (EC2's `ubuntu`).
    ssh.boot_wait = Duration::from_secs(if matches!(kind, ProviderKind::Do | ProviderKind::Aws) { 300 } else { 60 });
    let provider = providers::build(
        kind,
        BuildContext {
            networks_dir: network_dir.parent().map(PathBuf::from).unwrap_or_default(),
            inventory: given.clone(),
            ssh: ssh.clone(),
            cloud: a.provider.cloud.clone(),
        },
    )?;
    let req = ProvisionRequest {
        network: network.clone(),
        nodes,
        ssh_public_key: if kind == ProviderKind::Ssh {
            String::new()
        } else {
            provision::public_key(a.provider.ssh_public_key.as_deref(), ctx.ssh_identity.as_deref())?
        },
        p2p_port: provision::P2P_PORT,
        allow_from: a.provider.allow_from.clone(),
    };
    if matches!(kind, ProviderKind::Do | ProviderKind::Aws) {
        providers::cloud::check_node_cap(kind.name(), nodes, a.yes)?;
    }
    let binary = install::find_timed(a.install.timed.as_deref())?;

    if a.dry_run {
        let plan = provider.plan(&req).await?;
        let mut out = format!("network {network} ({} provider), inventory {}\n", kind.name(), inv_path.display());
        for h in &plan.existing {
            out.push_str(&format!("  keep    {} ({})\n", h.name, h.ssh_host));
        }
        for c in &plan.create {
            out.push_str(&format!("  create  {c}\n"));
        }
        if matches!(kind, ProviderKind::Do | ProviderKind::Aws) {
            out.push_str(&format!("{}\n", providers::cloud::price_line(plan.hourly_usd, nodes)));
        }
        out.push_str("then on each host (over SSH, as root or with sudo):\n");
        // Hosts that exist as they are; those still to be made appear as NEW-HOST-N.
        let example = given.clone().unwrap_or_else(|| {
            let hosts: Vec<providers::Host> = (1..=nodes.max(1))
                .map(|i| {
                    plan.existing.iter().find(|h| h.index == i).cloned().unwrap_or_else(|| providers::Host {
                        name: format!("{network}-node-{i}"),
                        index: i,
                        ssh_host: format!("NEW-HOST-{i}"),
                        ssh_port: 22,
                        ssh_user: "root".into(),
                        p2p_host: format!("NEW-HOST-{i}"),
                        provider_id: None,
                    })
                })
                .collect();
            provision::inventory_from_hosts(&network, kind, &hosts, None)
        });
        let lines = install_plan_lines(&example, &binary)?;
        for line in lines {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!(
            "materials (keys, genesis, configs) in {} (mode 0700)\nnothing was changed\n",
            network_dir.display()
        ));
        if ui.json {
            ui.print_json(&serde_json::json!({
                "network": network, "provider": kind.name(), "inventory": inv_path,
                "keep": plan.existing.iter().map(|h| &h.name).collect::<Vec<_>>(), "create": plan.create,
                "hourly_usd": plan.hourly_usd,
            }));
        } else {
            print!("{out}");
        }
        return Ok(EXIT_OK);
    }

    let progress = HostProgress::new(ui);
    let t0 = std::time::Instant::now();
    let inv: Inventory = if kind == ProviderKind::Ssh {
        provider.create(&req, &progress).await?;
        given.clone().expect("ssh provider has its inventory")
    } else {
        provision::provision(provider.as_ref(), kind, &req, ctx.ssh_identity.as_deref(), &inv_path, &progress).await?
    };
    inventory::remember(&inv_path);
    let opts = InstallOptions { binary, ssh, wait: Duration::from_secs(a.install.wait) };
    let result = install::install_network(&inv, &network_dir, a.install.block_time, &opts, &progress).await;
    progress.finish();
    let hosts = result?;
    let secs = t0.elapsed().as_secs_f64();
    if ui.json {
        println!(
            "{}",
            serde_json::json!({ "event": "done", "network": network, "inventory": inv_path, "hosts": hosts, "seconds": secs })
        );
    } else {
        let mut t = ui.table(&["node", "host", "p2p", "changed"]);
        for (n, h) in inv.nodes.iter().zip(&hosts) {
            let changed = if h.uploaded.is_empty() { "nothing".to_string() } else { h.uploaded.join(", ") };
            t.add_row(vec![n.name.clone(), n.host.clone(), n.p2p.clone(), changed]);
        }
        println!("{t}");
        println!(
            "network {network} is running ({} nodes, {secs:.1} s); inventory: {}",
            inv.nodes.len(),
            inv_path.display()
        );
        println!("next:\n  timectl status --inventory {0}\n  timectl rpc getblockcount --all --inventory {0}\n  timectl stability --hours 72 --inventory {0}\n  timectl destroy --inventory {0}", inv_path.display());
    }
    Ok(EXIT_OK)
}

fn install_plan_lines(inv: &Inventory, binary: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let bin = install::Blob::new(
        std::fs::read(binary).map_err(|source| install::InstallError::Binary { path: binary.to_path_buf(), source })?,
    );
    // Throwaway materials: the plan shows sizes and places, never keys.
    let tmp = tempdir_for_plan()?;
    let m = crate::materials::ensure(&tmp.0, inv, 5)?;
    let plan = install::plan(inv, &m, &bin)?;
    drop(tmp);
    let mut lines = Vec::new();
    for (node, steps) in plan {
        lines.push(format!("{node}:"));
        lines.extend(steps.into_iter().map(|s| format!("  {s}")));
    }
    Ok(lines)
}

/// A private scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir_for_plan() -> std::io::Result<Scratch> {
    let dir = std::env::temp_dir().join(format!("timectl-plan-{}-{}", std::process::id(), crate::output::now_ms()));
    std::fs::create_dir_all(&dir)?;
    Ok(Scratch(dir))
}
