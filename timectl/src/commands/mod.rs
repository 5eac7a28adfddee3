//! One module per subcommand. Each `run` receives the parsed arguments and the context and
//! returns the process exit code; errors bubble up to `main`, which prints them with their
//! causes and hint. This is the one place that knows every command: commands never import
//! each other.

pub mod bench;
pub mod deploy;
pub mod destroy;
pub mod install;
pub mod local;
pub mod logs;
pub mod provision;
pub mod report;
pub mod resources;
pub mod rpc;
pub mod service;
pub mod stability;
pub mod status;
pub mod upgrade;

use crate::context::Ctx;

/// Every subcommand's arguments, as `cli.rs` parses them.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start or stop a network of timed processes on this machine.
    #[command(subcommand)]
    Local(local::LocalCommand),
    /// Call one JSON-RPC method on some or all nodes, concurrently.
    Rpc(rpc::RpcArgs),
    /// One row per node: height, tip, peers, mempool, finality mode, version, uptime.
    Status(status::StatusArgs),
    /// Watch the network for forks, stalls and lost transactions (the 72-hour test).
    Stability(stability::StabilityArgs),
    /// Memory, CPU, bandwidth, block time, finality and RPC latency against the targets.
    Resources(resources::ResourcesArgs),
    /// Turn a stability run log into a self-contained HTML report.
    Report(report::ReportArgs),
    /// Provision hosts and install a running network on them (provision + install).
    Deploy(deploy::DeployArgs),
    /// Create a network's hosts with a provider and write its inventory.
    Provision(provision::ProvisionArgs),
    /// Install timed under systemd on the inventory's hosts and start the network.
    Install(install::InstallArgs),
    /// Remove a deployed network: services, hosts timectl made, keys, inventory.
    Destroy(destroy::DestroyArgs),
    /// A deployed node's journal (journalctl over SSH).
    Logs(logs::LogsArgs),
    /// Restart timed on deployed nodes (systemctl over SSH).
    Restart(service::ServiceArgs),
    /// Stop timed on deployed nodes.
    Stop(service::ServiceArgs),
    /// Start timed on deployed nodes.
    Start(service::ServiceArgs),
    /// Rolling upgrade of timed: one node at a time, each caught up before the next.
    Upgrade(upgrade::UpgradeArgs),
    /// Finalized payments per second and latency at a ladder of offered rates (devnets).
    Bench(bench::BenchArgs),
}

pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<u8> {
    match command {
        Command::Local(c) => local::run(c, ctx).await,
        Command::Rpc(a) => rpc::run(a, ctx).await,
        Command::Status(a) => status::run(a, ctx).await,
        Command::Stability(a) => stability::run(a, ctx).await,
        Command::Resources(a) => resources::run(a, ctx).await,
        Command::Report(a) => report::run(a, ctx),
        Command::Deploy(a) => deploy::run(a, ctx).await,
        Command::Provision(a) => provision::run(a, ctx).await,
        Command::Install(a) => install::run(a, ctx).await,
        Command::Destroy(a) => destroy::run(a, ctx).await,
        Command::Logs(a) => logs::run(a, ctx).await,
        Command::Restart(a) => service::run(service::Verb::Restart, a, ctx).await,
        Command::Stop(a) => service::run(service::Verb::Stop, a, ctx).await,
        Command::Start(a) => service::run(service::Verb::Start, a, ctx).await,
        Command::Upgrade(a) => upgrade::run(a, ctx).await,
        Command::Bench(a) => bench::run(a, ctx).await,
    }
}

/// Advice for an error in the chain that a command's own error type knows about.
pub fn hint_of(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = e.downcast_ref::<local::LocalError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<crate::chaos::ChaosError>() {
        return e.hint();
    }
    None
}
