//! AMD SEV-SNP backend.
//!
//! Reports: configfs-tsm when the kernel has it (provider `sev_guest`; `auxblob` holds the
//! host-provided certificate table), else `/dev/sev-guest` through the `sev` crate's guest API
//! (extended report). The measured configuration cannot be extended after launch on SNP: the host
//! sets HOST_DATA = SHA-256(configuration) at launch, and the enclave refuses to start if its own
//! report says otherwise.

use chrysalis_proto::Platform;
use sev::firmware::host::{CertTableEntry, CertType};
use sha2::{Digest, Sha256};

use super::configfs::{self, RealFs, TsmFs};
use super::{ConfigBinding, GuestPaths, TeeDevice, TeeError, TeeEvidence};

/// Offset and length of HOST_DATA in an SNP attestation report.
const HOST_DATA: std::ops::Range<usize> = 0xC0..0xE0;
/// Length of the report (versions 2 to 5).
const REPORT_LEN: usize = 1184;

/// VCEK/VLEK (DER) and the ASK/ARK chain (PEM) from a certificate table.
pub fn split_cert_table(table: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
    if table.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut buf = table.to_vec();
    let entries = CertTableEntry::vec_bytes_to_cert_table(&mut buf).map_err(|e| TeeError::Protocol {
        interface: "snp certificate table",
        message: e.to_string(),
    })?;
    let mut vcek = Vec::new();
    let mut chain = String::new();
    for e in &entries {
        match e.cert_type {
            CertType::VCEK | CertType::VLEK => vcek = e.data.clone(),
            CertType::ASK | CertType::ARK => chain.push_str(&pem_encode(&e.data)),
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
            return Ok(Self { paths: paths.clone(), via: Via::Configfs(Box::new(RealFs)) });
        }
        if paths.sev_guest.exists() {
            return Ok(Self { paths: paths.clone(), via: Via::SevGuest });
        }
        Err(TeeError::Unavailable(format!(
            "not an SNP guest: no configfs-tsm sev_guest provider under {} and no {}",
            paths.tsm_report.display(),
            paths.sev_guest.display()
        )))
    }

    /// A device over recorded configfs outputs (tests).
    pub fn with_tsm(paths: &GuestPaths, fs: Box<dyn TsmFs + Send + Sync>) -> Self {
        Self { paths: paths.clone(), via: Via::Configfs(fs) }
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
                let r = configfs::request(fs.as_ref(), &self.paths.tsm_report, &format!("chrysalis-{}", std::process::id()), report_data)?;
                if r.provider != "sev_guest" {
                    return Err(TeeError::Protocol { interface: "configfs-tsm", message: format!("provider {:?} is not sev_guest", r.provider) });
                }
                (r.outblob, r.auxblob, "configfs-tsm")
            }
            Via::SevGuest => {
                let mut fw = sev::firmware::guest::Firmware::open().map_err(|e| TeeError::io(&self.paths.sev_guest, e))?;
                let (report, certs) = fw.get_ext_report(None, Some(*report_data), None).map_err(|e| TeeError::Protocol {
                    interface: "sev-guest",
                    message: e.to_string(),
                })?;
                let table = match certs {
                    Some(c) => CertTableEntry::cert_table_to_vec_bytes(&c).map_err(|e| TeeError::Protocol {
                        interface: "sev-guest",
                        message: e.to_string(),
                    })?,
                    None => Vec::new(),
                };
                (report, table, "sev-guest")
            }
        };
        if report.len() != REPORT_LEN {
            return Err(TeeError::Protocol { interface, message: format!("report is {} bytes, expected {REPORT_LEN}", report.len()) });
        }
        let (vcek_der, cert_chain_pem) = split_cert_table(&table)?;
        Ok(TeeEvidence { evidence: report, cert_chain_pem, vcek_der, interface })
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

    #[test]
    fn recorded_certificate_table_splits_into_vcek_and_chain() {
        let td = concat!(env!("CARGO_MANIFEST_DIR"), "/../attestation/testdata/sev/");
        let vcek = std::fs::read(format!("{td}vcek_milan.der")).expect("fixture");
        let table = CertTableEntry::cert_table_to_vec_bytes(&[
            CertTableEntry::new(CertType::VCEK, vcek.clone()),
            CertTableEntry::new(CertType::ASK, vec![0x30, 0x03, 0x02, 0x01, 0x01]),
        ])
        .expect("table");
        let (got_vcek, chain) = split_cert_table(&table).expect("split");
        assert_eq!(got_vcek, vcek);
        let chain = String::from_utf8(chain).expect("pem");
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----\nMAMCAQE=\n"), "{chain}");
        assert!(split_cert_table(&[1, 2, 3]).is_err());
        assert_eq!(split_cert_table(&[]).expect("empty"), (Vec::new(), Vec::new()));
    }
}
