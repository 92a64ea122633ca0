//! Reproduce measurements offline: TDX MRTD and RTMRs, the SEV-SNP launch digest, event-log
//! replay. From the files of a VM image and the shape of the VM, compute what the hardware will
//! report, so a quote can be checked against a rebuilt image.
//!
//! This module reads the files a [`VmSpec`] names and nothing else; everything else is pure.
//! The SNP launch digest is the `sev` crate's (`measurement::snp`), which we build on rather
//! than copy. MRTD, RTMR1/RTMR2 and event-log replay are ours, from the Intel TDX module ABI, the
//! TDVF design guide, PE/COFF Authenticode and the TCG PC Client firmware profile (see
//! `shared/specs/attestation-formats.md`).

pub mod eventlog;
pub mod kernel;
pub mod rtmr0;
pub mod sha384_pages;
pub mod snp_id;
pub mod tdvf;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};
use thiserror::Error;

pub use kernel::KernelLoad;
pub use rtmr0::AcpiDigests;
pub use tdvf::PageAddOrder;

/// Why a measurement could not be computed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// A named file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Firmware without the metadata needed.
    #[error("firmware: {0}")]
    Firmware(String),
    /// A kernel that cannot be measured.
    #[error("kernel: {0}")]
    Kernel(String),
    /// An event log that cannot be replayed.
    #[error("event log: {0}")]
    EventLog(String),
    /// The SNP launch digest calculation failed.
    #[error("SNP launch digest: {0}")]
    Snp(String),
    /// The VM description is inconsistent.
    #[error("VM spec: {0}")]
    Spec(String),
}

/// The confidential platform a VM is launched on, with its platform-specific shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "platform")]
pub enum PlatformSpec {
    /// Intel TDX.
    Tdx {
        /// Page-add order of the VMM.
        page_add_order: PageAddOrder,
        /// Whether QEMU patches the kernel setup header before OVMF measures it.
        qemu_patches_kernel_header: bool,
        /// The edk2 ordering of the initrd token on the command line.
        initrd_token: InitrdToken,
    },
    /// AMD SEV-SNP.
    Snp {
        /// vCPU model (`EPYC-Milan`, `EPYC-Genoa`, ...), as QEMU names it.
        vcpu_type: String,
        /// SEV features in the VMSA (`guest_features`), e.g. 0x1 for SNP only.
        guest_features: u64,
        /// VMM that builds the VMSAs.
        vmm_type: VmmType,
    },
}

/// Where OVMF puts the initrd token in the measured command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitrdToken {
    /// `cmdline + " initrd=initrd"` (edk2 before 202505).
    Append,
    /// `"initrd=initrd " + cmdline` (newer edk2).
    Prepend,
}

/// The VMM type for the SNP VMSA layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmType {
    /// QEMU.
    Qemu,
    /// AWS EC2. Not claimed: the two reference implementations disagree on it.
    Ec2,
    /// Google GCE (QEMU-compatible VMSA).
    Gce,
}

/// One description of a confidential VM, shared by the measurement code and (later) the host
/// agent's QEMU command builder, so what is launched and what is predicted cannot drift apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Platform and its shape.
    pub platform: PlatformSpec,
    /// OVMF / TDVF firmware image.
    pub firmware: PathBuf,
    /// Kernel for direct boot.
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPU count.
    pub vcpus: u32,
}

/// A memory size: bytes, or a number with K, M, G or T (binary units). `None` when it is not
/// a positive size.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return None,
            };
            (t.get(..i)?, m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
}

/// The last `n` bytes of a file (all of it when it is shorter).
fn read_tail(path: &std::path::Path, n: u64) -> Result<Vec<u8>, MeasureError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| MeasureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(n))).map_err(io)?;
    let mut tail = Vec::with_capacity(usize::try_from(n.min(len)).unwrap_or(0));
    f.read_to_end(&mut tail).map_err(io)?;
    Ok(tail)
}

