//! AMD SEV-SNP attestation reports (v2, v3, v5) and their verification.
//!
//! Spec: AMD SEV-SNP Firmware ABI (pub. 56860), ATTESTATION_REPORT; VCEK certificate and KDS
//! interface (pub. 57230). Decoding and signature checks are the `sev` crate's. We add what it
//! leaves to callers: exact framing and canonical encoding (reserved bytes must be zero), pinning
//! the ARK to AMD's published roots, certificate validity at an explicit time, the VCEK TCB
//! extensions against REPORTED_TCB and hwID against CHIP_ID.

use serde::Serialize;
use sev::certs::snp::{builtin, ca, Certificate as SevCertificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;

use crate::error::{ParseError, VerifyError};
use crate::evidence::hex_lower;
use crate::time::Timestamp;

/// Size of an ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part of the report: bytes 0x000..0x2A0.
pub const SIGNED_LEN: usize = 0x2A0;
/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Guest POLICY bit 16: SMT allowed.
pub const POLICY_SMT: u64 = 1 << 16;
/// Guest POLICY bit 18: association with a migration agent allowed.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Guest POLICY bit 19: debugging allowed.
pub const POLICY_DEBUG: u64 = 1 << 19;

const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// A decoded SNP attestation report.
#[derive(Clone, Debug)]
pub struct SnpReport {
    raw: Vec<u8>,
    pub(crate) report: AttestationReport,
}

impl SnpReport {
    /// Decode exactly one report of 1184 bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, ParseError> {
        const WHAT: &str = "SNP report";
        if raw.len() < REPORT_LEN {
            return Err(ParseError::Truncated {
                what: WHAT,
                need: REPORT_LEN,
                have: raw.len(),
            });
        }
        if raw.len() > REPORT_LEN {
            return Err(ParseError::TrailingBytes {
                what: WHAT,
                extra: raw.len() - REPORT_LEN,
            });
        }
        let version = crate::bytes::le_u32_at(raw, 0).unwrap_or(0);
        if !matches!(version, 2 | 3 | 5) {
            return Err(ParseError::UnsupportedVersion {
                what: WHAT,
                version,
            });
        }
        let report = AttestationReport::from_bytes(raw)
            .map_err(|e| ParseError::malformed(WHAT, e.to_string()))?;
        if report.sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(ParseError::malformed(
                WHAT,
                format!("signature algorithm {} is not ECDSA P-384", report.sig_algo),
            ));
        }
        // Canonical encoding: `sev` re-encodes the report to check its signature, writing zero
        // in every reserved field. Requiring the input to equal that encoding rejects non-zero
        // reserved bytes and makes the signature cover exactly the bytes we were given.
        let canonical = report
            .to_bytes()
            .map_err(|e| ParseError::malformed(WHAT, e.to_string()))?;
        if let Some(offset) = canonical.iter().zip(raw).position(|(a, b)| a != b) {
            return Err(ParseError::malformed(
                WHAT,
                format!("byte {offset:#x} is not in canonical form (reserved bytes must be zero)"),
            ));
        }
        // R and S are 48-byte P-384 scalars stored zero-extended to 72 bytes: the high bytes
        // are not covered by the signature check, so they must be zero.
        for (name, start) in [("R", SIGNED_LEN), ("S", SIGNED_LEN + 72)] {
            if raw
                .get(start + 48..start + 72)
                .is_none_or(|high| high.iter().any(|b| *b != 0))
            {
                return Err(ParseError::malformed(
                    WHAT,
                    format!("signature {name} is not a zero-extended P-384 scalar"),
                ));
            }
        }
        Ok(SnpReport {
            raw: raw.to_vec(),
            report,
        })
    }

    /// The bytes the report was decoded from.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Report version (2, 3 or 5).
    pub fn version(&self) -> u32 {
        self.report.version
    }

    /// CHIP_ID and REPORTED_TCB, needed to fetch the VCEK from AMD KDS.
    pub fn kds_query(&self) -> KdsQuery {
        KdsQuery {
            chip_id: self.report.chip_id,
            reported_tcb: TcbVersion::from(&self.report.reported_tcb),
            product: self.product(),
        }
    }

    /// The processor generation, from CPUID fields (v3+) or the CHIP_ID shape (v2).
    pub fn product(&self) -> Option<&'static str> {
        match (self.report.cpuid_fam_id, self.report.cpuid_mod_id) {
            (Some(0x19), Some(m)) if m <= 0x0F => Some("Milan"),
            (Some(0x19), Some(m)) if (0x10..=0x1F).contains(&m) || (0xA0..=0xAF).contains(&m) => {
                Some("Genoa")
            }
            (Some(0x1A), Some(m)) if m <= 0x1F || (0x90..=0xAF).contains(&m) => Some("Turin"),
            _ => None,
        }
    }

    pub(crate) fn policy_bits(&self) -> u64 {
        self.report.policy.0
    }

    pub(crate) fn signing_key(&self) -> u32 {
        // KEY_INFO bits 2..4: 0 VCEK, 1 VLEK, 7 none.
        (self.report.key_info.0 >> 2) & 0x7
    }
}

