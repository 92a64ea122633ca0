//! TDX event logs: the firmware's CCEL (TCG PC Client "crypto agile" log) and the runtime
//! (RTMR3) log as JSON, replayed into RTMR0..3.
//!
//! Specs: TCG PC Client Platform Firmware Profile (TCG_PCR_EVENT / TCG_PCR_EVENT2,
//! TCG_EfiSpecIDEvent), UEFI `EFI_CC_MEASUREMENT_PROTOCOL` (MR index 1..4 = RTMR0..3), ACPI CCEL.
//! Replay: `RTMR[i] = SHA-384(RTMR[i] ‖ digest)` from zero, skipping EV_NO_ACTION.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use super::MeasureError;
use crate::bytes::{le_u16_at, le_u32_at};

/// EV_NO_ACTION: informational, not extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// The separator between boot phases (four zero bytes). This and the types below are the TCG PC
/// Client firmware profile's, as the RTMR prediction extends them.
pub const EV_SEPARATOR: u32 = 0x0000_0004;
/// Platform configuration (OVMF: QEMU's ACPI tables).
pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0x0000_000A;
/// Initial program load (OVMF: the command line and the initrd, RTMR2).
pub const EV_IPL: u32 = 0x0000_000D;
/// A UEFI variable that configures a driver (Secure Boot variables).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// A boot variable (`BootOrder`, `Boot####`).
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
/// A boot-services application (OVMF: the kernel, RTMR1).
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// An action string.
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
/// A firmware blob with a description (OVMF: the configuration volume).
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000A;
/// Handoff tables with a description (OVMF: the TD HOB).
pub const EV_EFI_HANDOFF_TABLES2: u32 = 0x8000_000B;
const TPM_ALG_SHA384: u16 = 0x000C;

/// One replayed event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// RTMR index 0..=3 (CC MR index minus one).
    pub rtmr: usize,
    /// TCG event type.
    pub event_type: u32,
    /// Name of the event type.
    pub event_type_name: String,
    /// SHA-384 digest extended, lowercase hex.
    pub digest: String,
    /// A decoded description of the event data.
    pub description: String,
}

/// A replayed log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// RTMR0..3 after replay, lowercase hex.
    pub rtmr: [String; 4],
    /// The events extended, in order.
    pub events: Vec<Event>,
}

/// Replay state.
#[derive(Clone, Debug)]
pub struct Rtmrs {
    regs: [[u8; 48]; 4],
    events: Vec<Event>,
}

impl Default for Rtmrs {
    fn default() -> Self {
        Rtmrs {
            regs: [[0; 48]; 4],
            events: Vec::new(),
        }
    }
}

impl Rtmrs {
    /// Extend RTMR `index` with `digest`.
    pub fn extend(
        &mut self,
        index: usize,
        event_type: u32,
        digest: [u8; 48],
        description: String,
    ) -> Result<(), MeasureError> {
        let reg = self
            .regs
            .get_mut(index)
            .ok_or_else(|| MeasureError::EventLog(format!("RTMR index {index} out of range")))?;
        let mut h = Sha384::new();
        h.update(*reg);
        h.update(digest);
        *reg = h.finalize().into();
        self.events.push(Event {
            rtmr: index,
            event_type,
            event_type_name: event_type_name(event_type),
            digest: hex::encode(digest),
            description,
        });
        Ok(())
    }

    /// The registers.
    pub fn values(&self) -> &[[u8; 48]; 4] {
        &self.regs
    }

    /// Finish.
    pub fn into_replay(self) -> Replay {
        Replay {
            rtmr: self.regs.map(hex::encode),
            events: self.events,
        }
    }
}

/// Name a TCG (or dstack runtime) event type.
pub fn event_type_name(t: u32) -> String {
    let name = match t {
        0x0000_0001 => "EV_POST_CODE",
        EV_NO_ACTION => "EV_NO_ACTION",
        EV_SEPARATOR => "EV_SEPARATOR",
        0x0000_0005 => "EV_ACTION",
        0x0000_0006 => "EV_EVENT_TAG",
        0x0000_0007 => "EV_S_CRTM_CONTENTS",
        0x0000_0008 => "EV_S_CRTM_VERSION",
        EV_PLATFORM_CONFIG_FLAGS => "EV_PLATFORM_CONFIG_FLAGS",
        EV_IPL => "EV_IPL",
        EV_EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        EV_EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
        EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        EV_EFI_ACTION => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        EV_EFI_PLATFORM_FIRMWARE_BLOB2 => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        EV_EFI_HANDOFF_TABLES2 => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000C => "EV_EFI_VARIABLE_BOOT2",
        0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x0800_0001 => "RUNTIME_EVENT",
        _ => return format!("{t:#x}"),
    };
    name.to_string()
}

