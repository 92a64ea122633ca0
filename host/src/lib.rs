//! The Chrysalis host agent, run by datacenter operators.
//!
//! Will own: the fail-closed host configuration, the typed QEMU command builder (taking the same
//! `VmSpec` the measurement code takes), GPU preparation over sysfs, the VM lifecycle state
//! machine with QMP, the relay that carries only TLS and sealed bytes, and the attestation,
//! health and metrics endpoints. Not implemented yet: see the host-agent issue.
#![forbid(unsafe_code)]
