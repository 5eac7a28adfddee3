//! One module per subcommand. Each returns the process exit code on completion; errors bubble
//! up to `main`, which prints them with their causes and hint.

pub mod bench;
pub mod local;
pub mod report;
pub mod resources;
pub mod rpc;
pub mod stability;
pub mod status;

use crate::cli::{Cli, Command, Global};
use crate::inventory::{self, Inventory};
use crate::output::Ui;
use std::path::PathBuf;

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let ui = Ui::detect(cli.global.json);
    match cli.command {
        Command::Local(c) => local::run(c, &cli.global, ui).await,
        Command::Rpc(a) => rpc::run(a, &cli.global, ui).await,
        Command::Status(a) => status::run(a, &cli.global, ui).await,
        Command::Stability(a) => stability::run(a, &cli.global, ui).await,
        Command::Resources(a) => resources::run(a, &cli.global, ui).await,
        Command::Report(a) => report::run(a, ui),
        Command::Bench(a) => bench::run(a, &cli.global, ui).await,
    }
}

/// The inventory the global options point at (or the last one used).
pub fn open_inventory(g: &Global) -> Result<(PathBuf, Inventory), inventory::InventoryError> {
    inventory::open(g.inventory.as_deref(), g.network.as_deref())
}
