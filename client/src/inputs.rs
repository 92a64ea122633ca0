//! Loading evidence and endorsements from what a user hands the CLI.
//!
//! Two kinds of failure are kept apart, because scripts rely on the difference: evidence that
//! cannot be decoded is a *rejection* (the evidence is bad), while an endorsement or policy file
//! that cannot be read or decoded is a *usage error* (the command was given the wrong thing).

use std::path::Path;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::snp::{parse_certificate, parse_pem_chain};
use chrysalis_attestation::tdx::parse_collateral;
use chrysalis_attestation::verify::Endorsements;
use chrysalis_attestation::{Evidence, EvidenceBundle, ParseError, Policy};
use thiserror::Error;

/// A file could not be used.
#[derive(Debug, Error)]
#[error("{path}: {reason}")]
pub struct UsageError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

fn read(path: &Path) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path).map_err(|e| UsageError {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Decode evidence file content: an evidence bundle (JSON), or a raw quote/report as binary or
/// hex text.
pub fn decode_evidence(content: &[u8]) -> Result<(Evidence, Option<EvidenceBundle>), ParseError> {
    if content.trim_ascii_start().starts_with(b"{") {
        let (bundle, evidence) = EvidenceBundle::from_json(content)?;
        return Ok((evidence, Some(bundle)));
    }
    let bytes = decode_binary_or_hex(content)?;
    Ok((Evidence::from_bytes(&bytes)?, None))
}

/// Read the evidence file. `Err(UsageError)` if it cannot be read; `Ok(Err(_))` if it can but
/// does not decode (a rejection).
pub fn load_evidence(
    path: &Path,
) -> Result<Result<(Evidence, Option<EvidenceBundle>), ParseError>, UsageError> {
    Ok(decode_evidence(&read(path)?))
}

/// Endorsement files named on the command line.
#[derive(Debug, Default)]
pub struct EndorsementFiles<'a> {
    /// Intel collateral JSON.
    pub collateral: Option<&'a Path>,
    /// VCEK/VLEK, DER or PEM.
    pub vcek: Option<&'a Path>,
    /// ASK/ARK PEM chain.
    pub cert_chain: Option<&'a Path>,
}

/// Endorsements from the bundle, overridden by files given explicitly.
pub fn load_endorsements(
    bundle: Option<&EvidenceBundle>,
    files: &EndorsementFiles<'_>,
) -> Result<Endorsements, UsageError> {
    let mut e = match bundle {
        Some(b) => Endorsements::from_bundle(b).map_err(|err| UsageError {
            path: "evidence bundle".into(),
            reason: err.to_string(),
        })?,
        None => Endorsements::default(),
    };
    let usage = |p: &Path, err: ParseError| UsageError {
        path: p.display().to_string(),
        reason: err.to_string(),
    };
    if let Some(p) = files.collateral {
        e.tdx_collateral = Some(parse_collateral(&read(p)?).map_err(|err| usage(p, err))?);
    }
    if let Some(p) = files.vcek {
        e.vcek = Some(parse_certificate("VCEK", &read(p)?).map_err(|err| usage(p, err))?);
    }
    if let Some(p) = files.cert_chain {
        e.cert_chain = parse_pem_chain(&read(p)?).map_err(|err| usage(p, err))?;
    }
    Ok(e)
}

/// The policy file, or the baseline policy when none is given.
pub fn load_policy(path: Option<&Path>, allow_simulated: bool) -> Result<Policy, UsageError> {
    let policy = match path {
        Some(p) => {
            let text = String::from_utf8(read(p)?).map_err(|_| UsageError {
                path: p.display().to_string(),
                reason: "not UTF-8 text".into(),
            })?;
            Policy::from_toml(&text).map_err(|e| UsageError {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?
        }
        None => Policy::baseline(),
    };
    Ok(if allow_simulated {
        policy.allow_simulated()
    } else {
        policy
    })
}

/// The wall clock as a verification time. The client is where time enters: `attestation` takes
/// it as a parameter.
pub fn now() -> chrysalis_attestation::Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    chrysalis_attestation::Timestamp(secs)
}
