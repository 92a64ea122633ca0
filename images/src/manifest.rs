//! The image manifest: every component with its SHA-256, the command line, the guest
//! configuration, the initramfs listing, and the expected measurements for each VM shape.
//! `verify` recomputes all of it from the files; `policy` emits a verifier policy that accepts
//! exactly this image.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrysalis_attestation::measure::{InitrdToken, PageAddOrder, PlatformSpec, VmSpec, VmmType};
use chrysalis_attestation::policy::{PolicyFile, SimulatedFile, SnpFile, TcbFile, TdxFile};
use chrysalis_attestation::Platform;
use chrysalis_proto::guest::{GuestConfig, GUEST_CONFIG_PATH};
use serde::{Deserialize, Serialize};

use crate::build::files;
use crate::cpio::Node;
use crate::fetch::sha256_hex;
use crate::recipe::{Compression, ModelPlacement, Shape};
use crate::ImageError;

/// Format tag of the manifest.
pub const MANIFEST_FORMAT: &str = "chrysalis-image-manifest/v1";

/// A file of the image directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// File name in the image directory.
    pub file: String,
    /// SHA-256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The pinned package it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PackageRef>,
}

/// A file's origin in a pinned Debian package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    /// Package name.
    pub package: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the `.deb`.
    pub deb_sha256: String,
    /// Path inside the package.
    pub path: String,
}

/// One entry of the initramfs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitrdEntry {
    /// Path (no leading `/`).
    pub path: String,
    /// `dir`, `file`, `symlink -> TARGET` or `chardev MAJ:MIN`.
    pub kind: String,
    /// Permission bits, octal.
    pub mode: String,
    /// SHA-256 of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl InitrdEntry {
    pub(crate) fn of((path, node, mode): (&String, &Node, u32)) -> Self {
        let (kind, sha256) = match node {
            Node::Dir => ("dir".to_string(), None),
            Node::File(d) => ("file".to_string(), Some(sha256_hex(d))),
            Node::Symlink(t) => (format!("symlink -> {t}"), None),
            Node::CharDev(a, b) => (format!("chardev {a}:{b}"), None),
        };
        InitrdEntry {
            path: path.clone(),
            kind,
            mode: format!("{mode:04o}"),
            sha256,
        }
    }
}

/// The enclave binary (it is `/init` in the initramfs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnclaveRef {
    /// SHA-256, hex.
    pub sha256: String,
    /// SHA-384, hex (the simulator measures it).
    pub sha384: String,
    /// Service arguments from the recipe.
    pub args: Vec<String>,
}

/// The model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// SHA-256 of the model file.
    pub sha256: String,
    /// Where it is.
    pub placement: ModelPlacement,
}

/// A VM shape the manifest publishes measurements for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSpec {
    /// `tdx` or `snp`.
    pub platform: String,
    /// Memory in bytes.
    pub memory: u64,
    /// vCPU counts.
    pub vcpus: Vec<u32>,
    /// SNP vCPU types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_types: Vec<String>,
}

impl From<Shape> for ShapeSpec {
    fn from(s: Shape) -> Self {
        ShapeSpec {
            memory: crate::recipe::parse_size(&s.memory).unwrap_or(0),
            platform: s.platform,
            vcpus: s.vcpus,
            cpu_types: s.cpu_types,
        }
    }
}

/// Expected TDX registers for a memory size (MRTD, RTMR1 and RTMR2 do not depend on vCPUs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxExpected {
    /// Memory in bytes.
    pub memory: u64,
    /// vCPU counts this holds for.
    pub vcpus: Vec<u32>,
    /// MRTD.
    pub mr_td: String,
    /// RTMR0..3; null where not predicted.
    pub rtmr: [Option<String>; 4],
    /// How the VMM and firmware were assumed to measure.
    pub assumptions: String,
}

