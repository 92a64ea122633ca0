//! The Linux kernel as OVMF measures it: PE/COFF Authenticode SHA-384 of the image, after
//! QEMU's direct-boot loader has (or has not) patched the x86 setup header.
//!
//! Specs: Microsoft PE/COFF and Authenticode (the image hash edk2's `MeasurePeImage` computes);
//! Linux `Documentation/arch/x86/boot.rst` (setup header); QEMU `x86_load_linux`.

use sha2::{Digest, Sha384};

use super::MeasureError;
use crate::bytes::{le_u16_at, le_u32_at};

/// How the VMM hands the kernel to the firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum KernelLoad {
    /// The file as it is (QEMU with SEV, or a QEMU that skips the header patch).
    Raw,
    /// QEMU's `x86_load_linux` patches the setup header (upstream QEMU for TDX).
    QemuPatched {
        /// Guest RAM in bytes (decides the highest initrd address below 4 GiB).
        memory: u64,
        /// Initrd size in bytes (0 without one).
        initrd_size: u64,
    },
}

/// xloadflags bit 1: the initrd may live anywhere below 4 GiB for QEMU (it caps at u32).
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// ACPI data QEMU reserves at the top of low RAM (`acpi_data_size`: 0x20000 + 0x8000).
const ACPI_DATA_SIZE: u64 = 0x28000;

fn below_4g(memory: u64) -> u64 {
    // q35 splits RAM at 2 GiB when it is 2.75 GiB or more, else at 2.75 GiB.
    let lowmem = if memory >= 0xB000_0000 {
        0x8000_0000
    } else {
        0xB000_0000
    };
    memory.min(lowmem)
}

/// Apply QEMU's setup-header patch to a bzImage copy.
pub fn qemu_patch_header(
    kernel: &[u8],
    memory: u64,
    initrd_size: u64,
) -> Result<Vec<u8>, MeasureError> {
    let err = |m: &str| MeasureError::Kernel(m.to_string());
    if kernel.get(0x202..0x206) != Some(&b"HdrS"[..]) {
        return Err(err("not a Linux bzImage (no HdrS setup header)"));
    }
    let protocol = le_u16_at(kernel, 0x206).ok_or_else(|| err("setup header truncated"))?;
    let mut k = kernel.to_vec();
    let put16 = |k: &mut Vec<u8>, at: usize, v: u16| {
        if let Some(s) = k.get_mut(at..at + 2) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    };
    let put32 = |k: &mut Vec<u8>, at: usize, v: u32| {
        if let Some(s) = k.get_mut(at..at + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    };
    let loadflags = k
        .get(0x211)
        .copied()
        .ok_or_else(|| err("setup header truncated"))?;
    // Load addresses QEMU picks for a protocol >= 2.02 kernel loaded high.
    let (real_addr, cmdline_addr): (u32, u32) = if protocol >= 0x202 && loadflags & 1 != 0 {
        (0x10000, 0x20000)
    } else {
        (0x90000, 0x9a000)
    };
    if protocol >= 0x202 {
        put32(&mut k, 0x228, cmdline_addr);
    } else {
        put16(&mut k, 0x20, 0xA33F);
        put16(&mut k, 0x22, (cmdline_addr - real_addr) as u16);
    }
    if let Some(b) = k.get_mut(0x210) {
        *b = 0xB0; // type_of_loader: QEMU
    }
    if protocol >= 0x201 {
        if let Some(b) = k.get_mut(0x211) {
            *b |= 0x80; // CAN_USE_HEAP
        }
        put16(&mut k, 0x224, (cmdline_addr - real_addr - 0x200) as u16);
    }
    if initrd_size > 0 {
        if protocol < 0x200 {
            return Err(err("kernel too old to take an initrd"));
        }
        let xloadflags = le_u16_at(&k, 0x236).unwrap_or(0);
        let mut initrd_max: u64 =
            if protocol >= 0x20c && xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
                u64::from(u32::MAX)
            } else if protocol >= 0x203 {
                u64::from(le_u32_at(&k, 0x22c).unwrap_or(0x37ff_ffff))
            } else {
                0x37ff_ffff
            };
        let low = below_4g(memory);
        if initrd_max >= low.saturating_sub(ACPI_DATA_SIZE) {
            initrd_max = low.saturating_sub(ACPI_DATA_SIZE).saturating_sub(1);
        }
        if initrd_size >= initrd_max {
            return Err(err(
                "initrd does not fit below the initrd limit for this memory size",
            ));
        }
        let addr = (initrd_max - initrd_size) & !0xfff;
        put32(&mut k, 0x218, addr as u32);
        put32(&mut k, 0x21c, initrd_size as u32);
    }
    Ok(k)
}

