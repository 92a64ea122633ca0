//! `chrysalis-enclave`: the guest runtime binary.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

use chrysalis_enclave::{generate, serve};

/// The Chrysalis enclave runtime (runs inside the confidential VM).
#[derive(Debug, Parser)]
#[command(version, about)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: serve::ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the inference engine alone on one prompt (no TEE, no network).
    Generate(generate::GenerateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The service logs what it does; `generate` (scripts, benchmarks) only warnings.
    let default_level = if cli.command.is_some() {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHRYSALIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        Some(Command::Generate(args)) => generate::run(args),
        None => serve::run(&cli.serve),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chrysalis-enclave: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