/// Expected SNP launch digest for one shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpExpected {
    /// Memory in bytes (not measured by SNP; recorded for the launcher).
    pub memory: u64,
    /// vCPU count.
    pub vcpus: u32,
    /// vCPU type.
    pub cpu_type: String,
    /// MEASUREMENT, hex.
    pub measurement: String,
}

/// All expected measurements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// TDX shapes.
    pub tdx: Vec<TdxExpected>,
    /// SNP shapes.
    pub snp: Vec<SnpExpected>,
    /// The development simulator's measurement of this image launched with platform `none`
    /// (command line plus `chrysalis.tee=simulated`). NOT CONFIDENTIAL.
    pub simulated: String,
    /// What was not computed, and why.
    pub notes: Vec<String>,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// Image name.
    pub name: String,
    /// SHA-256 of the recipe file.
    pub recipe_sha256: String,
    /// Timestamp of every initramfs entry.
    pub source_date_epoch: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// Initramfs compression.
    pub compression: Compression,
    /// Files of the image directory by role (`kernel`, `initrd`, `firmware_tdx`, ...).
    pub components: BTreeMap<String, Component>,
    /// The enclave binary.
    pub enclave: EnclaveRef,
    /// The model.
    pub model: Option<ModelRef>,
    /// Shared libraries in the initramfs.
    pub libraries: Vec<PackageRef>,
    /// The guest configuration in the initramfs.
    pub guest: GuestConfig,
    /// Every initramfs entry.
    pub initramfs: Vec<InitrdEntry>,
    /// VM shapes.
    pub shapes: Vec<ShapeSpec>,
    /// Why no SNP firmware is part of the image, when none is.
    pub snp_firmware_note: Option<String>,
    /// Expected measurements.
    pub measurements: Expected,
}

/// What `image verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// What was checked and matched.
    pub checked: Vec<String>,
    /// Every mismatch, naming the component.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// No problem found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The TDX VMM and firmware behaviour the manifest assumes: upstream KVM's single-pass page
/// add, QEMU patching the setup header, edk2 (before 202505) appending the initrd token.
pub fn tdx_platform() -> PlatformSpec {
    PlatformSpec::Tdx {
        page_add_order: PageAddOrder::SinglePass,
        qemu_patches_kernel_header: true,
        initrd_token: InitrdToken::Append,
    }
}

const TDX_ASSUMPTIONS: &str = "single-pass page add (upstream KVM), QEMU-patched setup header, \
                               initrd token appended (edk2 before 202505)";

impl Manifest {
    /// Read `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join(files::MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| ImageError::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| ImageError::Manifest(format!("{}: {e}", path.display())))?;
        if m.format != MANIFEST_FORMAT {
            return Err(ImageError::Manifest(format!(
                "format {:?}, expected {MANIFEST_FORMAT:?}",
                m.format
            )));
        }
        Ok(m)
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<String, ImageError> {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .map_err(|e| ImageError::Manifest(e.to_string()))
    }

    /// The path of a component (`kernel`, `initrd`, `model_disk`, ...) in the image directory.
    pub fn file(&self, dir: &Path, role: &str) -> Option<PathBuf> {
        self.components.get(role).map(|c| dir.join(&c.file))
    }

    /// The `VmSpec` of this image in a VM shape: what the host agent launches and what the
    /// measurement code predicts, from one value.
    pub fn vm_spec(
        &self,
        dir: &Path,
        platform: PlatformSpec,
        memory: u64,
        vcpus: u32,
    ) -> Result<VmSpec, ImageError> {
        let role = match platform {
            PlatformSpec::Snp { .. } => "firmware_snp",
            PlatformSpec::Tdx { .. } => "firmware_tdx",
        };
        let firmware = self.file(dir, role).ok_or_else(|| {
            ImageError::Manifest(format!(
                "the image has no {role}{}",
                self.snp_firmware_note
                    .as_ref()
                    .filter(|_| role == "firmware_snp")
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ))
        })?;
        Ok(VmSpec {
            platform,
            firmware,
            kernel: self.file(dir, "kernel"),
            initrd: self.file(dir, "initrd"),
            cmdline: Some(self.cmdline.clone()),
            memory,
            vcpus,
        })
    }

