//! `chrysalis`: the developer's and auditor's command line.
//!
//! Exit status: 0 accepted, 1 rejected, 2 a file could not be read or the command was misused.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use chrysalis_attestation::{Evidence, Platform, Timestamp, Verifier, VerifyError};
use chrysalis_client::collateral::CollateralStore;
use chrysalis_client::inputs::{
    load_endorsements, load_evidence, load_policy, EndorsementFiles, UsageError,
};
use chrysalis_client::report::{verdict_json, verdict_text, SIMULATED_WARNING};
use clap::{Parser, Subcommand};

/// Chrysalis: verify confidential-computing evidence, and (soon) talk to attested enclaves.
#[derive(Debug, Parser)]
#[command(name = "chrysalis", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify TDX or SEV-SNP evidence: is it genuine, what does it measure, does it meet a policy?
    ///
    /// EVIDENCE is a raw TDX quote or SNP report (binary or hex text) or a Chrysalis evidence
    /// bundle (JSON). Exit status: 0 accepted, 1 rejected, 2 unreadable file or misuse.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Evidence file: TDX quote, SNP report (binary or hex), or evidence bundle (JSON).
    evidence: PathBuf,
    /// Intel collateral (PCS / dcap-qvl JSON) for a TDX quote. Fetched and cached when absent.
    #[arg(long, value_name = "FILE")]
    collateral: Option<PathBuf>,
    /// VCEK or VLEK certificate (DER or PEM) for an SNP report. Fetched from AMD KDS when absent.
    #[arg(long, value_name = "FILE")]
    vcek: Option<PathBuf>,
    /// ASK/ARK (or ASVK/ARK) chain as PEM. AMD's built-in roots are used when absent.
    #[arg(long, value_name = "FILE")]
    cert_chain: Option<PathBuf>,
    /// Verifier policy (TOML). Without one: authenticity, debug and TCB checks only.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Accept the development simulator's evidence (NOT confidential).
    #[arg(long)]
    allow_simulated: bool,
    /// Verification time, RFC 3339 or unix seconds (default: now).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Never fetch collateral from the network; use files and the cache only.
    #[arg(long)]
    offline: bool,
    /// PCCS or Intel PCS base URL for TDX collateral.
    #[arg(long, value_name = "URL", env = "PCCS_URL")]
    pccs_url: Option<String>,
    /// Collateral cache directory.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Verify(args) => verify(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHRYSALIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn now_or(at: Option<&str>) -> Result<Timestamp, UsageError> {
    match at {
        Some(text) => Timestamp::parse(text).map_err(|e| UsageError {
            path: "--at".into(),
            reason: e.to_string(),
        }),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Ok(Timestamp(secs))
        }
    }
}

fn verify(args: VerifyArgs) -> Result<ExitCode, UsageError> {
    let now = now_or(args.at.as_deref())?;
    let policy = load_policy(args.policy.as_deref(), args.allow_simulated)?;
    let loaded = load_evidence(&args.evidence)?;
    let files = EndorsementFiles {
        collateral: args.collateral.as_deref(),
        vcek: args.vcek.as_deref(),
        cert_chain: args.cert_chain.as_deref(),
    };
    let (platform, result) = match loaded {
        Err(e) => (None, Err(VerifyError::Parse(e))),
        Ok((evidence, bundle)) => {
            let mut endorsements = load_endorsements(bundle.as_ref(), &files)?;
            let store = CollateralStore::new(
                args.cache_dir
                    .clone()
                    .unwrap_or_else(CollateralStore::default_dir),
                args.pccs_url.clone(),
                args.offline,
            );
            // Fill in missing endorsements from the cache or the vendor's service.
            match &evidence {
                Evidence::Tdx(q) if endorsements.tdx_collateral.is_none() => {
                    match store.tdx(q, now) {
                        Ok(c) => endorsements.tdx_collateral = Some(c),
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                Evidence::Snp(r) if endorsements.vcek.is_none() => match store.snp(r) {
                    Ok((der, chain)) => {
                        endorsements.vcek =
                            chrysalis_attestation::snp::parse_certificate("VCEK", &der).ok();
                        if endorsements.cert_chain.is_empty() {
                            if let Some(pem) = chain {
                                endorsements.cert_chain =
                                    chrysalis_attestation::snp::parse_pem_chain(&pem)
                                        .unwrap_or_default();
                            }
                        }
                    }
                    Err(e) => tracing::warn!("{e}"),
                },
                _ => {}
            }
            if evidence.platform() == Platform::Simulated {
                tracing::warn!("{SIMULATED_WARNING}");
            }
            (
                Some(evidence.platform()),
                Verifier::new().verify(&evidence, &endorsements, &policy, now),
            )
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict_json(platform, &result)).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            verdict_text(platform, &result, std::io::stdout().is_terminal())
        );
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
