//! Verifier policy, loaded from TOML. Fail closed: unknown fields are errors, allowlists cannot
//! be empty, there is no "any", and a policy file must pin measurements for every platform it
//! accepts.
//!
//! ```toml
//! version = 1
//! platforms = ["tdx", "snp"]          # "simulated" must be named to accept the simulator
//! report_data = "<128 hex digits>"    # optional: required key binding
//!
//! [tcb]
//! accepted_statuses = ["UpToDate"]    # default
//! out_of_date_grace_days = 30         # optional, 1..=180: OutOfDate accepted this long
//! collateral_max_age_days = 30        # optional: TDX collateral issued at most this long ago
//! rejected_advisories = ["INTEL-SA-00837"]
//!
//! [tdx]
//! mr_td = ["<96 hex>"]
//! rtmr = [["<rtmr0>", "<rtmr1>", "<rtmr2>", "<rtmr3>"]]   # optional sets of all four
//! rtmr0 = ["<96 hex>"]                # optional: RTMR0 alone (firmware, TD HOB, ACPI, boot vars)
//! rtmr1 = ["<96 hex>"]                # optional: RTMR1 alone (kernel)
//! rtmr2 = ["<96 hex>"]                # optional: RTMR2 alone (command line, initrd)
//! mr_seam = ["<96 hex>"]              # optional TDX module allowlist
//! min_tee_tcb_svn = "<32 hex>"        # optional, compared byte by byte
//! require_sept_ve_disable = true      # default true
//!
//! [snp]
//! measurement = ["<96 hex>"]
//! host_data = ["<64 hex>"]            # optional
//! id_key_digest = ["<96 hex>"]        # optional: launched with an ID block signed by these keys
//! author_key_digest = ["<96 hex>"]    # optional: ... whose ID key these author keys signed
//! min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }   # optional; fmc too
//! allow_smt = true                    # default true
//! allow_migration_agent = false       # default false
//!
//! [simulated]
//! measurement = ["<96 hex>"]
//! ```
//! Debug guests (TD_ATTRIBUTES bit 0, SNP POLICY bit 19, the simulator's debug flag) are always
//! rejected: no policy can allow them.

use std::collections::BTreeSet;

use dcap_qvl::TcbStatus;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ParseError;
use crate::evidence::{hex_array, hex_lower, Platform};

/// The longest grace window a policy may give an out-of-date TCB.
pub const MAX_GRACE_DAYS: u32 = 180;

/// The policy file as written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Policy format version (1).
    pub version: u32,
    /// Accepted platforms.
    pub platforms: Vec<Platform>,
    /// Required `report_data`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_data: Option<String>,
    /// TCB rules.
    #[serde(default)]
    pub tcb: TcbFile,
    /// TDX rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxFile>,
    /// SEV-SNP rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpFile>,
    /// Simulator rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<SimulatedFile>,
    /// GPU rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuFile>,
}

/// `[gpu]`: what an enclave's GPU evidence must show. Every GPU report a bundle carries is
/// verified (signature, device chain to NVIDIA's root, nonce) whatever this section says.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuFile {
    /// Refuse an enclave that attests no GPU (default false: CPU inference is accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Allowed driver versions, as the GPU reports them (e.g. `550.90.07`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_versions: Option<Vec<String>>,
    /// Allowed VBIOS versions (e.g. `96.00.9f.00.01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbios_versions: Option<Vec<String>>,
}

/// The validated `[gpu]` rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuRules {
    /// An attested GPU is required.
    pub required: bool,
    /// Allowed driver versions (`None`: any).
    pub driver_versions: Option<Vec<String>>,
    /// Allowed VBIOS versions (`None`: any), compared ignoring case.
    pub vbios_versions: Option<Vec<String>>,
}

/// `[tcb]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcbFile {
    /// Intel TCB statuses accepted; default `["UpToDate"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_statuses: Option<Vec<String>>,
    /// Grace window for `OutOfDate` after a TCB recovery, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_date_grace_days: Option<u32>,
    /// Maximum age of TDX collateral, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collateral_max_age_days: Option<u32>,
    /// Advisory IDs that cause rejection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_advisories: Vec<String>,
}

