//! NVIDIA GPU attestation (Hopper confidential computing): the report NVML returns, its
//! signature, the device certificate chain up to NVIDIA's Device Identity CA, and the nonce.
//!
//! The report is an SPDM 1.1 `GET_MEASUREMENTS` request (37 bytes: version, code `0xE0`,
//! attributes, operation, the requester's 32-byte nonce, slot) followed by the GPU's
//! `MEASUREMENTS` response (version, code `0x60`, block count, a 24-bit record length, the
//! measurement blocks, the responder's nonce, opaque data, and an ECDSA P-384 signature, raw
//! `r ‖ s`, over SHA-384 of everything before it: request and response).
//!
//! What is checked here: the framing, the signature under the leaf certificate's key, every link
//! of the chain (ECDSA P-384 with SHA-384 only, names chained, validity at the given time), that
//! the chain ends at the pinned NVIDIA root, that the firmware identity the GPU reports (opaque
//! `FWID`) equals the one its attestation certificate was issued for, and that the request
//! carried the caller's nonce. Not checked (it needs NVIDIA's online services): OCSP revocation of
//! the device certificates, and the measurements against NVIDIA's reference integrity manifests.

use p384::ecdsa::signature::Verifier as _;
use p384::ecdsa::{Signature, VerifyingKey};
use x509_cert::der::{DecodePem as _, Encode as _};
use x509_cert::Certificate;

use crate::error::{ParseError, PolicyViolation, VerifyError};
use crate::policy::GpuRules;
use crate::time::Timestamp;

/// NVIDIA's Device Identity CA (self-signed, ECDSA P-384), the root of every GPU's device
/// certificate chain. From PyPI `nv-local-gpu-verifier` 2.7.3, `verifier/certs/verifier_device_root.pem`.
pub const NVIDIA_DEVICE_IDENTITY_CA_PEM: &str =
    include_str!("../roots/nvidia-device-identity-ca.pem");

const REQUEST_LEN: usize = 37;
const SIGNATURE_LEN: usize = 96;
const SPDM_1_1: u8 = 0x11;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
/// DER of `SEQUENCE { OID sha384, OCTET STRING (48) }` as the leaf certificate's TCB info
/// extension (2.23.133.5.4.1) writes the firmware identity.
const FWID_SHA384_DER: [u8; 15] = [
    0x30, 0x3d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x04, 0x30,
];
const TCB_INFO_OID: &str = "2.23.133.5.4.1";

/// Opaque-data field ids (NVIDIA's SPDM opaque data).
pub mod opaque_id {
    /// Driver version, NUL-terminated text.
    pub const DRIVER_VERSION: u16 = 3;
    /// VBIOS version, 8 bytes.
    pub const VBIOS_VERSION: u16 = 6;
    /// Chip SKU, text.
    pub const CHIP_SKU: u16 = 15;
    /// Project, text.
    pub const PROJECT: u16 = 17;
    /// Project SKU, text.
    pub const PROJECT_SKU: u16 = 18;
    /// Firmware identity (SHA-384) the attestation key was issued for.
    pub const FWID: u16 = 20;
}

/// One SPDM measurement block in DMTF layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// Measurement index (1-based).
    pub index: u8,
    /// DMTF value type.
    pub value_type: u8,
    /// The value (a SHA-384 digest on Hopper).
    pub value: Vec<u8>,
}

/// One opaque-data field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueField {
    /// Field id (see [`opaque_id`]).
    pub id: u16,
    /// Raw value.
    pub value: Vec<u8>,
}

/// A parsed, unverified GPU attestation report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReport {
    raw: Vec<u8>,
    /// The nonce the requester sent.
    pub request_nonce: [u8; 32],
    /// The certificate slot the requester asked to sign with.
    pub slot: u8,
    /// Measurement blocks.
    pub measurements: Vec<MeasurementBlock>,
    /// The GPU's own nonce.
    pub responder_nonce: [u8; 32],
    /// Opaque data fields, in order.
    pub opaque: Vec<OpaqueField>,
    signature: [u8; SIGNATURE_LEN],
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.pos.saturating_add(n);
        let s = self.bytes.get(self.pos..end).ok_or(ParseError::Truncated {
            what: self.what,
            need: end,
            have: self.bytes.len(),
        })?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u24(&mut self) -> Result<usize, ParseError> {
        let [a, b, c] = self.array()?;
        Ok(usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16)
    }
}

fn expect(what: &'static str, field: &str, got: u8, want: u8) -> Result<(), ParseError> {
    if got == want {
        Ok(())
    } else {
        Err(ParseError::malformed(
            what,
            format!("{field} is {got:#04x}, expected {want:#04x}"),
        ))
    }
}

