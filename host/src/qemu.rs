//! The typed QEMU command builder. It takes the same `VmSpec` the measurement code takes, so
//! what is launched and what is predicted come from one value.

use std::path::{Path, PathBuf};

use chrysalis_attestation::measure::{PlatformSpec, VmSpec};

use crate::config::{Accelerator, PlatformKind};

/// A QEMU version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion(pub u32, pub u32, pub u32);

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl QemuVersion {
    /// Parse `qemu-system-x86_64 --version` output.
    pub fn parse(output: &str) -> Option<Self> {
        let rest = output.split("version ").nth(1)?;
        let v: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
        Some(QemuVersion(
            it.next()??,
            it.next().flatten().unwrap_or(0),
            it.next().flatten().unwrap_or(0),
        ))
    }

    /// Ask the binary.
    pub fn of(qemu: &Path) -> Result<Self, String> {
        let out = std::process::Command::new(qemu)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "{}: {e} (install QEMU: apt-get install qemu-system-x86)",
                    qemu.display()
                )
            })?;
        QemuVersion::parse(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| format!("{}: cannot read its version", qemu.display()))
    }
}

/// The oldest QEMU that launches TDX guests (upstream `tdx-guest`).
pub const QEMU_MIN_TDX: QemuVersion = QemuVersion(10, 1, 0);
/// The oldest QEMU that launches SEV-SNP guests (`sev-snp-guest`).
pub const QEMU_MIN_SNP: QemuVersion = QemuVersion(9, 1, 0);
/// The oldest QEMU with the `iommufd` backend for VFIO.
pub const QEMU_MIN_IOMMUFD: QemuVersion = QemuVersion(9, 0, 0);

/// Refuse a launch this QEMU cannot do, saying what is needed.
pub fn check_support(
    version: QemuVersion,
    platform: PlatformKind,
    gpus: usize,
) -> Result<(), String> {
    let need = |min: QemuVersion, what: &str| {
        if version < min {
            Err(format!(
                "QEMU {version} cannot {what}: it needs QEMU {min} or later"
            ))
        } else {
            Ok(())
        }
    };
    match platform {
        PlatformKind::Tdx => need(QEMU_MIN_TDX, "launch TDX guests")?,
        PlatformKind::Snp => need(QEMU_MIN_SNP, "launch SEV-SNP guests")?,
        PlatformKind::None => {}
    }
    if gpus > 0 {
        need(QEMU_MIN_IOMMUFD, "pass GPUs through with iommufd")?;
    }
    Ok(())
}

/// SEV-SNP launch parameters read from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpHost {
    /// C-bit position (CPUID 0x8000001F EBX[5:0]).
    pub cbitpos: u32,
    /// Physical address bits lost to encryption (CPUID 0x8000001F EBX[11:6]).
    pub reduced_phys_bits: u32,
}

impl SnpHost {
    /// From the host CPU (CPUID leaf 0x8000001F); None on CPUs without SEV.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
            if max < 0x8000_001F {
                return None;
            }
            let r = std::arch::x86_64::__cpuid(0x8000_001F);
            if r.eax & 0b10 == 0 {
                return None;
            }
            Some(SnpHost {
                cbitpos: r.ebx & 0x3f,
                reduced_phys_bits: (r.ebx >> 6) & 0x3f,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }
}

/// The host's SEV capabilities as QEMU reports them (QMP `query-sev-capabilities`): what KVM
/// and the PSP firmware actually offer, which CPUID alone does not say.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SevCapabilities {
    /// C-bit position.
    pub cbitpos: u32,
    /// Physical address bits lost to encryption.
    pub reduced_phys_bits: u32,
    /// The chip id of CPU 0 (base64, as QEMU gives it): the AMD KDS key for this chip's VCEK.
    pub cpu0_id: String,
    /// Length of the platform Diffie-Hellman key (base64 text), present on SEV hosts.
    pub pdh_len: usize,
}

