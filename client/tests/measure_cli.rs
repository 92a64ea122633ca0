//! `chrysalis measure` and `chrysalis eventlog`, driven as scripts drive them, on real firmware
//! (fetched by `make fixtures`) and real event logs; SNP digests compared with the independent
//! implementation PyPI `sev-snp-measure` 0.0.13 (installed by `make test` in .venv).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> Option<String> {
    let dir = std::env::var("CHRYSALIS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/fixtures"));
    let path = dir.join(name);
    if path.exists() {
        return Some(path.display().to_string());
    }
    if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() {
        panic!("{} missing (run `make fixtures`)", path.display());
    }
    eprintln!("SKIPPED: {name} not fetched (run `make fixtures`; `make test` requires it)");
    None
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn reference_tool() -> Option<PathBuf> {
    let path = std::env::var("SEV_SNP_MEASURE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv/bin/sev-snp-measure"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CHRYSALIS_REQUIRE_REFERENCE").is_some() {
        panic!("{} missing (make venv)", path.display());
    }
    eprintln!("SKIPPED: sev-snp-measure not installed (`make test` installs it)");
    None
}

#[test]
fn snp_digests_equal_sev_snp_measure_across_shapes() {
    let Some(tool) = reference_tool() else { return };
    let (Some(debian), Some(amdsev)) = (
        fixture("debian-bookworm-OVMF.fd"),
        fixture("ovmf_AmdSev_suffix.bin"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel");
    let initrd = dir.path().join("initrd");
    std::fs::write(
        &kernel,
        (0..70_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(&initrd, b"initrd contents for the hashes table").unwrap();
    let (k, i) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    let shapes: Vec<(String, Vec<&str>)> = vec![
        (
            debian.clone(),
            vec!["--vcpus", "1", "--vcpu-type", "EPYC-Milan"],
        ),
        (
            debian.clone(),
            vec!["--vcpus", "4", "--vcpu-type", "EPYC-Milan"],
        ),
        (
            debian.clone(),
            vec!["--vcpus", "16", "--vcpu-type", "EPYC-Genoa"],
        ),
        (
            debian.clone(),
            vec![
                "--vcpus",
                "2",
                "--vcpu-type",
                "EPYC-v4",
                "--guest-features",
                "0x21",
            ],
        ),
        (debian, vec!["--vcpus", "3", "--vcpu-type", "EPYC-Rome"]),
        (
            amdsev.clone(),
            vec!["--vcpus", "1", "--vcpu-type", "EPYC-v4", "--kernel", k],
        ),
        (
            amdsev.clone(),
            vec![
                "--vcpus",
                "2",
                "--vcpu-type",
                "EPYC-Milan",
                "--kernel",
                k,
                "--initrd",
                i,
                "--cmdline",
                "console=ttyS0 loglevel=7",
            ],
        ),
        (
            amdsev.clone(),
            vec![
                "--vcpus",
                "8",
                "--vcpu-type",
                "EPYC-Genoa",
                "--guest-features",
                "0x21",
                "--kernel",
                k,
                "--initrd",
                i,
            ],
        ),
        (
            amdsev,
            vec![
                "--vcpus",
                "4",
                "--vcpu-type",
                "EPYC-Turin",
                "--kernel",
                k,
                "--cmdline",
                "root=/dev/vda",
            ],
        ),
    ];
    for (fw, shape) in shapes {
        let reference_args: Vec<&str> = shape
            .iter()
            .map(|a| if *a == "--cmdline" { "--append" } else { a })
            .collect();
        let out = Command::new(&tool)
            .args(["--mode", "snp", "--ovmf", &fw])
            .args(&reference_args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut ours = vec!["measure", "snp", "--firmware", fw.as_str(), "--json"];
        ours.extend(&shape);
        let (code, stdout, stderr) = run(&ours);
        assert_eq!(code, 0, "{shape:?}: {stderr}");
        let j: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["measurement"].as_str().unwrap(), expected, "{shape:?}");
    }
}

#[test]
fn snp_errors_exit_two() {
    let Some(debian) = fixture("debian-bookworm-OVMF.fd") else {
        return;
    };
    let cases: Vec<Vec<&str>> = vec![
        // Kernel given, but this build has no kernel-hashes section.
        vec![
            "measure",
            "snp",
            "--firmware",
            &debian,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-Milan",
            "--kernel",
            "/dev/null",
        ],
        vec![
            "measure",
            "snp",
            "--firmware",
            &debian,
            "--vcpus",
            "1",
            "--vcpu-type",
            "Pentium-4",
        ],
        vec![
            "measure",
            "snp",
            "--firmware",
            &debian,
            "--vcpus",
            "0",
            "--vcpu-type",
            "EPYC-Milan",
        ],
        vec![
            "measure",
            "snp",
            "--firmware",
            &debian,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-Milan",
            "--vmm-type",
            "ec2",
        ],
        vec![
            "measure",
            "snp",
            "--firmware",
            "/nonexistent",
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-Milan",
        ],
        vec![
            "measure",
            "snp",
            "--firmware",
            "Cargo.toml",
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-Milan",
        ],
    ];
    for args in cases {
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            stderr.starts_with("error:") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[test]
fn tdx_mrtd_json_contract() {
    let Some(fw) = fixture("debian-bookworm-OVMF.fd") else {
        return;
    };
    let (code, stdout, stderr) = run(&["measure", "tdx", "--firmware", &fw, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let j: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["mr_td"], "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47");
    assert_eq!(j["rtmr"].as_array().unwrap().len(), 4);
    assert!(
        j["rtmr"].as_array().unwrap().iter().all(Value::is_null),
        "no kernel: no RTMRs claimed"
    );
    let (_, stdout, _) = run(&["measure", "tdx", "--firmware", &fw, "--two-pass", "--json"]);
    let two: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(two["mr_td"], "acccbcc870a381adab0d3919d90a7f268ac3b0364771f202ed4bb4e892d045b33db3b32e6924cba830a724eed443f7e1");
    // No TDX metadata: an AmdSev fragment.
    if let Some(amdsev) = fixture("ovmf_AmdSev_suffix.bin") {
        let (code, _, stderr) = run(&["measure", "tdx", "--firmware", &amdsev]);
        assert_eq!(code, 2);
        assert!(stderr.contains("firmware:"), "{stderr}");
    }
    let (code, _, _) = run(&["measure", "tdx", "--firmware", &fw, "--memory", "lots"]);
    assert_eq!(code, 2);
}

#[test]
fn tdx_rtmr0_with_acpi_tables() {
    let Some(fw) = fixture("debian-trixie-OVMF.fd") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("chrysalis-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (loader, rsdp, tables) = (
        file("table-loader", &[1; 4096]),
        file("rsdp", b"RSD PTR \0\0"),
        file("tables", &[2; 8192]),
    );
    let args = |memory: &str| {
        vec![
            "measure".to_string(),
            "tdx".into(),
            "--firmware".into(),
            fw.clone(),
            "--memory".into(),
            memory.into(),
            "--acpi-loader".into(),
            loader.clone(),
            "--acpi-rsdp".into(),
            rsdp.clone(),
            "--acpi-tables".into(),
            tables.clone(),
            "--json".into(),
        ]
    };
    let json = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run(&refs);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let one = json(args("1G"));
    let rtmr0 = one["rtmr"][0].as_str().expect("rtmr0 computed");
    assert_eq!(rtmr0.len(), 96);
    // 13 firmware events, the last two OVMF's boot variables.
    let events = one["events"].as_array().unwrap();
    assert_eq!(events.iter().filter(|e| e["rtmr"] == 0).count(), 13);
    assert_ne!(json(args("2G"))["rtmr"][0], one["rtmr"][0]);
    // Other ACPI tables, another RTMR0.
    std::fs::write(dir.join("tables"), [3; 8192]).unwrap();
    assert_ne!(json(args("1G"))["rtmr"][0], one["rtmr"][0]);
    // The ACPI digests of a real boot's log, everything else computed: that boot's RTMR0.
    let td = root().join("attestation/testdata");
    let ccel = td.join("dstack/ccel.bin");
    let (code, stdout, stderr) = run(&[
        "measure",
        "tdx",
        "--firmware",
        &fw,
        "--memory",
        "1G",
        "--acpi-from-eventlog",
        ccel.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let from_log: Value = serde_json::from_str(&stdout).unwrap();
    let (_, stdout, _) = run(&[
        "eventlog",
        ccel.to_str().unwrap(),
        "--quote",
        td.join("dcap-qvl/quote-from-tappd.hex").to_str().unwrap(),
        "--json",
    ]);
    let log: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(log["rtmr_match"][0], true);
    assert_eq!(from_log["rtmr"][0], log["rtmr"][0]);
    // Both a log and files: they conflict, exit 2.
    let (code, _, _) = run(&[
        "measure",
        "tdx",
        "--firmware",
        &fw,
        "--acpi-from-eventlog",
        ccel.to_str().unwrap(),
        "--acpi-rsdp",
        &rsdp,
    ]);
    assert_eq!(code, 2);
    // Only some of the three files: a usage error, exit 2.
    let (code, _, stderr) = run(&["measure", "tdx", "--firmware", &fw, "--acpi-rsdp", &rsdp]);
    assert_eq!(code, 2, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eventlog_matches_and_mismatches() {
    let td = root().join("attestation/testdata");
    let ccel = td.join("dstack/ccel.bin");
    let quote = td.join("dcap-qvl/quote-from-tappd.hex");
    let (code, stdout, _) = run(&[
        "eventlog",
        ccel.to_str().unwrap(),
        "--quote",
        quote.to_str().unwrap(),
        "--json",
    ]);
    let j: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["rtmr"].as_array().unwrap().len(), 4);
    assert_eq!(j["events"].as_array().unwrap().len(), 18);
    assert_eq!(j["rtmr_match"][0], true);
    assert_eq!(
        j["all_match"], false,
        "the CCEL does not carry that boot's later RTMR1/RTMR3 events"
    );
    assert_eq!(code, 1);

    // A JSON log and its own quote: every RTMR matches.
    let v: Value =
        serde_json::from_slice(&std::fs::read(td.join("dstack/quote-report.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.json");
    std::fs::write(&log, v["event_log"].as_str().unwrap()).unwrap();
    let q = dir.path().join("quote.hex");
    std::fs::write(&q, v["quote"].as_str().unwrap()).unwrap();
    let (code, stdout, _) = run(&[
        "eventlog",
        log.to_str().unwrap(),
        "--quote",
        q.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let j: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["all_match"], true);
    let (code, stdout, _) = run(&["eventlog", log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("rtmr3"));

    let (code, _, _) = run(&["eventlog", root().join("Cargo.toml").to_str().unwrap()]);
    assert_eq!(code, 2);
}

fn lief_authentihash(path: &std::path::Path) -> Option<String> {
    let python = root().join(".venv/bin/python");
    let script = "import lief,sys\nb=lief.PE.parse(sys.argv[1])\nprint(b.authentihash(lief.PE.ALGORITHMS.SHA_384).hex())";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        if std::env::var_os("CHRYSALIS_REQUIRE_REFERENCE").is_some() {
            panic!("lief failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

#[test]
fn kernel_authenticode_equals_lief_on_a_real_debian_kernel() {
    use chrysalis_attestation::measure::kernel::{
        authenticode_sha384, kernel_digest, qemu_patch_header, KernelLoad,
    };
    let Some(kernel_path) = fixture("vmlinuz-cloud-amd64") else {
        return;
    };
    let kernel = std::fs::read(&kernel_path).unwrap();
    let Some(expected) = lief_authentihash(std::path::Path::new(&kernel_path)) else {
        eprintln!("SKIPPED: lief not installed");
        return;
    };
    assert_eq!(
        hex::encode(authenticode_sha384(&kernel).unwrap()),
        expected,
        "raw kernel"
    );

    // QEMU's setup-header patch, checked field by field, then hashed by LIEF as well.
    let memory = 2u64 << 30;
    let initrd = 1_234_567u64;
    let patched = qemu_patch_header(&kernel, memory, initrd).unwrap();
    assert_eq!(patched[0x210], 0xB0, "type_of_loader");
    assert_ne!(patched[0x211] & 0x80, 0, "CAN_USE_HEAP");
    assert_eq!(
        u32::from_le_bytes(patched[0x228..0x22c].try_into().unwrap()),
        0x20000,
        "cmd_line_ptr"
    );
    assert_eq!(
        u16::from_le_bytes(patched[0x224..0x226].try_into().unwrap()),
        0xFE00,
        "heap_end_ptr"
    );
    // This kernel can take an initrd anywhere below 4 GiB, so the limit is the top of low RAM
    // minus QEMU's ACPI area.
    let initrd_max = memory - 0x28000 - 1;
    assert_eq!(
        u32::from_le_bytes(patched[0x218..0x21c].try_into().unwrap()) as u64,
        (initrd_max - initrd) & !0xfff
    );
    assert_eq!(
        u32::from_le_bytes(patched[0x21c..0x220].try_into().unwrap()) as u64,
        initrd
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("patched");
    std::fs::write(&p, &patched).unwrap();
    let digest = kernel_digest(
        &kernel,
        KernelLoad::QemuPatched {
            memory,
            initrd_size: initrd,
        },
    )
    .unwrap();
    assert_eq!(Some(hex::encode(digest)), lief_authentihash(&p));
    assert_ne!(
        digest,
        authenticode_sha384(&kernel).unwrap(),
        "the patch changes the measured digest"
    );
    // And the memory size matters below the 2.75 GiB split.
    let other = kernel_digest(
        &kernel,
        KernelLoad::QemuPatched {
            memory: 1 << 30,
            initrd_size: initrd,
        },
    )
    .unwrap();
    assert_ne!(digest, other);

    // Through the CLI: RTMR1 and RTMR2 are computed once a kernel is given.
    let fw = fixture("debian-bookworm-OVMF.fd").unwrap();
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&initrd_path, vec![7u8; initrd as usize]).unwrap();
    let (code, stdout, stderr) = run(&[
        "measure",
        "tdx",
        "--firmware",
        &fw,
        "--kernel",
        &kernel_path,
        "--initrd",
        initrd_path.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0",
        "--memory",
        "2G",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let j: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        j["events"][0]["digest"].as_str().unwrap(),
        hex::encode(digest)
    );
    assert!(j["rtmr"][1].is_string() && j["rtmr"][2].is_string());
    assert!(j["rtmr"][0].is_null() && j["rtmr"][3].is_null());
    assert!(j["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["description"] == "LoadOptions: console=ttyS0 initrd=initrd"));
}
