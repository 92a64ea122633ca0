//! The host configuration (TOML). Fail-closed: unknown fields are errors, every VM is checked
//! against its image and platform before anything starts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad<T>(m: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(m.into()))
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host API (attestation relay, health, metrics).
    pub api: ApiConfig,
    /// Directory for QMP sockets and serial logs (relative to the file).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The VMs.
    #[serde(rename = "vm")]
    pub vms: Vec<VmConfig>,
    /// Endorsements for the VMs' evidence, fetched and cached here for clients.
    #[serde(default)]
    pub collateral: CollateralConfig,
}

/// `[collateral]`: Intel PCS (or a PCCS) and AMD KDS, cached on disk. An enclave cannot reach
/// them itself; the host fetches what its evidence needs and serves it beside the evidence
/// (`GET /v1/attestation`). Clients verify it like the evidence: it is signed by the vendor.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollateralConfig {
    /// Cache directory (relative to the file; default `STATE_DIR/collateral`).
    pub cache_dir: Option<PathBuf>,
    /// PCCS or Intel PCS base URL (default Intel PCS).
    pub pccs_url: Option<String>,
    /// Serve from the cache only; never fetch.
    #[serde(default)]
    pub offline: bool,
    /// Fetch Intel collateral anew this many hours before its `nextUpdate` (0: only once it
    /// has expired). Until then the cached one, still valid, is served.
    #[serde(default = "default_refresh_ahead_hours")]
    pub refresh_ahead_hours: u64,
}

fn default_refresh_ahead_hours() -> u64 {
    24
}

impl Default for CollateralConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            pccs_url: None,
            offline: false,
            refresh_ahead_hours: default_refresh_ahead_hours(),
        }
    }
}

impl HostConfig {
    /// The collateral store the API completes bundles from.
    pub fn collateral_store(&self) -> chrysalis_client::collateral::CollateralStore {
        chrysalis_client::collateral::CollateralStore::new(
            self.collateral
                .cache_dir
                .clone()
                .unwrap_or_else(|| self.state_dir.join("collateral")),
            self.collateral.pccs_url.clone(),
            self.collateral.offline,
        )
        .with_refresh_ahead(std::time::Duration::from_secs(
            self.collateral.refresh_ahead_hours.saturating_mul(3600),
        ))
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/chrysalis-host")
}

/// `[api]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
}

/// The platform a VM runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformKind {
    /// Intel TDX.
    Tdx,
    /// AMD SEV-SNP.
    Snp,
    /// A plain VM for development: the enclave runs its simulator (NOT CONFIDENTIAL).
    None,
}

/// The accelerator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// KVM (required for TDX and SNP).
    #[default]
    Kvm,
    /// Software emulation, for machines without usable KVM (platform `none` only).
    Tcg,
}

/// What to do when a VM stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Relaunch whenever it stops (a confidential guest cannot reboot in place).
    #[default]
    Always,
    /// Relaunch only after a failure (not after a clean power-off).
    OnFailure,
    /// Never relaunch.
    Never,
}

/// `[[vm]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Name (letters, digits, `-`, `_`).
    pub name: String,
    /// Image directory (with manifest.json), relative to the file.
    pub image: PathBuf,
    /// Platform.
    pub platform: PlatformKind,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, e.g. `2G`.
    pub memory: String,
    /// GPUs to pass through, by PCI address (`0000:17:00.0`).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// Where clients connect (RA-TLS to the enclave, relayed).
    pub client_listen: SocketAddr,
    /// The enclave's port in the guest.
    #[serde(default = "default_guest_port")]
    pub guest_port: u16,
    /// Accelerator.
    #[serde(default)]
    pub accelerator: Accelerator,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// SNP vCPU type (`EPYC-Milan`, `EPYC-Genoa`, ...).
    pub cpu_type: Option<String>,
    /// SNP guest policy (default 0x30000: SMT allowed, no debug, no migration agent).
    pub snp_policy: Option<u64>,
    /// SNP HOST_DATA, 64 hex digits: SHA-256 of the enclave's measured configuration, as
    /// `chrysalis-enclave config --tee snp [its options]` prints it. Required for SNP: the
    /// enclave refuses to start when HOST_DATA is not its configuration's.
    pub snp_host_data: Option<String>,
    /// SNP ID block (`chrysalis measure snp-id-block --json`), relative to the file: the firmware
    /// then refuses any other launch digest or policy, and reports the signing keys' digests.
    pub snp_id_block: Option<PathBuf>,
    /// TDX MRCONFIGID, 96 hex digits.
    pub mr_config_id: Option<String>,
    /// QEMU binary.
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    /// Seconds a draining VM may take to finish its requests.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
}

