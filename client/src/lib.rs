//! The Chrysalis client: the SDK developers and auditors use, behind the `chrysalis` CLI.
//!
//! Today it owns evidence loading (raw quote/report as binary or hex, or our evidence bundle),
//! endorsement collateral (Intel PCS/PCCS, AMD KDS, an on-disk cache with expiry, fully offline
//! from files) and the verdict output of `chrysalis verify`. It owns the attested, sealed
//! connection to an enclave (`remote`) and the OpenAI-compatible gateway (`gateway`).
#![forbid(unsafe_code)]

pub mod chat;
pub mod collateral;
pub mod gateway;
pub mod inputs;
pub mod remote;
pub mod report;
