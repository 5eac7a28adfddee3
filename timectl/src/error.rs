//! Exit codes and how a failure is told to the operator: the error, each cause, then a hint
//! when one of the typed errors in the chain knows what to do about it.

use crate::inventory::InventoryError;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
// 2 is clap's for usage errors.
/// `stability`: nodes disagreed on a block hash at some height.
pub const EXIT_FORK: u8 = 3;
/// `stability`: a probe transaction was not final within the probe timeout.
pub const EXIT_LOST_TX: u8 = 4;
/// `stability`: a node made no progress (or did not answer) for the stall threshold.
pub const EXIT_STALL: u8 = 5;
/// `resources --strict`: a measurement is outside the acceptable range.
pub const EXIT_RESOURCES: u8 = 6;

/// A failure the command already explained on stdout (a table with the failing rows); main
/// adds the one-line error and the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// An error with advice attached by the command that saw it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Hinted {
    pub message: String,
    pub hint: String,
}

/// Finds advice for one error of the chain; commands pass theirs in (see `commands::hint_of`).
pub type HintFn = fn(&(dyn std::error::Error + 'static)) -> Option<String>;

fn hint_of(e: &(dyn std::error::Error + 'static), more: HintFn) -> Option<String> {
    if let Some(e) = e.downcast_ref::<InventoryError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<crate::ssh::SshError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<crate::install::InstallError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<crate::materials::MaterialsError>() {
        return e.hint();
    }
    if let Some(e) = e.downcast_ref::<crate::providers::ProviderError>() {
        return e.hint.clone();
    }
    if let Some(h) = more(e) {
        return Some(h);
    }
    e.downcast_ref::<Hinted>().map(|h| h.hint.clone())
}

pub fn report(e: &anyhow::Error, color: bool, more: HintFn) {
    let (red, yellow, reset) = if color { ("\x1b[31m", "\x1b[33m", "\x1b[0m") } else { ("", "", "") };
    eprintln!("{red}error{reset}: {e}");
    let mut hint = hint_of(e.as_ref(), more);
    for cause in e.chain().skip(1) {
        eprintln!("caused by: {cause}");
        hint = hint.or_else(|| hint_of(cause, more));
    }
    if let Some(h) = hint {
        eprintln!("{yellow}hint{reset}: {h}");
    }
}