    /// Compute the expected measurements from the files in `dir`.
    pub fn compute_measurements(&self, dir: &Path) -> Result<Expected, ImageError> {
        let mut out = Expected::default();
        let enclave_sha384 = crate::manifest::hex48(&self.enclave.sha384)?;
        out.simulated = hex::encode(chrysalis_attestation::simulated::image_measurement(
            &enclave_sha384,
            &simulated_cmdline(&self.cmdline),
        ));
        for shape in &self.shapes {
            match shape.platform.as_str() {
                "tdx" => {
                    let spec = self.vm_spec(dir, tdx_platform(), shape.memory, 1)?;
                    let m = spec.measure_tdx()?;
                    out.tdx.push(TdxExpected {
                        memory: shape.memory,
                        vcpus: shape.vcpus.clone(),
                        mr_td: m.mr_td,
                        rtmr: m.rtmr,
                        assumptions: TDX_ASSUMPTIONS.into(),
                    });
                    for n in m.notes {
                        if !out.notes.contains(&n) {
                            out.notes.push(n);
                        }
                    }
                }
                "snp" => {
                    if !self.components.contains_key("firmware_snp") {
                        let n = format!(
                            "snp: no launch digest: the image has no SNP firmware ({})",
                            self.snp_firmware_note.as_deref().unwrap_or("none named")
                        );
                        if !out.notes.contains(&n) {
                            out.notes.push(n);
                        }
                        continue;
                    }
                    for cpu in &shape.cpu_types {
                        for &vcpus in &shape.vcpus {
                            let platform = PlatformSpec::Snp {
                                vcpu_type: cpu.clone(),
                                guest_features: 0x1,
                                vmm_type: VmmType::Qemu,
                            };
                            let spec = self.vm_spec(dir, platform, shape.memory, vcpus)?;
                            out.snp.push(SnpExpected {
                                memory: shape.memory,
                                vcpus,
                                cpu_type: cpu.clone(),
                                measurement: hex::encode(spec.measure_snp()?),
                            });
                        }
                    }
                }
                other => {
                    return Err(ImageError::Manifest(format!("shape platform {other:?}")));
                }
            }
        }
        Ok(out)
    }

    /// Recompute every hash and measurement from the files in `dir` and compare.
    pub fn verify(&self, dir: &Path) -> VerifyReport {
        let mut r = VerifyReport::default();
        for (role, c) in &self.components {
            let path = dir.join(&c.file);
            match std::fs::read(&path) {
                Ok(data) => {
                    let got = sha256_hex(&data);
                    if got == c.sha256 && data.len() as u64 == c.size {
                        r.checked.push(format!("{role} ({}): sha256 {got}", c.file));
                    } else {
                        r.problems.push(format!(
                            "{role} ({}) changed: sha256 {got}, the manifest says {}",
                            c.file, c.sha256
                        ));
                    }
                }
                Err(e) => r.problems.push(format!("{role} ({}): {e}", c.file)),
            }
        }
        match self.read_initrd(dir) {
            Ok(entries) => self.verify_initrd(&entries, &mut r),
            Err(e) => r.problems.push(format!("initrd: {e}")),
        }
        match self.compute_measurements(dir) {
            Ok(m) if m == self.measurements => r
                .checked
                .push("expected measurements recomputed: equal".into()),
            Ok(m) => r
                .problems
                .extend(measurement_differences(&self.measurements, &m)),
            Err(e) => r.problems.push(format!("measurements: {e}")),
        }
        r
    }