impl GpuReport {
    /// Parse the report bytes NVML returns (`nvmlDeviceGetConfComputeGpuAttestationReport`).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        const WHAT: &str = "GPU attestation report";
        let mut r = Reader {
            bytes,
            pos: 0,
            what: WHAT,
        };
        expect(WHAT, "request SPDM version", r.u8()?, SPDM_1_1)?;
        expect(WHAT, "request code", r.u8()?, GET_MEASUREMENTS)?;
        let attributes = r.u8()?;
        if attributes & 1 == 0 {
            return Err(ParseError::malformed(
                WHAT,
                "the request did not ask for a signature",
            ));
        }
        let _operation = r.u8()?;
        let request_nonce = r.array::<32>()?;
        let slot = r.u8()?;
        debug_assert_eq!(r.pos, REQUEST_LEN);
        expect(WHAT, "response SPDM version", r.u8()?, SPDM_1_1)?;
        expect(WHAT, "response code", r.u8()?, MEASUREMENTS)?;
        let _param1 = r.u8()?;
        let _param2 = r.u8()?;
        let blocks = r.u8()?;
        let record_len = r.u24()?;
        let record = r.take(record_len)?;
        let measurements = parse_blocks(record, blocks)?;
        let responder_nonce = r.array::<32>()?;
        let opaque_len = usize::from(r.u16()?);
        let opaque = parse_opaque(r.take(opaque_len)?)?;
        let signature = r.array::<SIGNATURE_LEN>()?;
        if r.pos != bytes.len() {
            return Err(ParseError::TrailingBytes {
                what: WHAT,
                extra: bytes.len() - r.pos,
            });
        }
        Ok(Self {
            raw: bytes.to_vec(),
            request_nonce,
            slot,
            measurements,
            responder_nonce,
            opaque,
            signature,
        })
    }

    /// The bytes the signature covers: request and response up to the signature.
    fn signed_bytes(&self) -> &[u8] {
        self.raw
            .get(..self.raw.len().saturating_sub(SIGNATURE_LEN))
            .unwrap_or_default()
    }

    /// An opaque field's value.
    pub fn opaque_field(&self, id: u16) -> Option<&[u8]> {
        self.opaque
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.value.as_slice())
    }

    fn opaque_text(&self, id: u16) -> Option<String> {
        let v = self.opaque_field(id)?;
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        std::str::from_utf8(v.get(..end)?).ok().map(str::to_owned)
    }

    /// The driver version the GPU reports (e.g. `550.90.07`).
    pub fn driver_version(&self) -> Option<String> {
        self.opaque_text(opaque_id::DRIVER_VERSION)
    }

    /// The VBIOS version, in NVIDIA's notation (e.g. `96.00.9f.00.01`).
    pub fn vbios_version(&self) -> Option<String> {
        let v: [u8; 8] = self
            .opaque_field(opaque_id::VBIOS_VERSION)?
            .try_into()
            .ok()?;
        Some(format!(
            "{:02x}.{:02x}.{:02x}.{:02x}.{:02x}",
            v[3], v[2], v[1], v[0], v[4]
        ))
    }

    /// Project, project SKU and chip SKU (e.g. `1010`, `0200`, `882`).
    pub fn board(&self) -> (Option<String>, Option<String>, Option<String>) {
        (
            self.opaque_text(opaque_id::PROJECT),
            self.opaque_text(opaque_id::PROJECT_SKU),
            self.opaque_text(opaque_id::CHIP_SKU),
        )
    }
}

fn parse_blocks(record: &[u8], count: u8) -> Result<Vec<MeasurementBlock>, ParseError> {
    const WHAT: &str = "GPU measurement record";
    let mut r = Reader {
        bytes: record,
        pos: 0,
        what: WHAT,
    };
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let index = r.u8()?;
        expect(WHAT, "measurement specification", r.u8()?, 1)?;
        let size = usize::from(r.u16()?);
        let mut m = Reader {
            bytes: r.take(size)?,
            pos: 0,
            what: WHAT,
        };
        let value_type = m.u8()?;
        let value_len = usize::from(m.u16()?);
        let value = m.take(value_len)?.to_vec();
        if m.pos != size {
            return Err(ParseError::malformed(
                WHAT,
                format!("block {index}: size {size} but value ends at {}", m.pos),
            ));
        }
        out.push(MeasurementBlock {
            index,
            value_type,
            value,
        });
    }
    if r.pos != record.len() {
        return Err(ParseError::TrailingBytes {
            what: WHAT,
            extra: record.len() - r.pos,
        });
    }
    Ok(out)
}

