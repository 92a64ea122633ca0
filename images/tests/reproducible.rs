//! A small image recipe built twice, in different directories at different times: every output
//! byte-identical; `verify` names each changed component; the emitted policy accepts the
//! image's (simulated) evidence and rejects a one-byte change to the kernel command line.
//!
//! Inputs are real: Debian trixie's kernel, OVMF and libc packages, pinned by SHA-256, read from
//! the fixture cache `make fixtures` fills (no download here), and the `sev` crate's AmdSev OVMF
//! for the SNP launch digest.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use chrysalis_attestation::simulated::{root_signing_key, SimulatedClaims, SimulatedEvidence};
use chrysalis_attestation::{Endorsements, Evidence, Policy, Timestamp, Verifier};
use chrysalis_images::{build, BuildOptions, Manifest};

fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("CHRYSALIS_FIXTURES")
            .unwrap_or_else(|_| format!("{}/../target/fixtures", env!("CARGO_MANIFEST_DIR"))),
    );
    let needed = [
        "dl/linux-image-6.12.107+deb13-cloud-amd64_6.12.107-1_amd64.deb",
        "dl/ovmf_2025.02-8_all.deb",
        "dl/libc6_2.41-12+deb13u4_amd64.deb",
        "ovmf_AmdSev_suffix.bin",
    ];
    for n in needed {
        if !dir.join(n).exists() {
            if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() {
                panic!("{}: missing (run `make fixtures`)", dir.join(n).display());
            }
            eprintln!("SKIPPED: {n} not fetched (run `make fixtures`; `make test` requires it)");
            return None;
        }
    }
    Some(dir)
}

const CMDLINE: &str = "console=ttyS0 panic=-1";

/// A small recipe in `dir`, with a stand-in enclave binary and model (the builder treats them as
/// opaque files; the VM boot test uses the real ones).
fn small_recipe(dir: &Path, fixtures: &Path) -> PathBuf {
    std::fs::write(
        dir.join("enclave-standin"),
        b"\x7fELF stand-in enclave for the image tests",
    )
    .expect("write");
    let model = vec![7u8; 1000];
    std::fs::write(dir.join("model.gguf"), &model).expect("write");
    let model_sha = chrysalis_images::fetch::sha256_hex(&model);
    let text = format!(
        r#"
name = "chrysalis-test"
source_date_epoch = 1767225600
cmdline = "{CMDLINE}"
libraries = [{{ package = "libc6", path = "usr/lib64/ld-linux-x86-64.so.2" }}]

[archive]
mirror = "file://{fx}/dl-not-used"

[[package]]
name = "linux-image-6.12.107+deb13-cloud-amd64"
version = "6.12.107-1"
path = "pool/main/l/linux-signed-amd64/linux-image-6.12.107+deb13-cloud-amd64_6.12.107-1_amd64.deb"
sha256 = "04434ff520f860423eafe4203d986a35682ce73c2f71baa39e988ca0da93ac91"

[[package]]
name = "ovmf"
version = "2025.02-8"
path = "pool/main/e/edk2/ovmf_2025.02-8_all.deb"
sha256 = "d82312d863b18aebde958133144185c45685d3c6e1d217b4969913d713c05bf7"

[[package]]
name = "libc6"
version = "2.41-12+deb13u4"
path = "pool/main/g/glibc/libc6_2.41-12+deb13u4_amd64.deb"
sha256 = "967aa62605721081c3eb2a17650611a792aa802d76a6511d1840242623d204c9"

[kernel]
image = {{ package = "linux-image-6.12.107+deb13-cloud-amd64", path = "boot/vmlinuz-6.12.107+deb13-cloud-amd64" }}
modules_package = "linux-image-6.12.107+deb13-cloud-amd64"
modules = ["virtio_net"]

[firmware]
tdx = {{ package = "ovmf", path = "usr/share/ovmf/OVMF.fd" }}
snp = {{ file = "{fx}/ovmf_AmdSev_suffix.bin", sha256 = "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c" }}

[enclave]
binary = "enclave-standin"
args = ["--tee", "auto", "--listen", "0.0.0.0:8443"]

[model]
file = "model.gguf"
sha256 = "{model_sha}"

[network]
interface = "eth0"
address = "10.0.2.15/24"

[[shape]]
platform = "tdx"
memory = "1G"
vcpus = [1]

[[shape]]
platform = "snp"
memory = "1G"
vcpus = [1, 2]
cpu_types = ["EPYC-Milan"]
"#,
        fx = fixtures.display()
    );
    let path = dir.join("small.toml");
    std::fs::write(&path, text).expect("write recipe");
    path
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    out.sort();
    out
}

fn build_into(recipe: &Path, out: &Path, fixtures: &Path) -> Manifest {
    build(
        recipe,
        &BuildOptions {
            out: out.to_path_buf(),
            cache: fixtures.join("dl"),
            quiet: true,
        },
    )
    .expect("build")
}

