//! Bounds-checked little-endian reads.

/// The u16 at `offset`, if the slice is long enough.
pub(crate) fn le_u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let b: [u8; 2] = bytes.get(offset..offset.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_le_bytes(b))
}

/// The u32 at `offset`, if the slice is long enough.
pub(crate) fn le_u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(offset..offset.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}