fn parse_opaque(data: &[u8]) -> Result<Vec<OpaqueField>, ParseError> {
    let mut r = Reader {
        bytes: data,
        pos: 0,
        what: "GPU opaque data",
    };
    let mut out = Vec::new();
    while r.pos < data.len() {
        let id = r.u16()?;
        let len = usize::from(r.u16()?);
        out.push(OpaqueField {
            id,
            value: r.take(len)?.to_vec(),
        });
    }
    Ok(out)
}

/// A GPU report whose signature, chain and nonce verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGpu {
    /// The report.
    pub report: GpuReport,
    /// Subject of the attestation (leaf) certificate.
    pub leaf_subject: String,
    /// Firmware identity the GPU reports and its certificate was issued for.
    pub fwid: [u8; 48],
}

fn chain_error(m: impl Into<String>) -> VerifyError {
    VerifyError::CertificateChain(m.into())
}

fn verifying_key(cert: &Certificate) -> Result<VerifyingKey, VerifyError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).map_err(|e| {
        chain_error(format!(
            "{}: not an ECDSA P-384 key: {e}",
            cert.tbs_certificate.subject
        ))
    })
}

/// `child` is signed by `parent` with ECDSA P-384 / SHA-384 and names it as its issuer.
fn check_link(child: &Certificate, parent: &Certificate) -> Result<(), VerifyError> {
    const ECDSA_WITH_SHA384: &str = "1.2.840.10045.4.3.3";
    let subject = child.tbs_certificate.subject.to_string();
    if child.tbs_certificate.issuer != parent.tbs_certificate.subject {
        return Err(chain_error(format!(
            "{subject} is issued by {}, not by {}",
            child.tbs_certificate.issuer, parent.tbs_certificate.subject
        )));
    }
    if child.signature_algorithm.oid.to_string() != ECDSA_WITH_SHA384 {
        return Err(chain_error(format!(
            "{subject}: signature algorithm {} (expected ecdsa-with-SHA384)",
            child.signature_algorithm.oid
        )));
    }
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|e| chain_error(format!("{subject}: {e}")))?;
    let sig = child
        .signature
        .as_bytes()
        .ok_or_else(|| chain_error(format!("{subject}: signature is not whole bytes")))
        .and_then(|b| {
            Signature::from_der(b).map_err(|e| chain_error(format!("{subject}: signature: {e}")))
        })?;
    verifying_key(parent)?
        .verify(&tbs, &sig)
        .map_err(|_| chain_error(format!("{subject}: signature does not verify")))
}

/// The firmware identity in the leaf certificate's TCB info extension.
fn cert_fwid(leaf: &Certificate) -> Option<[u8; 48]> {
    let ext = leaf
        .tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == TCB_INFO_OID)?;
    let bytes = ext.extn_value.as_bytes();
    let at = bytes
        .windows(FWID_SHA384_DER.len())
        .position(|w| w == FWID_SHA384_DER)?;
    let start = at + FWID_SHA384_DER.len();
    bytes.get(start..start + 48)?.try_into().ok()
}

/// Verify a GPU's report under its certificate chain (PEM, leaf first, as NVML returns it) at
/// `now`, and that it answers `expected_nonce`.
pub fn verify_gpu_report(
    report: &[u8],
    cert_chain_pem: &[u8],
    expected_nonce: &[u8; 32],
    now: Timestamp,
) -> Result<VerifiedGpu, VerifyError> {
    let report = GpuReport::parse(report)?;
    let chain = crate::snp::parse_pem_chain(cert_chain_pem)?;
    let root = Certificate::from_pem(NVIDIA_DEVICE_IDENTITY_CA_PEM.as_bytes())
        .map_err(|e| chain_error(format!("built-in NVIDIA root: {e}")))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| chain_error("empty GPU certificate chain"))?;
    for cert in &chain {
        crate::snp::check_validity(cert, now)?;
    }
    for (child, parent) in chain.iter().zip(rest) {
        check_link(child, parent)?;
    }
    // The chain must end at NVIDIA's root: either with the root itself or with a certificate
    // the root signed.
    let last = chain.last().unwrap_or(leaf);
    if last != &root {
        check_link(last, &root).map_err(|_| VerifyError::UntrustedRoot { vendor: "NVIDIA" })?;
    }
    let sig = Signature::from_slice(&report.signature)
        .map_err(|e| VerifyError::Signature(format!("GPU report: {e}")))?;
    verifying_key(leaf)?
        .verify(report.signed_bytes(), &sig)
        .map_err(|_| {
            VerifyError::Signature(
                "the GPU report's signature does not verify under its attestation certificate"
                    .into(),
            )
        })?;
    let fwid = cert_fwid(leaf).ok_or_else(|| {
        chain_error("the GPU attestation certificate names no SHA-384 firmware identity")
    })?;
    if report.opaque_field(opaque_id::FWID) != Some(fwid.as_slice()) {
        return Err(VerifyError::Signature(
            "the GPU reports another firmware identity than its attestation certificate's".into(),
        ));
    }
    if &report.request_nonce != expected_nonce {
        return Err(VerifyError::Signature(format!(
            "the GPU report answers nonce {}, not {} (a replayed report?)",
            hex::encode(report.request_nonce),
            hex::encode(expected_nonce)
        )));
    }
    Ok(VerifiedGpu {
        report,
        leaf_subject: leaf.tbs_certificate.subject.to_string(),
        fwid,
    })
}

