//! Measurement reproduction on real inputs: event logs captured in real TDX guests replayed to
//! the RTMRs their quotes report, RTMR1 predicted from a real kernel digest, MRTD of real OVMF
//! builds (see testdata/dstack and testdata/firmware READMEs).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::measure::eventlog::{replay_ccel, replay_json, Rtmrs};
use chrysalis_attestation::measure::{
    rtmr0, rtmr1_events, tdvf, AcpiDigests, InitrdToken, PageAddOrder, PlatformSpec, VmSpec,
};
use common::fixture;

/// RTMR0..3 of a v4 quote (TD 1.0 body at offset 48; RTMRs at body offset 328).
fn quote_rtmrs(quote: &[u8]) -> [String; 4] {
    std::array::from_fn(|i| hex::encode(&quote[48 + 328 + 48 * i..48 + 376 + 48 * i]))
}

fn json_fixture(name: &str) -> (Vec<u8>, String) {
    let v: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
    (
        hex::decode(v["quote"].as_str().unwrap()).unwrap(),
        v["event_log"].as_str().unwrap().to_string(),
    )
}

#[test]
fn json_event_logs_reproduce_their_quotes_rtmrs() {
    for name in ["dstack/quote-report.json", "dstack/tdx-lite-getquote.json"] {
        let (quote, log) = json_fixture(name);
        let replay = replay_json(&log).unwrap().into_replay();
        assert_eq!(replay.rtmr, quote_rtmrs(&quote), "{name}");
        assert!(
            replay.events.iter().any(|e| e.rtmr == 3),
            "{name} has runtime events"
        );
    }
}

#[test]
fn a_tampered_runtime_event_is_caught() {
    let (quote, log) = json_fixture("dstack/quote-report.json");
    let mut events: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let i = events.iter().position(|e| e["event"] == "app-id").unwrap();
    // Changed payload with the old digest: the digest no longer matches the content.
    events[i]["event_payload"] = serde_json::Value::String("00".repeat(20));
    assert!(replay_json(&serde_json::to_string(&events).unwrap()).is_err());
    // Changed payload and a digest recomputed to match: the log replays, to other RTMRs.
    events[i]["digest"] = serde_json::Value::String(String::new());
    let replay = replay_json(&serde_json::to_string(&events).unwrap())
        .unwrap()
        .into_replay();
    assert_ne!(replay.rtmr[3], quote_rtmrs(&quote)[3]);
    assert_eq!(replay.rtmr[0], quote_rtmrs(&quote)[0]);
}

#[test]
fn ccel_replays_to_the_quote_of_the_same_boot() {
    let replay = replay_ccel(&fixture("dstack/ccel.bin"))
        .unwrap()
        .into_replay();
    let quote = decode_binary_or_hex(&fixture("dcap-qvl/quote-from-tappd.hex")).unwrap();
    let q = quote_rtmrs(&quote);
    // The firmware's RTMR0 (TD HOB, CFV, variables, ACPI tables, boot variables) and the empty
    // RTMR2 of that boot, as the quote reports them.
    assert_eq!(replay.rtmr[0], q[0]);
    assert_eq!(replay.rtmr[2], q[2]);
    assert_eq!(replay.events.len(), 18);
    let names: Vec<&str> = replay
        .events
        .iter()
        .map(|e| e.description.as_str())
        .collect();
    assert!(names.contains(&"UEFI variable SecureBoot") && names.contains(&"TdxTable"));
    // The EV_EFI_ACTION texts hash as the spec notes say.
    let calling = replay
        .events
        .iter()
        .find(|e| e.description == "Calling EFI Application from Boot Option")
        .unwrap();
    assert!(calling.digest.starts_with("77a0dab2"));
}

#[test]
fn ccel_errors_are_clear() {
    assert!(replay_ccel(&[]).is_err());
    assert!(replay_ccel(&[0xff; 64]).is_err());
    let mut log = fixture("dstack/ccel.bin");
    log.truncate(200);
    assert!(
        replay_ccel(&log).is_err(),
        "an event cut in half is an error"
    );
}

