//! The `guestnet` command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(guestnet::cli::LOG_VARIABLE)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = guestnet::cli::Cli::parse();
    if cli.command.only_prints_a_report()
        && let Err(error) = guestnet::shm::restore_default_sigpipe()
    {
        tracing::debug!(%error, "SIGPIPE keeps its ignored disposition");
    }
    match guestnet::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("guestnet: error: {}", guestnet::cli::error_message(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
