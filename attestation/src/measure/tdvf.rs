//! OVMF/TDVF firmware metadata and the TDX MRTD.
//!
//! Spec: Intel TDX Virtual Firmware Design Guide (TDVF metadata); Intel TDX Module ABI
//! (TDH.MEM.PAGE.ADD, TDH.MR.EXTEND). The metadata is found through the OVMF footer GUID table
//! (edk2 `ResetVectorVtf0.asm`): the table ends 32 bytes before the end of the image.

use sha2::{Digest, Sha384};

use super::MeasureError;
use crate::bytes::{le_u16_at, le_u32_at};

/// `96b582de-1fb2-45f7-baea-a366c55a082d`, stored mixed-endian.
const FOOTER_GUID: [u8; 16] = guid(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// `e47a6535-984a-4798-865e-4685a7bf8ec2`: TDX metadata offset.
const TDX_METADATA_OFFSET_GUID: [u8; 16] = guid(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);
/// `e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae`: precedes the TDVF descriptor.
const TDX_METADATA_GUID: [u8; 16] = guid(
    0xe9ea_f9f3,
    0x168e,
    0x44d5,
    [0xa8, 0xeb, 0x7f, 0x4d, 0x87, 0x38, 0xf6, 0xae],
);

const PAGE: u64 = 4096;
const CHUNK: u64 = 256;
/// Section attribute bit 0: extend the content into MRTD.
pub const ATTR_MR_EXTEND: u32 = 1;
/// Section attribute bit 1: added later with TDH.MEM.PAGE.AUG (not measured).
pub const ATTR_PAGE_AUG: u32 = 2;

/// Build a GUID in the on-disk (mixed-endian) byte order.
pub(crate) const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Order in which the VMM adds and extends pages: it changes MRTD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageAddOrder {
    /// Per page: add, then its 16 extends (upstream KVM `KVM_TDX_INIT_MEM_REGION`; default).
    SinglePass,
    /// Per section: all adds, then all extends (QEMU 8.x-based TDX stacks).
    TwoPass,
}

/// The type of a TDVF section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionType {
    /// Boot firmware volume (code).
    Bfv,
    /// Configuration firmware volume (variables).
    Cfv,
    /// TD HOB.
    TdHob,
    /// Temporary memory.
    TempMem,
    /// Permanent memory.
    PermMem,
    /// Payload (kernel).
    Payload,
    /// Payload parameters.
    PayloadParam,
    /// Another value.
    Other(u32),
}

impl From<u32> for SectionType {
    fn from(v: u32) -> Self {
        match v {
            0 => SectionType::Bfv,
            1 => SectionType::Cfv,
            2 => SectionType::TdHob,
            3 => SectionType::TempMem,
            4 => SectionType::PermMem,
            5 => SectionType::Payload,
            6 => SectionType::PayloadParam,
            other => SectionType::Other(other),
        }
    }
}

/// One TDVF metadata section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the section's bytes in the firmware file.
    pub data_offset: u32,
    /// Bytes present in the file.
    pub raw_data_size: u32,
    /// Guest-physical address.
    pub memory_address: u64,
    /// Bytes of guest memory.
    pub memory_data_size: u64,
    /// Section type.
    pub section_type: SectionType,
    /// Attributes (MR.EXTEND, PAGE.AUG).
    pub attributes: u32,
}