fn printable(bytes: &[u8]) -> Option<String> {
    let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    (!text.is_empty() && text.iter().all(|b| (0x20..0x7f).contains(b)))
        .then(|| String::from_utf8_lossy(text).into_owned())
}

fn utf16(bytes: &[u8]) -> Option<String> {
    if bytes.len() % 2 != 0 || bytes.is_empty() {
        return None;
    }
    let units: Vec<u16> = (0..bytes.len() / 2)
        .filter_map(|i| le_u16_at(bytes, 2 * i))
        .collect();
    let s = String::from_utf16(&units).ok()?;
    let s = s.trim_end_matches('\0').to_string();
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then_some(s)
}

/// Describe event data for people.
pub fn describe(event_type: u32, data: &[u8]) -> String {
    match event_type {
        EV_SEPARATOR => "separator".into(),
        EV_EFI_VARIABLE_DRIVER_CONFIG | EV_EFI_VARIABLE_BOOT | 0x8000_000C if data.len() >= 32 => {
            // UEFI_VARIABLE_DATA: GUID ‖ u64 name length ‖ u64 data length ‖ UTF-16 name ‖ data.
            let name_len = data
                .get(16..24)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .unwrap_or(0);
            let name = usize::try_from(name_len)
                .ok()
                .and_then(|n| data.get(32..32 + 2 * n))
                .and_then(utf16)
                .unwrap_or_else(|| "?".into());
            format!("UEFI variable {name}")
        }
        0x8000_000A | 0x8000_000B => {
            // Blob2/HandoffTables2: u8 description length ‖ description.
            let n = usize::from(data.first().copied().unwrap_or(0));
            data.get(1..1 + n)
                .and_then(printable)
                .unwrap_or_else(|| format!("{} bytes", data.len()))
        }
        _ => printable(data)
            .or_else(|| utf16(data))
            .unwrap_or_else(|| format!("{} bytes", data.len())),
    }
}

/// Parse a CCEL log area and replay it. Stops at the first all-0xFF or zero record.
pub fn replay_ccel(log: &[u8]) -> Result<Rtmrs, MeasureError> {
    let err = |m: &str| MeasureError::EventLog(m.to_string());
    // First record: TCG_PCClientPCREvent (SHA-1 format) holding TCG_EfiSpecIDEvent.
    let header_type = le_u32_at(log, 4).ok_or_else(|| err("log too short"))?;
    if header_type != EV_NO_ACTION {
        return Err(err("first event is not the Spec ID event (EV_NO_ACTION)"));
    }
    let spec_size = le_u32_at(log, 28).ok_or_else(|| err("log too short"))? as usize;
    let spec = log
        .get(32..32 + spec_size)
        .ok_or_else(|| err("Spec ID event truncated"))?;
    if !spec.starts_with(b"Spec ID Event03\0") {
        return Err(err("not a crypto-agile log (Spec ID Event03 missing)"));
    }
    let algs = le_u32_at(spec, 24).ok_or_else(|| err("Spec ID event truncated"))? as usize;
    let mut sizes = Vec::new();
    for i in 0..algs.min(16) {
        let id = le_u16_at(spec, 28 + 4 * i).ok_or_else(|| err("algorithm list truncated"))?;
        let size = le_u16_at(spec, 30 + 4 * i).ok_or_else(|| err("algorithm list truncated"))?;
        sizes.push((id, usize::from(size)));
    }
    if !sizes
        .iter()
        .any(|(id, size)| *id == TPM_ALG_SHA384 && *size == 48)
    {
        return Err(err("log has no SHA-384 digests"));
    }
    let mut rtmrs = Rtmrs::default();
    let mut at = 32 + spec_size;
    while let Some(index) = le_u32_at(log, at) {
        if index == 0xFFFF_FFFF || (index == 0 && le_u32_at(log, at + 4).unwrap_or(0) == 0) {
            break;
        }
        let event_type = le_u32_at(log, at + 4).ok_or_else(|| err("event truncated"))?;
        let count = le_u32_at(log, at + 8).ok_or_else(|| err("event truncated"))? as usize;
        if count > sizes.len() {
            return Err(err("event has more digests than the log declares"));
        }
        let mut p = at + 12;
        let mut sha384 = None;
        for _ in 0..count {
            let id = le_u16_at(log, p).ok_or_else(|| err("digest truncated"))?;
            let size = sizes
                .iter()
                .find(|(a, _)| *a == id)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    MeasureError::EventLog(format!("digest algorithm {id:#x} not declared"))
                })?;
            let digest = log
                .get(p + 2..p + 2 + size)
                .ok_or_else(|| err("digest truncated"))?;
            if id == TPM_ALG_SHA384 {
                sha384 = <[u8; 48]>::try_from(digest).ok();
            }
            p += 2 + size;
        }
        let data_len = le_u32_at(log, p).ok_or_else(|| err("event data truncated"))? as usize;
        let data = log
            .get(p + 4..p + 4 + data_len)
            .ok_or_else(|| err("event data truncated"))?;
        if event_type != EV_NO_ACTION {
            if !(1..=4).contains(&index) {
                return Err(MeasureError::EventLog(format!(
                    "MR index {index} is not an RTMR (1..=4)"
                )));
            }
            let digest = sha384.ok_or_else(|| err("event without a SHA-384 digest"))?;
            rtmrs.extend(
                index as usize - 1,
                event_type,
                digest,
                describe(event_type, data),
            )?;
        }
        at = p + 4 + data_len;
    }
    Ok(rtmrs)
}

