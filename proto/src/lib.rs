//! Chrysalis wire types (protobuf, prost) and the `Enclave` gRPC service (tonic).
//!
//! `Attest(nonce) -> EvidenceBundle`, `ListModels`, `Generate(SealedRequest) -> stream
//! SealedChunk` and `Health`, carried over gRPC on RA-TLS. The schema is
//! `proto/chrysalis.proto`. Wire types stay here, apart from the domain types in
//! `chrysalis-attestation`, which are built from them and validated once.
#![forbid(unsafe_code)]

/// Version 1 of the protocol (generated).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    tonic::include_proto!("chrysalis.v1");
}

pub mod binding;
pub mod guest;
pub mod seal;

pub use v1::*;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn bundle_round_trip_and_garbage_is_an_error() {
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

    #[test]
    fn unknown_platform_values_survive() {
        let b = EvidenceBundle {
            platform: 42,
            ..Default::default()
        };
        let d = EvidenceBundle::decode(b.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(d.platform, 42);
        assert!(Platform::try_from(d.platform).is_err());
    }
}
