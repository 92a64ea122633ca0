//! Evidence as a versioned enum, and detection of what a byte string holds.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ParseError;
use crate::simulated::SimulatedEvidence;
use crate::snp::SnpReport;
use crate::tdx::TdxQuote;

/// The kind of trusted execution environment that produced evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Intel TDX (DCAP quote).
    Tdx,
    /// AMD SEV-SNP (attestation report).
    Snp,
    /// The development simulator. Not confidential.
    Simulated,
}

impl Platform {
    /// The name used in policies, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Tdx => "tdx",
            Platform::Snp => "snp",
            Platform::Simulated => "simulated",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parsed (not yet verified) attestation evidence.
// Evidence is decoded once per verification and moved rarely: boxing the large variant buys
// nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Evidence {
    /// An Intel TDX DCAP quote, v4 or v5.
    Tdx(TdxQuote),
    /// An AMD SEV-SNP attestation report, v2, v3 or v5.
    Snp(SnpReport),
    /// Evidence from the development simulator.
    Simulated(SimulatedEvidence),
}

impl Evidence {
    /// Decode raw binary evidence, recognising the format from its header.
    ///
    /// TDX quotes start with a u16 version (4 or 5) and TEE type 0x81; SNP reports are exactly
    /// 1184 bytes with a u32 version of 2, 3 or 5; simulated evidence starts with its own magic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.is_empty() {
            return Err(ParseError::Empty);
        }
        if bytes.starts_with(crate::simulated::MAGIC) {
            return SimulatedEvidence::from_bytes(bytes).map(Evidence::Simulated);
        }
        let u16_at = |o: usize| crate::bytes::le_u16_at(bytes, o);
        let u32_at = |o: usize| crate::bytes::le_u32_at(bytes, o);
        // Quote headers: u16 version, u16 attestation key type (2 = ECDSA P-256, 3 = P-384),
        // u32 TEE type. An SNP report has zeros at bytes 2..4 (high half of its u32 version).
        match (u16_at(0), u16_at(2), u32_at(4)) {
            (Some(4 | 5), Some(2 | 3), Some(crate::tdx::TEE_TYPE_TDX)) => {
                return TdxQuote::from_bytes(bytes).map(Evidence::Tdx)
            }
            (Some(3..=5), Some(2 | 3), Some(0)) => {
                return Err(ParseError::UnknownFormat(
                    "this is an Intel SGX enclave quote; Chrysalis verifies TDX quotes only".into(),
                ))
            }
            _ => {}
        }
        if let Some(2 | 3 | 5) = u32_at(0) {
            return SnpReport::from_bytes(bytes).map(Evidence::Snp);
        }
        Err(ParseError::UnknownFormat(format!(
            "{} bytes that are neither a TDX quote (v4/v5), an SNP report (1184 bytes) nor simulated evidence",
            bytes.len()
        )))
    }

    /// The platform this evidence claims to come from (unverified).
    pub fn platform(&self) -> Platform {
        match self {
            Evidence::Tdx(_) => Platform::Tdx,
            Evidence::Snp(_) => Platform::Snp,
            Evidence::Simulated(_) => Platform::Simulated,
        }
    }

    /// The exact bytes the evidence was decoded from.
    pub fn raw(&self) -> &[u8] {
        match self {
            Evidence::Tdx(q) => q.raw(),
            Evidence::Snp(r) => r.raw(),
            Evidence::Simulated(s) => s.raw(),
        }
    }
}

/// Decode a file's content that is binary or hex text (auto-detected).
///
/// Hex text may be upper or lower case, may start with `0x` and may contain whitespace.
pub fn decode_binary_or_hex(content: &[u8]) -> Result<Vec<u8>, ParseError> {
    let trimmed = content.trim_ascii();
    let looks_hex = !trimmed.is_empty()
        && trimmed
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace() || *b == b'x');
    if !looks_hex {
        return Ok(content.to_vec());
    }
    let text: Vec<u8> = trimmed
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let text = text.strip_prefix(b"0x").unwrap_or(&text);
    hex::decode(text).map_err(|e| ParseError::Hex {
        what: "evidence",
        reason: e.to_string(),
    })
}

/// Lowercase hex of a byte slice.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Decode a fixed-size hex value from text (policies, bundles).
pub fn hex_array<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], ParseError> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(text).map_err(|e| ParseError::Hex {
        what,
        reason: e.to_string(),
    })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| ParseError::Hex {
        what,
        reason: format!(
            "expected {N} bytes ({} hex digits), got {}",
            N * 2,
            bytes.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_binary_detection() {
        assert_eq!(
            decode_binary_or_hex(b"0x0a0B\n").ok(),
            Some(vec![0x0a, 0x0b])
        );
        assert_eq!(
            decode_binary_or_hex(b"  0a 0b  ").ok(),
            Some(vec![0x0a, 0x0b])
        );
        assert_eq!(decode_binary_or_hex(&[0, 1, 2]).ok(), Some(vec![0, 1, 2]));
        assert!(
            decode_binary_or_hex(b"abc").is_err(),
            "odd length hex must be an error"
        );
    }

    #[test]
    fn unknown_inputs_are_errors_not_panics() {
        assert_eq!(Evidence::from_bytes(&[]).err(), Some(ParseError::Empty));
        for len in 0..64usize {
            let junk = vec![0xA5u8; len];
            let _ = Evidence::from_bytes(&junk);
        }
        assert!(matches!(
            Evidence::from_bytes(&[4, 0, 2, 0, 0x81, 0, 0, 0]),
            Err(ParseError::Malformed { .. } | ParseError::Truncated { .. })
        ));
    }
}
