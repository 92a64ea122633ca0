//! Operator preparation of GPUs through sysfs: list NVIDIA GPUs with their driver and IOMMU
//! group, bind one to `vfio-pci` for passthrough and give it back. Behind [`Sysfs`], a root
//! directory, so it is tested on a recorded tree.
//!
//! Confidential-computing mode is a GPU setting that sysfs does not show: it is set and read with
//! NVIDIA's gpu-admin-tools (`nvidia_gpu_tools.py --query-cc-mode`), which [`query_cc_mode`] runs
//! and reads. The enclave then reads it again through NVML inside the VM and reports it in its
//! evidence: the host's reading is for the operator, never for a verifier.

use std::path::{Path, PathBuf};

/// A sysfs tree (`/sys` on a real host).
#[derive(Clone, Debug)]
pub struct Sysfs {
    /// Its root.
    pub root: PathBuf,
}

/// One NVIDIA GPU.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Gpu {
    /// PCI address.
    pub address: String,
    /// PCI device id (`0x2330` is H100 SXM5).
    pub device: String,
    /// Bound driver (`nvidia`, `vfio-pci`) or none.
    pub driver: Option<String>,
    /// IOMMU group; passthrough needs one.
    pub iommu_group: Option<String>,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            root: PathBuf::from("/sys"),
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

impl Sysfs {
    fn device(&self, addr: &str) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr)
    }

    /// NVIDIA display and 3D controllers.
    pub fn gpus(&self) -> std::io::Result<Vec<Gpu>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.root.join("bus/pci/devices"))? {
            let e = e?;
            let dir = e.path();
            let vendor = read_trim(&dir.join("vendor")).unwrap_or_default();
            let class = read_trim(&dir.join("class")).unwrap_or_default();
            if vendor != "0x10de" || !(class.starts_with("0x0302") || class.starts_with("0x0300")) {
                continue;
            }
            out.push(Gpu {
                address: e.file_name().to_string_lossy().into_owned(),
                device: read_trim(&dir.join("device")).unwrap_or_default(),
                driver: link_name(&dir.join("driver")),
                iommu_group: link_name(&dir.join("iommu_group")),
            });
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    fn write(&self, path: PathBuf, value: &str) -> Result<(), String> {
        std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Hand a GPU to `vfio-pci` (driver_override, unbind, reprobe).
    pub fn bind_vfio(&self, addr: &str) -> Result<(), String> {
        crate::config::check_pci_address(addr).map_err(|e| e.0)?;
        let gpu = self
            .gpus()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|g| g.address == addr)
            .ok_or_else(|| format!("{addr}: not an NVIDIA GPU on this host"))?;
        if gpu.iommu_group.is_none() {
            return Err(format!(
                "{addr}: no IOMMU group (enable the IOMMU: intel_iommu=on / amd_iommu=on)"
            ));
        }
        if gpu.driver.as_deref() == Some("vfio-pci") {
            return Ok(());
        }
        let dev = self.device(addr);
        self.write(dev.join("driver_override"), "vfio-pci")?;
        if gpu.driver.is_some() {
            self.write(dev.join("driver/unbind"), addr)?;
        }
        self.write(self.root.join("bus/pci/drivers_probe"), addr)
    }

    /// Give a GPU back to its default driver.
    pub fn unbind_vfio(&self, addr: &str) -> Result<(), String> {
        crate::config::check_pci_address(addr).map_err(|e| e.0)?;
        let dev = self.device(addr);
        if !dev.exists() {
            return Err(format!("{addr}: no such PCI device"));
        }
        self.write(dev.join("driver_override"), "\n")?;
        if link_name(&dev.join("driver")).is_some() {
            self.write(dev.join("driver/unbind"), addr)?;
        }
        self.write(self.root.join("bus/pci/drivers_probe"), addr)
    }

    /// Host support for confidential guests, as KVM reports it.
    pub fn kvm_support(&self) -> Vec<(String, String)> {
        let p = |m: &str, f: &str| {
            read_trim(&self.root.join("module").join(m).join("parameters").join(f))
                .unwrap_or_else(|| "absent".into())
        };
        vec![
            ("kvm_intel tdx".into(), p("kvm_intel", "tdx")),
            ("kvm_amd sev".into(), p("kvm_amd", "sev")),
            ("kvm_amd sev_snp".into(), p("kvm_amd", "sev_snp")),
        ]
    }
}

/// A GPU's confidential-computing mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CcMode {
    /// CC on: what a confidential VM needs.
    On,
    /// CC with developer tools (profiling allowed): not for production.
    Devtools,
    /// CC off.
    Off,
}

/// Read the CC mode of `addr` from gpu-admin-tools' output: it logs one line per GPU naming its
/// PCI address and ending "CC mode is on|off|devtools".
pub fn parse_cc_mode(output: &str, addr: &str) -> Result<CcMode, String> {
    let addr = addr.to_ascii_lowercase();
    for line in output.lines() {
        if !line.to_ascii_lowercase().contains(&addr) {
            continue;
        }
        if line.contains("not supported") {
            return Err(format!("{addr}: this GPU does not support CC mode"));
        }
        if let Some((_, mode)) = line.split_once("CC mode is ") {
            return match mode.trim() {
                "on" => Ok(CcMode::On),
                "devtools" => Ok(CcMode::Devtools),
                "off" => Ok(CcMode::Off),
                other => Err(format!("{addr}: unknown CC mode {other:?}")),
            };
        }
    }
    Err(format!(
        "{addr}: gpu-admin-tools did not report a CC mode for it"
    ))
}

