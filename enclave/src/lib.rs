//! The Chrysalis enclave runtime: the process inside the confidential VM.
//!
//! - [`tee`]: the `TeeDevice` trait and its TDX (configfs-tsm, `/dev/tdx_guest` + QGS), SNP
//!   (configfs-tsm, `/dev/sev-guest`) and simulated backends.
//! - [`gpu`]: the `GpuDevice` trait; NVIDIA confidential-computing GPUs through NVML.
//! - [`identity`]: HPKE and TLS keys born inside, bound into `report_data`; the measured
//!   configuration; cached and nonce-fresh evidence; the RA-TLS certificate.
//! - [`server`]: the sealed-prompt gRPC service. [`generate`]: the engine alone.
//!
//! - [`guest`]: the enclave as the image's init (PID 1): mounts, modules, network, model disk.
//!
//! `unsafe` is denied everywhere except [`tee::ioctl`] (the TDX guest ioctl) and [`guest::sys`]
//! (mount, finit_module, interface configuration, power-off).
#![deny(unsafe_code)]

pub mod generate;
pub mod gpu;
pub mod guest;
pub mod identity;
pub mod serve;
pub mod server;
pub mod tee;

/// The system clock, as the verifiers' explicit time parameter.
pub fn system_now() -> chrysalis_attestation::Timestamp {
    chrysalis_attestation::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}
