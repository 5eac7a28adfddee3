//! The command line: global options and one subcommand per module in `commands/`.

pub use crate::commands::Command;
use clap::{Args, Parser};
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
    /// SSH private key remote hosts accept (default: ssh's own choice).
    #[arg(
        long,
        global = true,
        env = "TIMECTL_SSH_IDENTITY",
        hide_env_values = true,
        value_name = "FILE",
        display_order = 103
    )]
    pub ssh_identity: Option<PathBuf>,
    /// known_hosts file for remote hosts (default: the network's own, pinned on first contact).
    /// Host keys are always checked.
    #[arg(
        long,
        global = true,
        env = "TIMECTL_SSH_KNOWN_HOSTS",
        hide_env_values = true,
        value_name = "FILE",
        display_order = 104
    )]
    pub ssh_known_hosts: Option<PathBuf>,
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
