//! The `report_data` binding (version 1): what ties the enclave's keys, its GPU evidence and a
//! client's nonce to the hardware report. The exact encoding is documented in
//! `docs/binding.md`; this module is its only implementation, used by the enclave to ask for
//! evidence and by clients to check it.

use sha2::{Digest, Sha256, Sha512};

use crate::v1::{GpuEvidence, GpuStatus};

/// The binding version this code implements.
pub const BINDING_VERSION: u32 = 1;

/// OID of the RA-TLS evidence extension, as arcs: a provisional private arc of this project
/// (`1.3.6.1.4.1.62830.1.1`), documented in docs/protocol.md. The extension is critical, and its
/// content is the protobuf `EvidenceBundle` (nonce empty) that binds the certificate's key.
pub const RATLS_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 62830, 1, 1];

/// The same OID in dotted form.
pub const RATLS_EXTENSION_OID_TEXT: &str = "1.3.6.1.4.1.62830.1.1";
/// Domain tag of binding version 1 (NUL-terminated).
pub const DOMAIN_TAG_V1: &[u8] = b"chrysalis/report-data/v1\0";
/// Shortest accepted client nonce, in bytes.
pub const MIN_NONCE_LEN: usize = 16;
/// Longest accepted client nonce, in bytes.
pub const MAX_NONCE_LEN: usize = 64;

/// The inputs of the binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingInputs<'a> {
    /// The HPKE public key prompts are sealed to (X25519, 32 bytes).
    pub hpke_public_key: &'a [u8],
    /// SHA-256 of the TLS certificate's SubjectPublicKeyInfo (DER).
    pub tls_spki_sha256: &'a [u8; 32],
    /// Digest of the GPU evidence ([`gpu_digest`]).
    pub gpu_digest: &'a [u8; 32],
    /// The client nonce; empty for the evidence cached for RA-TLS.
    pub nonce: &'a [u8],
}

fn put_len_prefixed(h: &mut Sha512, bytes: &[u8]) {
    // Lengths are bounded by the callers (keys 32 bytes, nonces <= 64), so u16 is enough.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    h.update(len.to_be_bytes());
    h.update(bytes);
}

/// `report_data` for binding version 1:
/// `SHA-512(DOMAIN_TAG_V1 ‖ u16be(len pk) ‖ pk ‖ tls_spki_sha256 ‖ gpu_digest ‖ u16be(len nonce) ‖ nonce)`.
pub fn report_data_v1(inputs: &BindingInputs<'_>) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(DOMAIN_TAG_V1);
    put_len_prefixed(&mut h, inputs.hpke_public_key);
    h.update(inputs.tls_spki_sha256);
    h.update(inputs.gpu_digest);
    put_len_prefixed(&mut h, inputs.nonce);
    h.finalize().into()
}