/// PE/COFF Authenticode SHA-384 of an image (as edk2 `MeasurePeImage` hashes it).
pub fn authenticode_sha384(image: &[u8]) -> Result<[u8; 48], MeasureError> {
    let err = |m: &str| MeasureError::Kernel(m.to_string());
    if image.get(..2) != Some(&b"MZ"[..]) {
        return Err(err(
            "not a PE image (no MZ header): is this an EFI-stub kernel?",
        ));
    }
    let pe = le_u32_at(image, 0x3c).ok_or_else(|| err("DOS header truncated"))? as usize;
    if image.get(pe..pe + 4) != Some(&b"PE\0\0"[..]) {
        return Err(err("PE signature missing"));
    }
    let coff = pe + 4;
    let sections =
        usize::from(le_u16_at(image, coff + 2).ok_or_else(|| err("COFF header truncated"))?);
    let opt_size =
        usize::from(le_u16_at(image, coff + 16).ok_or_else(|| err("COFF header truncated"))?);
    let opt = coff + 20;
    let magic = le_u16_at(image, opt).ok_or_else(|| err("optional header truncated"))?;
    let (dirs_count_at, dirs_at) = match magic {
        0x10b => (opt + 92, opt + 96),
        0x20b => (opt + 108, opt + 112),
        other => {
            return Err(MeasureError::Kernel(format!(
                "unknown optional header magic {other:#x}"
            )))
        }
    };
    let checksum = opt + 64;
    let size_of_headers =
        le_u32_at(image, opt + 60).ok_or_else(|| err("optional header truncated"))? as usize;
    let dirs = le_u32_at(image, dirs_count_at).ok_or_else(|| err("optional header truncated"))?;
    let cert_dir = dirs_at + 4 * 8;
    let region = |a: usize, b: usize| {
        image
            .get(a..b)
            .ok_or_else(|| err("PE header region out of range"))
    };
    let mut h = Sha384::new();
    h.update(region(0, checksum)?);
    let cert_size = if dirs > 4 {
        h.update(region(checksum + 4, cert_dir)?);
        h.update(region(cert_dir + 8, size_of_headers)?);
        le_u32_at(image, cert_dir + 4).unwrap_or(0) as usize
    } else {
        h.update(region(checksum + 4, size_of_headers)?);
        0
    };
    // Sections with raw data, in file order.
    let table = opt + opt_size;
    let mut raw: Vec<(usize, usize)> = Vec::with_capacity(sections);
    for i in 0..sections {
        let s = table + 40 * i;
        let size = le_u32_at(image, s + 16).ok_or_else(|| err("section table truncated"))? as usize;
        let ptr = le_u32_at(image, s + 20).ok_or_else(|| err("section table truncated"))? as usize;
        if size > 0 {
            raw.push((ptr, size));
        }
    }
    raw.sort_unstable();
    let mut hashed = size_of_headers;
    for (ptr, size) in raw {
        h.update(
            image
                .get(ptr..ptr + size)
                .ok_or_else(|| err("section data out of range"))?,
        );
        hashed += size;
    }
    // Trailing data (not the certificate table).
    if image.len() > hashed + cert_size {
        h.update(region(hashed, image.len() - cert_size)?);
    }
    Ok(h.finalize().into())
}

/// The digest OVMF extends into RTMR1 for this kernel, loaded as `load` says.
pub fn kernel_digest(kernel: &[u8], load: KernelLoad) -> Result<[u8; 48], MeasureError> {
    match load {
        KernelLoad::Raw => authenticode_sha384(kernel),
        KernelLoad::QemuPatched {
            memory,
            initrd_size,
        } => authenticode_sha384(&qemu_patch_header(kernel, memory, initrd_size)?),
    }
}
