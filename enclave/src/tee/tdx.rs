//! Intel TDX backend.
//!
//! Quotes: configfs-tsm when the kernel has it (provider `tdx_guest`), else a TDREPORT from
//! `/dev/tdx_guest` sent to the host's quote-generation service (QGS) over vsock (CID 2, port
//! 4050), in QGS message format 1.0. RTMR3 is extended through
//! `/sys/class/misc/tdx_guest/measurements/rtmr3:sha384` (Linux 6.16+).

use std::io::{Read, Write};
use std::path::PathBuf;

use chrysalis_attestation::measure::eventlog::{runtime_event_digest, RUNTIME_EVENT};
use chrysalis_proto::Platform;

use super::configfs::{self, RealFs, TsmFs};
use super::{ioctl, ConfigBinding, GuestPaths, TeeDevice, TeeError, TeeEvidence};

/// Name of the RTMR3 runtime event that carries the enclave configuration.
pub const CONFIG_EVENT: &str = "chrysalis-config";

/// The digest extended into RTMR3 for a configuration (the runtime-event encoding the event-log
/// replay in `chrysalis-attestation` recomputes).
pub fn config_event_digest(config_json: &[u8]) -> [u8; 48] {
    runtime_event_digest(RUNTIME_EVENT, CONFIG_EVENT, config_json)
}

/// The JSON event log of the configuration event, replayable with `chrysalis eventlog`.
pub fn config_event_log(config_json: &[u8]) -> Vec<u8> {
    serde_json::json!([{
        "imr": 3,
        "event_type": RUNTIME_EVENT,
        "digest": hex::encode(config_event_digest(config_json)),
        "event": CONFIG_EVENT,
        "event_payload": hex::encode(config_json),
    }])
    .to_string()
    .into_bytes()
}

/// vsock port of the QGS.
pub const QGS_VSOCK_PORT: u32 = 4050;
/// vsock CID of the host.
pub const HOST_CID: u32 = 2;
const QGS_HEADER_LEN: usize = 16;
const QGS_GET_QUOTE_REQ: u32 = 0;
const QGS_GET_QUOTE_RESP: u32 = 1;
/// Largest QGS response accepted (quotes with certification data are a few KiB).
const QGS_MAX_MESSAGE: usize = 1 << 20;