/// Digest of the GPU part of a bundle:
/// `SHA-256("chrysalis/gpu/v1\0" ‖ u32be(status) ‖ u32be(count) ‖ for each: u32be(len) ‖ protobuf(GpuEvidence))`.
/// A bundle that says "no GPU" has a digest of its own, so a verifier cannot be told after the
/// fact that a GPU was checked.
pub fn gpu_digest(status: GpuStatus, gpus: &[GpuEvidence]) -> [u8; 32] {
    use prost::Message;
    let mut h = Sha256::new();
    h.update(b"chrysalis/gpu/v1\0");
    h.update((status as i32 as u32).to_be_bytes());
    h.update(u32::try_from(gpus.len()).unwrap_or(u32::MAX).to_be_bytes());
    for g in gpus {
        let enc = g.encode_to_vec();
        h.update(u32::try_from(enc.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(&enc);
    }
    h.finalize().into()
}

/// The nonce each GPU report is fetched with:
/// `SHA-256("chrysalis/gpu-nonce/v1\0" ‖ hpke_public_key ‖ nonce)`, so GPU evidence is as fresh
/// as the CPU evidence and tied to the same keys.
pub fn gpu_nonce(nonce: &[u8], hpke_public_key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"chrysalis/gpu-nonce/v1\0");
    h.update(hpke_public_key);
    h.update(nonce);
    h.finalize().into()
}

/// Check a client nonce's length (empty is allowed: it asks for the cached evidence).
pub fn check_nonce(nonce: &[u8]) -> Result<(), String> {
    if nonce.is_empty() || (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len()) {
        Ok(())
    } else {
        Err(format!(
            "nonce must be empty or {MIN_NONCE_LEN} to {MAX_NONCE_LEN} bytes, got {}",
            nonce.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(
        pk: &'a [u8],
        nonce: &'a [u8],
        spki: &'a [u8; 32],
        gpu: &'a [u8; 32],
    ) -> BindingInputs<'a> {
        BindingInputs {
            hpke_public_key: pk,
            tls_spki_sha256: spki,
            gpu_digest: gpu,
            nonce,
        }
    }

    #[test]
    fn every_input_changes_the_binding() {
        let (pk, spki, gpu, nonce) = ([7u8; 32], [1u8; 32], [2u8; 32], [3u8; 16]);
        let base = report_data_v1(&inputs(&pk, &nonce, &spki, &gpu));
        assert_ne!(
            base,
            report_data_v1(&inputs(&[8u8; 32], &nonce, &spki, &gpu))
        );
        assert_ne!(base, report_data_v1(&inputs(&pk, &[4u8; 16], &spki, &gpu)));
        assert_ne!(base, report_data_v1(&inputs(&pk, &nonce, &[9u8; 32], &gpu)));
        assert_ne!(
            base,
            report_data_v1(&inputs(&pk, &nonce, &spki, &[9u8; 32]))
        );
        assert_ne!(base, report_data_v1(&inputs(&pk, &[], &spki, &gpu)));
        assert_eq!(base, report_data_v1(&inputs(&pk, &nonce, &spki, &gpu)));
    }

    #[test]
    fn known_answer_pins_the_documented_encoding() {
        // docs/binding.md: the same bytes hashed by hand.
        let (pk, spki, gpu, nonce) = ([0x11u8; 32], [0x22u8; 32], [0x33u8; 32], [0x44u8; 16]);
        let mut manual = Vec::new();
        manual.extend_from_slice(b"chrysalis/report-data/v1\0");
        manual.extend_from_slice(&[0, 32]);
        manual.extend_from_slice(&pk);
        manual.extend_from_slice(&spki);
        manual.extend_from_slice(&gpu);
        manual.extend_from_slice(&[0, 16]);
        manual.extend_from_slice(&nonce);
        let want: [u8; 64] = Sha512::digest(&manual).into();
        assert_eq!(report_data_v1(&inputs(&pk, &nonce, &spki, &gpu)), want);
    }

    #[test]
    fn gpu_digest_distinguishes_none_from_attested() {
        let none = gpu_digest(GpuStatus::None, &[]);
        assert_ne!(none, gpu_digest(GpuStatus::Attested, &[]));
        let g = GpuEvidence {
            name: "H100".into(),
            cc_mode: true,
            ..Default::default()
        };
        assert_ne!(
            gpu_digest(GpuStatus::Attested, std::slice::from_ref(&g)),
            gpu_digest(GpuStatus::Attested, &[])
        );
        let mut g2 = g.clone();
        g2.cc_mode = false;
        assert_ne!(
            gpu_digest(GpuStatus::Attested, &[g]),
            gpu_digest(GpuStatus::Attested, &[g2])
        );
    }

    #[test]
    fn nonce_lengths() {
        assert!(check_nonce(&[]).is_ok());
        assert!(check_nonce(&[0; 15]).is_err());
        assert!(check_nonce(&[0; 16]).is_ok());
        assert!(check_nonce(&[0; 64]).is_ok());
        assert!(check_nonce(&[0; 65]).is_err());
    }
}
