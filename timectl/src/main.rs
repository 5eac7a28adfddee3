//! `timectl`: operator CLI for TIME Coin validator testnets. This file only wires parsing,
//! logging and error reporting; each subcommand lives in `commands/`.

mod chaos;
mod cli;
mod client;
mod commands;
mod context;
mod error;
mod install;
mod inventory;
mod load;
mod materials;
mod measure;
mod monitor;
mod netem;
mod output;
mod process;
mod prom;
// Parts of the trait's request (firewall port, allowed CIDR) are read by the cloud providers only.
mod providers;
mod provision;
mod ssh;
mod svg;
#[cfg(test)]
mod svg_check;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let stderr_color = output::Ui::stderr_color();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(stderr_color)
        .init();

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let ctx = context::Ctx::new(cli.global.inventory, cli.global.network, output::Ui::detect(cli.global.json))
        .with_ssh(cli.global.ssh_identity, cli.global.ssh_known_hosts);
    let result = runtime.block_on(async {
        let r = commands::run(cli.command, &ctx).await;
        ctx.close().await;
        r
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            error::report(&e, stderr_color, commands::hint_of);
            std::process::ExitCode::from(error::EXIT_FAILURE)
        }
    }
}
