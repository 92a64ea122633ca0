//! The Chrysalis enclave runtime: the process inside the confidential VM.
//!
//! Will own: the `TeeDevice` trait and its TDX (configfs-tsm, `/dev/tdx_guest`), SNP
//! (configfs-tsm, `/dev/sev-guest`) and simulated backends; HPKE and TLS keys born inside the VM
//! and bound into `report_data`; the measured configuration (RTMR3 / HOST_DATA); the GPU check;
//! and the sealed-prompt inference service. Not implemented yet: see the enclave issue.
#![forbid(unsafe_code)]