/// Apply a policy's `[gpu]` rules to the GPUs a peer attested (all already verified).
pub fn check_gpu_rules(gpus: &[VerifiedGpu], rules: &GpuRules) -> Result<(), VerifyError> {
    if rules.required && gpus.is_empty() {
        return Err(
            PolicyViolation::AttributeRequired("an attested GPU (policy gpu.required)").into(),
        );
    }
    for g in gpus {
        let checks = [
            (
                "GPU driver version",
                &rules.driver_versions,
                g.report.driver_version(),
            ),
            (
                "GPU VBIOS version",
                &rules.vbios_versions,
                g.report.vbios_version(),
            ),
        ];
        for (field, allowed, value) in checks {
            let Some(allowed) = allowed else { continue };
            let value = value.unwrap_or_else(|| "(not reported)".into());
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&value)) {
                return Err(PolicyViolation::NotAllowed { field, value }.into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (Vec<u8>, Vec<u8>) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/nvidia-h100/");
        let hex_text = std::fs::read_to_string(format!("{dir}report.hex")).expect("report");
        let report = hex::decode(hex_text.trim()).expect("hex");
        let chain = std::fs::read(format!("{dir}cert-chain.pem")).expect("chain");
        (report, chain)
    }

    const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

    fn nonce() -> [u8; 32] {
        crate::evidence::hex_array("nonce", NONCE).expect("nonce")
    }

    fn at() -> Timestamp {
        Timestamp::parse("2026-11-22T00:00:00Z").expect("time")
    }

    #[test]
    fn real_h100_report_verifies() {
        let (report, chain) = fixture();
        let v = verify_gpu_report(&report, &chain, &nonce(), at()).expect("verifies");
        assert_eq!(v.report.measurements.len(), 64);
        assert!(v.report.measurements.iter().all(|m| m.value.len() == 48));
        assert_eq!(v.report.driver_version().as_deref(), Some("550.90.07"));
        assert_eq!(v.report.vbios_version().as_deref(), Some("96.00.9f.00.01"));
        let (project, sku, chip) = v.report.board();
        assert_eq!(
            (project.as_deref(), sku.as_deref(), chip.as_deref()),
            (Some("1010"), Some("0200"), Some("882"))
        );
        assert!(
            v.leaf_subject.contains("GH100 A01 GSP FMC LF"),
            "{}",
            v.leaf_subject
        );
        assert_eq!(hex::encode(&v.fwid[..4]), "f5c384ae");
    }

    #[test]
    fn another_nonce_is_refused() {
        let (report, chain) = fixture();
        let e = verify_gpu_report(&report, &chain, &[7; 32], at()).expect_err("nonce");
        assert!(e.to_string().contains("replayed"), "{e}");
    }

    #[test]
    fn any_changed_byte_breaks_the_signature() {
        let (report, chain) = fixture();
        // A measurement byte, the request nonce, an opaque byte, the signature.
        for at_byte in [100usize, 10, report.len() - 200, report.len() - 1] {
            let mut bad = report.clone();
            bad[at_byte] ^= 1;
            // Ask for the nonce the tampered report carries, so only the signature can fail.
            let want = GpuReport::parse(&bad).expect("parses").request_nonce;
            let e = verify_gpu_report(&bad, &chain, &want, at()).expect_err("tampered");
            assert!(
                matches!(e, VerifyError::Signature(_)),
                "byte {at_byte}: {e}"
            );
        }
    }

    #[test]
    fn chain_must_reach_the_nvidia_root() {
        let (report, chain) = fixture();
        let text = String::from_utf8(chain).expect("utf8");
        let certs: Vec<&str> = text
            .split_inclusive("-----END CERTIFICATE-----")
            .filter(|c| c.contains("BEGIN"))
            .collect();
        assert_eq!(certs.len(), 5);
        // Without the root and the identity certificate it signed, the chain stops at an
        // intermediate that the root did not sign.
        let short = certs[..3].concat();
        let e = verify_gpu_report(&report, short.as_bytes(), &nonce(), at()).expect_err("short");
        assert!(
            matches!(e, VerifyError::UntrustedRoot { vendor: "NVIDIA" }),
            "{e}"
        );
        // Without the root itself, the last certificate is signed by it: accepted.
        let no_root = certs[..4].concat();
        verify_gpu_report(&report, no_root.as_bytes(), &nonce(), at()).expect("root implied");
        // Out of order: names do not chain.
        let swapped = [certs[1], certs[0], certs[2], certs[3], certs[4]].concat();
        let e = verify_gpu_report(&report, swapped.as_bytes(), &nonce(), at()).expect_err("order");
        assert!(matches!(e, VerifyError::CertificateChain(_)), "{e}");
        // Another vendor's chain (AMD's) is refused.
        let amd = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/sev/cert_chain_milan"
        ))
        .expect("AMD chain fixture");
        assert!(verify_gpu_report(&report, &amd, &nonce(), at()).is_err());
    }

    #[test]
    fn gpu_rules_apply_to_verified_gpus() {
        let (report, chain) = fixture();
        let v = verify_gpu_report(&report, &chain, &nonce(), at()).expect("verifies");
        let policy = |text: &str| {
            crate::Policy::from_toml(&format!(
                "version = 1\nplatforms = [\"simulated\"]\n[simulated]\nmeasurement = [\"{}\"]\n{text}",
                "00".repeat(48)
            ))
        };
        let none = policy("").expect("policy");
        check_gpu_rules(&[], none.gpu()).expect("no GPU is fine without [gpu]");
        let required = policy("[gpu]\nrequired = true").expect("policy");
        assert!(check_gpu_rules(&[], required.gpu()).is_err());
        check_gpu_rules(std::slice::from_ref(&v), required.gpu()).expect("one GPU");
        let pinned = policy(
            "[gpu]\nrequired = true\ndriver_versions = [\"550.90.07\"]\nvbios_versions = [\"96.00.9F.00.01\"]",
        )
        .expect("policy");
        check_gpu_rules(std::slice::from_ref(&v), pinned.gpu()).expect("allowed versions");
        let other =
            policy("[gpu]\nrequired = true\ndriver_versions = [\"570.1\"]").expect("policy");
        let e = check_gpu_rules(&[v], other.gpu()).expect_err("driver");
        assert!(e.to_string().contains("550.90.07"), "{e}");
        assert!(policy("[gpu]\ndriver_versions = [\"550.90.07\"]").is_err());
        assert!(policy("[gpu]\nrequired = true\nvbios_versions = []").is_err());
        assert!(policy("[gpu]\nrequird = true").is_err());
    }

    #[test]
    fn certificates_are_checked_at_the_given_time() {
        let (report, chain) = fixture();
        let before = Timestamp::parse("2020-01-01T00:00:00Z").expect("time");
        let e = verify_gpu_report(&report, &chain, &nonce(), before).expect_err("not yet valid");
        assert!(matches!(e, VerifyError::CertificateNotValid { .. }), "{e}");
    }

    #[test]
    fn malformed_reports_are_errors_not_panics() {
        let (report, chain) = fixture();
        for len in [
            0,
            1,
            36,
            37,
            40,
            45,
            3000,
            report.len() - 97,
            report.len() - 1,
        ] {
            assert!(GpuReport::parse(&report[..len]).is_err(), "length {len}");
            assert!(verify_gpu_report(&report[..len], &chain, &nonce(), at()).is_err());
        }
        let mut longer = report.clone();
        longer.push(0);
        assert!(matches!(
            GpuReport::parse(&longer),
            Err(ParseError::TrailingBytes { .. })
        ));
        let mut unsigned = report.clone();
        unsigned[2] = 0;
        assert!(GpuReport::parse(&unsigned).is_err());
        let mut wrong_code = report;
        wrong_code[REQUEST_LEN + 1] = 0x61;
        assert!(GpuReport::parse(&wrong_code).is_err());
        assert!(verify_gpu_report(&[], b"", &nonce(), at()).is_err());
    }
}
