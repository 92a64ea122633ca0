//! `chrysalis-enclave`: the guest runtime binary.
#![deny(unsafe_code)]

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
    /// Print the measured configuration the service would bind with these options, and its
    /// digests (SNP HOST_DATA for the host agent's `snp_host_data`), without a TEE.
    Config {
        #[command(flatten)]
        serve: serve::ServeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    // As the image's init: prepare the guest, then serve with the image's arguments. Never
    // return (PID 1 exiting panics the kernel): power off on any error.
    if chrysalis_enclave::guest::is_init() {
        let prepared = match chrysalis_enclave::guest::prepare() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("chrysalis-init: error: {e:#}; powering off");
                chrysalis_enclave::guest::sys::power_off();
            }
        };
        let mut cli = match Cli::try_parse_from(&prepared.args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("chrysalis-init: bad enclave arguments in the image: {e}");
                chrysalis_enclave::guest::sys::power_off();
            }
        };
        cli.serve.image_cmdline = Some(prepared.cmdline);
        run(cli);
        eprintln!("chrysalis-init: the enclave service stopped; powering off");
        chrysalis_enclave::guest::sys::power_off();
    }
    run(Cli::parse())
}

fn run(cli: Cli) -> std::process::ExitCode {
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
        Some(Command::Config { serve, json }) => serve::print_config(serve, *json),
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
