//! `timed` binary: flags in, node out. All logic lives in the library.

use clap::Parser;
use std::process::ExitCode;
use timed::config::{Cli, Command};

fn main() -> ExitCode {
    timed::node::tune_allocator();
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: the journal and log files get plain text.
    let color = std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(color);
    // systemd sets JOURNAL_STREAM when stderr goes to the journal, which stamps each line
    // itself; a second timestamp would only make `journalctl` lines longer.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

fn hint(e: &anyhow::Error) -> Option<String> {
    let text = format!("{e:#}");
    if text.contains("Address already in use") {
        return Some("another process uses that port: pick another --port / --rpc-bind, or stop the other node".into());
    }
    if text.contains("in use by another process") {
        return Some("another timed runs with this --data-dir; give each node its own".into());
    }
    if text.contains("genesis") && text.contains("differs") {
        return Some(
            "this data dir belongs to another network: use a fresh --data-dir, or the genesis it was made with".into(),
        );
    }
    None
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Keygen) = cli.command {
        let dir = cli.data_dir.clone().ok_or_else(|| anyhow::anyhow!("keygen needs --data-dir"))?;
        return timed::node::keygen(&dir, cli.validator_id.as_deref().unwrap_or("validator"));
    }
    let cfg = cli.resolve()?;
    match cli.command {
        Some(Command::Keygen) => unreachable!("handled above"),
        Some(Command::ShowGenesis) => {
            print!("{}", toml::to_string(&cfg.genesis)?);
            return Ok(());
        }
        None => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.threads).enable_all().build()?;
    rt.block_on(timed::node::run(cfg, shutdown_signal()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
