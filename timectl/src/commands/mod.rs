//! One module per subcommand. Each `run` receives the parsed arguments and the context and
//! returns the process exit code; errors bubble up to `main`, which prints them with their
//! causes and hint. This is the one place that knows every command: commands never import
//! each other.

pub mod local;
pub mod report;
pub mod resources;
pub mod rpc;
pub mod stability;
pub mod status;

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
}

pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<u8> {
    match command {
        Command::Local(c) => local::run(c, ctx).await,
        Command::Rpc(a) => rpc::run(a, ctx).await,
        Command::Status(a) => status::run(a, ctx).await,
        Command::Stability(a) => stability::run(a, ctx).await,
        Command::Resources(a) => resources::run(a, ctx).await,
        Command::Report(a) => report::run(a, ctx),
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