fn default_guest_port() -> u16 {
    8443
}
fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}
fn default_drain() -> u64 {
    30
}

/// A PCI address `DDDD:BB:DD.F`.
pub fn check_pci_address(a: &str) -> Result<(), ConfigError> {
    let b = a.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|s| s.iter().all(|c| c.is_ascii_hexdigit()))
    };
    let ok = b.len() == 12
        && hex(0..4)
        && b.get(4) == Some(&b':')
        && hex(5..7)
        && b.get(7) == Some(&b':')
        && hex(8..10)
        && b.get(10) == Some(&b'.')
        && b.get(11).is_some_and(|c| (b'0'..=b'7').contains(c));
    if ok {
        Ok(())
    } else {
        bad(format!(
            "GPU {a:?}: expected a PCI address like 0000:17:00.0 (`chrysalis-host gpus list` shows them)"
        ))
    }
}

impl HostConfig {
    /// Read and check a configuration; relative paths become relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let mut c: HostConfig =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if c.state_dir.is_relative() {
            c.state_dir = base.join(&c.state_dir);
        }
        if let Some(d) = c.collateral.cache_dir.as_mut().filter(|d| d.is_relative()) {
            *d = base.join(&*d);
        }
        for vm in &mut c.vms {
            if vm.image.is_relative() {
                vm.image = base.join(&vm.image);
            }
            if let Some(f) = vm.snp_id_block.as_mut().filter(|f| f.is_relative()) {
                *f = base.join(&*f);
            }
        }
        c.check()?;
        Ok(c)
    }

    /// The checks that need no file: names, platforms, accelerators, addresses, ports.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.vms.is_empty() {
            return bad("no [[vm]]: nothing to run");
        }
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        if self.api.listen.port() != 0 {
            addrs.insert(self.api.listen);
        }
        let mut gpus = BTreeSet::new();
        for vm in &self.vms {
            let n = &vm.name;
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return bad(format!("vm name {n:?}: use letters, digits, - and _"));
            }
            if !names.insert(n.clone()) {
                return bad(format!("vm {n}: name used twice"));
            }
            // Port 0 (tests: an ephemeral port each) cannot clash.
            if vm.client_listen.port() != 0 && !addrs.insert(vm.client_listen) {
                return bad(format!(
                    "vm {n}: client_listen {} used twice",
                    vm.client_listen
                ));
            }
            if vm.vcpus == 0 || vm.vcpus > 512 {
                return bad(format!("vm {n}: vcpus must be 1..=512"));
            }
            let mem = chrysalis_images::recipe::parse_size(&vm.memory)
                .map_err(|e| ConfigError(format!("vm {n}: memory: {e}")))?;
            if mem < (256 << 20) {
                return bad(format!(
                    "vm {n}: memory below 256M cannot hold the enclave and its model"
                ));
            }
            if vm.platform != PlatformKind::None && vm.accelerator == Accelerator::Tcg {
                return bad(format!(
                    "vm {n}: platform {:?} needs accelerator kvm (TCG cannot run a confidential guest)",
                    vm.platform
                ));
            }
            if vm.platform != PlatformKind::Snp
                && (vm.cpu_type.is_some()
                    || vm.snp_policy.is_some()
                    || vm.snp_host_data.is_some()
                    || vm.snp_id_block.is_some())
            {
                return bad(format!(
                    "vm {n}: cpu_type, snp_policy, snp_host_data and snp_id_block are for platform snp"
                ));
            }
            if vm.platform == PlatformKind::Snp {
                match &vm.snp_host_data {
                    None => {
                        return bad(format!(
                            "vm {n}: platform snp needs snp_host_data (the enclave refuses to start without its configuration's digest): run `chrysalis-enclave config --tee snp` with the enclave's options"
                        ))
                    }
                    Some(_) => {
                        vm.host_data().map_err(|e| ConfigError(format!("vm {n}: {e}")))?;
                    }
                }
            }
            if vm.platform != PlatformKind::Tdx && vm.mr_config_id.is_some() {
                return bad(format!("vm {n}: mr_config_id is for platform tdx"));
            }
            if let Some(id) = &vm.mr_config_id {
                if id.len() != 96 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return bad(format!("vm {n}: mr_config_id must be 96 hex digits"));
                }
            }
            if let Some(p) = vm.snp_policy {
                if p & (1 << 19) != 0 {
                    return bad(format!(
                        "vm {n}: snp_policy allows debugging (bit 19); refused"
                    ));
                }
                if p & (1 << 17) == 0 {
                    return bad(format!(
                        "vm {n}: snp_policy bit 17 (reserved, must be 1) is clear"
                    ));
                }
            }
            for g in &vm.gpus {
                check_pci_address(g).map_err(|e| ConfigError(format!("vm {n}: {e}")))?;
                if !gpus.insert(g.to_ascii_lowercase()) {
                    return bad(format!("vm {n}: GPU {g} is given to two VMs"));
                }
            }
            if vm.guest_port == 0 {
                return bad(format!("vm {n}: guest_port 0"));
            }
        }
        Ok(())
    }

    /// The VM of that name.
    pub fn vm(&self, name: &str) -> Result<&VmConfig, ConfigError> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ConfigError(format!("no vm named {name:?}")))
    }
}

