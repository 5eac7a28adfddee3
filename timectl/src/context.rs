//! What every command receives: the global flags, the output settings and the inventory
//! (opened on first use, so commands that need none, like `report`, never touch it).
//! Commands depend on this and on the shared modules, never on each other or on `cli.rs`.

use crate::inventory::{self, Inventory, InventoryError};
use crate::output::Ui;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct Ctx {
    /// `--inventory FILE`.
    pub inventory_file: Option<PathBuf>,
    /// `--network NAME`.
    pub network: Option<String>,
    pub ui: Ui,
    opened: OnceLock<(PathBuf, Inventory)>,
}

impl Ctx {
    pub fn new(inventory_file: Option<PathBuf>, network: Option<String>, ui: Ui) -> Self {
        Ctx { inventory_file, network, ui, opened: OnceLock::new() }
    }

    /// Whether the operator named an inventory (by file or network) on the command line.
    pub fn names_inventory(&self) -> bool {
        self.inventory_file.is_some() || self.network.is_some()
    }

    /// The path the global flags point at (or the one used last), without reading it.
    pub fn inventory_path(&self) -> Result<PathBuf, InventoryError> {
        inventory::resolve_path(self.inventory_file.as_deref(), self.network.as_deref())
    }

    /// The inventory the global flags point at, loaded once and remembered as the default.
    pub fn inventory(&self) -> Result<(&Path, &Inventory), InventoryError> {
        if self.opened.get().is_none() {
            let opened = inventory::open(self.inventory_file.as_deref(), self.network.as_deref())?;
            let _ = self.opened.set(opened);
        }
        let (p, i) = self.opened.get().expect("set above");
        Ok((p.as_path(), i))
    }
}