impl SevCapabilities {
    /// Read a QMP reply to `query-sev-capabilities`. A QMP error (no KVM, SEV disabled in KVM,
    /// no `/dev/sev`) is returned as QEMU's own words.
    pub fn from_qmp(reply: &serde_json::Value) -> Result<Self, String> {
        if let Some(err) = reply.get("error") {
            return Err(format!(
                "QEMU: {}",
                err.get("desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("error without description")
            ));
        }
        let r = reply
            .get("return")
            .ok_or("QMP reply has neither return nor error")?;
        let num = |k: &str| {
            r.get(k)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| format!("query-sev-capabilities: no {k}"))
        };
        let text = |k: &str| {
            r.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("query-sev-capabilities: no {k}"))
        };
        let caps = Self {
            cbitpos: num("cbitpos")?,
            reduced_phys_bits: num("reduced-phys-bits")?,
            cpu0_id: text("cpu0-id")?,
            pdh_len: text("pdh")?.len(),
        };
        if !(32..=63).contains(&caps.cbitpos) {
            return Err(format!(
                "query-sev-capabilities: cbitpos {} is not a physical address bit",
                caps.cbitpos
            ));
        }
        Ok(caps)
    }
}

/// Ask QEMU for the host's SEV capabilities: start it with no machine and no guest, query
/// over QMP, stop it. Bounded by `timeout` (a broken KVM may hang instead of failing).
pub async fn query_sev_capabilities(
    qemu: &Path,
    accelerator: Accelerator,
    timeout: std::time::Duration,
) -> Result<SevCapabilities, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let sock = dir.path().join("qmp.sock");
    let accel = match accelerator {
        Accelerator::Kvm => "kvm",
        Accelerator::Tcg => "tcg",
    };
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-machine",
            "none",
            "-accel",
            accel,
            "-nodefaults",
            "-nographic",
            "-S",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", path_arg(&sock)?))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", qemu.display()))?;
    let ask = async {
        loop {
            if sock.exists() {
                return crate::vm::qmp(&sock, "query-sev-capabilities").await;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt as _;
                    let _ = e.read_to_string(&mut err).await;
                }
                return Err(format!("QEMU exited ({status}): {}", err.trim()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let reply = tokio::time::timeout(timeout, ask).await;
    let _ = child.kill().await;
    match reply {
        Ok(r) => SevCapabilities::from_qmp(&r?),
        Err(_) => Err(format!(
            "QEMU ({accel}) gave no answer within {} s",
            timeout.as_secs()
        )),
    }
}

/// An SNP ID block as QEMU takes it (checked: see `vm::prepare`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpIdBlock {
    /// The 96-byte ID block.
    pub id_block: Vec<u8>,
    /// The 4096-byte authentication block.
    pub id_auth: Vec<u8>,
    /// Whether the author key signs the ID key.
    pub author_key_enabled: bool,
    /// ID_KEY_DIGEST reports will carry (from the signatures checked at load).
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST, with the author key enabled.
    pub author_key_digest: Option<[u8; 48]>,
}

/// Everything a launch needs besides the `VmSpec`.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The VM (firmware, kernel, initrd, command line, memory, vCPUs).
    pub spec: VmSpec,
    /// Platform kind (`none` ignores the firmware and boots with QEMU's default BIOS).
    pub platform: PlatformKind,
    /// Accelerator.
    pub accelerator: Accelerator,
    /// The model disk, attached read-only.
    pub model_disk: Option<PathBuf>,
    /// GPUs by PCI address.
    pub gpus: Vec<String>,
    /// Host loopback port forwarded to the guest's enclave port (user-mode networking).
    pub host_port: u16,
    /// The enclave's port in the guest.
    pub guest_port: u16,
    /// QMP socket path.
    pub qmp_socket: PathBuf,
    /// Serial console log.
    pub serial_log: PathBuf,
    /// SNP host parameters (required for SNP).
    pub snp_host: Option<SnpHost>,
    /// SNP policy.
    pub snp_policy: u64,
    /// SNP HOST_DATA.
    pub snp_host_data: Option<[u8; 32]>,
    /// SNP ID block, authentication block, and whether the author key is enabled.
    pub snp_id_block: Option<SnpIdBlock>,
    /// TDX MRCONFIGID (hex).
    pub mr_config_id: Option<String>,
    /// The guest's vsock CID.
    pub vsock_cid: u32,
}

/// The 64-bit MMIO window for passed-through GPUs, in MiB: H100/H200 BAR1 is 128 GiB, so
/// 256 GiB per GPU plus room.
pub fn mmio64_mib(gpus: usize) -> u64 {
    (gpus as u64) * 256 * 1024 + 64 * 1024
}

fn path_arg(p: &Path) -> Result<String, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{}: path is not UTF-8", p.display()))?;
    if s.contains(',') {
        return Err(format!("{s}: QEMU option paths cannot contain ','"));
    }
    Ok(s.to_string())
}

