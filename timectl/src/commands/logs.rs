//! `timectl logs NODE`: the node's journal over SSH (`journalctl -u timed`).

use crate::context::Ctx;
use crate::error::EXIT_OK;
use crate::ssh::{self, Host, Target};
use clap::Args;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  timectl logs rehearsal-node-1
  timectl logs rehearsal-node-2 --since '10 min ago'
  timectl logs rehearsal-node-3 --follow")]
pub struct LogsArgs {
    /// The node whose journal to show.
    pub node: String,
    /// Keep printing new lines until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines since this time (journalctl's forms: '2026-01-02 10:00', '1h ago', today).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Lines to show (without --since).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: u32,
}

/// journalctl's time forms need only these characters; anything else is refused rather than
/// passed to a remote shell.
fn valid_since(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || " :-+.".contains(c))
}

pub async fn run(a: LogsArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let (path, inv) = ctx.inventory()?;
    let node = inv.select(std::slice::from_ref(&a.node), path)?.remove(0);
    if !inv.provider.tunnels_rpc() {
        let log = node.log.as_ref().map_or("its log file".into(), |l| l.display().to_string());
        anyhow::bail!("{} runs on this machine; its output is in {log}", node.name);
    }
    let mut script = String::from("journalctl -u timed --no-pager -o short-iso");
    match &a.since {
        Some(t) if !valid_since(t) => anyhow::bail!("--since {t:?}: use a time like '2026-01-02 10:00' or '1h ago'"),
        Some(t) => script.push_str(&format!(" --since {}", ssh::shell_quote(t))),
        None => script.push_str(&format!(" -n {}", a.lines)),
    }
    if a.follow {
        script.push_str(" --follow");
    }
    let host = Host::connect(&Target::of(&node), &ctx.ssh_options(&inv.network)).await?;
    let r = host.stream("journalctl", &script).await;
    host.close().await;
    let code = r?;
    if code != 0 {
        anyhow::bail!("{}: journalctl exited with {code}", node.name);
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_journalctl_times_only() {
        assert!(valid_since("2026-01-02 10:00:00"));
        assert!(valid_since("1h ago"));
        assert!(valid_since("today"));
        assert!(!valid_since("x; rm -rf /"));
        assert!(!valid_since("$(id)"));
        assert!(!valid_since(""));
    }
}