/// OVMF's footer GUID table entry for the SEV kernel-hashes table.
const SEV_HASH_TABLE_GUID: [u8; 16] = tdvf::guid(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// OVMF's footer GUID table entry holding the SEV metadata's offset from the end of the image.
const SEV_METADATA_GUID: [u8; 16] = tdvf::guid(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// The most of the firmware's tail that [`SevFirmwareView`] reads (OVMF keeps its footer table
/// and SEV metadata in the reset-vector page; this leaves room for much larger ones).
const SEV_VIEW_MAX: u64 = 64 << 10;

/// What `sev` is given as the firmware. `sev` takes a path and reads the whole image, but when
/// the pages' digest is handed to it (as here) it uses only the footer GUID table and the SEV
/// metadata, which it finds by their offsets from the end of the image; the image's length
/// matters nowhere else. So it is given the image's last pages, up to and including the
/// metadata, in an in-memory file: reading 2–4 MiB into a fresh buffer was a fifth of the
/// command's time. Where no in-memory file can be made (not Linux, no /proc), it is given the
/// file itself; the digest is the same either way (tested against `sev` reading the whole image,
/// and against `sev-snp-measure`).
enum SevFirmwareView {
    Whole(PathBuf),
    #[cfg(target_os = "linux")]
    Tail {
        path: PathBuf,
        // Keeps the memfd open while `sev` opens it through /proc/self/fd.
        _file: std::fs::File,
    },
}

impl SevFirmwareView {
    /// `tail`: the image's last [`SEV_VIEW_MAX`] bytes (all of it when smaller); more is read
    /// when the metadata lies further back.
    fn new(firmware: &std::path::Path, tail: &[u8]) -> Result<Self, MeasureError> {
        let Some(meta) = tdvf::footer_entry(tail, &SEV_METADATA_GUID)? else {
            // `sev` reports the missing metadata itself.
            return Ok(Self::Whole(firmware.to_path_buf()));
        };
        let from_end = crate::bytes::le_u32_at(meta, 0)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| MeasureError::Firmware("SEV metadata footer entry too short".into()))?;
        // Metadata further back than the tail read so far: read back as far as it.
        let longer;
        let tail = if from_end > tail.len() && tail.len() as u64 == SEV_VIEW_MAX {
            longer = read_tail(firmware, from_end as u64)?;
            &longer[..]
        } else {
            tail
        };
        // Checked here because `sev` indexes these without bounds checks (it would panic): the
        // header (signature, size, version, item count), then 12-byte section descriptors, all
        // before the end of the image.
        let start = tail.len().checked_sub(from_end).ok_or_else(|| {
            MeasureError::Firmware(format!(
                "SEV metadata at {from_end} bytes from the end of a {}-byte image",
                tail.len()
            ))
        })?;
        let field = |at: usize| crate::bytes::le_u32_at(tail, start + at).map(|n| n as usize);
        let (size, items) = field(4).zip(field(12)).ok_or_else(|| {
            MeasureError::Firmware("SEV metadata header runs past the end of the image".into())
        })?;
        if size > from_end || items.saturating_mul(12).saturating_add(16) > size {
            return Err(MeasureError::Firmware(format!(
                "SEV metadata of {size} bytes with {items} sections does not fit the image"
            )));
        }
        // Whole pages, so nothing else shifts; the footer table is in the last page.
        let want = from_end.max(4096).next_multiple_of(4096).min(tail.len());
        let pages = tail.get(tail.len() - want..).unwrap_or(tail);
        Ok(Self::in_memory(pages).unwrap_or_else(|| Self::Whole(firmware.to_path_buf())))
    }

    #[cfg(target_os = "linux")]
    fn in_memory(pages: &[u8]) -> Option<Self> {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;
        let fd = rustix::fs::memfd_create(c"chrysalis-ovmf-tail", rustix::fs::MemfdFlags::CLOEXEC)
            .ok()?;
        let mut file = std::fs::File::from(fd);
        file.write_all(pages).ok()?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        path.exists().then_some(Self::Tail { path, _file: file })
    }

    #[cfg(not(target_os = "linux"))]
    fn in_memory(_pages: &[u8]) -> Option<Self> {
        None
    }

    fn path(&self) -> &PathBuf {
        match self {
            Self::Whole(path) => path,
            #[cfg(target_os = "linux")]
            Self::Tail { path, .. } => path,
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, MeasureError> {
    std::fs::read(path).map_err(|source| MeasureError::Io {
        path: path.clone(),
        source,
    })
}

/// The expected registers of a TD. `None` where an input for that register was not given (RTMR0
/// needs the digests of QEMU's ACPI tables for the machine shape) or it is not known offline
/// (RTMR3 is extended by the enclave at run time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdxMeasurement {
    /// MRTD, hex.
    pub mr_td: String,
    /// RTMR0..3, hex or null.
    pub rtmr: [Option<String>; 4],
    /// Page-add order used.
    pub page_add_order: PageAddOrder,
    /// The events predicted for RTMR0 (when computed), RTMR1 and RTMR2.
    pub events: Vec<eventlog::Event>,
    /// What was not computed, and why.
    pub notes: Vec<String>,
}

/// The SNP launch digest after the firmware's pages are added as normal pages at the top of
/// the 4 GiB space (what `sev` accepts as `ovmf_hash_str`). Each page's SHA-384 is independent
/// of the others, so those are computed on all cores; only the PAGE_INFO chain is sequential.
/// Equal to `sev::measurement::snp::calc_snp_ovmf_hash` (tested on real firmware in
/// `tests/measure_real.rs`).
pub fn snp_firmware_pages_digest(firmware: &[u8]) -> Result<[u8; 48], MeasureError> {
    let len = u64::try_from(firmware.len()).unwrap_or(u64::MAX);
    pages_digest(len, &|offset, buf| {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = firmware
            .get(start..start.saturating_add(buf.len()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    })
    .map_err(|e| match e {
        PagesError::Measure(m) => m,
        PagesError::Io(io) => MeasureError::Firmware(io.to_string()),
    })
}

/// [`snp_firmware_pages_digest`] of a file, read in blocks into small reused buffers (no copy
/// of the whole image in memory).
#[cfg(unix)]
pub fn snp_firmware_file_pages_digest(path: &PathBuf) -> Result<[u8; 48], MeasureError> {
    use std::os::unix::fs::FileExt;
    let io = |source| MeasureError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    pages_digest(len, &|offset, buf| file.read_exact_at(buf, offset)).map_err(|e| match e {
        PagesError::Measure(m) => m,
        PagesError::Io(source) => io(source),
    })
}

/// [`snp_firmware_pages_digest`] of a file, read whole (no positioned reads here).
#[cfg(not(unix))]
pub fn snp_firmware_file_pages_digest(path: &PathBuf) -> Result<[u8; 48], MeasureError> {
    snp_firmware_pages_digest(&read(path)?)
}

enum PagesError {
    Measure(MeasureError),
    Io(std::io::Error),
}

/// Pages per block a worker reads and hashes at a time (64 KiB).
const PAGES_PER_BLOCK: u64 = 16;

/// A page-reading function: fill `buf` from byte `offset` of the image.
type ReadAt<'a> = &'a (dyn Fn(u64, &mut [u8]) -> std::io::Result<()> + Sync);

/// The page-digest chain over `len` bytes that `read(offset, buf)` provides.
///
/// Workers claim 64 KiB blocks from a shared counter and this thread works too; once no block is
/// left to claim, this thread chains the PAGE_INFO digests in page order, waiting only for blocks
/// a helper is still hashing. A helper that the scheduler starts late, or puts on this thread's
/// core (some VM kernels pack threads onto few vCPUs), then just does fewer blocks, and the
/// sequential chain overlaps the helpers' last blocks.
fn pages_digest(len: u64, read: ReadAt<'_>) -> Result<[u8; 48], PagesError> {
    if len == 0 || len % PAGE != 0 || len > 1 << 32 {
        return Err(PagesError::Measure(MeasureError::Firmware(format!(
            "firmware size {len} is not a whole number of 4 KiB pages below 4 GiB"
        ))));
    }
    let pages = len / PAGE;
    let blocks = pages.div_ceil(PAGES_PER_BLOCK);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    type Slot = std::sync::OnceLock<std::io::Result<Vec<[u8; 48]>>>;
    let slots: Vec<Slot> = (0..blocks).map(|_| Slot::new()).collect();
    let next_block = std::sync::atomic::AtomicU64::new(0);
    let work = || {
        let mut hasher = BlockHasher::new();
        loop {
            let block = next_block.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = slots.get(block as usize) else {
                return;
            };
            let first_page = block * PAGES_PER_BLOCK;
            let n = (pages - first_page).min(PAGES_PER_BLOCK);
            let _ = slot.set(hasher.hash(read, first_page * PAGE, n as usize));
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        work();
        let chained = chain_page_digests(&slots, (1u64 << 32) - len, || {
            helpers.iter().all(|h| h.is_finished())
        });
        // Joined here, so a helper's panic is an error rather than the scope's panic.
        let panicked = helpers.into_iter().any(|h| h.join().is_err());
        match chained {
            Err(_) if panicked => Err(PagesError::Io(std::io::Error::other(
                "page digest worker panicked",
            ))),
            other => other,
        }
    })
}

/// Bytes in a page.
const PAGE: u64 = 4096;

/// The PAGE_INFO chain (SEV-SNP ABI, SNP_LAUNCH_UPDATE) over the firmware's pages as normal
/// pages from `gpa0`, taking each block's page digests as they are filled in.
fn chain_page_digests(
    slots: &[std::sync::OnceLock<std::io::Result<Vec<[u8; 48]>>>],
    gpa0: u64,
    helpers_done: impl Fn() -> bool,
) -> Result<[u8; 48], PagesError> {
    let mut ld = [0u8; 48];
    let mut gpa = gpa0;
    for slot in slots {
        let mut spins = 0u32;
        let block = loop {
            if let Some(block) = slot.get() {
                break block;
            }
            // A helper fills a slot before it returns, so a slot still empty once every helper
            // has returned will stay empty (one panicked).
            if helpers_done() && slot.get().is_none() {
                return Err(PagesError::Io(std::io::Error::other(
                    "page digest worker stopped",
                )));
            }
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        };
        let digests = block
            .as_ref()
            .map_err(|e| PagesError::Io(std::io::Error::new(e.kind(), e.to_string())))?;
        for contents in digests {
            // PAGE_INFO: the digest so far, the page's digest, length 0x70, page type 1
            // (normal), not IMI, VMPL permissions 0, the page's GPA.
            let mut info = [0u8; 0x70];
            let (prev, rest) = info.split_at_mut(48);
            prev.copy_from_slice(&ld);
            let (digest, tail) = rest.split_at_mut(48);
            digest.copy_from_slice(contents);
            let (head, gpa_bytes) = tail.split_at_mut(8);
            head.copy_from_slice(&[0x70, 0x00, 0x01, 0, 0, 0, 0, 0]);
            gpa_bytes.copy_from_slice(&gpa.to_le_bytes());
            ld = sha384(&info);
            gpa += PAGE;
        }
    }
    Ok(ld)
}

/// One worker's state: a reused 64 KiB buffer, and the digests of pages that are one byte
/// repeated (erased flash, 0xff, is common in firmware images), computed once per byte value.
struct BlockHasher {
    buf: Vec<u8>,
    uniform: [Option<[u8; 48]>; 256],
}

impl BlockHasher {
    fn new() -> Self {
        Self {
            buf: vec![0u8; (PAGE * PAGES_PER_BLOCK) as usize],
            uniform: [None; 256],
        }
    }

    /// The digests of the `n` pages from byte `offset`. Pages that are not one repeated byte go
    /// through [`sha384_pages`], several at a time.
    fn hash(&mut self, read: ReadAt<'_>, offset: u64, n: usize) -> std::io::Result<Vec<[u8; 48]>> {
        type Page<'p> = &'p [u8; sha384_pages::PAGE];
        let bytes = self
            .buf
            .get_mut(..n * PAGE as usize)
            .ok_or_else(|| std::io::Error::other("block buffer"))?;
        read(offset, bytes)?;
        let mut digests = vec![[0u8; 48]; n];
        let mut others: Vec<(usize, Page<'_>)> = Vec::with_capacity(n);
        for (i, page) in bytes
            .chunks_exact(PAGE as usize)
            .filter_map(|p| Page::try_from(p).ok())
            .enumerate()
        {
            let first = page[0];
            // 64 bytes at a time: this compiles to vector compares, where a byte-wise `all`
            // scanned the blank pages byte by byte.
            let repeated = [first; 64];
            if page.chunks_exact(64).all(|c| c == repeated) {
                if let Some(digest) = digests.get_mut(i) {
                    *digest = match self.uniform.get_mut(usize::from(first)) {
                        Some(slot) => *slot.get_or_insert_with(|| sha384(&page[..])),
                        None => sha384(&page[..]),
                    };
                }
            } else {
                others.push((i, page));
            }
        }
        let pages: Vec<Page<'_>> = others.iter().map(|&(_, p)| p).collect();
        for (&(i, _), d) in others.iter().zip(sha384_pages::pages(&pages)) {
            if let Some(slot) = digests.get_mut(i) {
                *slot = d;
            }
        }
        Ok(digests)
    }
}

/// SHA-384 of bytes.
pub fn sha384(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

/// Text of an EV_EFI_ACTION event OVMF logs in RTMR1, in order after the kernel.
const RTMR1_ACTIONS: [&str; 3] = [
    "Calling EFI Application from Boot Option",
    "Exit Boot Services Invocation",
    "Exit Boot Services Returned with Success",
];

/// The command line OVMF hands the kernel (and the EFI stub measures), with the initrd token.
pub fn measured_cmdline(cmdline: &str, has_initrd: bool, token: InitrdToken) -> String {
    match (has_initrd, token) {
        (false, _) => cmdline.to_string(),
        (true, InitrdToken::Append) if cmdline.is_empty() => "initrd=initrd".to_string(),
        (true, InitrdToken::Append) => format!("{cmdline} initrd=initrd"),
        (true, InitrdToken::Prepend) if cmdline.is_empty() => "initrd=initrd".to_string(),
        (true, InitrdToken::Prepend) => format!("initrd=initrd {cmdline}"),
    }
}

/// UTF-16LE with the terminating NUL, as the EFI stub measures LoadOptions.
pub fn utf16le_with_nul(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// Predict RTMR1 from the kernel digest OVMF measures.
pub fn rtmr1_events(
    kernel_digest: [u8; 48],
    rtmrs: &mut eventlog::Rtmrs,
) -> Result<(), MeasureError> {
    rtmrs.extend(
        1,
        eventlog::EV_EFI_BOOT_SERVICES_APPLICATION,
        kernel_digest,
        "kernel (PE/COFF Authenticode)".into(),
    )?;
    rtmrs.extend(
        1,
        eventlog::EV_EFI_ACTION,
        sha384(RTMR1_ACTIONS[0].as_bytes()),
        RTMR1_ACTIONS[0].into(),
    )?;
    rtmrs.extend(
        1,
        eventlog::EV_SEPARATOR,
        sha384(&[0, 0, 0, 0]),
        "separator".into(),
    )?;
    rtmrs.extend(
        1,
        eventlog::EV_EFI_ACTION,
        sha384(RTMR1_ACTIONS[1].as_bytes()),
        RTMR1_ACTIONS[1].into(),
    )?;
    rtmrs.extend(
        1,
        eventlog::EV_EFI_ACTION,
        sha384(RTMR1_ACTIONS[2].as_bytes()),
        RTMR1_ACTIONS[2].into(),
    )
}

impl VmSpec {
    /// Compute the TDX registers this VM will report, without RTMR0.
    pub fn measure_tdx(&self) -> Result<TdxMeasurement, MeasureError> {
        self.measure_tdx_with(None)
    }

    /// Compute the TDX registers this VM will report; RTMR0 too when the digests of QEMU's ACPI
    /// tables for this machine shape are given ([`rtmr0`]).
    pub fn measure_tdx_with(
        &self,
        acpi: Option<&AcpiDigests>,
    ) -> Result<TdxMeasurement, MeasureError> {
        let PlatformSpec::Tdx {
            page_add_order,
            qemu_patches_kernel_header,
            initrd_token,
        } = &self.platform
        else {
            return Err(MeasureError::Spec("not a TDX VM".into()));
        };
        let fw = read(&self.firmware)?;
        let mr_td = tdvf::mrtd(&fw, *page_add_order)?;
        let mut notes =
            vec!["rtmr3 is extended at run time by the enclave; see its event log".to_string()];
        let mut rtmrs = eventlog::Rtmrs::default();
        let mut rtmr = [None, None, None, None];
        match acpi {
            Some(acpi) => {
                let sections = tdvf::tdvf_sections(&fw)?;
                rtmr0::rtmr0_events(&fw, &sections, self.memory, acpi, &mut rtmrs)?;
                rtmr[0] = Some(hex::encode(rtmrs.values()[0]));
                notes.push(
                    "rtmr0 assumes QEMU's q35 machine with a direct kernel boot (OVMF's only boot \
                     option is its UiApp) and Secure Boot off"
                        .into(),
                );
            }
            None => notes.push(
                "rtmr0 needs QEMU's ACPI tables for this machine shape (etc/table-loader, \
                 etc/acpi/rsdp, etc/acpi/tables: --acpi-loader, --acpi-rsdp, --acpi-tables); \
                 not computed"
                    .into(),
            ),
        }
        match &self.kernel {
            Some(kernel_path) => {
                let kernel = read(kernel_path)?;
                let initrd = self.initrd.as_ref().map(read).transpose()?;
                let load = if *qemu_patches_kernel_header {
                    KernelLoad::QemuPatched {
                        memory: self.memory,
                        initrd_size: initrd.as_ref().map_or(0, |i| i.len() as u64),
                    }
                } else {
                    KernelLoad::Raw
                };
                rtmr1_events(kernel::kernel_digest(&kernel, load)?, &mut rtmrs)?;
                let cmdline = measured_cmdline(
                    self.cmdline.as_deref().unwrap_or(""),
                    initrd.is_some(),
                    *initrd_token,
                );
                rtmrs.extend(
                    2,
                    eventlog::EV_IPL,
                    sha384(&utf16le_with_nul(&cmdline)),
                    format!("LoadOptions: {cmdline}"),
                )?;
                if let Some(initrd) = &initrd {
                    rtmrs.extend(
                        2,
                        eventlog::EV_IPL,
                        sha384(initrd),
                        format!("initrd ({} bytes)", initrd.len()),
                    )?;
                }
                rtmr[1] = Some(hex::encode(rtmrs.values()[1]));
                rtmr[2] = Some(hex::encode(rtmrs.values()[2]));
            }
            None => notes.push("rtmr1 and rtmr2 need --kernel (and --initrd, --cmdline)".into()),
        }
        Ok(TdxMeasurement {
            mr_td: hex::encode(mr_td),
            rtmr,
            page_add_order: *page_add_order,
            events: rtmrs.into_replay().events,
            notes,
        })
    }

    /// Compute the SEV-SNP launch digest (MEASUREMENT) of this VM, with the `sev` crate.
    pub fn measure_snp(&self) -> Result<[u8; 48], MeasureError> {
        use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
        use sev::measurement::vcpu_types::CpuType;
        use sev::measurement::vmsa::{GuestFeatures, VMMType};
        let PlatformSpec::Snp {
            vcpu_type,
            guest_features,
            vmm_type,
        } = &self.platform
        else {
            return Err(MeasureError::Spec("not an SNP VM".into()));
        };
        if self.vcpus == 0 {
            return Err(MeasureError::Spec("vCPU count must be at least 1".into()));
        }
        let vmm = match vmm_type {
            VmmType::Qemu | VmmType::Gce => VMMType::QEMU,
            VmmType::Ec2 => {
                return Err(MeasureError::Spec(
                    "vmm type ec2 is not supported: the reference implementations (sev, sev-snp-measure) disagree on its VMSA".into(),
                ))
            }
        };
        let cpu = CpuType::try_from(vcpu_type.as_str()).map_err(|_| {
            MeasureError::Spec(format!(
                "unknown vCPU type {vcpu_type:?} (e.g. EPYC-Milan, EPYC-Genoa, EPYC-Turin)"
            ))
        })?;
        // Every input is checked before the firmware's pages are hashed (the bulk of the work).
        // The kernel and initrd are checked here so a missing file is a clear I/O error naming
        // it: `sev` reads them itself (it takes paths).
        for p in [self.kernel.as_ref(), self.initrd.as_ref()]
            .into_iter()
            .flatten()
        {
            std::fs::metadata(p).map_err(|source| MeasureError::Io {
                path: p.clone(),
                source,
            })?;
        }
        let tail = read_tail(&self.firmware, SEV_VIEW_MAX)?;
        if self.kernel.is_some() {
            let has_table = tdvf::footer_entry(&tail, &SEV_HASH_TABLE_GUID)?
                .and_then(|d| d.get(4..8).and_then(|b| crate::bytes::le_u32_at(b, 0)))
                .is_some_and(|size| size > 0);
            if !has_table {
                return Err(MeasureError::Firmware(
                    "kernel given but this firmware has no SEV kernel-hashes section (use an OvmfPkg/AmdSev build)".into(),
                ));
            }
        }
        let view = SevFirmwareView::new(&self.firmware, &tail)?;
        let pages_digest = snp_firmware_file_pages_digest(&self.firmware)?;
        let args = SnpMeasurementArgs {
            vcpus: self.vcpus,
            vcpu_type: cpu,
            ovmf_file: view.path().clone(),
            guest_features: GuestFeatures(*guest_features),
            kernel_file: self.kernel.clone(),
            initrd_file: self.initrd.clone(),
            append: self.cmdline.as_deref(),
            // The firmware pages are the bulk of the work; `sev` takes their digest precomputed.
            ovmf_hash_str: Some(&hex::encode(pages_digest)),
            vmm_type: Some(vmm),
        };
        let digest = snp_calc_launch_digest(args).map_err(|e| MeasureError::Snp(e.to_string()))?;
        let bytes =
            hex::decode(digest.get_hex_ld()).map_err(|e| MeasureError::Snp(e.to_string()))?;
        <[u8; 48]>::try_from(bytes.as_slice())
            .map_err(|_| MeasureError::Snp("launch digest is not 48 bytes".into()))
    }
}

#[cfg(test)]
mod snp_pages_tests {
    use super::*;

    #[test]
    fn firmware_must_be_whole_pages() {
        assert!(snp_firmware_pages_digest(&[0u8; 4095]).is_err());
        assert!(snp_firmware_pages_digest(&[]).is_err());
        assert!(snp_firmware_pages_digest(&[0u8; 8192]).is_ok());
    }
}
