//! AMD SEV-SNP backend.
//!
//! Reports: configfs-tsm when the kernel has it (provider `sev_guest`; `auxblob` holds the
//! host-provided certificate table), else `/dev/sev-guest` through the `sev` crate's guest API
//! (extended report). The measured configuration cannot be extended after launch on SNP: the host
//! sets HOST_DATA = SHA-256(configuration) at launch, and the enclave refuses to start if its own
//! report says otherwise.

use chrysalis_proto::Platform;
use sha2::{Digest, Sha256};

use super::configfs::{self, RealFs, TsmFs};
use super::{ConfigBinding, GuestPaths, TeeDevice, TeeError, TeeEvidence};

/// Offset and length of HOST_DATA in an SNP attestation report.
const HOST_DATA: std::ops::Range<usize> = 0xC0..0xE0;
/// Length of the report (versions 2 to 5).
const REPORT_LEN: usize = 1184;

/// GUIDs of the GHCB certificate table (GHCB spec, SNP extended guest request), as text.
pub const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
/// VLEK.
pub const GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
/// ASK (or ASVK).
pub const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
/// ARK.
pub const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";

fn guid_text(b: &[u8]) -> String {
    let part = |r: std::ops::Range<usize>| b.get(r).map(hex::encode).unwrap_or_default();
    format!(
        "{}-{}-{}-{}-{}",
        part(0..4),
        part(4..6),
        part(6..8),
        part(8..10),
        part(10..16)
    )
}

/// Parse a certificate table: entries of `guid[16] ‖ offset u32le ‖ length u32le` up to an
/// all-zero entry, offsets from the table's start. Every bound is checked: the table comes from
/// the host. (The `sev` crate's own parser follows raw pointers without bounds, so we do not
/// hand it host data.)
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TeeError> {
    let bad = |m: String| TeeError::Protocol {
        interface: "snp certificate table",
        message: m,
    };
    let mut out = Vec::new();
    for i in 0.. {
        let at = i * 24;
        let entry = table
            .get(at..at + 24)
            .ok_or_else(|| bad("no terminating entry".into()))?;
        let (guid, rest) = entry.split_at(16);
        if guid.iter().all(|b| *b == 0) {
            return Ok(out);
        }
        let offset = u32::from_le_bytes(
            rest.get(0..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4]),
        ) as usize;
        let len = u32::from_le_bytes(
            rest.get(4..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4]),
        ) as usize;
        let data = offset
            .checked_add(len)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| bad(format!("entry {i} points outside the table")))?;
        out.push((guid_text(guid), data.to_vec()));
    }
    Ok(out)
}

/// VCEK/VLEK (DER) and the ASK/ARK chain (PEM) from a certificate table.
pub fn split_cert_table(table: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
    if table.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut vcek = Vec::new();
    let mut chain = String::new();
    for (guid, data) in parse_cert_table(table)? {
        match guid.as_str() {
            GUID_VCEK | GUID_VLEK => vcek = data,
            GUID_ASK | GUID_ARK => chain.push_str(&pem_encode(&data)),
            _ => {}
        }
    }
    Ok((vcek, chain.into_bytes()))
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(line));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

#[derive(Debug)]
enum Via {
    Configfs(Box<dyn TsmFs + Send + Sync>),
    SevGuest,
}

/// The SNP guest.
#[derive(Debug)]
pub struct SnpDevice {
    paths: GuestPaths,
    via: Via,
}

impl SnpDevice {
    /// Open the SNP guest interfaces.
    pub fn open(paths: &GuestPaths) -> Result<Self, TeeError> {
        if configfs::provider(&paths.tsm_report).as_deref() == Some("sev_guest") {
            return Ok(Self {
                paths: paths.clone(),
                via: Via::Configfs(Box::new(RealFs)),
            });
        }
        if paths.sev_guest.exists() {
            return Ok(Self {
                paths: paths.clone(),
                via: Via::SevGuest,
            });
        }
        Err(TeeError::Unavailable(format!(
            "not an SNP guest: no configfs-tsm sev_guest provider under {} and no {}",
            paths.tsm_report.display(),
            paths.sev_guest.display()
        )))
    }

    /// A device over recorded configfs outputs (tests).
    pub fn with_tsm(paths: &GuestPaths, fs: Box<dyn TsmFs + Send + Sync>) -> Self {
        Self {
            paths: paths.clone(),
            via: Via::Configfs(fs),
        }
    }
}