/// `[tdx]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TdxFile {
    /// Allowed MRTD values.
    pub mr_td: Vec<String>,
    /// Allowed (RTMR0, RTMR1, RTMR2, RTMR3) sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr: Option<Vec<[String; 4]>>,
    /// Allowed RTMR0 values (firmware configuration, TD HOB, ACPI tables, boot variables), checked
    /// alone: `chrysalis measure tdx` computes it given QEMU's ACPI tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr0: Option<Vec<String>>,
    /// Allowed RTMR1 values (kernel), checked alone; for images whose RTMR0 is not predicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr1: Option<Vec<String>>,
    /// Allowed RTMR2 values (command line and initrd), checked alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr2: Option<Vec<String>>,
    /// Allowed MRCONFIGID values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_config_id: Option<Vec<String>>,
    /// Allowed TDX modules (MRSEAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_seam: Option<Vec<String>>,
    /// Minimum TEE_TCB_SVN, 16 bytes hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tee_tcb_svn: Option<String>,
    /// Require TD_ATTRIBUTES.SEPT_VE_DISABLE (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_sept_ve_disable: Option<bool>,
}

/// `[snp]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnpFile {
    /// Allowed launch measurements.
    pub measurement: Vec<String>,
    /// Allowed HOST_DATA values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<Vec<String>>,
    /// Allowed ID_KEY_DIGEST values (keys that signed the launch's ID block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_key_digest: Option<Vec<String>>,
    /// Allowed AUTHOR_KEY_DIGEST values (author keys that signed the ID key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_key_digest: Option<Vec<String>>,
    /// Minimum TCB components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<MinTcb>,
    /// Minimum GUEST_SVN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_guest_svn: Option<u32>,
    /// Accept guests whose policy allows SMT (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_smt: Option<bool>,
    /// Accept guests whose policy allows a migration agent (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_migration_agent: Option<bool>,
}

/// Minimum SNP TCB components.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MinTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode.
    pub microcode: u8,
    /// FMC (Turin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

