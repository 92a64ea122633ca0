//! Our own evidence bundle: evidence plus whatever endorsements travel with it, as JSON.
//!
//! ```json
//! { "format": "chrysalis-evidence-bundle", "version": 1, "platform": "snp",
//!   "evidence": "<hex>", "vcek": "<PEM>", "cert_chain": "<PEM>", "tdx_collateral": { ... } }
//! ```
//! `tdx_collateral` is Intel collateral in the PCS / `dcap-qvl` JSON format. Unknown fields are
//! an error: a bundle is security-relevant input.

use serde::{Deserialize, Serialize};

use crate::error::ParseError;
use crate::evidence::{Evidence, Platform};

/// Value of the `format` field.
pub const BUNDLE_FORMAT: &str = "chrysalis-evidence-bundle";

/// Evidence with its endorsements.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Bundle format version (1).
    pub version: u32,
    /// The platform the evidence claims.
    pub platform: Platform,
    /// Raw evidence, hex.
    #[serde(with = "hex::serde")]
    pub evidence: Vec<u8>,
    /// Intel collateral (TDX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx_collateral: Option<serde_json::Value>,
    /// VCEK or VLEK certificate, PEM (SNP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcek: Option<String>,
    /// ASK/ARK (or ASVK/ARK) chain, PEM (SNP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
}

impl EvidenceBundle {
    /// A bundle around raw evidence, with no endorsements yet.
    pub fn new(platform: Platform, evidence: Vec<u8>) -> Self {
        EvidenceBundle {
            format: BUNDLE_FORMAT.into(),
            version: 1,
            platform,
            evidence,
            tdx_collateral: None,
            vcek: None,
            cert_chain: None,
        }
    }

    /// Decode and check a bundle, including that its evidence is of the platform it names.
    pub fn from_json(bytes: &[u8]) -> Result<(Self, Evidence), ParseError> {
        let bundle: EvidenceBundle = serde_json::from_slice(bytes)
            .map_err(|e| ParseError::malformed("evidence bundle", e.to_string()))?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(ParseError::malformed(
                "evidence bundle",
                format!("format {:?} is not {BUNDLE_FORMAT:?}", bundle.format),
            ));
        }
        if bundle.version != 1 {
            return Err(ParseError::UnsupportedVersion {
                what: "evidence bundle",
                version: bundle.version,
            });
        }
        let evidence = Evidence::from_bytes(&bundle.evidence)?;
        if evidence.platform() != bundle.platform {
            return Err(ParseError::malformed(
                "evidence bundle",
                format!(
                    "bundle says {} but the evidence is {}",
                    bundle.platform,
                    evidence.platform()
                ),
            ));
        }
        Ok((bundle, evidence))
    }

    /// Encode as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A bounds-checked byte reader: every read either returns exactly what was asked or an error.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let (head, rest) = self
            .bytes
            .split_at_checked(N)
            .ok_or(ParseError::Truncated {
                what: "field",
                need: N,
                have: self.bytes.len(),
            })?;
        self.bytes = rest;
        head.try_into().map_err(|_| ParseError::Truncated {
            what: "field",
            need: N,
            have: head.len(),
        })
    }
}