/// Event type of a runtime (RTMR3) event.
pub const RUNTIME_EVENT: u32 = 0x0800_0001;

/// Digest of a runtime event: SHA-384(u32 LE event type ‖ ":" ‖ name ‖ ":" ‖ payload), the
/// encoding dstack's guest agent uses and ours follows.
pub fn runtime_event_digest(event_type: u32, name: &str, payload: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(event_type.to_le_bytes());
    h.update(b":");
    h.update(name.as_bytes());
    h.update(b":");
    h.update(payload);
    h.finalize().into()
}

/// One event of a JSON log (dstack's format: `imr` is the RTMR index).
#[derive(Clone, Debug, Deserialize)]
pub struct JsonEvent {
    /// RTMR index 0..=3.
    pub imr: usize,
    /// Event type.
    pub event_type: u32,
    /// SHA-384 digest, hex.
    pub digest: String,
    /// Event name (runtime events).
    #[serde(default)]
    pub event: String,
    /// Payload, hex.
    #[serde(default)]
    pub event_payload: String,
}

/// Replay a JSON event list (boot and runtime events).
pub fn replay_json(json: &str) -> Result<Rtmrs, MeasureError> {
    let events: Vec<JsonEvent> = serde_json::from_str(json)
        .map_err(|e| MeasureError::EventLog(format!("not a JSON event list: {e}")))?;
    let mut rtmrs = Rtmrs::default();
    for e in events {
        if e.event_type == EV_NO_ACTION {
            continue;
        }
        let payload = hex::decode(&e.event_payload).map_err(|err| {
            MeasureError::EventLog(format!("event {:?}: payload is not hex: {err}", e.event))
        })?;
        let digest = if e.event_type == RUNTIME_EVENT {
            // A runtime event's digest is derived from its name and payload: recompute it, so
            // the log's content (not only its digests) is what the RTMR proves.
            let computed = runtime_event_digest(e.event_type, &e.event, &payload);
            if !e.digest.is_empty() && e.digest.to_ascii_lowercase() != hex::encode(computed) {
                return Err(MeasureError::EventLog(format!(
                    "runtime event {:?}: digest {} does not match its name and payload",
                    e.event, e.digest
                )));
            }
            computed
        } else {
            crate::evidence::hex_array::<48>("event digest", &e.digest)
                .map_err(|err| MeasureError::EventLog(err.to_string()))?
        };
        let description = if e.event.is_empty() {
            describe(e.event_type, &payload)
        } else {
            e.event.clone()
        };
        rtmrs.extend(e.imr, e.event_type, digest, description)?;
    }
    Ok(rtmrs)
}