impl TeeDevice for SnpDevice {
    fn platform(&self) -> Platform {
        Platform::Snp
    }
    fn name(&self) -> &'static str {
        "snp"
    }
    fn attest(&self, report_data: &[u8; 64]) -> Result<TeeEvidence, TeeError> {
        let (report, table, interface) = match &self.via {
            Via::Configfs(fs) => {
                let r = configfs::request(
                    fs.as_ref(),
                    &self.paths.tsm_report,
                    "sev_guest",
                    report_data,
                )?;
                (r.outblob, r.auxblob, "configfs-tsm")
            }
            Via::SevGuest => {
                // The plain report: the extended one would hand the host's certificate table to
                // the `sev` crate's unchecked parser. Clients fetch the VCEK from AMD's KDS.
                let mut fw = sev::firmware::guest::Firmware::open()
                    .map_err(|e| TeeError::io(&self.paths.sev_guest, e))?;
                let report = fw.get_report(None, Some(*report_data), None).map_err(|e| {
                    TeeError::Protocol {
                        interface: "sev-guest",
                        message: e.to_string(),
                    }
                })?;
                (report, Vec::new(), "sev-guest")
            }
        };
        if report.len() != REPORT_LEN {
            return Err(TeeError::Protocol {
                interface,
                message: format!("report is {} bytes, expected {REPORT_LEN}", report.len()),
            });
        }
        let (vcek_der, cert_chain_pem) = split_cert_table(&table)?;
        Ok(TeeEvidence {
            evidence: report,
            cert_chain_pem,
            vcek_der,
            interface,
        })
    }
    fn bind_config(&self, config_json: &[u8]) -> Result<ConfigBinding, TeeError> {
        let want: [u8; 32] = Sha256::digest(config_json).into();
        let own = self.attest(&[0; 64])?;
        let host_data = own.evidence.get(HOST_DATA).unwrap_or_default();
        if host_data != want {
            return Err(TeeError::Protocol {
                interface: "snp host_data",
                message: format!(
                    "HOST_DATA is {} but this configuration needs {}: the VM was launched for another configuration",
                    hex::encode(host_data),
                    hex::encode(want)
                ),
            });
        }
        Ok(ConfigBinding::HostData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as the host builds it (GUID big-endian bytes, offsets from the start).
    fn table(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut head = Vec::new();
        let mut body = Vec::new();
        let start = (entries.len() + 1) * 24;
        for (guid, data) in entries {
            head.extend_from_slice(&hex::decode(guid.replace('-', "")).expect("guid"));
            head.extend_from_slice(&((start + body.len()) as u32).to_le_bytes());
            head.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
        }
        head.extend_from_slice(&[0; 24]);
        head.extend_from_slice(&body);
        head
    }

    #[test]
    fn recorded_certificate_table_splits_into_vcek_and_chain() {
        let td = concat!(env!("CARGO_MANIFEST_DIR"), "/../attestation/testdata/sev/");
        let vcek = std::fs::read(format!("{td}vcek_milan.der")).expect("fixture");
        let t = table(&[
            (GUID_VCEK, &vcek),
            (GUID_ASK, &[0x30, 0x03, 0x02, 0x01, 0x01]),
        ]);
        let (got_vcek, chain) = split_cert_table(&t).expect("split");
        assert_eq!(got_vcek, vcek);
        let chain = String::from_utf8(chain).expect("pem");
        assert!(
            chain.starts_with("-----BEGIN CERTIFICATE-----\nMAMCAQE=\n"),
            "{chain}"
        );
        // The parsed PEM is what the verifier reads.
        assert_eq!(
            split_cert_table(&[]).expect("empty"),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn hostile_tables_are_errors_not_crashes() {
        assert!(split_cert_table(&[1, 2, 3]).is_err(), "short");
        let mut t = table(&[(GUID_VCEK, b"abc")]);
        if let Some(b) = t.get_mut(16) {
            *b = 0xff; // offset far outside
        }
        assert!(split_cert_table(&t).is_err(), "offset outside");
        let no_terminator = table(&[(GUID_VCEK, b"abc")])
            .get(..24)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        assert!(split_cert_table(&no_terminator).is_err(), "no terminator");
    }
}
