//! The command line: global options and one subcommand per module in `commands/`.

use crate::commands::{bench, local, report, resources, rpc, stability, status};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "timectl",
    version,
    about = "Operator CLI for TIME Coin validator testnets",
    propagate_version = true,
    after_help = "\
Examples:
  timectl local up --nodes 3 --block-time 2     start a 3-node network on this machine
  timectl rpc getblockcount --all               ask every node for its height
  timectl status                                one row per node
  timectl stability --hours 72 --report run.jsonl
  timectl report run.jsonl -o report.html
  timectl local down --wipe

The inventory is --inventory FILE, else inventories/NAME.toml for --network NAME, else the one
used last. Exit codes: 0 ok, 1 error, 2 usage, 3 fork, 4 lost transaction, 5 stall,
6 resources outside acceptable range (with --strict). Logs: RUST_LOG (default warn)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Inventory file describing the network's nodes.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "network", display_order = 100)]
    pub inventory: Option<PathBuf>,
    /// Network name: uses inventories/NAME.toml (directory: $TIMECTL_INVENTORY_DIR).
    #[arg(long, global = true, value_name = "NAME", display_order = 101)]
    pub network: Option<String>,
    /// Print machine-readable JSON instead of tables (and no progress output).
    #[arg(long, global = true, display_order = 102)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
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
    /// Finalized payments per second and latency at a ladder of offered rates (devnets).
    Bench(bench::BenchArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
