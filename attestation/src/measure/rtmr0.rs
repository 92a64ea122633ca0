//! RTMR0 of a TD that QEMU boots with OVMF/TDVF and a direct kernel (`-kernel`).
//!
//! OVMF extends RTMR0 with, in order (TCG PC Client firmware profile event types):
//!
//! 1. `EV_EFI_HANDOFF_TABLES2` "TdxTable": the TD HOB the VMM handed over ([`td_hob`]);
//! 2. `EV_EFI_PLATFORM_FIRMWARE_BLOB2`: the configuration firmware volume (the TDVF section of
//!    type CFV, the variable store as shipped) ([`cfv_digest`]);
//! 3. `EV_EFI_VARIABLE_DRIVER_CONFIG` for `SecureBoot`, `PK`, `KEK`, `db`, `dbx`: each a
//!    `UEFI_VARIABLE_DATA` with no data (Secure Boot off), hashed whole;
//! 4. `EV_SEPARATOR` (four zero bytes);
//! 5. `EV_PLATFORM_CONFIG_FLAGS` "ACPI DATA" three times: QEMU's `etc/table-loader`,
//!    `etc/acpi/rsdp` and `etc/acpi/tables` fw_cfg files as QEMU serves them. They depend on the
//!    QEMU version and the machine shape (vCPUs, memory, devices); they cannot be derived from
//!    the image, so they are an input ([`AcpiDigests`]);
//! 6. `EV_EFI_VARIABLE_BOOT` `BootOrder` = `[0]` and `Boot0000` = OVMF's UiApp load option,
//!    each hashed over the variable's data only. With a direct kernel boot these are OVMF's only
//!    boot options; a boot from a disk adds options this module does not predict.
//!
//! Checked against real TDX boots: the TD HOB, CFV, variable and separator digests computed here
//! are the ones in the `ccel.bin` log of a dstack TD (Debian trixie's OVMF, 1 GiB) and, for the
//! TD HOB, in a second dstack TD's log (2 GiB); replaying them with that log's three ACPI digests
//! gives the RTMR0 its firmware reported (`attestation/tests/measure.rs`).

use crate::measure::eventlog::{
    Replay, Rtmrs, EV_EFI_HANDOFF_TABLES2, EV_EFI_PLATFORM_FIRMWARE_BLOB2, EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_DRIVER_CONFIG, EV_PLATFORM_CONFIG_FLAGS, EV_SEPARATOR,
};
use crate::measure::tdvf::{guid, SectionType, TdvfSection};
use crate::measure::{sha384, utf16le_with_nul, MeasureError};

