use clap::Parser;
use latchkey::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match latchkey::api::crds_yaml() {
            Ok(y) => {
                print!("{y}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("latchkey: cannot render the CRDs: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Users(args) => match latchkey::users::run(args).await {
            Ok(table) => {
                print!("{table}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("latchkey: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Providers => {
            print!("{}", latchkey::providers::table());
            std::process::ExitCode::SUCCESS
        }
        Command::Run(cfg) => {
            latchkey::telemetry::init(cfg.log_format);
            match latchkey::run::run(*cfg).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("latchkey: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
