//! Evidence of the development simulator. NOT CONFIDENTIAL.
//!
//! The simulator lets the whole system run on machines without TDX or SEV-SNP. Its evidence must
//! never pass as real, so:
//! - it has its own format, starting with the magic `CHRYSALIS-SIM-EV` (no TDX or SNP parser
//!   accepts it, and it accepts neither of theirs);
//! - it is signed with the simulator root key, an Ed25519 key derived from a published seed that
//!   no production trust store holds (anyone can forge it: it proves nothing about the host);
//! - the verifier rejects it under every policy that does not name the `simulated` platform.
//!
//! Layout (little-endian, 248 bytes):
//! `magic[16] ‖ version u16 (=1) ‖ flags u16 (bit 0 debug) ‖ reserved u32 (=0) ‖
//! measurement[48] ‖ config_digest[48] ‖ report_data[64] ‖ signature[64]`, where the Ed25519
//! signature covers every byte before it.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256, Sha384};

use crate::error::{ParseError, VerifyError};

/// Magic at the start of simulated evidence.
pub const MAGIC: &[u8; 16] = b"CHRYSALIS-SIM-EV";
/// Total length of simulated evidence.
pub const LEN: usize = 248;
const SIGNED_LEN: usize = LEN - 64;
/// Flags bit 0: the simulated guest claims to be debuggable.
pub const FLAG_DEBUG: u16 = 1;
/// Public seed text of the simulator root key. Publishing it is the point: the key proves nothing.
const ROOT_SEED_TEXT: &[u8] =
    b"chrysalis simulated TEE root key v1 -- NOT CONFIDENTIAL, NEVER TRUST IN PRODUCTION";

/// The simulator root key pair. Its private half is public knowledge by design.
pub fn root_signing_key() -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(ROOT_SEED_TEXT).into();
    SigningKey::from_bytes(&seed)
}

/// The simulator root public key the verifier accepts for simulated evidence.
pub fn root_verifying_key() -> VerifyingKey {
    root_signing_key().verifying_key()
}

/// Domain tag of the simulated launch measurement of a VM image.
const IMAGE_MEASUREMENT_TAG: &[u8] = b"chrysalis simulated image measurement v1\0";

/// The simulated analogue of a launch measurement for an enclave booted from an image: SHA-384
/// over a domain tag, the SHA-384 of the enclave binary and the kernel command line (with OVMF's
/// `initrd=initrd` token removed, so the value does not depend on the firmware). The image
/// manifest predicts it; the enclave computes it when it runs as the guest's init. Like all
/// simulated evidence it proves nothing: anyone can sign it.
pub fn image_measurement(enclave_sha384: &[u8; 48], kernel_cmdline: &str) -> [u8; 48] {
    let cmdline = normalize_cmdline(kernel_cmdline);
    let mut h = Sha384::new();
    h.update(IMAGE_MEASUREMENT_TAG);
    h.update(enclave_sha384);
    h.update((cmdline.len() as u64).to_le_bytes());
    h.update(cmdline.as_bytes());
    h.finalize().into()
}

/// The command line as the image recipe wrote it: the newline `/proc/cmdline` ends with and
/// OVMF's `initrd=initrd` token (appended or prepended) removed; nothing else is changed, so a
/// one-byte change anywhere else changes the measurement.
pub fn normalize_cmdline(cmdline: &str) -> &str {
    let c = cmdline.strip_suffix('\n').unwrap_or(cmdline);
    if c == "initrd=initrd" {
        return "";
    }
    c.strip_suffix(" initrd=initrd")
        .or_else(|| c.strip_prefix("initrd=initrd "))
        .unwrap_or(c)
}

/// The values a simulated report carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedClaims {
    /// Launch measurement analogue (digest of the enclave binary and image).
    pub measurement: [u8; 48],
    /// Digest of the measured configuration (model, settings).
    pub config_digest: [u8; 48],
    /// Caller-chosen data bound into the report (key binding).
    pub report_data: [u8; 64],
    /// Whether the simulated guest claims to be debuggable.
    pub debug: bool,
}

/// Decoded simulated evidence.
#[derive(Clone, Debug)]
pub struct SimulatedEvidence {
    raw: Vec<u8>,
    pub(crate) claims: SimulatedClaims,
}