/// Find the data of a footer-table entry by GUID.
pub(crate) fn footer_entry<'a>(
    fw: &'a [u8],
    wanted: &[u8; 16],
) -> Result<Option<&'a [u8]>, MeasureError> {
    let len = fw.len();
    if len < 50 {
        return Err(MeasureError::Firmware(
            "image too small for an OVMF footer table".into(),
        ));
    }
    if fw.get(len - 48..len - 32) != Some(&FOOTER_GUID[..]) {
        return Err(MeasureError::Firmware(
            "no OVMF footer GUID table (not an OVMF image?)".into(),
        ));
    }
    let table_len = usize::from(le_u16_at(fw, len - 50).unwrap_or(0));
    let table_start = (len - 32)
        .checked_sub(table_len)
        .ok_or_else(|| MeasureError::Firmware("footer table longer than the image".into()))?;
    // Entries run backwards from the footer entry: data ‖ u16 length ‖ GUID.
    let mut end = len - 50;
    while end >= table_start + 18 {
        let entry_guid = fw
            .get(end - 16..end)
            .ok_or_else(|| MeasureError::Firmware("bad footer table".into()))?;
        let entry_len = usize::from(le_u16_at(fw, end - 18).unwrap_or(0));
        if entry_len < 18 || end < table_start + entry_len {
            return Err(MeasureError::Firmware(format!(
                "footer table entry of bad length {entry_len}"
            )));
        }
        if entry_guid == wanted {
            return Ok(fw.get(end - entry_len..end - 18));
        }
        end -= entry_len;
    }
    Ok(None)
}

/// Parse the TDVF metadata sections of an OVMF/TDVF image.
pub fn tdvf_sections(fw: &[u8]) -> Result<Vec<TdvfSection>, MeasureError> {
    let entry = footer_entry(fw, &TDX_METADATA_OFFSET_GUID)?.ok_or_else(|| {
        MeasureError::Firmware("no TDX metadata in this firmware (not a TDVF build)".into())
    })?;
    let back = entry
        .get(..4)
        .and_then(|b| le_u32_at(b, 0))
        .ok_or_else(|| MeasureError::Firmware("TDX metadata offset entry too short".into()))?
        as usize;
    let desc = fw
        .len()
        .checked_sub(back)
        .ok_or_else(|| MeasureError::Firmware("TDX metadata offset beyond the image".into()))?;
    if desc < 16 || fw.get(desc - 16..desc) != Some(&TDX_METADATA_GUID[..]) {
        return Err(MeasureError::Firmware(
            "TDVF descriptor is not preceded by the TDX metadata GUID".into(),
        ));
    }
    if fw.get(desc..desc + 4) != Some(&b"TDVF"[..]) {
        return Err(MeasureError::Firmware(
            "TDVF descriptor signature missing".into(),
        ));
    }
    let read = |o: usize| {
        le_u32_at(fw, desc + o)
            .ok_or_else(|| MeasureError::Firmware("TDVF descriptor truncated".into()))
    };
    let length = read(4)? as usize;
    let version = read(8)?;
    let count = read(12)? as usize;
    if version != 1 {
        return Err(MeasureError::Firmware(format!(
            "unsupported TDVF metadata version {version}"
        )));
    }
    if length != 16 + 32 * count {
        return Err(MeasureError::Firmware(format!(
            "TDVF descriptor length {length} does not fit {count} sections"
        )));
    }
    let mut sections = Vec::with_capacity(count);
    for i in 0..count {
        let base = desc + 16 + 32 * i;
        let u32_at = |o: usize| {
            le_u32_at(fw, base + o)
                .ok_or_else(|| MeasureError::Firmware("TDVF section truncated".into()))
        };
        let u64_at = |o: usize| -> Result<u64, MeasureError> {
            Ok(u64::from(u32_at(o)?) | (u64::from(u32_at(o + 4)?) << 32))
        };
        let s = TdvfSection {
            data_offset: u32_at(0)?,
            raw_data_size: u32_at(4)?,
            memory_address: u64_at(8)?,
            memory_data_size: u64_at(16)?,
            section_type: SectionType::from(u32_at(24)?),
            attributes: u32_at(28)?,
        };
        if s.memory_address % PAGE != 0 || s.memory_data_size % PAGE != 0 {
            return Err(MeasureError::Firmware(format!(
                "TDVF section {i} is not 4 KiB aligned"
            )));
        }
        if u64::from(s.raw_data_size) > s.memory_data_size {
            return Err(MeasureError::Firmware(format!(
                "TDVF section {i} has more file bytes than memory"
            )));
        }
        if s.attributes & ATTR_MR_EXTEND != 0
            && u64::from(s.data_offset).saturating_add(s.memory_data_size) > fw.len() as u64
        {
            return Err(MeasureError::Firmware(format!(
                "TDVF section {i} is measured but not backed by the file"
            )));
        }
        sections.push(s);
    }
    Ok(sections)
}

