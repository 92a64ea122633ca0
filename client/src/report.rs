//! The verdict as scripts read it (`--json`) and as people read it.
//!
//! JSON contract (one object): `verdict` (`accepted`/`rejected`), `platform` (`tdx`, `snp`,
//! `simulated`, or null when the evidence could not be decoded), `tcb_status`, `reason` (on
//! rejection), `measurements` (on acceptance; null otherwise: nothing unverified is printed),
//! plus `measurement_policy_applied`, `advisory_ids`, `verified_at`, `expires_at`,
//! `trust_anchor`, `evidence_sha256` and, for the simulator, `warning`. Digests are lowercase hex.

use std::fmt::Write as _;

use chrysalis_attestation::verify::Measurements;
use chrysalis_attestation::{Platform, VerifiedEvidence, VerifyError};
use serde_json::{json, Value};

/// The loud warning for simulated evidence.
pub const SIMULATED_WARNING: &str =
    "SIMULATED TEE: this evidence comes from the development simulator; nothing here is confidential";

fn set(out: &mut Value, key: &str, value: Value) {
    if let Some(obj) = out.as_object_mut() {
        obj.insert(key.to_string(), value);
    }
}

/// Build the JSON verdict.
pub fn verdict_json(
    platform: Option<Platform>,
    result: &Result<VerifiedEvidence, VerifyError>,
) -> Value {
    match result {
        Ok(v) => {
            let mut out = json!({
                "verdict": "accepted",
                "platform": v.platform().as_str(),
                "tcb_status": v.tcb().status,
                "advisory_ids": v.tcb().advisory_ids,
                "tcb_date": v.tcb().tcb_date,
                "in_grace_window": v.tcb().in_grace_window,
                "measurements": serde_json::to_value(v.measurements()).unwrap_or(Value::Null),
                "measurement_policy_applied": v.measurement_policy_applied(),
                "verified_at": v.verified_at().to_rfc3339(),
                "expires_at": v.expires_at().to_rfc3339(),
                "trust_anchor": v.trust_anchor(),
                "evidence_sha256": hex::encode(v.evidence_sha256()),
            });
            if !v.measurement_policy_applied() {
                set(&mut out, "note", json!("no measurement policy was applied: compare the measurements with the values you expect"));
            }
            if v.platform() == Platform::Simulated {
                set(&mut out, "warning", json!(SIMULATED_WARNING));
            }
            out
        }
        Err(e) => {
            let mut out = json!({
                "verdict": "rejected",
                "platform": platform.map(|p| p.as_str()),
                "tcb_status": Value::Null,
                "reason": e.to_string(),
                "measurements": Value::Null,
            });
            if platform == Some(Platform::Simulated) {
                set(&mut out, "warning", json!(SIMULATED_WARNING));
            }
            out
        }
    }
}

/// The JSON verdict for evidence rejected by a check beyond the verifier's (key binding,
/// configuration, transport): same keys as [`verdict_json`]'s rejection.
pub fn rejection_json(platform: Option<Platform>, reason: &str) -> Value {
    let mut out = json!({
        "verdict": "rejected",
        "platform": platform.map(|p| p.as_str()),
        "tcb_status": Value::Null,
        "reason": reason,
        "measurements": Value::Null,
    });
    if platform == Some(Platform::Simulated) {
        set(&mut out, "warning", json!(SIMULATED_WARNING));
    }
    out
}

fn platform_name(p: Platform) -> &'static str {
    match p {
        Platform::Tdx => "Intel TDX",
        Platform::Snp => "AMD SEV-SNP",
        Platform::Simulated => "SIMULATED (not confidential)",
    }
}

/// Whether colour may be used at all: `NO_COLOR` (any non-empty value, <https://no-color.org>)
/// turns it off, as does `TERM=dumb`.
pub fn colour_allowed() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    !no_color && !dumb
}

/// Colour for standard output: a terminal, and colour allowed.
pub fn stdout_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && colour_allowed()
}

