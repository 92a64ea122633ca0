//! Chrysalis attestation: parse, verify and (later) measure confidential-computing evidence.
//!
//! This crate is pure: it reads no clock and touches no network, and apart from [`measure`]
//! reading the files a `VmSpec` names, it opens no file. Every input, including "now", is a
//! parameter, so the same evidence always gives the same verdict.
//!
//! Specifications implemented (through the crates named, which we wrap rather than copy):
//! - Intel TDX DCAP quotes v4 and v5 (TD 1.0, TD 1.5 and TD 1.5 "ex" bodies), verified with
//!   `dcap-qvl`: PCK chain to Intel's SGX root CA, QE report signature and its binding to the
//!   attestation key, quote signature, TCB info and QE identity collateral, CRLs, TCB status.
//! - AMD SEV-SNP ATTESTATION_REPORT v2, v3 and v5 (SEV-SNP firmware ABI, pub. 56860), decoded and
//!   verified with `sev`: ARK self-signature, ASK (or ASVK), VCEK (or VLEK), report signature; plus
//!   our own checks of the VCEK TCB extensions against REPORTED_TCB and of hwID against CHIP_ID
//!   (VCEK certificate and KDS interface spec, pub. 57230), which `sev` does not make.
//! - [`simulated`]: the development backend's evidence. It has its own format and its own root
//!   key, and no policy accepts it unless the policy names the `simulated` platform.
//!
//! The entry point is [`Verifier::verify`]. Only its success type, [`VerifiedEvidence`], exposes
//! measurements and `report_data`: code that decides whether to send a prompt cannot read them
//! from evidence that was not verified.
//!
//! What a successful verification proves: the evidence was produced by genuine hardware of the
//! named vendor (or by the simulator, for policies that name it), its TCB meets the policy, and
//! the measured values are those printed. It does not prove that those values belong to code you
//! trust: that is what the measurement allowlists in a [`Policy`] are for.
#![forbid(unsafe_code)]

pub mod bundle;
mod bytes;
pub mod cache;
pub mod error;
pub mod evidence;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod measure;
pub mod nvgpu;
pub mod policy;
pub mod simulated;
pub mod snp;
pub mod tdx;
pub mod time;
pub mod verify;

pub use bundle::EvidenceBundle;
pub use cache::VerificationCache;
pub use error::{ParseError, PolicyViolation, VerifyError};
pub use evidence::{Evidence, Platform};
pub use policy::Policy;
pub use time::Timestamp;
pub use verify::{Endorsements, Measurements, TcbSummary, VerifiedEvidence, Verifier};
