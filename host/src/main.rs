//! `chrysalis-host`: the host agent binary.
#![forbid(unsafe_code)]

use clap::Parser;

/// The Chrysalis host agent (boots and supervises confidential VMs).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("the host agent is not implemented yet: it arrives with the host-agent issue")
}