/// What AMD KDS needs to serve a VCEK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdsQuery {
    /// CHIP_ID (Turin uses the first 8 bytes).
    pub chip_id: [u8; 64],
    /// REPORTED_TCB.
    pub reported_tcb: TcbVersion,
    /// Milan, Genoa or Turin, when the report says.
    pub product: Option<&'static str>,
}

/// An SNP TCB_VERSION, decoded for the report's processor generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TcbVersion {
    /// FMC SVN (Turin and later only).
    pub fmc: Option<u8>,
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

impl From<&sev::firmware::host::TcbVersion> for TcbVersion {
    fn from(t: &sev::firmware::host::TcbVersion) -> Self {
        TcbVersion {
            fmc: t.fmc,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
        }
    }
}

impl std::fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Decode one certificate given as DER or PEM.
pub fn parse_certificate(what: &'static str, bytes: &[u8]) -> Result<Certificate, ParseError> {
    let trimmed = bytes.trim_ascii_start();
    let parsed = if trimmed.starts_with(b"-----BEGIN") {
        Certificate::from_pem(trimmed)
    } else {
        Certificate::from_der(bytes)
    };
    parsed.map_err(|e| ParseError::Certificate {
        what,
        reason: e.to_string(),
    })
}

/// Decode a PEM bundle of certificates (the ASK/ARK chain as AMD KDS serves it).
pub fn parse_pem_chain(bytes: &[u8]) -> Result<Vec<Certificate>, ParseError> {
    // x509-cert 0.2.5's `load_pem_chain` underflows on input that is empty once its trailing
    // CR/LF are stripped (a panic in debug builds): refuse that here, before it sees it.
    if bytes.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return Err(ParseError::Certificate {
            what: "chain",
            reason: "no PEM certificate found".into(),
        });
    }
    let certs = Certificate::load_pem_chain(bytes).map_err(|e| ParseError::Certificate {
        what: "chain",
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(ParseError::Certificate {
            what: "chain",
            reason: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

/// The result of authenticating a report.
#[derive(Clone, Debug)]
pub(crate) struct SnpAuthenticated {
    /// Which AMD root the chain ends at.
    pub root: &'static str,
    /// "VCEK" or "VLEK".
    pub key_kind: &'static str,
    /// The earliest notAfter in the chain.
    pub expires: Timestamp,
}

fn to_sev(cert: &Certificate) -> Result<SevCertificate, VerifyError> {
    let der = cert
        .to_der()
        .map_err(|e| VerifyError::CertificateChain(e.to_string()))?;
    SevCertificate::from_der(&der).map_err(|e| VerifyError::CertificateChain(e.to_string()))
}

fn is_self_signed(cert: &Certificate) -> bool {
    cert.tbs_certificate.subject == cert.tbs_certificate.issuer
}

fn builtin_roots() -> Vec<(&'static str, &'static [u8], &'static [u8])> {
    vec![
        ("Milan", builtin::milan::ARK, builtin::milan::ASK),
        ("Genoa", builtin::genoa::ARK, builtin::genoa::ASK),
        ("Turin", builtin::turin::ARK, builtin::turin::ASK),
    ]
}

pub(crate) fn check_validity(cert: &Certificate, now: Timestamp) -> Result<Timestamp, VerifyError> {
    let validity = &cert.tbs_certificate.validity;
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let not_after = validity.not_after.to_unix_duration().as_secs();
    if now.secs() < not_before || now.secs() > not_after {
        return Err(VerifyError::CertificateNotValid {
            subject: cert.tbs_certificate.subject.to_string(),
            not_before: Timestamp(not_before).to_rfc3339(),
            not_after: Timestamp(not_after).to_rfc3339(),
            now: now.to_rfc3339(),
        });
    }
    Ok(Timestamp(not_after))
}

fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a [u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// An SPL extension holds a DER INTEGER in 0..=255.
fn spl(cert: &Certificate, oid: &str, component: &'static str) -> Result<Option<u8>, VerifyError> {
    let Some(value) = extension(cert, oid) else {
        return Ok(None);
    };
    let int = x509_cert::der::asn1::Int::from_der(value)
        .map_err(|e| VerifyError::CertificateChain(format!("VCEK {component} extension: {e}")))?;
    let bytes = int.as_bytes();
    let significant: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    match significant.as_slice() {
        [] => Ok(Some(0)),
        [b] => Ok(Some(*b)),
        _ => Err(VerifyError::CertificateChain(format!(
            "VCEK {component} extension out of range"
        ))),
    }
}

/// Verify a report: endorsement chain to a pinned AMD root at `now`, endorsement key bound to
/// this chip and TCB, then the report signature.
pub(crate) fn verify_snp(
    report: &SnpReport,
    vek: &Certificate,
    chain: &[Certificate],
    now: Timestamp,
    chains: &ChainMemo,
) -> Result<SnpAuthenticated, VerifyError> {
    let key_kind = match report.signing_key() {
        0 => "VCEK",
        1 => "VLEK",
        other => {
            return Err(VerifyError::Signature(format!(
                "report is not signed by a VCEK or VLEK (SIGNING_KEY = {other})"
            )))
        }
    };
    let (root, expires) = chains.verify(vek, chain, now)?;
    // The endorsement key is derived from a TCB: its extensions must name the reported TCB.
    let reported = TcbVersion::from(&report.report.reported_tcb);
    let checks: [(&str, &'static str, Option<u8>); 5] = [
        (OID_BL_SPL, "bootloader", Some(reported.bootloader)),
        (OID_TEE_SPL, "tee", Some(reported.tee)),
        (OID_SNP_SPL, "snp", Some(reported.snp)),
        (OID_UCODE_SPL, "microcode", Some(reported.microcode)),
        (OID_FMC_SPL, "fmc", reported.fmc),
    ];
    for (oid, component, report_value) in checks {
        let cert_value = spl(vek, oid, component)?;
        match (cert_value, report_value) {
            (Some(c), Some(r)) if c != r => {
                return Err(VerifyError::TcbMismatch {
                    component,
                    cert: c,
                    report: r,
                })
            }
            (Some(_), Some(_)) => {}
            (None, Some(r)) if component != "fmc" => {
                return Err(VerifyError::CertificateChain(format!(
                    "{key_kind} lacks the {component} TCB extension (report says {r})"
                )))
            }
            (Some(c), None) => {
                return Err(VerifyError::TcbMismatch {
                    component,
                    cert: c,
                    report: 0,
                })
            }
            _ => {}
        }
    }
    if key_kind == "VCEK" {
        let hwid = extension(vek, OID_HWID)
            .ok_or_else(|| VerifyError::CertificateChain("VCEK has no hwID extension".into()))?;
        let chip_id = &report.report.chip_id;
        let matches = match hwid.len() {
            64 => hwid == chip_id.as_slice(),
            8 => chip_id.get(..8) == Some(hwid),
            _ => false,
        };
        if !matches {
            return Err(VerifyError::ChipIdMismatch {
                cert_hwid: hex_lower(hwid),
                chip_id: hex_lower(chip_id),
            });
        }
    }
    // Last, the signature: a chain for another chip or TCB is reported as such above.
    let sev_vek = to_sev(vek)?;
    (&sev_vek, &report.report)
        .verify()
        .map_err(|e| VerifyError::Signature(e.to_string().to_lowercase()))?;

    Ok(SnpAuthenticated {
        root,
        key_kind,
        expires,
    })
}

/// Memo of endorsement chains already verified: the RSA-4096 signatures of ARK, ASK and VCEK are
/// the same for every report of a chip, so a server checks them once. Keyed by the SHA-256 of
/// the certificates; each use still re-checks every certificate's validity period at `now`.
#[derive(Debug, Default)]
pub struct ChainMemo {
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], MemoEntry>>,
}

/// Root name, and the window in which every certificate of the chain is valid.
type MemoEntry = (&'static str, Timestamp, Timestamp);

/// How many verified chains a memo keeps (one per chip and TCB in practice).
const CHAIN_MEMO_CAPACITY: usize = 1024;

impl ChainMemo {
    /// [`verify_endorsement_chain`], memoised.
    pub fn verify(
        &self,
        vek: &Certificate,
        chain: &[Certificate],
        now: Timestamp,
    ) -> Result<(&'static str, Timestamp), VerifyError> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for c in std::iter::once(vek).chain(chain) {
            let der = c
                .to_der()
                .map_err(|e| VerifyError::CertificateChain(e.to_string()))?;
            h.update((der.len() as u64).to_le_bytes());
            h.update(&der);
        }
        let key: [u8; 32] = h.finalize().into();
        if let Some((root, not_before, not_after)) =
            self.verified.lock().ok().and_then(|m| m.get(&key).copied())
        {
            if now >= not_before && now <= not_after {
                return Ok((root, not_after));
            }
        }
        let (root, expires) = verify_endorsement_chain(vek, chain, now)?;
        // The memo holds the window in which every certificate of this chain is valid.
        let not_before = std::iter::once(vek)
            .chain(chain)
            .map(|c| {
                c.tbs_certificate
                    .validity
                    .not_before
                    .to_unix_duration()
                    .as_secs()
            })
            .max()
            .unwrap_or(u64::MAX);
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= CHAIN_MEMO_CAPACITY {
                m.clear();
            }
            m.insert(key, (root, Timestamp(not_before), expires));
        }
        Ok((root, expires))
    }
}

/// Verify that `vek` (a VCEK or VLEK) chains to a pinned AMD root at `now`; returns the root's
/// product name and the earliest notAfter of the chain.
///
/// `chain` holds the ASK (or ASVK) and optionally the ARK; when it lacks them the built-in
/// Milan, Genoa and Turin chains are tried. A given ARK must be one of AMD's published roots.
pub fn verify_endorsement_chain(
    vek: &Certificate,
    chain: &[Certificate],
    now: Timestamp,
) -> Result<(&'static str, Timestamp), VerifyError> {
    let roots = builtin_roots();
    let builtin_arks: Vec<(&'static str, Certificate)> = roots
        .iter()
        .filter_map(|(name, ark, _)| Certificate::from_pem(*ark).ok().map(|c| (*name, c)))
        .collect();

    // ARK candidates: a self-signed certificate given must be a pinned root.
    let mut arks: Vec<(&'static str, Certificate)> = Vec::new();
    for cert in chain.iter().filter(|c| is_self_signed(c)) {
        match builtin_arks.iter().find(|(_, ark)| ark == cert) {
            Some((name, ark)) => arks.push((name, ark.clone())),
            None => return Err(VerifyError::UntrustedRoot { vendor: "AMD" }),
        }
    }
    if arks.is_empty() {
        arks = builtin_arks.clone();
    }
    let mut asks: Vec<Certificate> = chain
        .iter()
        .filter(|c| !is_self_signed(c))
        .cloned()
        .collect();
    if asks.is_empty() {
        asks = roots
            .iter()
            .filter_map(|(_, _, ask)| Certificate::from_pem(*ask).ok())
            .collect();
    }

    let sev_vek = to_sev(vek)?;
    let mut last_error = None;
    let mut found = None;
    'outer: for (name, ark) in &arks {
        for ask in &asks {
            // Only try pairs whose names line up, to keep the error meaningful.
            if ask.tbs_certificate.issuer != ark.tbs_certificate.subject
                || vek.tbs_certificate.issuer != ask.tbs_certificate.subject
            {
                continue;
            }
            let ca_chain = ca::Chain {
                ark: to_sev(ark)?,
                ask: to_sev(ask)?,
            };
            let result = (&ca_chain)
                .verify()
                .and_then(|sev_ask| (sev_ask, &sev_vek).verify());
            match result {
                Ok(()) => {
                    found = Some((*name, ark.clone(), ask.clone()));
                    break 'outer;
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
    }
    let Some((root, ark, ask)) = found else {
        return Err(VerifyError::CertificateChain(last_error.unwrap_or_else(|| {
            format!(
                "no AMD ARK/ASK pair issues this endorsement key (issuer {}); pass the ASK/ASVK chain with --cert-chain",
                vek.tbs_certificate.issuer
            )
        })));
    };

    let mut expires = check_validity(&ark, now)?;
    expires = expires.min(check_validity(&ask, now)?);
    expires = expires.min(check_validity(vek, now)?);
    Ok((root, expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_roots_parse() {
        for (name, ark, ask) in builtin_roots() {
            assert!(Certificate::from_pem(ark).is_ok(), "{name} ARK");
            assert!(Certificate::from_pem(ask).is_ok(), "{name} ASK");
        }
    }

    #[test]
    fn empty_chains_are_errors_not_panics() {
        // x509-cert's `load_pem_chain` underflows on these (found by the fuzz smoke test).
        for input in [&b""[..], b"\n", b"\r\n\r\n"] {
            let e = parse_pem_chain(input).expect_err("empty");
            assert!(e.to_string().contains("no PEM certificate"), "{e}");
        }
    }
}