    fn read_initrd(&self, dir: &Path) -> Result<Vec<(String, u32, Vec<u8>)>, ImageError> {
        let path = self
            .file(dir, "initrd")
            .ok_or_else(|| ImageError::Manifest("no initrd component".into()))?;
        let raw = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
        let newc = match self.compression {
            Compression::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(raw.as_slice())
                    .read_to_end(&mut out)
                    .map_err(|e| ImageError::Manifest(format!("initrd: gzip: {e}")))?;
                out
            }
            Compression::None => raw,
        };
        crate::cpio::parse_newc(&newc)
    }

    fn verify_initrd(&self, entries: &[(String, u32, Vec<u8>)], r: &mut VerifyReport) {
        let listed: BTreeMap<&str, &InitrdEntry> = self
            .initramfs
            .iter()
            .map(|e| (e.path.as_str(), e))
            .collect();
        let mut seen = 0;
        for (path, mode, data) in entries {
            let Some(want) = listed.get(path.as_str()) else {
                r.problems
                    .push(format!("initrd: {path} is not in the manifest"));
                continue;
            };
            seen += 1;
            let is_file = mode & 0o170000 == 0o100000;
            if format!("{:04o}", mode & 0o7777) != want.mode {
                r.problems.push(format!(
                    "initrd: {path}: mode {:04o}, the manifest says {}",
                    mode & 0o7777,
                    want.mode
                ));
            }
            if is_file && want.sha256.as_deref() != Some(sha256_hex(data).as_str()) {
                let what = match path.as_str() {
                    "init" => " (the enclave binary)",
                    p if p == GUEST_CONFIG_PATH.trim_start_matches('/') => {
                        " (the guest configuration)"
                    }
                    _ => "",
                };
                r.problems.push(format!("initrd: {path}{what} changed"));
            }
            if path == "init" && sha256_hex(data) != self.enclave.sha256 {
                r.problems
                    .push("initrd: init is not the enclave binary the manifest names".into());
            }
            if path == GUEST_CONFIG_PATH.trim_start_matches('/') {
                let parsed = std::str::from_utf8(data)
                    .map_err(|e| e.to_string())
                    .and_then(GuestConfig::from_json);
                if parsed.as_ref() != Ok(&self.guest) {
                    r.problems
                        .push("initrd: the guest configuration differs from the manifest's".into());
                }
            }
        }
        if seen != self.initramfs.len() {
            r.problems.push(format!(
                "initrd: {} entries of the manifest are missing",
                self.initramfs.len() - seen
            ));
        }
        if r.problems.iter().all(|p| !p.starts_with("initrd:")) {
            r.checked.push(format!(
                "initrd: {} entries match the manifest (enclave sha256 {})",
                entries.len(),
                self.enclave.sha256
            ));
        }
    }

    /// A verifier policy (TOML) that accepts exactly this image: TDX MRTD with RTMR1 and RTMR2,
    /// SNP launch digests, and the simulator only when `allow_simulated`.
    pub fn policy(&self, allow_simulated: bool) -> Result<String, ImageError> {
        let mut platforms = Vec::new();
        let mut file = PolicyFile {
            version: 1,
            platforms: Vec::new(),
            report_data: None,
            tcb: TcbFile::default(),
            tdx: None,
            snp: None,
            simulated: None,
            gpu: None,
        };
        if !self.measurements.tdx.is_empty() {
            let mut mr_td = Vec::new();
            let mut rtmr1 = Vec::new();
            let mut rtmr2 = Vec::new();
            for t in &self.measurements.tdx {
                push_unique(&mut mr_td, Some(t.mr_td.clone()));
                push_unique(&mut rtmr1, t.rtmr[1].clone());
                push_unique(&mut rtmr2, t.rtmr[2].clone());
            }
            if rtmr1.is_empty() || rtmr2.is_empty() {
                return Err(ImageError::Manifest(
                    "the manifest has no RTMR1/RTMR2: a policy on MRTD alone would accept any kernel".into(),
                ));
            }
            platforms.push(Platform::Tdx);
            file.tdx = Some(TdxFile {
                mr_td,
                rtmr1: Some(rtmr1),
                rtmr2: Some(rtmr2),
                ..Default::default()
            });
        }
        if !self.measurements.snp.is_empty() {
            let mut measurement = Vec::new();
            for s in &self.measurements.snp {
                push_unique(&mut measurement, Some(s.measurement.clone()));
            }
            platforms.push(Platform::Snp);
            file.snp = Some(SnpFile {
                measurement,
                ..Default::default()
            });
        }
        if allow_simulated {
            platforms.push(Platform::Simulated);
            file.simulated = Some(SimulatedFile {
                measurement: vec![self.measurements.simulated.clone()],
                config_digest: None,
            });
        }
        if platforms.is_empty() {
            return Err(ImageError::Manifest(
                "no measurements to pin (no TDX or SNP shape); pass --allow-simulated for the simulator".into(),
            ));
        }
        file.platforms = platforms;
        let body = toml::to_string(&file).map_err(|e| ImageError::Manifest(e.to_string()))?;
        Ok(format!(
            "# Accepts exactly the image {} (manifest recipe sha256 {}).\n# Emitted by `chrysalis image policy`.{}\n{body}",
            self.name,
            self.recipe_sha256,
            if allow_simulated {
                "\n# WARNING: names the SIMULATED platform, which is NOT CONFIDENTIAL (development only)."
            } else {
                ""
            }
        ))
    }
}