impl VmConfig {
    /// `snp_host_data` as bytes.
    pub fn host_data(&self) -> Result<Option<[u8; 32]>, String> {
        self.snp_host_data
            .as_deref()
            .map(|h| {
                chrysalis_attestation::evidence::hex_array::<32>("snp_host_data", h)
                    .map_err(|e| e.to_string())
            })
            .transpose()
    }

    /// Memory in bytes (checked at load).
    pub fn memory_bytes(&self) -> u64 {
        chrysalis_images::recipe::parse_size(&self.memory).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vm: &str) -> Result<HostConfig, ConfigError> {
        let text = format!(
            "[api]\nlisten = \"127.0.0.1:8080\"\n[[vm]]\nname = \"a\"\nimage = \"img\"\nvcpus = 2\nmemory = \"2G\"\nclient_listen = \"127.0.0.1:8443\"\n{vm}"
        );
        let c: HostConfig = toml::from_str(&text).map_err(|e| ConfigError(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn fail_closed() {
        assert!(parse("platform = \"none\"\naccelerator = \"tcg\"").is_ok());
        assert!(parse("platform = \"tdx\"").is_ok());
        assert!(parse(&format!(
            "platform = \"snp\"\nsnp_host_data = \"{}\"",
            "ab".repeat(32)
        ))
        .is_ok());
        for (extra, why) in [
            (
                "platform = \"tdx\"\naccelerator = \"tcg\"",
                "needs accelerator kvm",
            ),
            ("platform = \"sev\"", "unknown variant"),
            ("platform = \"none\"\nfoo = 1", "unknown field"),
            ("platform = \"tdx\"\ngpus = [\"17:00.0\"]", "PCI address"),
            (
                "platform = \"snp\"\nsnp_policy = 0xB0000\nsnp_host_data = \"abababababababababababababababababababababababababababababababab\"",
                "debugging",
            ),
            (
                "platform = \"none\"\ncpu_type = \"EPYC-Milan\"",
                "for platform snp",
            ),
            ("platform = \"snp\"", "needs snp_host_data"),
            ("platform = \"snp\"\nsnp_host_data = \"ab\"", "64 hex"),
            (
                "platform = \"tdx\"\nsnp_id_block = \"id.json\"",
                "for platform snp",
            ),
            ("platform = \"tdx\"\nmr_config_id = \"00\"", "96 hex"),
        ] {
            let e = parse(extra).err().map(|e| e.0).unwrap_or_default();
            assert!(e.contains(why), "{extra}: {e}");
        }
    }

    #[test]
    fn pci_addresses() {
        assert!(check_pci_address("0000:17:00.0").is_ok());
        for a in ["17:00.0", "0000:17:00.8", "0000:17:00", "zzzz:17:00.0"] {
            assert!(check_pci_address(a).is_err(), "{a}");
        }
    }
}