/// Ask NVIDIA's gpu-admin-tools (`tool`: the path of `nvidia_gpu_tools.py`) for a GPU's CC mode.
/// Run it while the host driver, not vfio-pci, owns the GPU, as root.
pub fn query_cc_mode(tool: &Path, addr: &str) -> Result<CcMode, String> {
    crate::config::check_pci_address(addr).map_err(|e| e.0)?;
    let out = std::process::Command::new("python3")
        .arg(tool)
        .args([
            "--mmio-access-type=sysfs",
            "--query-cc-mode",
            "--gpu-bdf",
            addr,
        ])
        .output()
        .map_err(|e| format!("python3 {}: {e}", tool.display()))?;
    // It logs to stderr or stdout depending on its version.
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match parse_cc_mode(&text, addr) {
        Ok(m) => Ok(m),
        Err(e) if !out.status.success() => Err(format!(
            "{} exited with {}: {e}",
            tool.display(),
            out.status
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded sysfs: an H100 on the nvidia driver, a NIC, an unbound GPU without IOMMU.
    fn tree() -> (tempfile::TempDir, Sysfs) {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        let dev = |addr: &str, vendor: &str, class: &str, device: &str| {
            let d = r.join("bus/pci/devices").join(addr);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).expect("w");
            std::fs::write(d.join("class"), format!("{class}\n")).expect("w");
            std::fs::write(d.join("device"), format!("{device}\n")).expect("w");
            std::fs::write(d.join("driver_override"), "(null)\n").expect("w");
            d
        };
        let h100 = dev("0000:17:00.0", "0x10de", "0x030200", "0x2330");
        dev("0000:18:00.0", "0x8086", "0x020000", "0x1593");
        dev("0000:65:00.0", "0x10de", "0x030200", "0x2335");
        let drv = r.join("bus/pci/drivers/nvidia");
        std::fs::create_dir_all(&drv).expect("mkdir");
        std::fs::write(drv.join("unbind"), "").expect("w");
        std::os::unix::fs::symlink(&drv, h100.join("driver")).expect("link");
        let grp = r.join("kernel/iommu_groups/42");
        std::fs::create_dir_all(&grp).expect("mkdir");
        std::os::unix::fs::symlink(&grp, h100.join("iommu_group")).expect("link");
        std::fs::write(r.join("bus/pci/drivers_probe"), "").expect("w");
        let root = r.to_path_buf();
        (t, Sysfs { root })
    }

    #[test]
    fn cc_mode_lines() {
        // Lines as gpu-admin-tools logs them: `info(f"{gpu} CC mode is {cc_mode}")`, where the
        // GPU prints as "GPU <bdf> <name> <device id> BAR0 <addr>" (written here by hand in
        // that format; no H100 host was available to record one).
        let out = "2026-11-22,10:00:00.000 INFO     GPU 0000:17:00.0 H100-SXM5 0x2330 BAR0 0x1c04000000 CC mode is on\n\
                   2026-11-22,10:00:00.100 INFO     GPU 0000:65:00.0 H100-SXM5 0x2330 BAR0 0x1d04000000 CC mode is devtools\n";
        assert_eq!(parse_cc_mode(out, "0000:17:00.0"), Ok(CcMode::On));
        assert_eq!(parse_cc_mode(out, "0000:65:00.0"), Ok(CcMode::Devtools));
        let e = parse_cc_mode(out, "0000:18:00.0").expect_err("not listed");
        assert!(e.contains("did not report"), "{e}");
        let e = parse_cc_mode(
            "... ERROR Querying CC mode is not supported on GPU 0000:17:00.0 A100",
            "0000:17:00.0",
        )
        .expect_err("unsupported");
        assert!(e.contains("does not support"), "{e}");
        let e = parse_cc_mode("GPU 0000:17:00.0 H100 CC mode is maybe", "0000:17:00.0")
            .expect_err("odd");
        assert!(e.contains("unknown CC mode"), "{e}");
        let e = query_cc_mode(
            Path::new("/nonexistent/nvidia_gpu_tools.py"),
            "0000:17:00.0",
        )
        .expect_err("no tool");
        assert!(e.contains("nvidia_gpu_tools.py"), "{e}");
    }

    #[test]
    fn lists_binds_and_refuses() {
        let (_t, s) = tree();
        let gpus = s.gpus().expect("list");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(gpus[0].iommu_group.as_deref(), Some("42"));
        s.bind_vfio("0000:17:00.0").expect("bind");
        let dev = s.root.join("bus/pci/devices/0000:17:00.0");
        assert_eq!(
            read_trim(&dev.join("driver_override")).as_deref(),
            Some("vfio-pci")
        );
        assert_eq!(
            read_trim(&dev.join("driver/unbind")).as_deref(),
            Some("0000:17:00.0")
        );
        assert_eq!(
            read_trim(&s.root.join("bus/pci/drivers_probe")).as_deref(),
            Some("0000:17:00.0")
        );
        let e = s.bind_vfio("0000:65:00.0").err().unwrap_or_default();
        assert!(e.contains("no IOMMU group"), "{e}");
        let e = s.bind_vfio("0000:18:00.0").err().unwrap_or_default();
        assert!(e.contains("not an NVIDIA GPU"), "{e}");
        s.unbind_vfio("0000:17:00.0").expect("unbind");
        assert_eq!(read_trim(&dev.join("driver_override")).as_deref(), Some(""));
    }
}
