//! Image recipes: TOML files pinning every input of an image by version and SHA-256.
//!
//! Paths in a recipe are relative to the recipe file. Unknown fields are errors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ImageError;

/// An image recipe.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Image name (goes into the manifest).
    pub name: String,
    /// Timestamp of every file in the initramfs (seconds since 1970; `SOURCE_DATE_EPOCH`
    /// overrides it when set in the environment).
    pub source_date_epoch: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// Initramfs compression: `gzip` (default) or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Debian archive the packages come from.
    pub archive: Archive,
    /// Debian packages, pinned.
    #[serde(rename = "package", default)]
    pub packages: Vec<Package>,
    /// The kernel and the modules the guest loads.
    pub kernel: Kernel,
    /// Firmware per platform.
    pub firmware: Firmware,
    /// Shared libraries the enclave binary needs, copied into the initramfs at their path.
    #[serde(default)]
    pub libraries: Vec<Source>,
    /// The enclave binary, which becomes `/init`.
    pub enclave: Enclave,
    /// The model.
    pub model: Option<ModelInput>,
    /// Guest network (QEMU user-mode networking by default).
    pub network: Option<Network>,
    /// VM shapes to publish expected measurements for.
    #[serde(rename = "shape", default)]
    pub shapes: Vec<Shape>,
}

/// Initramfs compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, level 9, no name, mtime 0 (deterministic).
    #[default]
    Gzip,
    /// Uncompressed newc cpio.
    None,
}

/// A Debian archive.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// Base URL, e.g. `https://deb.debian.org/debian`.
    pub mirror: String,
}

/// A Debian package pinned by version and SHA-256 of the `.deb`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Path in the archive (`pool/main/...deb`).
    pub path: String,
    /// SHA-256 of the `.deb`, hex.
    pub sha256: String,
}

/// A file taken from a pinned package, or a local file pinned by SHA-256.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Source {
    /// `{ package = "ovmf", path = "usr/share/ovmf/OVMF.fd" }`
    Package {
        /// Name of a `[[package]]`.
        package: String,
        /// Path inside the package.
        path: String,
    },
    /// `{ file = "relative/path", sha256 = "..." }`
    File {
        /// Local file, relative to the recipe.
        file: PathBuf,
        /// Its SHA-256, hex.
        sha256: String,
    },
}

/// The kernel.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// The kernel image (bzImage with EFI stub).
    pub image: Source,
    /// Package holding the modules (`usr/lib/modules/VERSION/...`).
    pub modules_package: Option<String>,
    /// Modules to load, by name (`virtio_net`); their dependencies come along, loaded first.
    #[serde(default)]
    pub modules: Vec<String>,
}

/// Firmware images.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// OVMF/TDVF for TDX (and plain VMs).
    pub tdx: Option<Source>,
    /// An OvmfPkg/AmdSev build with the kernel-hashes section, for SNP direct boot.
    pub snp: Option<Source>,
    /// Why there is no SNP firmware, for the manifest (when `snp` is absent).
    pub snp_note: Option<String>,
}

/// The enclave binary.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enclave {
    /// The built binary (from this tree), relative to the recipe.
    pub binary: PathBuf,
    /// Its SHA-256 when the recipe pins it (a release); unset while developing.
    pub sha256: Option<String>,
    /// Arguments of the enclave service in the guest.
    #[serde(default)]
    pub args: Vec<String>,
}

/// The model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInput {
    /// The model file, relative to the recipe.
    pub file: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// `disk` (a separate read-only disk image, the default) or `initramfs`.
    #[serde(default)]
    pub placement: ModelPlacement,
}

/// Where the model goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelPlacement {
    /// `model.img`, a read-only disk: the model padded with zeros to a whole sector.
    #[default]
    Disk,
    /// Inside the initramfs (small models only).
    Initramfs,
}

/// Static guest network.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interface, e.g. `eth0`.
    pub interface: String,
    /// `ADDRESS/PREFIX`, e.g. `10.0.2.15/24`.
    pub address: String,
}

/// A VM shape to publish measurements for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// `tdx` or `snp`.
    pub platform: String,
    /// Guest memory, e.g. `2G`.
    pub memory: String,
    /// vCPU counts.
    pub vcpus: Vec<u32>,
    /// SNP vCPU types (`EPYC-Milan`, ...).
    #[serde(default)]
    pub cpu_types: Vec<String>,
}