/// `EFI_GLOBAL_VARIABLE`.
const GLOBAL_VARIABLE: [u8; 16] = guid(
    0x8be4_df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID` (`db`, `dbx`).
const IMAGE_SECURITY_DATABASE: [u8; 16] = guid(
    0xd719_b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// Name GUID of OVMF's DXE firmware volume (`DXEFV` in OvmfPkg's FDF).
const OVMF_DXEFV: [u8; 16] = guid(
    0x7cb8_bdc9,
    0xf8eb,
    0x4f34,
    [0xaa, 0xea, 0x3e, 0xe4, 0xaf, 0x65, 0x16, 0xa1],
);
/// File GUID of edk2's UiApp (MdeModulePkg/Application/UiApp).
const UIAPP_FILE: [u8; 16] = guid(
    0x462c_aa21,
    0x7614,
    0x4503,
    [0x83, 0x6e, 0x8a, 0xb6, 0xf4, 0x66, 0x23, 0x31],
);

/// Where q35 splits guest RAM around the 32-bit PCI hole: from 2.75 GiB of RAM up, the low part
/// is 2 GiB and the rest starts at 4 GiB.
const Q35_SPLIT_THRESHOLD: u64 = 0xB000_0000;
const Q35_LOW_RAM_WHEN_SPLIT: u64 = 0x8000_0000;
const FOUR_GIB: u64 = 1 << 32;

/// HOB types and resource types (UEFI PI specification, volume 3).
const HOB_HANDOFF: u16 = 0x0001;
const HOB_RESOURCE_DESCRIPTOR: u16 = 0x0003;
const HOB_END_OF_LIST_LEN: u64 = 8;
const HANDOFF_VERSION: u32 = 9;
const RESOURCE_SYSTEM_MEMORY: u32 = 0;
const RESOURCE_MEMORY_UNACCEPTED: u32 = 7;
/// PRESENT | INITIALIZED | TESTED.
const RESOURCE_ATTRIBUTES: u32 = 0x7;

/// The digests of QEMU's three ACPI fw_cfg files for this machine shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiDigests {
    /// SHA-384 of `etc/table-loader`.
    pub table_loader: [u8; 48],
    /// SHA-384 of `etc/acpi/rsdp`.
    pub rsdp: [u8; 48],
    /// SHA-384 of `etc/acpi/tables`.
    pub tables: [u8; 48],
}

impl AcpiDigests {
    /// The three ACPI digests a replayed event log's RTMR0 carries (in OVMF's order). For an
    /// auditor who has the log of a boot but not QEMU's files: every other RTMR0 event is still
    /// computed from the firmware and the VM shape, so a matching RTMR0 then checks all of them,
    /// with the ACPI tables pinned by digest.
    pub fn from_replay(replay: &Replay) -> Result<Self, MeasureError> {
        let digests: Vec<[u8; 48]> = replay
            .events
            .iter()
            .filter(|e| e.rtmr == 0 && e.event_type == EV_PLATFORM_CONFIG_FLAGS)
            .map(|e| {
                hex::decode(&e.digest)
                    .ok()
                    .and_then(|d| <[u8; 48]>::try_from(d.as_slice()).ok())
                    .ok_or_else(|| MeasureError::EventLog("an ACPI digest is not SHA-384".into()))
            })
            .collect::<Result<_, _>>()?;
        match digests.as_slice() {
            [table_loader, rsdp, tables] => Ok(Self {
                table_loader: *table_loader,
                rsdp: *rsdp,
                tables: *tables,
            }),
            other => Err(MeasureError::EventLog(format!(
                "the log's RTMR0 has {} ACPI DATA events, expected 3 (table-loader, rsdp, tables)",
                other.len()
            ))),
        }
    }

    /// From the files' bytes (as read in a guest from
    /// `/sys/firmware/qemu_fw_cfg/by_name/etc/.../raw`).
    pub fn of_blobs(table_loader: &[u8], rsdp: &[u8], tables: &[u8]) -> Self {
        Self {
            table_loader: sha384(table_loader),
            rsdp: sha384(rsdp),
            tables: sha384(tables),
        }
    }
}

/// Guest RAM ranges as QEMU's q35 machine lays them out: `(start, end)`.
fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory >= Q35_SPLIT_THRESHOLD {
        vec![
            (0, Q35_LOW_RAM_WHEN_SPLIT),
            (FOUR_GIB, FOUR_GIB + (memory - Q35_LOW_RAM_WHEN_SPLIT)),
        ]
    } else {
        vec![(0, memory)]
    }
}

/// The TD HOB QEMU builds for this firmware and memory size, as OVMF measures it: the handoff
/// header, then one resource descriptor per RAM range, in address order: the TDVF sections of
/// type TD HOB and temporary memory are added (accepted) memory, the rest is unaccepted. The
/// end-of-list HOB that follows is not part of the measured bytes, but the header's
/// `EfiEndOfHobList` points past it.
pub fn td_hob(sections: &[TdvfSection], memory: u64) -> Result<Vec<u8>, MeasureError> {
    if memory == 0 {
        return Err(MeasureError::Spec("memory size is 0".into()));
    }
    let mut hob_address = None;
    let mut accepted: Vec<(u64, u64)> = Vec::new();
    for s in sections {
        match s.section_type {
            SectionType::Bfv | SectionType::Cfv => {}
            SectionType::TdHob | SectionType::TempMem => {
                if s.section_type == SectionType::TdHob {
                    hob_address = Some(s.memory_address);
                }
                let end = s
                    .memory_address
                    .checked_add(s.memory_data_size)
                    .ok_or_else(|| MeasureError::Firmware("TDVF section overflows".into()))?;
                accepted.push((s.memory_address, end));
            }
            other => {
                return Err(MeasureError::Firmware(format!(
                    "TDVF section type {other:?}: RTMR0 is predicted only for firmware with BFV, \
                     CFV, TD HOB and temporary-memory sections"
                )))
            }
        }
    }
    let hob_address = hob_address
        .ok_or_else(|| MeasureError::Firmware("no TD HOB section in the TDVF metadata".into()))?;
    accepted.sort_unstable();
    let ram = ram_ranges(memory);
    // Every accepted section must lie inside RAM, and sections must not overlap.
    for w in accepted.windows(2) {
        if let [a, b] = w {
            if a.1 > b.0 {
                return Err(MeasureError::Firmware("TDVF sections overlap".into()));
            }
        }
    }
    for &(s, e) in &accepted {
        if !ram.iter().any(|&(rs, re)| rs <= s && e <= re) {
            return Err(MeasureError::Spec(format!(
                "memory size {memory:#x} does not cover TDVF section {s:#x}..{e:#x}"
            )));
        }
    }
    // RAM cut by the accepted sections, in address order.
    let mut resources: Vec<(u32, u64, u64)> = Vec::new();
    for &(rs, re) in &ram {
        let mut cursor = rs;
        for &(s, e) in accepted.iter().filter(|(s, _)| rs <= *s && *s < re) {
            if cursor < s {
                resources.push((RESOURCE_MEMORY_UNACCEPTED, cursor, s));
            }
            resources.push((RESOURCE_SYSTEM_MEMORY, s, e));
            cursor = e;
        }
        if cursor < re {
            resources.push((RESOURCE_MEMORY_UNACCEPTED, cursor, re));
        }
    }
    const HANDOFF_LEN: u16 = 56;
    const RESOURCE_LEN: u16 = 48;
    let measured_len = u64::from(HANDOFF_LEN) + u64::from(RESOURCE_LEN) * resources.len() as u64;
    let mut hob = Vec::with_capacity(measured_len as usize);
    // EFI_HOB_HANDOFF_INFO_TABLE: header, version, boot mode, four memory bounds (zero: QEMU
    // leaves them to the firmware), the end of the HOB list.
    hob.extend(HOB_HANDOFF.to_le_bytes());
    hob.extend(HANDOFF_LEN.to_le_bytes());
    hob.extend([0u8; 4]);
    hob.extend(HANDOFF_VERSION.to_le_bytes());
    hob.extend([0u8; 4]);
    hob.extend([0u8; 32]);
    hob.extend((hob_address + measured_len + HOB_END_OF_LIST_LEN).to_le_bytes());
    for (kind, start, end) in resources {
        // EFI_HOB_RESOURCE_DESCRIPTOR: header, owner GUID (zero), type, attributes, range.
        hob.extend(HOB_RESOURCE_DESCRIPTOR.to_le_bytes());
        hob.extend(RESOURCE_LEN.to_le_bytes());
        hob.extend([0u8; 4]);
        hob.extend([0u8; 16]);
        hob.extend(kind.to_le_bytes());
        hob.extend(RESOURCE_ATTRIBUTES.to_le_bytes());
        hob.extend(start.to_le_bytes());
        hob.extend((end - start).to_le_bytes());
    }
    Ok(hob)
}

/// SHA-384 of the configuration firmware volume: the bytes of the TDVF section of type CFV.
pub fn cfv_digest(fw: &[u8], sections: &[TdvfSection]) -> Result<[u8; 48], MeasureError> {
    let cfv = sections
        .iter()
        .find(|s| s.section_type == SectionType::Cfv)
        .ok_or_else(|| MeasureError::Firmware("no CFV section in the TDVF metadata".into()))?;
    let start = cfv.data_offset as usize;
    let bytes = fw
        .get(start..start + cfv.raw_data_size as usize)
        .ok_or_else(|| MeasureError::Firmware("CFV section lies outside the image".into()))?;
    Ok(sha384(bytes))
}

/// A `UEFI_VARIABLE_DATA`: vendor GUID, name length (characters), data length, the name in
/// UTF-16LE without its terminator, the data.
pub fn uefi_variable_data(vendor: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let name16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut v = Vec::with_capacity(32 + name16.len() + data.len());
    v.extend(vendor);
    v.extend((name.encode_utf16().count() as u64).to_le_bytes());
    v.extend((data.len() as u64).to_le_bytes());
    v.extend(name16);
    v.extend(data);
    v
}

/// OVMF's `Boot0000` with a direct kernel boot: an `EFI_LOAD_OPTION` for UiApp (active, hidden,
/// application category) whose path is the DXE volume, then the UiApp file, then the end node.
pub fn uiapp_load_option() -> Vec<u8> {
    const LOAD_OPTION_ACTIVE_HIDDEN_APP: u32 = 0x0000_0109;
    let mut path = Vec::new();
    // MEDIA_DEVICE_PATH / MEDIA_PIWG_FW_VOL_DP, then MEDIA_PIWG_FW_FILE_DP (20 bytes each).
    path.extend([0x04, 0x07, 20, 0]);
    path.extend(OVMF_DXEFV);
    path.extend([0x04, 0x06, 20, 0]);
    path.extend(UIAPP_FILE);
    // END_DEVICE_PATH_TYPE / END_ENTIRE_DEVICE_PATH_SUBTYPE.
    path.extend([0x7f, 0xff, 4, 0]);
    let mut v = Vec::new();
    v.extend(LOAD_OPTION_ACTIVE_HIDDEN_APP.to_le_bytes());
    v.extend((path.len() as u16).to_le_bytes());
    v.extend(utf16le_with_nul("UiApp"));
    v.extend(path);
    v
}

/// Extend the predicted RTMR0 events into `rtmrs` ([module docs](self)).
pub fn rtmr0_events(
    fw: &[u8],
    sections: &[TdvfSection],
    memory: u64,
    acpi: &AcpiDigests,
    rtmrs: &mut Rtmrs,
) -> Result<(), MeasureError> {
    let hob = td_hob(sections, memory)?;
    rtmrs.extend(
        0,
        EV_EFI_HANDOFF_TABLES2,
        sha384(&hob),
        format!("TD HOB ({} bytes, {} MiB of RAM)", hob.len(), memory >> 20),
    )?;
    rtmrs.extend(
        0,
        EV_EFI_PLATFORM_FIRMWARE_BLOB2,
        cfv_digest(fw, sections)?,
        "configuration firmware volume (CFV)".into(),
    )?;
    for (vendor, name) in [
        (&GLOBAL_VARIABLE, "SecureBoot"),
        (&GLOBAL_VARIABLE, "PK"),
        (&GLOBAL_VARIABLE, "KEK"),
        (&IMAGE_SECURITY_DATABASE, "db"),
        (&IMAGE_SECURITY_DATABASE, "dbx"),
    ] {
        rtmrs.extend(
            0,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            sha384(&uefi_variable_data(vendor, name, &[])),
            format!("UEFI variable {name} (empty: Secure Boot off)"),
        )?;
    }
    rtmrs.extend(0, EV_SEPARATOR, sha384(&[0; 4]), "separator".into())?;
    for (digest, file) in [
        (acpi.table_loader, "etc/table-loader"),
        (acpi.rsdp, "etc/acpi/rsdp"),
        (acpi.tables, "etc/acpi/tables"),
    ] {
        rtmrs.extend(
            0,
            EV_PLATFORM_CONFIG_FLAGS,
            digest,
            format!("ACPI DATA: QEMU {file}"),
        )?;
    }
    rtmrs.extend(
        0,
        EV_EFI_VARIABLE_BOOT,
        sha384(&0u16.to_le_bytes()),
        "UEFI variable BootOrder = [0000]".into(),
    )?;
    rtmrs.extend(
        0,
        EV_EFI_VARIABLE_BOOT,
        sha384(&uiapp_load_option()),
        "UEFI variable Boot0000 = UiApp".into(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(kind: SectionType, addr: u64, size: u64) -> TdvfSection {
        TdvfSection {
            data_offset: 0,
            raw_data_size: 0,
            memory_address: addr,
            memory_data_size: size,
            section_type: kind,
            attributes: 0,
        }
    }

    fn resources(hob: &[u8]) -> Vec<(u32, u64, u64)> {
        hob.get(56..)
            .unwrap_or_default()
            .chunks_exact(48)
            .map(|r| {
                let u32_at = |o: usize| {
                    u32::from_le_bytes(
                        r.get(o..o + 4)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or_default(),
                    )
                };
                let u64_at = |o: usize| {
                    u64::from_le_bytes(
                        r.get(o..o + 8)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or_default(),
                    )
                };
                (u32_at(24), u64_at(32), u64_at(40))
            })
            .collect()
    }

    #[test]
    fn hob_cuts_ram_around_accepted_sections_and_splits_at_the_pci_hole() {
        let secs = [
            section(SectionType::TempMem, 0x80_0000, 0x6000),
            section(SectionType::TdHob, 0x80_9000, 0x2000),
        ];
        let small = td_hob(&secs, 1 << 30).expect("hob");
        assert_eq!(
            resources(&small),
            vec![
                (7, 0, 0x80_0000),
                (0, 0x80_0000, 0x6000),
                (7, 0x80_6000, 0x3000),
                (0, 0x80_9000, 0x2000),
                (7, 0x80_b000, (1 << 30) - 0x80_b000),
            ]
        );
        // EfiEndOfHobList: past the measured bytes and the 8-byte end-of-list HOB.
        assert_eq!(
            small.get(48..56),
            Some(&(0x80_9000u64 + small.len() as u64 + 8).to_le_bytes()[..])
        );
        let big = td_hob(&secs, 4 << 30).expect("hob");
        let r = resources(&big);
        assert_eq!(r.get(4), Some(&(7, 0x80_b000, 0x8000_0000 - 0x80_b000)));
        assert_eq!(r.get(5), Some(&(7, 1 << 32, (4 << 30) - 0x8000_0000)));
    }

    #[test]
    fn unsupported_or_impossible_layouts_are_refused() {
        let hob = section(SectionType::TdHob, 0x80_9000, 0x2000);
        assert!(td_hob(
            &[hob, section(SectionType::PermMem, 0x90_0000, 0x1000)],
            1 << 30
        )
        .is_err());
        assert!(td_hob(&[section(SectionType::TempMem, 0x80_0000, 0x1000)], 1 << 30).is_err());
        assert!(td_hob(&[hob], 0x80_0000).is_err(), "memory below the HOB");
        assert!(td_hob(&[hob], 0).is_err());
    }

    #[test]
    fn variable_data_layout() {
        let v = uefi_variable_data(&GLOBAL_VARIABLE, "PK", &[1, 2]);
        assert_eq!(v.len(), 16 + 8 + 8 + 4 + 2);
        assert_eq!(v.get(16..24), Some(&2u64.to_le_bytes()[..]));
        assert_eq!(v.get(24..32), Some(&2u64.to_le_bytes()[..]));
        assert_eq!(v.get(32..36), Some(&b"P\0K\0"[..]));
        let o = uiapp_load_option();
        assert_eq!(o.len(), 4 + 2 + 12 + 44);
    }
}
