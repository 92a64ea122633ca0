//! `chrysalis-enclave`: the guest runtime binary.
#![forbid(unsafe_code)]

use clap::Parser;

/// The Chrysalis enclave runtime (runs inside the confidential VM).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("the enclave runtime is not implemented yet: it arrives with the enclave issue")
}
