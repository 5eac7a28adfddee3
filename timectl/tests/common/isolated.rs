//! The real `timectl` with nothing of the machine's environment but `PATH`: its home, state
//! and inventories in `dir`, no colour. Cloud tests add their endpoint and credentials, so
//! nothing of the operator's own configuration can reach them. Include with
//! `#[path = "common/isolated.rs"] mod isolated;`.

use std::path::Path;

pub fn timectl(dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_timectl"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env("TIMECTL_STATE_DIR", dir.join("state"))
        .env("TIMECTL_INVENTORY_DIR", dir.join("inventories"));
    cmd
}