/// A summary a person can check at a glance, verdict first.
pub fn verdict_text(
    platform: Option<Platform>,
    result: &Result<VerifiedEvidence, VerifyError>,
    colour: bool,
) -> String {
    let (green, red, yellow, bold, reset) = if colour {
        ("\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "", "")
    };
    let mut s = String::new();
    match result {
        Err(e) => {
            let _ = writeln!(s, "{bold}{red}REJECTED{reset}  {e}");
            if let Some(p) = platform {
                let _ = writeln!(s, "  platform      {}", platform_name(p));
            }
            if platform == Some(Platform::Simulated) {
                let _ = writeln!(s, "{yellow}  warning: {SIMULATED_WARNING}{reset}");
            }
        }
        Ok(v) => {
            let _ = writeln!(
                s,
                "{bold}{green}ACCEPTED{reset}  genuine {} evidence that meets the policy",
                platform_name(v.platform())
            );
            if v.platform() == Platform::Simulated {
                let _ = writeln!(s, "{bold}{yellow}  WARNING: {SIMULATED_WARNING}{reset}");
            }
            let tcb = v.tcb();
            let grace = if tcb.in_grace_window {
                " (accepted in the policy's grace window)"
            } else {
                ""
            };
            let _ = writeln!(s, "  tcb status    {}{grace}", tcb.status);
            if !tcb.advisory_ids.is_empty() {
                let _ = writeln!(s, "  advisories    {}", tcb.advisory_ids.join(", "));
            }
            let _ = writeln!(s, "  trust anchor  {}", v.trust_anchor());
            let _ = writeln!(
                s,
                "  verified at   {} (verdict valid until {})",
                v.verified_at(),
                v.expires_at()
            );
            let _ = writeln!(
                s,
                "  evidence      sha256 {}",
                hex::encode(v.evidence_sha256())
            );
            let _ = writeln!(s, "  measurements");
            let row = |s: &mut String, k: &str, v: String| {
                let _ = writeln!(s, "    {k:<16}{v}");
            };
            match v.measurements() {
                Measurements::Tdx(m) => {
                    row(&mut s, "quote version", m.quote_version.to_string());
                    row(&mut s, "mr_td", hex::encode(m.mr_td));
                    for (i, r) in m.rtmr.iter().enumerate() {
                        row(&mut s, &format!("rtmr{i}"), hex::encode(r));
                    }
                    row(&mut s, "mr_config_id", hex::encode(m.mr_config_id));
                    row(&mut s, "mr_seam", hex::encode(m.mr_seam));
                    row(&mut s, "td_attributes", hex::encode(m.td_attributes));
                    row(&mut s, "xfam", hex::encode(m.xfam));
                    row(&mut s, "tee_tcb_svn", hex::encode(m.tee_tcb_svn));
                    row(&mut s, "report_data", hex::encode(m.report_data));
                }
                Measurements::Snp(m) => {
                    row(&mut s, "report version", m.version.to_string());
                    row(&mut s, "measurement", hex::encode(m.measurement));
                    row(&mut s, "host_data", hex::encode(m.host_data));
                    row(&mut s, "policy", m.policy.clone());
                    for (name, d) in [
                        ("id_key_digest", &m.id_key_digest),
                        ("author_key_digest", &m.author_key_digest),
                    ] {
                        if d.iter().any(|&b| b != 0) {
                            row(&mut s, name, hex::encode(d));
                        }
                    }
                    row(&mut s, "reported_tcb", m.reported_tcb.to_string());
                    row(&mut s, "chip_id", hex::encode(m.chip_id));
                    row(
                        &mut s,
                        "signed by",
                        format!("{} ({})", m.signing_key, m.product),
                    );
                    row(&mut s, "report_data", hex::encode(m.report_data));
                }
                Measurements::Simulated(m) => {
                    row(&mut s, "measurement", hex::encode(m.measurement));
                    row(&mut s, "config_digest", hex::encode(m.config_digest));
                    row(&mut s, "report_data", hex::encode(m.report_data));
                }
            }
            if !v.measurement_policy_applied() {
                let _ = writeln!(
                    s,
                    "{yellow}  note: no measurement policy was applied; compare the measurements above with the values you expect (--policy FILE pins them){reset}"
                );
            }
        }
    }
    s
}

/// A policy pinning the measurements of verified evidence (trust on first use, made explicit).
pub fn pinned_policy(v: &chrysalis_attestation::VerifiedEvidence, url: &str) -> String {
    use chrysalis_attestation::verify::Measurements;
    let mut out = format!(
        "# Trust on first use: the measurements {url} proved when it was verified.\n\
         # Written by `chrysalis attest --write-policy`; compare with the image manifest.\n\
         version = 1\n"
    );
    match v.measurements() {
        Measurements::Tdx(m) => {
            let r: Vec<String> = m.rtmr.iter().map(|x| format!("\"{}\"", hex::encode(x))).collect();
            out.push_str(&format!(
                "platforms = [\"tdx\"]\n\n[tdx]\nmr_td = [\"{}\"]\nrtmr = [[{}]]\n",
                hex::encode(m.mr_td),
                r.join(", ")
            ));
        }
        Measurements::Snp(m) => out.push_str(&format!(
            "platforms = [\"snp\"]\n\n[snp]\nmeasurement = [\"{}\"]\nhost_data = [\"{}\"]\n",
            hex::encode(m.measurement),
            hex::encode(m.host_data)
        )),
        Measurements::Simulated(m) => out.push_str(&format!(
            "# WARNING: the SIMULATED platform is NOT CONFIDENTIAL (development only).\n\
             platforms = [\"simulated\"]\n\n[simulated]\nmeasurement = [\"{}\"]\nconfig_digest = [\"{}\"]\n",
            hex::encode(m.measurement),
            hex::encode(m.config_digest)
        )),
    }
    out
}