/// MRTD of a TD booted from this firmware, with pages added in `order`.
pub fn mrtd(fw: &[u8], order: PageAddOrder) -> Result<[u8; 48], MeasureError> {
    let sections = tdvf_sections(fw)?;
    let mut h = Sha384::new();
    let page_add = |h: &mut Sha384, gpa: u64| {
        let mut rec = [0u8; 128];
        rec[..12].copy_from_slice(b"MEM.PAGE.ADD");
        rec[16..24].copy_from_slice(&gpa.to_le_bytes());
        h.update(rec);
    };
    let extend = |h: &mut Sha384, s: &TdvfSection, page: u64| -> Result<(), MeasureError> {
        for i in 0..PAGE / CHUNK {
            let mut rec = [0u8; 128];
            rec[..9].copy_from_slice(b"MR.EXTEND");
            rec[16..24]
                .copy_from_slice(&(s.memory_address + page * PAGE + i * CHUNK).to_le_bytes());
            h.update(rec);
            let at = u64::from(s.data_offset) + page * PAGE + i * CHUNK;
            let chunk = usize::try_from(at)
                .ok()
                .and_then(|at| fw.get(at..at + CHUNK as usize))
                .ok_or_else(|| {
                    MeasureError::Firmware("measured section runs past the file".into())
                })?;
            h.update(chunk);
        }
        Ok(())
    };
    for s in sections
        .iter()
        .filter(|s| s.attributes & ATTR_PAGE_AUG == 0)
    {
        let pages = s.memory_data_size / PAGE;
        let measured = s.attributes & ATTR_MR_EXTEND != 0;
        match order {
            PageAddOrder::SinglePass => {
                for p in 0..pages {
                    page_add(&mut h, s.memory_address + p * PAGE);
                    if measured {
                        extend(&mut h, s, p)?;
                    }
                }
            }
            PageAddOrder::TwoPass => {
                for p in 0..pages {
                    page_add(&mut h, s.memory_address + p * PAGE);
                }
                if measured {
                    for p in 0..pages {
                        extend(&mut h, s, p)?;
                    }
                }
            }
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A minimal synthetic TDVF image: one measured 4 KiB BFV page and one unmeasured page,
    /// with a footer table pointing at the descriptor.
    pub(crate) fn synthetic_image() -> Vec<u8> {
        let mut fw = vec![0u8; 3 * 4096];
        for (i, b) in fw[..4096].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // Descriptor at 0x1000 + 16, after the metadata GUID.
        let desc = 0x1010;
        fw[desc - 16..desc].copy_from_slice(&TDX_METADATA_GUID);
        fw[desc..desc + 4].copy_from_slice(b"TDVF");
        fw[desc + 4..desc + 8].copy_from_slice(&(16u32 + 64).to_le_bytes());
        fw[desc + 8..desc + 12].copy_from_slice(&1u32.to_le_bytes());
        fw[desc + 12..desc + 16].copy_from_slice(&2u32.to_le_bytes());
        let mut sec = |i: usize, off: u32, raw: u32, gpa: u64, size: u64, ty: u32, attr: u32| {
            let b = desc + 16 + 32 * i;
            fw[b..b + 4].copy_from_slice(&off.to_le_bytes());
            fw[b + 4..b + 8].copy_from_slice(&raw.to_le_bytes());
            fw[b + 8..b + 16].copy_from_slice(&gpa.to_le_bytes());
            fw[b + 16..b + 24].copy_from_slice(&size.to_le_bytes());
            fw[b + 24..b + 28].copy_from_slice(&ty.to_le_bytes());
            fw[b + 28..b + 32].copy_from_slice(&attr.to_le_bytes());
        };
        sec(0, 0, 4096, 0xFFFF_0000, 4096, 0, ATTR_MR_EXTEND);
        sec(1, 0, 0, 0x80_0000, 4096, 3, 0);
        // Footer table: [metadata-offset entry: u32 ‖ u16 len 22 ‖ GUID] [u16 table len ‖ footer GUID] ‖ 32 bytes.
        let len = fw.len();
        let back = (len - desc) as u32;
        let entry_end = len - 50;
        fw[entry_end - 16..entry_end].copy_from_slice(&TDX_METADATA_OFFSET_GUID);
        fw[entry_end - 18..entry_end - 16].copy_from_slice(&22u16.to_le_bytes());
        fw[entry_end - 22..entry_end - 18].copy_from_slice(&back.to_le_bytes());
        fw[len - 50..len - 48].copy_from_slice(&(22u16 + 18).to_le_bytes());
        fw[len - 48..len - 32].copy_from_slice(&FOOTER_GUID);
        fw
    }

    /// The same MRTD, computed by hand from the records the TDX module hashes.
    fn hand_mrtd(fw: &[u8], two_pass: bool) -> [u8; 48] {
        let mut stream = Vec::new();
        let add = |stream: &mut Vec<u8>, gpa: u64| {
            let mut r = vec![0u8; 128];
            r[..12].copy_from_slice(b"MEM.PAGE.ADD");
            r[16..24].copy_from_slice(&gpa.to_le_bytes());
            stream.extend(r);
        };
        let ext = |stream: &mut Vec<u8>| {
            for i in 0..16u64 {
                let mut r = vec![0u8; 128];
                r[..9].copy_from_slice(b"MR.EXTEND");
                r[16..24].copy_from_slice(&(0xFFFF_0000 + 256 * i).to_le_bytes());
                stream.extend(r);
                stream.extend(&fw[(256 * i) as usize..(256 * i + 256) as usize]);
            }
        };
        // One page per section, so both orders produce the same stream here.
        let _ = two_pass;
        add(&mut stream, 0xFFFF_0000);
        ext(&mut stream);
        add(&mut stream, 0x80_0000);
        Sha384::digest(&stream).into()
    }

    #[test]
    fn synthetic_image_matches_hand_computation() {
        let fw = synthetic_image();
        let sections = tdvf_sections(&fw).unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].section_type, SectionType::Bfv);
        let single = mrtd(&fw, PageAddOrder::SinglePass).unwrap();
        assert_eq!(single, hand_mrtd(&fw, false));
        // With one page per section both orders coincide.
        assert_eq!(mrtd(&fw, PageAddOrder::TwoPass).unwrap(), single);
    }

    #[test]
    fn content_of_measured_pages_matters_and_of_unmeasured_does_not() {
        let fw = synthetic_image();
        let base = mrtd(&fw, PageAddOrder::SinglePass).unwrap();
        let mut changed = fw.clone();
        changed[100] ^= 1;
        assert_ne!(mrtd(&changed, PageAddOrder::SinglePass).unwrap(), base);
        let mut unmeasured = fw.clone();
        unmeasured[0x2000] ^= 1; // after the descriptor, in no section: not measured
        assert_eq!(mrtd(&unmeasured, PageAddOrder::SinglePass).unwrap(), base);
    }

    #[test]
    fn bad_images_are_errors() {
        assert!(mrtd(&[0u8; 10], PageAddOrder::SinglePass).is_err());
        assert!(mrtd(&vec![0u8; 8192], PageAddOrder::SinglePass).is_err());
        let mut fw = synthetic_image();
        let len = fw.len();
        fw[len - 50] = 0xff; // table length beyond the image
        fw[len - 49] = 0xff;
        assert!(mrtd(&fw, PageAddOrder::SinglePass).is_err());
        // Truncated at the end: the footer table is gone or misplaced.
        for cut in [1usize, 32, 100, 4096] {
            let fw = synthetic_image();
            assert!(
                mrtd(&fw[..fw.len() - cut], PageAddOrder::SinglePass).is_err(),
                "cut {cut}"
            );
        }
    }
}