/// Encode a QGS `GET_QUOTE_REQ` (1.0) for a TDREPORT, with its 4-byte big-endian length prefix.
pub fn qgs_encode_get_quote(tdreport: &[u8]) -> Vec<u8> {
    let size = QGS_HEADER_LEN + 8 + tdreport.len();
    let mut m = Vec::with_capacity(4 + size);
    m.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(&1u16.to_le_bytes()); // major
    m.extend_from_slice(&0u16.to_le_bytes()); // minor
    m.extend_from_slice(&QGS_GET_QUOTE_REQ.to_le_bytes());
    m.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // error_code
    m.extend_from_slice(
        &u32::try_from(tdreport.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    m.extend_from_slice(&0u32.to_le_bytes()); // id_list_size
    m.extend_from_slice(tdreport);
    m
}

fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Decode a QGS `GET_QUOTE_RESP` body (without the length prefix) into the quote.
pub fn qgs_decode_get_quote_resp(msg: &[u8]) -> Result<Vec<u8>, TeeError> {
    let bad = |m: String| TeeError::Protocol {
        interface: "tdx qgs",
        message: m,
    };
    let major = msg
        .get(0..2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes);
    if major != Some(1) {
        return Err(bad(format!("unsupported QGS message version {major:?}")));
    }
    let ty = le_u32(msg, 4).ok_or_else(|| bad("short header".into()))?;
    let size = le_u32(msg, 8).ok_or_else(|| bad("short header".into()))? as usize;
    let error = le_u32(msg, 12).ok_or_else(|| bad("short header".into()))?;
    if ty != QGS_GET_QUOTE_RESP {
        return Err(bad(format!("message type {ty} is not GET_QUOTE_RESP")));
    }
    if size != msg.len() {
        return Err(bad(format!(
            "header size {size} but {} bytes received",
            msg.len()
        )));
    }
    if error != 0 {
        return Err(bad(format!(
            "the quote-generation service returned error {error:#x}"
        )));
    }
    let id_size = le_u32(msg, 16).ok_or_else(|| bad("short body".into()))? as usize;
    let quote_size = le_u32(msg, 20).ok_or_else(|| bad("short body".into()))? as usize;
    let start = 24usize
        .checked_add(id_size)
        .ok_or_else(|| bad("size overflow".into()))?;
    let end = start
        .checked_add(quote_size)
        .ok_or_else(|| bad("size overflow".into()))?;
    if end != msg.len() || quote_size == 0 {
        return Err(bad("quote size does not match the message".into()));
    }
    msg.get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| bad("truncated".into()))
}

fn qgs_round_trip(tdreport: &[u8]) -> Result<Vec<u8>, TeeError> {
    let endpoint = format!("vsock:{HOST_CID}:{QGS_VSOCK_PORT}");
    let io = |e| TeeError::io(&endpoint, e);
    let mut s = vsock::VsockStream::connect_with_cid_port(HOST_CID, QGS_VSOCK_PORT).map_err(io)?;
    s.write_all(&qgs_encode_get_quote(tdreport)).map_err(io)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > QGS_MAX_MESSAGE {
        return Err(TeeError::Protocol {
            interface: "tdx qgs",
            message: format!("response of {n} bytes is too large"),
        });
    }
    let mut msg = vec![0u8; n];
    s.read_exact(&mut msg).map_err(io)?;
    qgs_decode_get_quote_resp(&msg)
}

#[derive(Debug)]
enum Via {
    Configfs(Box<dyn TsmFs + Send + Sync>),
    DevQgs,
}

/// The TDX guest.
#[derive(Debug)]
pub struct TdxDevice {
    paths: GuestPaths,
    via: Via,
}

impl TdxDevice {
    /// Open the TDX guest interfaces.
    pub fn open(paths: &GuestPaths) -> Result<Self, TeeError> {
        if configfs::provider(&paths.tsm_report).as_deref() == Some("tdx_guest") {
            return Ok(Self {
                paths: paths.clone(),
                via: Via::Configfs(Box::new(RealFs)),
            });
        }
        if paths.tdx_guest.exists() {
            return Ok(Self {
                paths: paths.clone(),
                via: Via::DevQgs,
            });
        }
        Err(TeeError::Unavailable(format!(
            "not a TDX guest: no configfs-tsm tdx_guest provider under {} and no {}",
            paths.tsm_report.display(),
            paths.tdx_guest.display()
        )))
    }

    /// A device over recorded configfs outputs (tests).
    pub fn with_tsm(paths: &GuestPaths, fs: Box<dyn TsmFs + Send + Sync>) -> Self {
        Self {
            paths: paths.clone(),
            via: Via::Configfs(fs),
        }
    }

    fn rtmr3_path(&self) -> PathBuf {
        self.paths.tdx_measurements.join("rtmr3:sha384")
    }
}

impl TeeDevice for TdxDevice {
    fn platform(&self) -> Platform {
        Platform::Tdx
    }
    fn name(&self) -> &'static str {
        "tdx"
    }
    fn attest(&self, report_data: &[u8; 64]) -> Result<TeeEvidence, TeeError> {
        match &self.via {
            Via::Configfs(fs) => {
                let r = configfs::request(
                    fs.as_ref(),
                    &self.paths.tsm_report,
                    "tdx_guest",
                    report_data,
                )?;
                Ok(TeeEvidence {
                    evidence: r.outblob,
                    cert_chain_pem: Vec::new(),
                    vcek_der: Vec::new(),
                    interface: "configfs-tsm",
                })
            }
            Via::DevQgs => {
                let tdreport = ioctl::tdx_get_report0(&self.paths.tdx_guest, report_data)?;
                let quote = qgs_round_trip(&tdreport)?;
                Ok(TeeEvidence {
                    evidence: quote,
                    cert_chain_pem: Vec::new(),
                    vcek_der: Vec::new(),
                    interface: "tdx_guest+qgs",
                })
            }
        }
    }
    fn bind_config(&self, config_json: &[u8]) -> Result<ConfigBinding, TeeError> {
        let digest = config_event_digest(config_json);
        let p = self.rtmr3_path();
        std::fs::write(&p, digest).map_err(|e| {
            TeeError::io(
                &p,
                std::io::Error::new(
                    e.kind(),
                    format!("cannot extend RTMR3 (needs Linux 6.16+): {e}"),
                ),
            )
        })?;
        Ok(ConfigBinding::Rtmr3Extended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qgs_request_layout() {
        let m = qgs_encode_get_quote(&[0xaa; 1024]);
        assert_eq!(m.len(), 4 + 16 + 8 + 1024);
        assert_eq!(m.get(0..4), Some(&(16u32 + 8 + 1024).to_be_bytes()[..]));
        assert_eq!(le_u32(&m, 4 + 8), Some(1048));
        assert_eq!(le_u32(&m, 4 + 16), Some(1024));
    }

    fn resp(quote: &[u8], error: u32, id: &[u8]) -> Vec<u8> {
        let size = 24 + id.len() + quote.len();
        let mut m = Vec::new();
        m.extend_from_slice(&1u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&QGS_GET_QUOTE_RESP.to_le_bytes());
        m.extend_from_slice(&(size as u32).to_le_bytes());
        m.extend_from_slice(&error.to_le_bytes());
        m.extend_from_slice(&(id.len() as u32).to_le_bytes());
        m.extend_from_slice(&(quote.len() as u32).to_le_bytes());
        m.extend_from_slice(id);
        m.extend_from_slice(quote);
        m
    }

    #[test]
    fn qgs_response_decoding_and_errors() {
        assert_eq!(
            qgs_decode_get_quote_resp(&resp(b"QUOTE", 0, b"id")).expect("quote"),
            b"QUOTE"
        );
        assert!(qgs_decode_get_quote_resp(&resp(b"QUOTE", 0x12, b"")).is_err());
        let mut wrong_size = resp(b"QUOTE", 0, b"");
        wrong_size.push(0);
        assert!(qgs_decode_get_quote_resp(&wrong_size).is_err());
        assert!(qgs_decode_get_quote_resp(&[1, 0]).is_err());
        assert!(qgs_decode_get_quote_resp(&resp(b"", 0, b"")).is_err());
    }
}
