//! The guest configuration an image carries at `/etc/chrysalis/guest.json`, written by the image
//! builder and read by the enclave when it runs as the guest's init (PID 1).
//!
//! It lives in the initramfs, so it is measured with it (TDX RTMR2, SNP kernel hashes): the
//! modules loaded, the network set up, the model disk's expected digest and the enclave's
//! arguments are all part of what a verifier pins.

use serde::{Deserialize, Serialize};

/// Format tag of [`GuestConfig`].
pub const GUEST_CONFIG_FORMAT: &str = "chrysalis-guest/v1";
/// Where the image puts the guest configuration.
pub const GUEST_CONFIG_PATH: &str = "/etc/chrysalis/guest.json";

/// The kernel command-line token with which a host agent launches an image in the simulator
/// (platform `none`, no TEE). The guest's init then runs the enclave with `--tee simulated`. The
/// token is part of the measured command line, so it changes every measurement of the image;
/// manifests publish the simulator's measurement with it.
pub const SIMULATED_CMDLINE_TOKEN: &str = "chrysalis.tee=simulated";

/// What the guest's init does before it starts the enclave service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// [`GUEST_CONFIG_FORMAT`].
    pub format: String,
    /// Kernel modules (paths inside the initramfs, uncompressed), in load order.
    pub modules: Vec<String>,
    /// Static IPv4 configuration of one interface (QEMU user-mode networking: 10.0.2.15/24).
    pub network: Option<GuestNetwork>,
    /// The model on its own read-only disk.
    pub model: Option<GuestModel>,
    /// Arguments of the enclave service (`chrysalis-enclave ARGS...`), without `--model` for
    /// the disk model, which the init adds.
    pub enclave_args: Vec<String>,
}

/// Static IPv4 address of an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// Interface name (`eth0`).
    pub interface: String,
    /// Address, e.g. `10.0.2.15`.
    pub address: std::net::Ipv4Addr,
    /// Prefix length, e.g. 24.
    pub prefix: u8,
}

/// A model read from a block device: the first `size` bytes must hash to `sha256`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestModel {
    /// Block device, e.g. `/dev/vda`.
    pub device: String,
    /// Length of the model file on the disk (the rest is zero padding).
    pub size: u64,
    /// SHA-256 of the model file, hex. The init refuses a disk whose model differs.
    pub sha256: String,
    /// File name the model gets in the guest (its name in the model list).
    pub file_name: String,
}

impl GuestConfig {
    /// Parse and check the format tag.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let c: GuestConfig =
            serde_json::from_str(text).map_err(|e| format!("guest configuration: {e}"))?;
        if c.format != GUEST_CONFIG_FORMAT {
            return Err(format!(
                "guest configuration: format {:?}, expected {GUEST_CONFIG_FORMAT:?}",
                c.format
            ));
        }
        Ok(c)
    }
}