impl SimulatedEvidence {
    /// Produce signed simulated evidence (used by the enclave's simulated backend).
    pub fn sign(claims: &SimulatedClaims, key: &SigningKey) -> Self {
        let mut raw = Vec::with_capacity(LEN);
        raw.extend_from_slice(MAGIC);
        raw.extend_from_slice(&1u16.to_le_bytes());
        raw.extend_from_slice(&(if claims.debug { FLAG_DEBUG } else { 0 }).to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&claims.measurement);
        raw.extend_from_slice(&claims.config_digest);
        raw.extend_from_slice(&claims.report_data);
        let signature = key.sign(&raw);
        raw.extend_from_slice(&signature.to_bytes());
        SimulatedEvidence {
            raw,
            claims: claims.clone(),
        }
    }

    /// Decode simulated evidence; exact length, version 1, reserved zero.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, ParseError> {
        const WHAT: &str = "simulated evidence";
        if raw.len() < LEN {
            return Err(ParseError::Truncated {
                what: WHAT,
                need: LEN,
                have: raw.len(),
            });
        }
        if raw.len() > LEN {
            return Err(ParseError::TrailingBytes {
                what: WHAT,
                extra: raw.len() - LEN,
            });
        }
        let mut r = crate::bundle::Reader::new(raw);
        let magic: [u8; 16] = r.array()?;
        if &magic != MAGIC {
            return Err(ParseError::malformed(WHAT, "bad magic"));
        }
        let version = u16::from_le_bytes(r.array()?);
        if version != 1 {
            return Err(ParseError::UnsupportedVersion {
                what: WHAT,
                version: version.into(),
            });
        }
        let flags = u16::from_le_bytes(r.array()?);
        if flags & !FLAG_DEBUG != 0 {
            return Err(ParseError::malformed(
                WHAT,
                format!("unknown flags {flags:#x}"),
            ));
        }
        let reserved = u32::from_le_bytes(r.array()?);
        if reserved != 0 {
            return Err(ParseError::malformed(WHAT, "reserved bytes must be zero"));
        }
        let claims = SimulatedClaims {
            measurement: r.array()?,
            config_digest: r.array()?,
            report_data: r.array()?,
            debug: flags & FLAG_DEBUG != 0,
        };
        Ok(SimulatedEvidence {
            raw: raw.to_vec(),
            claims,
        })
    }

    /// The encoded evidence.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Check the signature against the simulator root key.
    pub(crate) fn verify_signature(&self) -> Result<(), VerifyError> {
        let (signed, sig) = self.raw.split_at(SIGNED_LEN);
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| VerifyError::Signature("bad signature length".into()))?;
        root_verifying_key()
            .verify(signed, &Signature::from_bytes(&sig))
            .map_err(|_| {
                VerifyError::Signature(
                    "simulated evidence is not signed by the simulator root key".into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> SimulatedClaims {
        SimulatedClaims {
            measurement: [1; 48],
            config_digest: [2; 48],
            report_data: [3; 64],
            debug: false,
        }
    }

    #[test]
    fn image_measurement_covers_every_byte_of_the_command_line() {
        let exe = [7u8; 48];
        let base = image_measurement(&exe, "console=ttyS0 panic=-1");
        // What the guest reads: /proc/cmdline with OVMF's token and a newline.
        assert_eq!(
            image_measurement(&exe, "console=ttyS0 panic=-1 initrd=initrd\n"),
            base
        );
        assert_eq!(
            image_measurement(&exe, "initrd=initrd console=ttyS0 panic=-1"),
            base
        );
        for changed in [
            "console=ttyS0 panic=-2",
            "console=ttyS0  panic=-1",
            "console=ttyS0 panic=-1 ",
            "console=ttyS1 panic=-1",
        ] {
            assert_ne!(image_measurement(&exe, changed), base, "{changed:?}");
        }
        assert_ne!(image_measurement(&[8; 48], "console=ttyS0 panic=-1"), base);
    }

    #[test]
    fn round_trip_and_signature() {
        let ev = SimulatedEvidence::sign(&claims(), &root_signing_key());
        assert_eq!(ev.raw().len(), LEN);
        let parsed = SimulatedEvidence::from_bytes(ev.raw()).expect("parse");
        assert_eq!(parsed.claims, claims());
        assert!(parsed.verify_signature().is_ok());
    }

    #[test]
    fn other_key_is_rejected() {
        let other = SigningKey::from_bytes(&[9; 32]);
        let ev = SimulatedEvidence::sign(&claims(), &other);
        let parsed = SimulatedEvidence::from_bytes(ev.raw()).expect("parse");
        assert!(matches!(
            parsed.verify_signature(),
            Err(VerifyError::Signature(_))
        ));
    }
}
