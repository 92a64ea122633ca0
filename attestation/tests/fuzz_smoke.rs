//! The fuzz targets' code on stable: every fixture, truncated and mutated deterministically.
//! `make fuzz-smoke` also runs the real cargo-fuzz targets when a nightly toolchain and
//! cargo-fuzz are present.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use chrysalis_attestation::fuzz_targets;

fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let root = format!("{}/testdata", env!("CARGO_MANIFEST_DIR"));
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "md") {
                continue;
            }
            out.push(std::fs::read(&f).unwrap());
        }
    }
    out.push(b"version = 1\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = [\"00\"]\n".to_vec());
    out
}

#[test]
fn fuzz_targets_survive_mutated_fixtures() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let endorsements = fuzz_targets::sample_endorsements(
        include_bytes!("../testdata/dcap-qvl/tdx_quote_collateral.json"),
        include_bytes!("../testdata/sev/vcek_milan.der"),
    );
    let mut runs = 0;
    for input in corpus() {
        for round in 0..60 {
            let mut data = input.clone();
            if round % 3 == 1 && !data.is_empty() {
                let len = (next() as usize) % data.len();
                data.truncate(len);
            }
            for _ in 0..(round % 5) {
                if !data.is_empty() {
                    let at = (next() as usize) % data.len();
                    data[at] ^= next() as u8;
                }
            }
            fuzz_targets::evidence(&data, &endorsements);
            fuzz_targets::policy(&data);
            fuzz_targets::endorsements(&data);
            fuzz_targets::measure(&data);
            runs += 1;
        }
    }
    assert!(runs > 500, "{runs}");
}