/// The command line of the image launched in the simulator (platform `none`).
pub fn simulated_cmdline(cmdline: &str) -> String {
    let token = chrysalis_proto::guest::SIMULATED_CMDLINE_TOKEN;
    if cmdline.is_empty() {
        token.to_string()
    } else {
        format!("{cmdline} {token}")
    }
}

fn push_unique(list: &mut Vec<String>, v: Option<String>) {
    if let Some(v) = v {
        if !list.contains(&v) {
            list.push(v);
        }
    }
}

pub(crate) fn hex48(s: &str) -> Result<[u8; 48], ImageError> {
    let v = hex::decode(s).map_err(|e| ImageError::Manifest(format!("{s:?}: {e}")))?;
    v.try_into()
        .map_err(|_| ImageError::Manifest(format!("{s:?}: expected 48 bytes")))
}

fn measurement_differences(want: &Expected, got: &Expected) -> Vec<String> {
    let mut out = Vec::new();
    if want.simulated != got.simulated {
        out.push(format!(
            "simulated measurement: recomputed {}, the manifest says {}",
            got.simulated, want.simulated
        ));
    }
    for (w, g) in want.tdx.iter().zip(&got.tdx) {
        if w.mr_td != g.mr_td {
            out.push(format!(
                "tdx mr_td (firmware): recomputed {}, the manifest says {}",
                g.mr_td, w.mr_td
            ));
        }
        for i in 0..4 {
            if w.rtmr.get(i) != g.rtmr.get(i) {
                let what = ["", " (kernel)", " (command line, initrd)", ""]
                    .get(i)
                    .copied()
                    .unwrap_or("");
                out.push(format!("tdx rtmr{i}{what} differs for memory {}", w.memory));
            }
        }
    }
    for (w, g) in want.snp.iter().zip(&got.snp) {
        if w.measurement != g.measurement {
            out.push(format!(
                "snp measurement ({} x{} {}): recomputed {}, the manifest says {}",
                w.cpu_type, w.vcpus, w.memory, g.measurement, w.measurement
            ));
        }
    }
    if want.tdx.len() != got.tdx.len() || want.snp.len() != got.snp.len() || want.notes != got.notes
    {
        out.push("the set of measured shapes differs from the manifest's".into());
    }
    if out.is_empty() {
        out.push("expected measurements differ from the manifest's".into());
    }
    out
}