/// `[simulated]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulatedFile {
    /// Allowed simulated measurements.
    pub measurement: Vec<String>,
    /// Allowed configuration digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Vec<String>>,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub(crate) platforms: BTreeSet<Platform>,
    pub(crate) report_data: Option<[u8; 64]>,
    pub(crate) tcb: TcbRules,
    pub(crate) tdx: Option<TdxRules>,
    pub(crate) snp: Option<SnpRules>,
    pub(crate) simulated: Option<SimulatedRules>,
    pub(crate) gpu: GpuRules,
    source: PolicyFile,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TcbRules {
    pub accepted: Vec<TcbStatus>,
    pub grace_days: Option<u32>,
    pub collateral_max_age_days: Option<u32>,
    pub rejected_advisories: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TdxRules {
    pub mr_td: Vec<[u8; 48]>,
    pub rtmr: Option<Vec<[[u8; 48]; 4]>>,
    pub rtmr0: Option<Vec<[u8; 48]>>,
    pub rtmr1: Option<Vec<[u8; 48]>>,
    pub rtmr2: Option<Vec<[u8; 48]>>,
    pub mr_config_id: Option<Vec<[u8; 48]>>,
    pub mr_seam: Option<Vec<[u8; 48]>>,
    pub min_tee_tcb_svn: Option<[u8; 16]>,
    pub require_sept_ve_disable: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SnpRules {
    pub measurement: Vec<[u8; 48]>,
    pub host_data: Option<Vec<[u8; 32]>>,
    pub id_key_digest: Option<Vec<[u8; 48]>>,
    pub author_key_digest: Option<Vec<[u8; 48]>>,
    pub min_tcb: Option<MinTcb>,
    pub min_guest_svn: Option<u32>,
    pub allow_smt: bool,
    pub allow_migration_agent: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SimulatedRules {
    pub measurement: Vec<[u8; 48]>,
    pub config_digest: Option<Vec<[u8; 48]>>,
}

fn nonempty<T>(what: &str, list: &[T]) -> Result<(), ParseError> {
    if list.is_empty() {
        return Err(ParseError::Policy(format!(
            "{what} is an empty allowlist: name at least one value"
        )));
    }
    Ok(())
}

fn hex_list<const N: usize>(
    what: &'static str,
    list: &[String],
) -> Result<Vec<[u8; N]>, ParseError> {
    nonempty(what, list)?;
    list.iter()
        .map(|v| hex_array::<N>(what, v).map_err(|e| ParseError::Policy(e.to_string())))
        .collect()
}

fn opt_hex_list<const N: usize>(
    what: &'static str,
    list: &Option<Vec<String>>,
) -> Result<Option<Vec<[u8; N]>>, ParseError> {
    list.as_ref().map(|l| hex_list::<N>(what, l)).transpose()
}

fn parse_status(name: &str) -> Result<TcbStatus, ParseError> {
    serde_json::from_value::<TcbStatus>(serde_json::Value::String(name.to_string())).map_err(|_| {
        ParseError::Policy(format!(
            "unknown TCB status {name:?} (known: UpToDate, SWHardeningNeeded, ConfigurationNeeded, \
             ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded, TDRelaunchAdvised, \
             TDRelaunchAdvisedConfigurationNeeded)"
        ))
    })
}

impl Policy {
    /// The policy applied when none is given: TDX or SNP, authentic, not debug, TCB `UpToDate`.
    /// It checks no measurement; [`Policy::pins_measurements`] says so.
    pub fn baseline() -> Self {
        // Built directly (not through `build`) so that it cannot fail; the test
        // `baseline_is_strict` checks it equals what `build` makes of the same file.
        Policy {
            platforms: [Platform::Tdx, Platform::Snp].into_iter().collect(),
            report_data: None,
            tcb: TcbRules {
                accepted: vec![TcbStatus::UpToDate],
                grace_days: None,
                collateral_max_age_days: None,
                rejected_advisories: Vec::new(),
            },
            tdx: None,
            snp: None,
            simulated: None,
            gpu: GpuRules::default(),
            source: PolicyFile {
                version: 1,
                platforms: vec![Platform::Tdx, Platform::Snp],
                report_data: None,
                tcb: TcbFile::default(),
                tdx: None,
                snp: None,
                simulated: None,
                gpu: None,
            },
        }
    }

    /// Parse and validate a policy file.
    pub fn from_toml(text: &str) -> Result<Self, ParseError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| ParseError::Policy(e.to_string()))?;
        Self::build(file, true)
    }

    /// Validate a policy built in code (image manifests, trust on first use).
    pub fn from_file(file: PolicyFile) -> Result<Self, ParseError> {
        Self::build(file, true)
    }

    fn build(file: PolicyFile, require_measurements: bool) -> Result<Self, ParseError> {
        if file.version != 1 {
            return Err(ParseError::Policy(format!(
                "unsupported policy version {} (expected 1)",
                file.version
            )));
        }
        nonempty("platforms", &file.platforms)?;
        let platforms: BTreeSet<Platform> = file.platforms.iter().copied().collect();
        let report_data = file
            .report_data
            .as_deref()
            .map(|v| {
                hex_array::<64>("report_data", v).map_err(|e| ParseError::Policy(e.to_string()))
            })
            .transpose()?;

        let statuses = match &file.tcb.accepted_statuses {
            Some(list) => {
                nonempty("tcb.accepted_statuses", list)?;
                list.iter()
                    .map(|s| parse_status(s))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => vec![TcbStatus::UpToDate],
        };
        if statuses.contains(&TcbStatus::Revoked) {
            return Err(ParseError::Policy(
                "a revoked TCB can never be accepted".into(),
            ));
        }
        if let Some(days) = file.tcb.out_of_date_grace_days {
            if days == 0 || days > MAX_GRACE_DAYS {
                return Err(ParseError::Policy(format!(
                    "tcb.out_of_date_grace_days must be 1..={MAX_GRACE_DAYS}"
                )));
            }
        }
        if file.tcb.collateral_max_age_days == Some(0) {
            return Err(ParseError::Policy(
                "tcb.collateral_max_age_days must be at least 1".into(),
            ));
        }
        let tcb = TcbRules {
            accepted: statuses,
            grace_days: file.tcb.out_of_date_grace_days,
            collateral_max_age_days: file.tcb.collateral_max_age_days,
            rejected_advisories: file.tcb.rejected_advisories.clone(),
        };

        let tdx = file
            .tdx
            .as_ref()
            .map(|t| -> Result<TdxRules, ParseError> {
                Ok(TdxRules {
                    mr_td: hex_list("tdx.mr_td", &t.mr_td)?,
                    rtmr: t
                        .rtmr
                        .as_ref()
                        .map(|sets| {
                            nonempty("tdx.rtmr", sets)?;
                            sets.iter()
                                .map(|set| {
                                    let mut out = [[0u8; 48]; 4];
                                    for (slot, value) in out.iter_mut().zip(set) {
                                        *slot = hex_array("tdx.rtmr", value)
                                            .map_err(|e| ParseError::Policy(e.to_string()))?;
                                    }
                                    Ok(out)
                                })
                                .collect::<Result<Vec<_>, ParseError>>()
                        })
                        .transpose()?,
                    rtmr0: opt_hex_list("tdx.rtmr0", &t.rtmr0)?,
                    rtmr1: opt_hex_list("tdx.rtmr1", &t.rtmr1)?,
                    rtmr2: opt_hex_list("tdx.rtmr2", &t.rtmr2)?,
                    mr_config_id: opt_hex_list("tdx.mr_config_id", &t.mr_config_id)?,
                    mr_seam: opt_hex_list("tdx.mr_seam", &t.mr_seam)?,
                    min_tee_tcb_svn: t
                        .min_tee_tcb_svn
                        .as_deref()
                        .map(|v| {
                            hex_array::<16>("tdx.min_tee_tcb_svn", v)
                                .map_err(|e| ParseError::Policy(e.to_string()))
                        })
                        .transpose()?,
                    require_sept_ve_disable: t.require_sept_ve_disable.unwrap_or(true),
                })
            })
            .transpose()?;
        let snp = file
            .snp
            .as_ref()
            .map(|s| -> Result<SnpRules, ParseError> {
                Ok(SnpRules {
                    measurement: hex_list("snp.measurement", &s.measurement)?,
                    host_data: opt_hex_list("snp.host_data", &s.host_data)?,
                    id_key_digest: opt_hex_list("snp.id_key_digest", &s.id_key_digest)?,
                    author_key_digest: opt_hex_list("snp.author_key_digest", &s.author_key_digest)?,
                    min_tcb: s.min_tcb,
                    min_guest_svn: s.min_guest_svn,
                    allow_smt: s.allow_smt.unwrap_or(true),
                    allow_migration_agent: s.allow_migration_agent.unwrap_or(false),
                })
            })
            .transpose()?;
        let simulated = file
            .simulated
            .as_ref()
            .map(|s| -> Result<SimulatedRules, ParseError> {
                Ok(SimulatedRules {
                    measurement: hex_list("simulated.measurement", &s.measurement)?,
                    config_digest: opt_hex_list("simulated.config_digest", &s.config_digest)?,
                })
            })
            .transpose()?;

        let gpu = match &file.gpu {
            None => GpuRules::default(),
            Some(g) => {
                let list = |name: &str,
                            l: &Option<Vec<String>>|
                 -> Result<Option<Vec<String>>, ParseError> {
                    match l {
                        Some(v) if v.is_empty() || v.iter().any(|s| s.trim().is_empty()) => {
                            Err(ParseError::Policy(format!(
                                "gpu.{name} must list at least one non-empty version"
                            )))
                        }
                        Some(v) => Ok(Some(v.iter().map(|s| s.trim().to_owned()).collect())),
                        None => Ok(None),
                    }
                };
                let rules = GpuRules {
                    required: g.required.unwrap_or(false),
                    driver_versions: list("driver_versions", &g.driver_versions)?,
                    vbios_versions: list("vbios_versions", &g.vbios_versions)?,
                };
                if !rules.required
                    && (rules.driver_versions.is_some() || rules.vbios_versions.is_some())
                {
                    // Allow-lists without `required` would let an enclave escape them by
                    // attesting no GPU at all.
                    return Err(ParseError::Policy(
                        "gpu.driver_versions / gpu.vbios_versions need gpu.required = true".into(),
                    ));
                }
                rules
            }
        };

        if require_measurements {
            for platform in &platforms {
                let pinned = match platform {
                    Platform::Tdx => tdx.is_some(),
                    Platform::Snp => snp.is_some(),
                    Platform::Simulated => simulated.is_some(),
                };
                if !pinned {
                    return Err(ParseError::Policy(format!(
                        "platform {platform} is accepted but the policy has no [{platform}] section pinning its measurements"
                    )));
                }
            }
        }
        for (platform, present) in [
            (Platform::Tdx, tdx.is_some()),
            (Platform::Snp, snp.is_some()),
            (Platform::Simulated, simulated.is_some()),
        ] {
            if present && !platforms.contains(&platform) {
                return Err(ParseError::Policy(format!(
                    "[{platform}] rules are given but {platform} is not in platforms"
                )));
            }
        }
        Ok(Policy {
            platforms,
            report_data,
            tcb,
            tdx,
            snp,
            simulated,
            gpu,
            source: file,
        })
    }

    /// Accept the simulator too (the CLI's `--allow-simulated`). The simulator is still checked
    /// against `[simulated]` measurements when the policy has them.
    pub fn allow_simulated(mut self) -> Self {
        self.platforms.insert(Platform::Simulated);
        if !self.source.platforms.contains(&Platform::Simulated) {
            self.source.platforms.push(Platform::Simulated);
        }
        self
    }

    /// Require this `report_data` (the client's key and nonce binding).
    pub fn require_report_data(mut self, report_data: [u8; 64]) -> Self {
        self.report_data = Some(report_data);
        self.source.report_data = Some(hex_lower(&report_data));
        self
    }

    /// Whether the policy pins measurements for `platform`.
    pub fn pins_measurements(&self, platform: Platform) -> bool {
        match platform {
            Platform::Tdx => self.tdx.is_some(),
            Platform::Snp => self.snp.is_some(),
            Platform::Simulated => self.simulated.is_some(),
        }
    }

    /// The `[gpu]` rules (defaults when the policy has none).
    pub fn gpu(&self) -> &GpuRules {
        &self.gpu
    }

    /// Whether `platform` is accepted at all.
    pub fn allows(&self, platform: Platform) -> bool {
        self.platforms.contains(&platform)
    }

    /// The policy as a file, for writing out.
    pub fn to_file(&self) -> &PolicyFile {
        &self.source
    }

    /// TOML text of the policy.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.source).unwrap_or_default()
    }

    /// A digest identifying this policy (for cache keys).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_toml().as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn baseline_is_strict() {
        let p = Policy::baseline();
        assert!(p.allows(Platform::Tdx) && p.allows(Platform::Snp));
        assert!(!p.allows(Platform::Simulated));
        assert_eq!(p.tcb.accepted, vec![TcbStatus::UpToDate]);
        assert!(!p.pins_measurements(Platform::Tdx));
        let built = Policy::build(p.to_file().clone(), false).expect("baseline validates");
        assert_eq!(built, p);
    }

    #[test]
    fn fail_closed_parsing() {
        let ok = format!("version = 1\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = [\"{M}\"]\n");
        assert!(Policy::from_toml(&ok).is_ok());
        let cases = [
            ("unknown field", format!("{ok}bogus = 1\n")),
            ("unknown top-level", format!("version = 1\nplatforms = [\"tdx\"]\nanything = true\n[tdx]\nmr_td = [\"{M}\"]\n")),
            ("empty platforms", "version = 1\nplatforms = []\n".to_string()),
            ("empty mr_td", "version = 1\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = []\n".to_string()),
            ("no section", "version = 1\nplatforms = [\"tdx\"]\n".to_string()),
            ("unknown platform", "version = 1\nplatforms = [\"any\"]\n".to_string()),
            ("bad hex length", "version = 1\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = [\"00\"]\n".to_string()),
            ("grace too long", format!("version = 1\nplatforms = [\"tdx\"]\n[tcb]\nout_of_date_grace_days = 365\n[tdx]\nmr_td = [\"{M}\"]\n")),
            ("empty statuses", format!("version = 1\nplatforms = [\"tdx\"]\n[tcb]\naccepted_statuses = []\n[tdx]\nmr_td = [\"{M}\"]\n")),
            ("revoked", format!("version = 1\nplatforms = [\"tdx\"]\n[tcb]\naccepted_statuses = [\"Revoked\"]\n[tdx]\nmr_td = [\"{M}\"]\n")),
            ("unknown status", format!("version = 1\nplatforms = [\"tdx\"]\n[tcb]\naccepted_statuses = [\"Fine\"]\n[tdx]\nmr_td = [\"{M}\"]\n")),
            ("section without platform", format!("version = 1\nplatforms = [\"snp\"]\n[snp]\nmeasurement = [\"{M}\"]\n[tdx]\nmr_td = [\"{M}\"]\n")),
            ("version 2", format!("version = 2\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = [\"{M}\"]\n")),
            ("debug knob does not exist", format!("{ok}allow_debug = true\n")),
        ];
        for (name, text) in cases {
            assert!(Policy::from_toml(&text).is_err(), "{name} must be rejected");
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let text = format!(
            "version = 1\nplatforms = [\"snp\", \"simulated\"]\n[tcb]\nout_of_date_grace_days = 30\n[snp]\nmeasurement = [\"{M}\"]\nmin_tcb = {{ bootloader = 1, tee = 0, snp = 8, microcode = 100 }}\n[simulated]\nmeasurement = [\"{M}\"]\n"
        );
        let p = Policy::from_toml(&text).expect("parse");
        let again = Policy::from_toml(&p.to_toml()).expect("reparse");
        assert_eq!(p, again);
        assert_eq!(p.digest(), again.digest());
    }
}
