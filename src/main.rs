//! The `claude-operator` binary: parses the command line and hands over to the library.

use clap::Parser;
use claude_operator::cli::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Crd => {
            print!("{}", claude_operator::api::crds_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => operate(args).await,
        Command::Receiver(mut args) => {
            (args.no_controller, args.no_gateway) = (true, true);
            operate(args).await
        }
        Command::Controller(mut args) => {
            (args.no_webhook, args.no_gateway) = (true, true);
            operate(args).await
        }
        Command::Gateway(mut args) => {
            (args.no_webhook, args.no_controller) = (true, true);
            operate(args).await
        }
        Command::Runner(args) => claude_operator::runner::run(args).await,
    }
}

async fn operate(args: claude_operator::cli::RunArgs) -> std::process::ExitCode {
    match claude_operator::operator::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "claude-operator failed");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
