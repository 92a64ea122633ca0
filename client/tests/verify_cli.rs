//! The `chrysalis verify` contract, driven as a script drives it: exit codes, JSON fields, and
//! the human summary, on real evidence (attestation/testdata).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Command;

use chrysalis_attestation::simulated::{root_signing_key, SimulatedClaims, SimulatedEvidence};
use chrysalis_attestation::{EvidenceBundle, Platform};
use serde_json::Value;

fn td(path: &str) -> String {
    format!(
        "{}/../attestation/testdata/{path}",
        env!("CARGO_MANIFEST_DIR")
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn chrysalis(args: &[&str]) -> Run {
    let cache = tempfile::tempdir().unwrap();
    chrysalis_with_cache(args, cache.path())
}

fn chrysalis_with_cache(args: &[&str], cache: &std::path::Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(args)
        // Never touch the network from a test.
        .args(["--offline", "--cache-dir"])
        .arg(cache)
        .env_remove("PCCS_URL")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr))
}

fn is_lower_hex(v: &Value, len: usize) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn tdx_args(extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "verify".to_string(),
        td("dcap-qvl/tdx_quote"),
        "--collateral".into(),
        td("dcap-qvl/tdx_quote_collateral.json"),
        "--at".into(),
        "2025-06-20T00:00:00Z".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_owned(args: &[String]) -> Run {
    chrysalis(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn tdx_accepted_json_contract() {
    let r = run_owned(&tdx_args(&["--json"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = json(&r);
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["platform"], "tdx");
    assert_eq!(j["tcb_status"], "UpToDate");
    assert!(j.get("reason").is_none());
    let m = &j["measurements"];
    assert!(is_lower_hex(&m["mr_td"], 96));
    assert_eq!(m["rtmr"].as_array().unwrap().len(), 4);
    assert!(m["rtmr"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| is_lower_hex(r, 96)));
    assert!(is_lower_hex(&m["mr_config_id"], 96));
    assert!(is_lower_hex(&m["td_attributes"], 16));
    assert!(is_lower_hex(&m["report_data"], 128));
    assert_eq!(j["measurement_policy_applied"], false);
    assert!(j["note"]
        .as_str()
        .unwrap()
        .contains("no measurement policy"));
}

#[test]
fn unix_seconds_and_rfc3339_are_the_same_time() {
    let mut a = tdx_args(&["--json"]);
    a[5] = "1750377600".into();
    assert_eq!(json(&run_owned(&a))["verified_at"], "2025-06-20T00:00:00Z");
}

#[test]
fn tdx_human_summary_starts_with_the_verdict() {
    let r = run_owned(&tdx_args(&[]));
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("ACCEPTED"), "{}", r.stdout);
    assert!(r.stdout.contains("mr_td") && r.stdout.contains("UpToDate"));
    assert!(r.stdout.contains("no measurement policy was applied"));
}

#[test]
fn snp_accepted_json_contract() {
    let r = chrysalis(&[
        "verify",
        &td("sev/report_milan.hex"),
        "--vcek",
        &td("sev/vcek_milan.der"),
        "--cert-chain",
        &td("sev/cert_chain_milan"),
        "--at",
        "2025-06-20T00:00:00Z",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = json(&r);
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["platform"], "snp");
    let m = &j["measurements"];
    for (k, len) in [
        ("measurement", 96),
        ("host_data", 64),
        ("report_data", 128),
        ("chip_id", 128),
    ] {
        assert!(is_lower_hex(&m[k], len), "{k}");
    }
    assert_eq!(m["policy"], "0x30000");
    assert_eq!(m["reported_tcb"]["microcode"], 115);
    assert_eq!(j["tcb_status"], "bootloader=3 tee=0 snp=8 microcode=115");
}

#[test]
fn rejections_exit_one_with_a_reason() {
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "below every TCB level",
            vec![
                "verify".into(),
                td("dcap-qvl/tdx_quote_outdated"),
                "--collateral".into(),
                td("dcap-qvl/tdx_quote_outdated_collateral.json"),
                "--at".into(),
                "2026-02-20T00:00:00Z".into(),
            ],
            "no matching TCB level",
        ),
        (
            "collateral expired",
            {
                let mut a = tdx_args(&[]);
                a[5] = "2025-08-01T00:00:00Z".into();
                a
            },
            "not valid",
        ),
        (
            "a certificate is not evidence",
            vec![
                "verify".into(),
                td("dstack/sev_snp_vcek.pem"),
                "--at".into(),
                "2026-07-01T00:00:00Z".into(),
            ],
            "unrecognised",
        ),
        (
            "tdx without collateral offline",
            vec![
                "verify".into(),
                td("dcap-qvl/tdx_quote"),
                "--at".into(),
                "2025-06-20T00:00:00Z".into(),
            ],
            "collateral",
        ),
        (
            "sgx quote",
            vec!["verify".into(), td("dcap-qvl/sgx_quote")],
            "SGX",
        ),
    ];
    for (name, args, needle) in cases {
        let mut a = args.clone();
        a.push("--json".into());
        let r = run_owned(&a);
        assert_eq!(r.code, 1, "{name}: {}{}", r.stdout, r.stderr);
        let j = json(&r);
        assert_eq!(j["verdict"], "rejected", "{name}");
        assert!(
            j["reason"].as_str().unwrap().contains(needle),
            "{name}: {}",
            j["reason"]
        );
        assert!(
            j["measurements"].is_null(),
            "{name}: nothing unverified is printed"
        );
        let r = run_owned(&args);
        assert_eq!(r.code, 1);
        assert!(r.stdout.starts_with("REJECTED"), "{name}: {}", r.stdout);
    }
}

#[test]
fn malformed_truncated_and_tampered_evidence_exit_one() {
    let dir = tempfile::tempdir().unwrap();
    let quote = std::fs::read(td("dcap-qvl/tdx_quote")).unwrap();
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", quote[..1000].to_vec()),
        ("tampered", {
            let mut q = quote.clone();
            q[200] ^= 1;
            q
        }),
        ("empty", Vec::new()),
        ("garbage", b"hello world, not a quote".to_vec()),
        ("bad hex", b"0x04000200zz".to_vec()),
        (
            "bad bundle",
            b"{\"format\": \"chrysalis-evidence-bundle\"}".to_vec(),
        ),
    ];
    for (name, bytes) in variants {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let r = chrysalis(&[
            "verify",
            path.to_str().unwrap(),
            "--collateral",
            &td("dcap-qvl/tdx_quote_collateral.json"),
            "--at",
            "2025-06-20T00:00:00Z",
            "--json",
        ]);
        assert_eq!(r.code, 1, "{name}: {}{}", r.stdout, r.stderr);
        assert_eq!(json(&r)["verdict"], "rejected");
    }
}

#[test]
fn misuse_exits_two() {
    let good = td("dcap-qvl/tdx_quote");
    let dir = tempfile::tempdir().unwrap();
    let bad_policy = dir.path().join("p.toml");
    std::fs::write(&bad_policy, "version = 1\nplatforms = []\n").unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["verify", "/nonexistent/quote"],
        vec!["verify", &good, "--at", "last tuesday"],
        vec!["verify", &good, "--collateral", "/nonexistent.json"],
        vec!["verify", &good, "--collateral", &good],
        vec!["verify", &good, "--policy", bad_policy.to_str().unwrap()],
        vec!["verify", &good, "--no-such-flag"],
        vec!["verify"],
    ];
    for args in cases {
        let r = chrysalis(&args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
    }
}

#[test]
fn bundle_and_hex_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let quote = std::fs::read(td("dcap-qvl/tdx_quote")).unwrap();
    let collateral: Value =
        serde_json::from_slice(&std::fs::read(td("dcap-qvl/tdx_quote_collateral.json")).unwrap())
            .unwrap();
    let mut bundle = EvidenceBundle::new(Platform::Tdx, quote.clone());
    bundle.tdx_collateral = Some(collateral);
    let path = dir.path().join("bundle.json");
    std::fs::write(&path, bundle.to_json()).unwrap();
    let r = chrysalis(&[
        "verify",
        path.to_str().unwrap(),
        "--at",
        "2025-06-20T00:00:00Z",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // A bundle whose platform field lies is rejected.
    bundle.platform = Platform::Snp;
    std::fs::write(&path, bundle.to_json()).unwrap();
    let r = chrysalis(&[
        "verify",
        path.to_str().unwrap(),
        "--at",
        "2025-06-20T00:00:00Z",
        "--json",
    ]);
    assert_eq!(r.code, 1);

    let hex_path = dir.path().join("quote.hex");
    std::fs::write(&hex_path, hex::encode_upper(&quote)).unwrap();
    let r = chrysalis(&[
        "verify",
        hex_path.to_str().unwrap(),
        "--collateral",
        &td("dcap-qvl/tdx_quote_collateral.json"),
        "--at",
        "2025-06-20T00:00:00Z",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn policy_file_pins_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let j = json(&run_owned(&tdx_args(&["--json"])));
    let mr_td = j["measurements"]["mr_td"].as_str().unwrap().to_string();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("version = 1\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = [\"{mr_td}\"]\n"),
    )
    .unwrap();
    let r = run_owned(&tdx_args(&["--policy", good.to_str().unwrap(), "--json"]));
    assert_eq!(r.code, 0);
    assert_eq!(json(&r)["measurement_policy_applied"], true);
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "version = 1\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = [\"{}\"]\n",
            "0".repeat(96)
        ),
    )
    .unwrap();
    let r = run_owned(&tdx_args(&["--policy", bad.to_str().unwrap(), "--json"]));
    assert_eq!(r.code, 1);
    assert!(json(&r)["reason"].as_str().unwrap().contains("mr_td"));
}

#[test]
fn simulated_evidence_is_loud_and_needs_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let ev = SimulatedEvidence::sign(
        &SimulatedClaims {
            measurement: [1; 48],
            config_digest: [2; 48],
            report_data: [3; 64],
            debug: false,
        },
        &root_signing_key(),
    );
    let path = dir.path().join("sim.bin");
    std::fs::write(&path, ev.raw()).unwrap();
    let r = chrysalis(&["verify", path.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 1);
    let j = json(&r);
    assert_eq!(j["platform"], "simulated");
    assert!(j["reason"].as_str().unwrap().contains("simulated"));
    let r = chrysalis(&[
        "verify",
        path.to_str().unwrap(),
        "--allow-simulated",
        "--json",
    ]);
    assert_eq!(r.code, 0);
    let j = json(&r);
    assert_eq!(j["platform"], "simulated");
    assert!(
        j["warning"].as_str().unwrap().contains("not confidential")
            || j["warning"]
                .as_str()
                .unwrap()
                .contains("nothing here is confidential")
    );
    assert!(
        r.stderr.contains("SIMULATED"),
        "logs say it loudly: {}",
        r.stderr
    );
    let r = chrysalis(&["verify", path.to_str().unwrap(), "--allow-simulated"]);
    assert!(r.stdout.contains("SIMULATED"));
}

#[test]
fn random_inputs_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let quote = std::fs::read(td("dcap-qvl/tdx_quote")).unwrap();
    let report = std::fs::read(td("dstack/sev_snp_attestation.bin")).unwrap()[4..4 + 1184].to_vec();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..40 {
        let base = if i % 2 == 0 { &quote } else { &report };
        let mut bytes = base.clone();
        let len = (next() as usize) % (bytes.len() + 1);
        bytes.truncate(len);
        for _ in 0..8 {
            if !bytes.is_empty() {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
        }
        let path = dir.path().join(format!("r{i}"));
        std::fs::write(&path, &bytes).unwrap();
        let r = chrysalis(&[
            "verify",
            path.to_str().unwrap(),
            "--at",
            "2025-06-20T00:00:00Z",
            "--json",
        ]);
        assert!(
            r.code == 0 || r.code == 1,
            "input {i}: exit {} {}",
            r.code,
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

#[test]
fn another_chips_valid_chain_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let hcl = std::fs::read(td("az-snp-vtpm/hcl-report-snp.bin")).unwrap();
    let report = dir.path().join("report.bin");
    std::fs::write(&report, &hcl[0x20..0x20 + 1184]).unwrap();
    let pems = std::fs::read_to_string(td("az-snp-vtpm/certs.pem")).unwrap();
    let split: Vec<&str> = pems.split_inclusive("-----END CERTIFICATE-----").collect();
    let vcek = dir.path().join("vcek.pem");
    std::fs::write(&vcek, split[0]).unwrap();
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, split[1..].concat()).unwrap();
    let r = chrysalis(&[
        "verify",
        report.to_str().unwrap(),
        "--vcek",
        vcek.to_str().unwrap(),
        "--cert-chain",
        chain.to_str().unwrap(),
        "--at",
        "2025-06-20T00:00:00Z",
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(json(&r)["reason"]
        .as_str()
        .unwrap()
        .contains("another chip"));
}

#[test]
fn cached_collateral_serves_offline_until_it_expires() {
    use chrysalis_attestation::tdx::{parse_collateral, TdxQuote};
    use chrysalis_client::collateral::CollateralStore;
    let cache = tempfile::tempdir().unwrap();
    let quote = TdxQuote::from_bytes(&std::fs::read(td("dcap-qvl/tdx_quote")).unwrap()).unwrap();
    let collateral =
        parse_collateral(&std::fs::read(td("dcap-qvl/tdx_quote_collateral.json")).unwrap())
            .unwrap();
    CollateralStore::new(cache.path().to_path_buf(), None, true)
        .put_tdx(&quote, &collateral)
        .unwrap();
    let quote_path = td("dcap-qvl/tdx_quote");
    let r = chrysalis_with_cache(
        &[
            "verify",
            &quote_path,
            "--at",
            "2025-06-20T00:00:00Z",
            "--json",
        ],
        cache.path(),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Past nextUpdate the cache does not serve it, and offline there is nothing else.
    let r = chrysalis_with_cache(
        &[
            "verify",
            &quote_path,
            "--at",
            "2025-08-01T00:00:00Z",
            "--json",
        ],
        cache.path(),
    );
    assert_eq!(r.code, 1);
    assert!(json(&r)["reason"].as_str().unwrap().contains("collateral"));
}