/// The QEMU arguments (without the binary).
pub fn command(l: &Launch) -> Result<Vec<String>, String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let kernel = l.spec.kernel.as_ref().ok_or("the image has no kernel")?;
    let initrd = l.spec.initrd.as_ref().ok_or("the image has no initrd")?;
    let cmdline = l.spec.cmdline.clone().unwrap_or_default();
    let mem_mib = l.spec.memory >> 20;
    let accel = match l.accelerator {
        Accelerator::Kvm => "kvm",
        Accelerator::Tcg => "tcg",
    };
    push(&["-nodefaults", "-nographic", "-no-user-config"]);
    push(&["-name", "chrysalis-guest,debug-threads=on"]);
    // A confidential guest cannot reboot in place: a reboot ends QEMU, the host relaunches.
    push(&["-no-reboot"]);
    let mut machine = format!("q35,accel={accel},hpet=off");
    let cpu = match (l.accelerator, l.platform) {
        // QEMU's TCG mishandles 5-level paging with the Debian kernel (double fault at boot).
        (Accelerator::Tcg, _) => "max,la57=off".to_string(),
        (Accelerator::Kvm, PlatformKind::Snp) => match &l.spec.platform {
            PlatformSpec::Snp { vcpu_type, .. } => vcpu_type.clone(),
            PlatformSpec::Tdx { .. } => return Err("SNP launch with a TDX VmSpec".into()),
        },
        (Accelerator::Kvm, _) => "host".to_string(),
    };
    match l.platform {
        PlatformKind::Tdx => {
            if !matches!(l.spec.platform, PlatformSpec::Tdx { .. }) {
                return Err("TDX launch with an SNP VmSpec".into());
            }
            let mut obj = serde_json::json!({
                "qom-type": "tdx-guest",
                "id": "tdx0",
                "quote-generation-socket": {"type": "vsock", "cid": "2", "port": "4050"},
            });
            if let Some(id) = &l.mr_config_id {
                use base64::Engine as _;
                let raw = hex::decode(id).map_err(|e| format!("mr_config_id: {e}"))?;
                if let Some(o) = obj.as_object_mut() {
                    o.insert(
                        "mrconfigid".into(),
                        serde_json::Value::String(
                            base64::engine::general_purpose::STANDARD.encode(raw),
                        ),
                    );
                }
            }
            machine.push_str(",kernel-irqchip=split,confidential-guest-support=tdx0");
            a.extend(["-object".into(), obj.to_string()]);
            a.extend(["-bios".into(), path_arg(&l.spec.firmware)?]);
        }
        PlatformKind::Snp => {
            let host = l
                .snp_host
                .ok_or("SEV-SNP: the host CPU reports no SEV (CPUID 0x8000001F)")?;
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            machine.push_str(",confidential-guest-support=sev0,memory-backend=ram0");
            let mut guest = format!(
                "sev-snp-guest,id=sev0,cbitpos={},reduced-phys-bits={},policy={:#x},kernel-hashes=on",
                host.cbitpos, host.reduced_phys_bits, l.snp_policy
            );
            if let Some(h) = &l.snp_host_data {
                guest.push_str(&format!(",host-data={}", b64.encode(h)));
            }
            if let Some(id) = &l.snp_id_block {
                guest.push_str(&format!(
                    ",id-block={},id-auth={},author-key-enabled={}",
                    b64.encode(&id.id_block),
                    b64.encode(&id.id_auth),
                    if id.author_key_enabled { "on" } else { "off" }
                ));
            }
            a.extend([
                "-object".into(),
                format!("memory-backend-memfd,id=ram0,size={mem_mib}M,share=true,prealloc=false"),
                "-object".into(),
                guest,
            ]);
            a.extend(["-bios".into(), path_arg(&l.spec.firmware)?]);
        }
        PlatformKind::None => {}
    }
    a.extend(["-machine".into(), machine, "-cpu".into(), cpu]);
    a.extend([
        "-smp".into(),
        l.spec.vcpus.to_string(),
        "-m".into(),
        format!("{mem_mib}M"),
    ]);
    a.extend([
        "-kernel".into(),
        path_arg(kernel)?,
        "-initrd".into(),
        path_arg(initrd)?,
        "-append".into(),
        cmdline,
    ]);
    if let Some(disk) = &l.model_disk {
        a.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=model,readonly=on",
                path_arg(disk)?
            ),
            "-device".into(),
            "virtio-blk-pci,drive=model".into(),
        ]);
    }
    a.extend([
        "-netdev".into(),
        format!(
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:{}",
            l.host_port, l.guest_port
        ),
        "-device".into(),
        "virtio-net-pci,netdev=net0,romfile=".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
    ]);
    if l.platform != PlatformKind::None || l.accelerator == Accelerator::Kvm {
        a.extend([
            "-device".into(),
            format!("vhost-vsock-pci,guest-cid={}", l.vsock_cid),
        ]);
    }
    if !l.gpus.is_empty() {
        a.extend(["-object".into(), "iommufd,id=iommufd0".into()]);
        for (i, g) in l.gpus.iter().enumerate() {
            a.extend([
                "-device".into(),
                format!(
                    "pcie-root-port,id=gpurp{i},bus=pcie.0,chassis={},slot={}",
                    i + 1,
                    i + 1
                ),
                "-device".into(),
                format!("vfio-pci,host={g},bus=gpurp{i},iommufd=iommufd0"),
            ]);
        }
        a.extend([
            "-fw_cfg".into(),
            format!(
                "name=opt/ovmf/X-PciMmio64Mb,string={}",
                mmio64_mib(l.gpus.len())
            ),
        ]);
    }
    a.extend([
        "-chardev".into(),
        format!("file,id=serial0,path={}", path_arg(&l.serial_log)?),
        "-serial".into(),
        "chardev:serial0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path_arg(&l.qmp_socket)?),
    ]);
    Ok(a)
}