impl Recipe {
    /// Read and check a recipe.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::io(path, e))?;
        let recipe: Recipe =
            toml::from_str(&text).map_err(|e| ImageError::Recipe(e.to_string()))?;
        recipe.check()?;
        Ok(recipe)
    }

    fn check(&self) -> Result<(), ImageError> {
        let bad = |m: String| Err(ImageError::Recipe(m));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad(format!("name {:?}: use letters, digits, - _ .", self.name));
        }
        let mut names = BTreeSet::new();
        for p in &self.packages {
            if !names.insert(p.name.as_str()) {
                return bad(format!("package {} listed twice", p.name));
            }
            check_sha256(&p.sha256, &format!("package {}", p.name))?;
            if p.path.contains("..") || p.path.starts_with('/') {
                return bad(format!(
                    "package {}: path must be inside the archive",
                    p.name
                ));
            }
        }
        let mut sources: Vec<(&Source, &str)> = vec![(&self.kernel.image, "kernel.image")];
        if let Some(s) = &self.firmware.tdx {
            sources.push((s, "firmware.tdx"));
        }
        if let Some(s) = &self.firmware.snp {
            sources.push((s, "firmware.snp"));
        }
        for l in &self.libraries {
            if matches!(l, Source::File { .. }) {
                return bad("libraries come from packages (their path in the package is their path in the image)".into());
            }
            sources.push((l, "libraries"));
        }
        for (s, what) in sources {
            match s {
                Source::Package { package, .. } if !names.contains(package.as_str()) => {
                    return bad(format!("{what}: package {package} is not a [[package]]"));
                }
                Source::File { sha256, .. } => check_sha256(sha256, what)?,
                _ => {}
            }
        }
        if let Some(p) = &self.kernel.modules_package {
            if !names.contains(p.as_str()) {
                return bad(format!("kernel.modules_package {p} is not a [[package]]"));
            }
        } else if !self.kernel.modules.is_empty() {
            return bad("kernel.modules needs kernel.modules_package".into());
        }
        if self.firmware.tdx.is_none() && self.firmware.snp.is_none() {
            return bad("firmware: name at least one of tdx, snp".into());
        }
        if let Some(s) = &self.enclave.sha256 {
            check_sha256(s, "enclave.sha256")?;
        }
        if let Some(m) = &self.model {
            check_sha256(&m.sha256, "model.sha256")?;
        }
        if let Some(n) = &self.network {
            parse_address(&n.address)?;
        }
        if self.cmdline.contains('\n') || self.cmdline.contains('\0') {
            return bad("cmdline: one line, no NUL".into());
        }
        for s in &self.shapes {
            parse_size(&s.memory)?;
            if s.vcpus.is_empty() || s.vcpus.contains(&0) {
                return bad(format!(
                    "shape {}: vcpus must be a non-empty list of counts >= 1",
                    s.platform
                ));
            }
            match s.platform.as_str() {
                "tdx" if self.firmware.tdx.is_none() => {
                    return bad("shape tdx needs firmware.tdx".into())
                }
                "tdx" => {}
                "snp" if s.cpu_types.is_empty() => return bad("shape snp needs cpu_types".into()),
                "snp" => {}
                other => return bad(format!("shape platform {other:?}: tdx or snp")),
            }
        }
        Ok(())
    }

    /// The effective `SOURCE_DATE_EPOCH`: the environment's when set, else the recipe's.
    pub fn epoch(&self) -> Result<u64, ImageError> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v.trim().parse().map_err(|_| {
                ImageError::Recipe(format!("SOURCE_DATE_EPOCH={v:?} is not a number"))
            }),
            Err(_) => Ok(self.source_date_epoch),
        }
    }
}

/// Check a hex SHA-256.
pub fn check_sha256(s: &str, what: &str) -> Result<(), ImageError> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(ImageError::Recipe(format!(
            "{what}: sha256 must be 64 lowercase hex digits"
        )))
    }
}

/// Parse `10.0.2.15/24`.
pub fn parse_address(s: &str) -> Result<(std::net::Ipv4Addr, u8), ImageError> {
    let err = || ImageError::Recipe(format!("network address {s:?}: expected A.B.C.D/PREFIX"));
    let (a, p) = s.split_once('/').ok_or_else(err)?;
    let addr = a.parse().map_err(|_| err())?;
    let prefix: u8 = p.parse().map_err(|_| err())?;
    if prefix > 32 {
        return Err(err());
    }
    Ok((addr, prefix))
}

/// Parse a memory size (see `chrysalis_attestation::measure::parse_size`).
pub fn parse_size(s: &str) -> Result<u64, ImageError> {
    chrysalis_attestation::measure::parse_size(s).ok_or_else(|| {
        ImageError::Recipe(format!("size {s:?}: expected e.g. 2G, 512M, 1073741824"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G").ok(), Some(2 << 30));
        assert_eq!(parse_size("512m").ok(), Some(512 << 20));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        for bad in ["", "G", "0", "2X", "-1G", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("10.0.2.15/24").ok(),
            Some((
                "10.0.2.15"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                24
            ))
        );
        for bad in ["10.0.2.15", "10.0.2.15/33", "x/24"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