#[test]
fn small_image_is_reproducible_verifiable_and_pinned_by_its_policy() {
    let Some(fx) = fixtures() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    // Two checkouts: the same recipe and inputs in two places.
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let ra = small_recipe(&a, &fx);
    let rb = small_recipe(&b, &fx);
    let ma = build_into(&ra, &a.join("out"), &fx);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mb = build_into(&rb, &b.join("elsewhere/out"), &fx);

    let fa = files(&a.join("out"));
    let fb = files(&b.join("elsewhere/out"));
    let names: Vec<&str> = fa.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "firmware-snp.fd",
            "firmware-tdx.fd",
            "initrd.img",
            "manifest.json",
            "model.img",
            "vmlinuz"
        ]
    );
    assert_eq!(fa, fb, "two builds differ");
    assert_eq!(ma, mb);

    // The manifest carries real measurements for every shape.
    assert_eq!(ma.measurements.tdx.len(), 1);
    let tdx = &ma.measurements.tdx[0];
    assert_eq!(tdx.mr_td.len(), 96);
    assert!(tdx.rtmr[1].is_some() && tdx.rtmr[2].is_some() && tdx.rtmr[0].is_none());
    assert_eq!(ma.measurements.snp.len(), 2);
    assert_ne!(
        ma.measurements.snp[0].measurement,
        ma.measurements.snp[1].measurement
    );
    // The initramfs holds the enclave as /init, the module with its dependencies, the loader.
    let paths: Vec<&str> = ma.initramfs.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "init",
        "etc/chrysalis/guest.json",
        "dev/console",
        "usr/lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    let modules: Vec<&str> = ma
        .guest
        .modules
        .iter()
        .map(|m| m.rsplit('/').next().unwrap_or(""))
        .collect();
    assert_eq!(modules, ["failover.ko", "net_failover.ko", "virtio_net.ko"]);
    assert_eq!(ma.guest.model.as_ref().map(|m| m.size), Some(1000));

    // verify: clean, then one changed byte per component, each named.
    let out = a.join("out");
    let report = Manifest::load(&out).expect("manifest").verify(&out);
    assert!(report.ok(), "{:?}", report.problems);
    for (role, file) in [
        ("kernel", "vmlinuz"),
        ("initrd", "initrd.img"),
        ("firmware_tdx", "firmware-tdx.fd"),
        ("firmware_snp", "firmware-snp.fd"),
        ("model_disk", "model.img"),
    ] {
        let copy = work.path().join(format!("changed-{role}"));
        std::fs::create_dir_all(&copy).expect("mkdir");
        for (name, data) in &fa {
            std::fs::write(copy.join(name), data).expect("copy");
        }
        let mut data = std::fs::read(copy.join(file)).expect("read");
        let i = data.len() / 2;
        data[i] ^= 0x01;
        std::fs::write(copy.join(file), &data).expect("write");
        let report = Manifest::load(&copy).expect("manifest").verify(&copy);
        assert!(!report.ok(), "{role}: change not detected");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with(&format!("{role} ({file}) changed"))),
            "{role}: {:?}",
            report.problems
        );
    }

    // The emitted policy: the image's simulated evidence passes, a one-byte change to the
    // command line does not; without --allow-simulated the simulator is refused.
    let policy_text = ma.policy(true).expect("policy");
    let policy = Policy::from_toml(&policy_text).expect("parse policy");
    let verifier = Verifier::new();
    let now = Timestamp(1_790_000_000);
    let exe: [u8; 48] = hex::decode(&ma.enclave.sha384)
        .expect("hex")
        .try_into()
        .expect("48");
    let evidence_for = |cmdline: &str| {
        let claims = SimulatedClaims {
            measurement: chrysalis_attestation::simulated::image_measurement(&exe, cmdline),
            config_digest: [0; 48],
            report_data: [0; 64],
            debug: false,
        };
        Evidence::from_bytes(SimulatedEvidence::sign(&claims, &root_signing_key()).raw())
            .expect("parse simulated")
    };
    let launched = format!("{CMDLINE} chrysalis.tee=simulated");
    let ok = verifier.verify(
        &evidence_for(&launched),
        &Endorsements::default(),
        &policy,
        now,
    );
    assert!(ok.is_ok(), "{ok:?}");
    let mut changed = launched.clone().into_bytes();
    changed[8] ^= 0x01; // console=ttyS0 -> one byte differs
    let changed = String::from_utf8(changed).expect("utf8");
    let bad = verifier.verify(
        &evidence_for(&changed),
        &Endorsements::default(),
        &policy,
        now,
    );
    assert!(bad.is_err(), "a changed command line was accepted");
    let strict = Policy::from_toml(&ma.policy(false).expect("policy")).expect("parse");
    let refused = verifier.verify(
        &evidence_for(&launched),
        &Endorsements::default(),
        &strict,
        now,
    );
    assert!(
        refused.is_err(),
        "the simulator passed a policy that does not name it"
    );
    // The TDX and SNP sections pin the manifest's values.
    assert!(policy_text.contains(&tdx.mr_td));
    assert!(policy_text.contains(tdx.rtmr[2].as_deref().unwrap_or("-")));
    assert!(policy_text.contains(&ma.measurements.snp[1].measurement));
}