#[test]
fn rtmr1_prediction_matches_a_real_boot() {
    // The kernel's Authenticode digest as OVMF logged it; the rest is predicted.
    let (quote, log) = json_fixture("dstack/quote-report.json");
    let events: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let kernel = events
        .iter()
        .find(|e| e["imr"] == 1 && e["event_type"] == 0x8000_0003u32)
        .unwrap();
    let digest: [u8; 48] = hex::decode(kernel["digest"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let mut rtmrs = Rtmrs::default();
    rtmr1_events(digest, &mut rtmrs).unwrap();
    assert_eq!(hex::encode(rtmrs.values()[1]), quote_rtmrs(&quote)[1]);
}

/// Real firmware fetched by `make fixtures` (scripts/fetch-fixtures.sh); `make test` requires it.
fn firmware(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var("CHRYSALIS_FIXTURES")
        .unwrap_or_else(|_| format!("{}/../target/fixtures", env!("CARGO_MANIFEST_DIR")));
    match std::fs::read(format!("{dir}/{name}")) {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() => {
            panic!("{dir}/{name}: {e} (run `make fixtures`)")
        }
        Err(_) => {
            eprintln!("SKIPPED: {name} not fetched (run `make fixtures`; `make test` requires it)");
            None
        }
    }
}

#[test]
fn parallel_snp_page_digest_equals_sevs_sequential_one() {
    for name in ["debian-bookworm-OVMF.fd", "ovmf_AmdSev_suffix.bin"] {
        let Some(fw) = firmware(name) else { continue };
        let dir = std::env::var("CHRYSALIS_FIXTURES")
            .unwrap_or_else(|_| format!("{}/../target/fixtures", env!("CARGO_MANIFEST_DIR")));
        let theirs =
            sev::measurement::snp::calc_snp_ovmf_hash(format!("{dir}/{name}").into()).expect("sev");
        let ours = chrysalis_attestation::measure::snp_firmware_pages_digest(&fw).expect("ours");
        assert_eq!(hex::encode(ours), theirs.get_hex_ld(), "{name}");
        // Streamed from the file in blocks: the same digest.
        let streamed = chrysalis_attestation::measure::snp_firmware_file_pages_digest(
            &format!("{dir}/{name}").into(),
        )
        .expect("streamed");
        assert_eq!(streamed, ours, "{name}");
    }
}

/// An SNP VM on QEMU with guest features 0x1.
fn snp_spec(
    firmware: &std::path::Path,
    vcpus: u32,
    cpu: &str,
    kernel: Option<&std::path::Path>,
    cmdline: Option<&str>,
) -> VmSpec {
    VmSpec {
        platform: PlatformSpec::Snp {
            vcpu_type: cpu.into(),
            guest_features: 0x1,
            vmm_type: chrysalis_attestation::measure::VmmType::Qemu,
        },
        firmware: firmware.to_path_buf(),
        kernel: kernel.map(|k| k.to_path_buf()),
        initrd: None,
        cmdline: cmdline.map(str::to_string),
        memory: 0,
        vcpus,
    }
}

/// `sev`'s launch digest of `spec`, with `sev` reading and hashing the whole image itself.
fn sev_whole_image_digest(spec: &VmSpec) -> String {
    let PlatformSpec::Snp { vcpu_type, .. } = &spec.platform else {
        panic!("not SNP")
    };
    sev::measurement::snp::snp_calc_launch_digest(sev::measurement::snp::SnpMeasurementArgs {
        vcpus: spec.vcpus,
        vcpu_type: sev::measurement::vcpu_types::CpuType::try_from(vcpu_type.as_str()).unwrap(),
        ovmf_file: spec.firmware.clone(),
        guest_features: sev::measurement::vmsa::GuestFeatures(0x1),
        kernel_file: spec.kernel.clone(),
        initrd_file: None,
        append: spec.cmdline.as_deref(),
        ovmf_hash_str: None,
        vmm_type: Some(sev::measurement::vmsa::VMMType::QEMU),
    })
    .expect("sev")
    .get_hex_ld()
}

/// The footer GUID table entry giving the SEV metadata's offset from the end (GUID in LE form).
const SEV_METADATA_GUID: [u8; 16] = [
    0x66, 0x65, 0x88, 0xdc, 0x4a, 0x98, 0x98, 0x47, 0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc,
];

/// Where the SEV metadata offset sits in `fw` (entry: data ‖ u16 length ‖ GUID), and its value.
fn sev_metadata_offset(fw: &[u8]) -> (usize, usize) {
    let at = fw
        .windows(16)
        .rposition(|w| w == SEV_METADATA_GUID)
        .expect("SEV metadata entry")
        - 6;
    (
        at,
        u32::from_le_bytes(fw[at..at + 4].try_into().unwrap()) as usize,
    )
}

fn write_temp(what: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("chrysalis-{what}-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `measure_snp` hashes the pages itself and hands `sev` only the image's last pages; `sev`
/// reading and hashing the whole image itself must give the same launch digest.
#[test]
fn snp_launch_digest_equals_sev_reading_the_whole_image() {
    let dir = std::env::var("CHRYSALIS_FIXTURES")
        .unwrap_or_else(|_| format!("{}/../target/fixtures", env!("CARGO_MANIFEST_DIR")));
    let kernel = write_temp(
        "snp-kernel",
        &(0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    );
    let cases = [
        ("debian-bookworm-OVMF.fd", 4, "EPYC-Milan", false),
        ("debian-trixie-OVMF.fd", 1, "EPYC-Genoa", false),
        ("ovmf_AmdSev_suffix.bin", 2, "EPYC-v4", true),
    ];
    for (name, vcpus, cpu, with_kernel) in cases {
        if firmware(name).is_none() {
            continue;
        }
        let path = std::path::PathBuf::from(format!("{dir}/{name}"));
        let spec = snp_spec(
            &path,
            vcpus,
            cpu,
            with_kernel.then_some(kernel.as_path()),
            with_kernel.then_some("console=ttyS0"),
        );
        let ours = spec.measure_snp().expect("ours");
        assert_eq!(hex::encode(ours), sev_whole_image_digest(&spec), "{name}");
    }
    let _ = std::fs::remove_file(&kernel);
}

/// SEV metadata further from the end than the tail read first (64 KiB) is still found: the
/// metadata block moved 100 KiB back, its footer offset updated, gives `sev`'s digest of the
/// same modified image.
#[test]
fn sev_metadata_far_from_the_end_is_still_found() {
    let Some(mut fw) = firmware("debian-bookworm-OVMF.fd") else {
        return;
    };
    let (at, from_end) = sev_metadata_offset(&fw);
    let header = fw.len() - from_end;
    let size = u32::from_le_bytes(fw[header + 4..header + 8].try_into().unwrap()) as usize;
    let block = fw[header..header + size].to_vec();
    let new_from_end = 100 * 1024;
    let new_header = fw.len() - new_from_end;
    fw[new_header..new_header + size].copy_from_slice(&block);
    fw[at..at + 4].copy_from_slice(&(new_from_end as u32).to_le_bytes());
    let path = write_temp("far-sev", &fw);
    let spec = snp_spec(&path, 2, "EPYC-Milan", None, None);
    let ours = spec.measure_snp().expect("ours");
    assert_eq!(hex::encode(ours), sev_whole_image_digest(&spec));
    let _ = std::fs::remove_file(&path);
}

/// SEV metadata that `sev` would index out of bounds (it panics) is refused first, clearly.
#[test]
fn malformed_sev_metadata_is_an_error_not_a_panic() {
    let Some(fw) = firmware("debian-bookworm-OVMF.fd") else {
        return;
    };
    let (at, from_end) = sev_metadata_offset(&fw);
    let header = fw.len() - from_end;
    let mut bad_offset = fw.clone();
    bad_offset[at..at + 4].copy_from_slice(&(fw.len() as u32 + 16).to_le_bytes());
    let mut bad_size = fw.clone();
    bad_size[header + 4..header + 8].copy_from_slice(&(from_end as u32 + 1).to_le_bytes());
    let mut bad_items = fw.clone();
    bad_items[header + 12..header + 16].copy_from_slice(&1000u32.to_le_bytes());
    for (what, image) in [
        ("offset", bad_offset),
        ("size", bad_size),
        ("items", bad_items),
    ] {
        let path = write_temp(&format!("bad-sev-{what}"), &image);
        let spec = snp_spec(&path, 1, "EPYC-Milan", None, None);
        let err = spec.measure_snp().expect_err(what).to_string();
        assert!(err.contains("SEV metadata"), "{what}: {err}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn mrtd_of_real_ovmf_builds() {
    // Known answers computed by this implementation and cross-checked: the two page-add orders
    // must differ on real firmware (many pages per section), and both must be stable.
    let cases = [
        (
            "debian-bookworm-OVMF.fd",
            "debian bookworm ovmf 2022.11-6+deb12u2",
        ),
        ("OVMF.inteltdx.fd", "crate tdx 0.1.2"),
        (
            "debian-trixie-OVMF.fd",
            "debian trixie ovmf 2025.02-8 (4 MiB)",
        ),
    ];
    for (file, what) in cases {
        let Some(fw) = firmware(file) else { continue };
        let sections = tdvf::tdvf_sections(&fw).unwrap();
        assert!(
            sections
                .iter()
                .any(|s| s.section_type == tdvf::SectionType::Bfv),
            "{what}"
        );
        let single = tdvf::mrtd(&fw, PageAddOrder::SinglePass).unwrap();
        let two = tdvf::mrtd(&fw, PageAddOrder::TwoPass).unwrap();
        assert_ne!(single, two, "{what}: orders must differ");
        println!(
            "{what}: single {} two {}",
            hex::encode(single),
            hex::encode(two)
        );
        let expected = match file {
            "debian-bookworm-OVMF.fd" => KAT_DEBIAN,
            "debian-trixie-OVMF.fd" => KAT_TRIXIE,
            _ => KAT_TDX_CRATE,
        };
        assert_eq!(
            (hex::encode(single), hex::encode(two)),
            (expected.0.to_string(), expected.1.to_string()),
            "{what}"
        );
    }
}

// Cross-checked against a second, independent implementation written from the spec notes
// (Python, hashlib), on the same files: single pass, two pass.
const KAT_DEBIAN: (&str, &str) = (
    "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
    "acccbcc870a381adab0d3919d90a7f268ac3b0364771f202ed4bb4e892d045b33db3b32e6924cba830a724eed443f7e1",
);
const KAT_TRIXIE: (&str, &str) = (
    "df7ed292eb426938f02fc50892bb6eae8ab0f92213aefd13c5f27bf3d339c0213bb533ab848fdb65c923a63ed247a456",
    "ed5a6aeb17974647bc75387255374d9995d92691fa07ddf719c99a567ce3bb84d5fe92291352ff8bd4dbc8ce17a4ff24",
);
const KAT_TDX_CRATE: (&str, &str) = (
    "88c63708f207ab01a46b4d9424ea92ab11f8826be30d208afbb58f174f2a19cdcfafb2b12a6a2c98be0740b808894d55",
    "307c9a6831bdd6e6f56d9305f9598d238d42e864a9144f11c0a46ee42e62ed81eb9845511a80fa77b200743d85d977e3",
);

/// The independent tool's output: (id block, id auth, id key digest, author key digest).
fn snp_create_id_block_output() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    use base64::Engine as _;
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .expect("base64 in the fixture")
    };
    let text = String::from_utf8(fixture("snp-id/snp-create-id-block.out")).expect("utf-8");
    let mut lines = text.lines();
    let first = lines.next().expect("qemu line");
    let (block, auth) = first
        .strip_prefix("id-block=")
        .and_then(|r| r.split_once(",id-auth="))
        .expect("id-block=...,id-auth=...");
    let id = lines.next().and_then(|l| l.strip_prefix("id_key_hash: "));
    let author = lines.next().and_then(|l| l.strip_prefix("author_key: "));
    (
        b64(block),
        b64(auth),
        b64(id.expect("id_key_hash line")),
        b64(author.expect("author_key line")),
    )
}

#[test]
fn snp_id_block_matches_sev_snp_measure() {
    use base64::Engine as _;
    use chrysalis_attestation::measure::snp_id::{
        parse_private_key, sign_id_block, verify_id_block, IdBlock,
    };
    let (tool_block, tool_auth, tool_id_digest, tool_author_digest) = snp_create_id_block_output();
    let ld = base64::engine::general_purpose::STANDARD
        .decode(
            String::from_utf8(fixture("snp-id/measurement.b64"))
                .expect("utf-8")
                .trim(),
        )
        .expect("base64");
    let id_key = parse_private_key(&fixture("snp-id/id-key.pem")).expect("SEC1 PEM");
    let author_key = parse_private_key(&fixture("snp-id/author-key.pem")).expect("PKCS#8 PEM");
    let block = IdBlock {
        launch_digest: ld.as_slice().try_into().expect("48 bytes"),
        family_id: [0; 16],
        image_id: [0; 16],
        guest_svn: 0,
        policy: 0x30000,
    };
    let ours = sign_id_block(&block, &id_key, Some(&author_key));
    assert_eq!(
        ours.id_block.as_slice(),
        tool_block.as_slice(),
        "ID block bytes"
    );
    assert_eq!(ours.id_key_digest.as_slice(), tool_id_digest.as_slice());
    assert_eq!(
        ours.author_key_digest.map(|d| d.to_vec()),
        Some(tool_author_digest.clone())
    );
    // Everything but the (randomized) signatures is byte-equal: algorithms, keys, reserved.
    let masked = |b: &[u8]| {
        let mut b = b.to_vec();
        b[0x40..0x240].fill(0);
        b[0x680..0x880].fill(0);
        b
    };
    assert_eq!(masked(&ours.id_auth), masked(&tool_auth));
    // The tool's signatures verify under our verifier, and ours under the same check.
    let v = verify_id_block(&tool_block, &tool_auth, true).expect("the tool's block verifies");
    assert_eq!(v.block, block);
    assert_eq!(v.id_key_digest.as_slice(), tool_id_digest.as_slice());
    assert_eq!(
        v.author_key_digest.map(|d| d.to_vec()),
        Some(tool_author_digest)
    );
    verify_id_block(&ours.id_block, &ours.id_auth, true).expect("ours verifies");
    // A block for another digest does not pass with this signature.
    let mut other = tool_block.clone();
    other[47] ^= 0x80;
    assert!(verify_id_block(&other, &tool_auth, true).is_err());
}

/// RTMR0 predicted from the firmware file against a real boot: the dstack TD whose CCEL log is
/// `dstack/ccel.bin` ran Debian trixie's OVMF layout (same CFV, same TD HOB and temporary-memory
/// sections) with 1 GiB. Only the three ACPI digests are taken from its log; every other event
/// is computed, and the result is the RTMR0 its quote reports.
#[test]
fn rtmr0_from_the_firmware_reproduces_a_real_boot() {
    let Some(fw) = firmware("debian-trixie-OVMF.fd") else {
        return;
    };
    let log = replay_ccel(&fixture("dstack/ccel.bin"))
        .unwrap()
        .into_replay();
    let acpi = AcpiDigests::from_replay(&log).unwrap();
    let sections = tdvf::tdvf_sections(&fw).unwrap();
    let mut rtmrs = Rtmrs::default();
    rtmr0::rtmr0_events(&fw, &sections, 1 << 30, &acpi, &mut rtmrs).unwrap();
    let ours = rtmrs.into_replay();
    let theirs: Vec<_> = log.events.iter().filter(|e| e.rtmr == 0).collect();
    assert_eq!(ours.events.len(), theirs.len());
    for (a, b) in ours.events.iter().zip(&theirs) {
        assert_eq!(
            (a.event_type, &a.digest),
            (b.event_type, &b.digest),
            "{} vs {}",
            a.description,
            b.description
        );
    }
    let quote = decode_binary_or_hex(&fixture("dcap-qvl/quote-from-tappd.hex")).unwrap();
    assert_eq!(ours.rtmr[0], quote_rtmrs(&quote)[0]);

    // The same through the VM description the CLI and the host agent use.
    let dir = std::env::var("CHRYSALIS_FIXTURES")
        .unwrap_or_else(|_| format!("{}/../target/fixtures", env!("CARGO_MANIFEST_DIR")));
    let spec = VmSpec {
        platform: PlatformSpec::Tdx {
            page_add_order: PageAddOrder::SinglePass,
            qemu_patches_kernel_header: true,
            initrd_token: InitrdToken::Append,
        },
        firmware: format!("{dir}/debian-trixie-OVMF.fd").into(),
        kernel: None,
        initrd: None,
        cmdline: None,
        memory: 1 << 30,
        vcpus: 1,
    };
    let m = spec.measure_tdx_with(Some(&acpi)).unwrap();
    assert_eq!(m.rtmr[0].as_deref(), Some(quote_rtmrs(&quote)[0].as_str()));
    assert_eq!(spec.measure_tdx().unwrap().rtmr[0], None);
    // Another memory size is another TD HOB, so another RTMR0.
    let other = VmSpec {
        memory: 2 << 30,
        ..spec
    };
    assert_ne!(
        other.measure_tdx_with(Some(&acpi)).unwrap().rtmr[0],
        m.rtmr[0]
    );
}

/// A second real boot: the TD of `dstack/tdx-lite-getquote.json` (its `vm_config`: 2 GiB) ran a
/// firmware whose TD HOB and temporary-memory sections are laid out as in Debian bookworm's
/// OVMF; its logged TD HOB digest is the one computed here. (Its CFV is trixie's: the log's
/// second event equals trixie's CFV digest.)
#[test]
fn td_hob_of_a_second_real_boot() {
    let (Some(bookworm), Some(trixie)) = (
        firmware("debian-bookworm-OVMF.fd"),
        firmware("debian-trixie-OVMF.fd"),
    ) else {
        return;
    };
    let (_, log) = json_fixture("dstack/tdx-lite-getquote.json");
    let events: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&fixture("dstack/tdx-lite-getquote.json"))
        .map(|v: serde_json::Value| serde_json::from_str(v["vm_config"].as_str().unwrap()).unwrap())
        .unwrap();
    let memory = cfg["memory_size"].as_u64().unwrap();
    assert_eq!(memory, 2 << 30);
    let sections = tdvf::tdvf_sections(&bookworm).unwrap();
    let hob = rtmr0::td_hob(&sections, memory).unwrap();
    assert_eq!(
        hex::encode(chrysalis_attestation::measure::sha384(&hob)),
        events[0]["digest"].as_str().unwrap()
    );
    let trixie_sections = tdvf::tdvf_sections(&trixie).unwrap();
    assert_eq!(
        hex::encode(rtmr0::cfv_digest(&trixie, &trixie_sections).unwrap()),
        events[1]["digest"].as_str().unwrap()
    );
}
