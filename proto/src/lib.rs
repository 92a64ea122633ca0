//! Chrysalis wire types (protobuf, prost).
//!
//! Will own the enclave protocol: `Attest(nonce) -> EvidenceBundle`, `ListModels`,
//! `Generate(SealedRequest) -> stream SealedChunk` and `Health`, carried over gRPC on RA-TLS.
//! Wire types stay here, apart from the domain types in `chrysalis-attestation`, which are built
//! from them with `TryFrom` and validated once.
#![forbid(unsafe_code)]

/// Which TEE produced the evidence in a bundle. Unknown values survive a round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Platform {
    /// Not set: always rejected.
    Unspecified = 0,
    /// Intel TDX.
    Tdx = 1,
    /// AMD SEV-SNP.
    Snp = 2,
    /// The development simulator (not confidential).
    Simulated = 3,
}

/// Evidence with its endorsements, as the enclave and host agent serve it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EvidenceBundle {
    /// Bundle version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Platform.
    #[prost(enumeration = "Platform", tag = "2")]
    pub platform: i32,
    /// Raw quote or report.
    #[prost(bytes = "vec", tag = "3")]
    pub evidence: Vec<u8>,
    /// Intel collateral JSON (PCS / dcap-qvl format), when the host has cached it.
    #[prost(bytes = "vec", tag = "4")]
    pub tdx_collateral_json: Vec<u8>,
    /// VCEK or VLEK, DER.
    #[prost(bytes = "vec", tag = "5")]
    pub vcek_der: Vec<u8>,
    /// ASK/ARK chain, PEM.
    #[prost(bytes = "vec", tag = "6")]
    pub cert_chain_pem: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn bundle_round_trip() {
        let b = EvidenceBundle {
            version: 1,
            platform: Platform::Snp as i32,
            evidence: vec![1, 2, 3],
            ..Default::default()
        };
        let bytes = b.encode_to_vec();
        assert_eq!(EvidenceBundle::decode(bytes.as_slice()).ok(), Some(b));
        assert!(EvidenceBundle::decode(&[0xff, 0xff][..]).is_err());
    }
}