/// Quote arguments for a shell, for `--dry-run`.
pub fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_attestation::measure::{InitrdToken, PageAddOrder, VmmType};

    fn launch(platform: PlatformKind) -> Launch {
        let spec_platform = match platform {
            PlatformKind::Snp => PlatformSpec::Snp {
                vcpu_type: "EPYC-Milan".into(),
                guest_features: 1,
                vmm_type: VmmType::Qemu,
            },
            _ => PlatformSpec::Tdx {
                page_add_order: PageAddOrder::SinglePass,
                qemu_patches_kernel_header: true,
                initrd_token: InitrdToken::Append,
            },
        };
        Launch {
            spec: VmSpec {
                platform: spec_platform,
                firmware: "/img/firmware.fd".into(),
                kernel: Some("/img/vmlinuz".into()),
                initrd: Some("/img/initrd.img".into()),
                cmdline: Some("console=ttyS0".into()),
                memory: 2 << 30,
                vcpus: 4,
            },
            platform,
            accelerator: Accelerator::Kvm,
            model_disk: Some("/img/model.img".into()),
            gpus: vec!["0000:17:00.0".into(), "0000:65:00.0".into()],
            host_port: 40001,
            guest_port: 8443,
            qmp_socket: "/run/c/qmp.sock".into(),
            serial_log: "/run/c/serial.log".into(),
            snp_host: Some(SnpHost {
                cbitpos: 51,
                reduced_phys_bits: 1,
            }),
            snp_policy: 0x30000,
            snp_host_data: None,
            snp_id_block: None,
            mr_config_id: Some("ab".repeat(48)),
            vsock_cid: 3,
        }
    }

    fn has(args: &[String], pair: [&str; 2]) -> bool {
        args.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1])
    }

    #[test]
    fn tdx_command() -> Result<(), String> {
        let a = command(&launch(PlatformKind::Tdx))?;
        assert!(has(
            &a,
            [
                "-machine",
                "q35,accel=kvm,hpet=off,kernel-irqchip=split,confidential-guest-support=tdx0"
            ]
        ));
        assert!(has(&a, ["-bios", "/img/firmware.fd"]));
        assert!(has(&a, ["-cpu", "host"]));
        let obj = a
            .iter()
            .find(|x| x.contains("tdx-guest"))
            .ok_or("no tdx-guest object")?;
        let v: serde_json::Value = serde_json::from_str(obj).map_err(|e| e.to_string())?;
        assert_eq!(v["quote-generation-socket"]["type"], "vsock");
        assert_eq!(v["mrconfigid"].as_str().map(str::len), Some(64));
        // GPUs: one root port each, iommufd, a 64-bit window for their BARs.
        assert!(has(
            &a,
            [
                "-device",
                "vfio-pci,host=0000:65:00.0,bus=gpurp1,iommufd=iommufd0"
            ]
        ));
        assert!(has(
            &a,
            ["-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=589824"]
        ));
        assert!(has(
            &a,
            [
                "-drive",
                "file=/img/model.img,format=raw,if=none,id=model,readonly=on"
            ]
        ));
        assert!(has(&a, ["-append", "console=ttyS0"]));
        Ok(())
    }

    #[test]
    fn snp_command() -> Result<(), String> {
        let a = command(&launch(PlatformKind::Snp))?;
        assert!(has(&a, ["-object", "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on"]));
        assert!(has(&a, ["-cpu", "EPYC-Milan"]));
        assert!(has(
            &a,
            [
                "-object",
                "memory-backend-memfd,id=ram0,size=2048M,share=true,prealloc=false"
            ]
        ));
        let mut no_sev = launch(PlatformKind::Snp);
        no_sev.snp_host = None;
        assert!(command(&no_sev).is_err());
        // HOST_DATA and an ID block, base64 as QEMU takes them.
        let mut l = launch(PlatformKind::Snp);
        l.snp_host_data = Some([0xfa; 32]);
        l.snp_id_block = Some(SnpIdBlock {
            id_block: vec![1; 96],
            id_auth: vec![2; 4096],
            author_key_enabled: true,
            id_key_digest: [3; 48],
            author_key_digest: None,
        });
        let a = command(&l)?;
        let obj = a
            .iter()
            .find(|x| x.starts_with("sev-snp-guest,"))
            .ok_or("no sev-snp-guest")?;
        let prop = |name: &str| {
            obj.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let decoded = |name: &str| prop(name).and_then(|v| b64.decode(v).ok());
        assert_eq!(decoded("host-data"), Some(vec![0xfa; 32]));
        assert_eq!(decoded("id-block"), Some(vec![1; 96]));
        assert_eq!(decoded("id-auth"), Some(vec![2; 4096]));
        assert_eq!(prop("author-key-enabled").as_deref(), Some("on"));
        Ok(())
    }

    #[test]
    fn sev_capabilities_replies() {
        // The example reply of QEMU's QAPI schema (qapi/misc-target.json), and Milan's values.
        let ok = serde_json::json!({"return": {"pdh": "8CCDD8DDD", "cert-chain": "888CCCDDDEE",
            "cpu0-id": "2lvmGwo+", "cbitpos": 47, "reduced-phys-bits": 1}});
        let c = SevCapabilities::from_qmp(&ok).expect("capabilities");
        assert_eq!((c.cbitpos, c.reduced_phys_bits), (47, 1));
        assert_eq!(c.cpu0_id, "2lvmGwo+");
        let err = serde_json::json!({"error": {"class": "GenericError", "desc": "SEV is not enabled in KVM"}});
        let e = SevCapabilities::from_qmp(&err).expect_err("error");
        assert_eq!(e, "QEMU: SEV is not enabled in KVM");
        let mut bad = ok.clone();
        bad["return"]["cbitpos"] = serde_json::json!(7);
        assert!(SevCapabilities::from_qmp(&bad).is_err());
        let mut missing = ok;
        if let Some(o) = missing["return"].as_object_mut() {
            o.remove("cpu0-id");
        }
        assert!(SevCapabilities::from_qmp(&missing)
            .expect_err("missing")
            .contains("cpu0-id"));
    }

    /// The real QMP exchange with the QEMU on this machine (TCG: no KVM here, so QEMU answers
    /// with its error, which must come back as an error, not as capabilities).
    #[test]
    fn sev_capabilities_from_a_real_qemu() {
        let qemu = std::path::Path::new("qemu-system-x86_64");
        if QemuVersion::of(qemu).is_err() {
            if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() {
                panic!("qemu-system-x86_64 is not installed");
            }
            eprintln!("SKIPPED: qemu-system-x86_64 not installed");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let r = rt.block_on(query_sev_capabilities(
            qemu,
            Accelerator::Tcg,
            std::time::Duration::from_secs(30),
        ));
        let e = r.expect_err("TCG has no SEV");
        assert!(e.starts_with("QEMU: ") && e.contains("KVM"), "{e}");
        let r = rt.block_on(query_sev_capabilities(
            std::path::Path::new("/nonexistent/qemu"),
            Accelerator::Tcg,
            std::time::Duration::from_secs(5),
        ));
        assert!(r.expect_err("no binary").contains("/nonexistent/qemu"));
    }

    #[test]
    fn plain_tcg_command() -> Result<(), String> {
        let mut l = launch(PlatformKind::None);
        l.accelerator = Accelerator::Tcg;
        l.gpus.clear();
        let a = command(&l)?;
        assert!(has(&a, ["-machine", "q35,accel=tcg,hpet=off"]));
        assert!(has(&a, ["-cpu", "max,la57=off"]));
        assert!(!a.iter().any(|x| x == "-bios" || x.contains("vsock")));
        assert!(has(
            &a,
            [
                "-netdev",
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40001-:8443"
            ]
        ));
        Ok(())
    }

    #[test]
    fn versions() {
        let v =
            QemuVersion::parse("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)");
        assert_eq!(v, Some(QemuVersion(7, 2, 22)));
        let v7 = QemuVersion(7, 2, 22);
        let e = check_support(v7, PlatformKind::Tdx, 0)
            .err()
            .unwrap_or_default();
        assert!(e.contains("needs QEMU 10.1.0"), "{e}");
        assert!(check_support(v7, PlatformKind::Snp, 0).is_err());
        assert!(check_support(v7, PlatformKind::None, 0).is_ok());
        assert!(check_support(v7, PlatformKind::None, 1).is_err());
        assert!(check_support(QemuVersion(10, 1, 0), PlatformKind::Tdx, 8).is_ok());
        assert!(check_support(QemuVersion(9, 1, 2), PlatformKind::Snp, 1).is_ok());
    }
}
