//! Per-call verification cost on real evidence: a TDX quote with its collateral already parsed
//! and held in memory (the "cached collateral" case of a server), and an SNP report with its VCEK.
//! Also the verification cache's hit path, and SHA-384 of four 4 KiB pages (the SNP launch
//! digest's bulk) four lanes at once against one at a time. Run with `make bench`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use chrysalis_attestation::snp::{parse_certificate, parse_pem_chain};
use chrysalis_attestation::tdx::parse_collateral;
use chrysalis_attestation::verify::Endorsements;
use chrysalis_attestation::{Evidence, Policy, Timestamp, VerificationCache, Verifier};
use criterion::{criterion_group, criterion_main, Criterion};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn bench(c: &mut Criterion) {
    let verifier = Verifier::new();
    let policy = Policy::baseline();

    let quote = fixture("dcap-qvl/tdx_quote");
    let tdx_end = Endorsements {
        tdx_collateral: Some(
            parse_collateral(&fixture("dcap-qvl/tdx_quote_collateral.json")).unwrap(),
        ),
        ..Default::default()
    };
    let tdx_now = Timestamp::parse("2025-06-20T00:00:00Z").unwrap();
    let tdx_ev = Evidence::from_bytes(&quote).unwrap();
    assert!(verifier.verify(&tdx_ev, &tdx_end, &policy, tdx_now).is_ok());
    c.bench_function("tdx_verify_cached_collateral", |b| {
        b.iter(|| {
            let ev = Evidence::from_bytes(std::hint::black_box(&quote)).unwrap();
            verifier.verify(&ev, &tdx_end, &policy, tdx_now).unwrap()
        })
    });

    let raw = fixture("dstack/sev_snp_attestation.bin");
    let report = raw[4..4 + 1184].to_vec();
    let snp_end = Endorsements {
        vcek: Some(parse_certificate("VCEK", &fixture("dstack/sev_snp_vcek.pem")).unwrap()),
        cert_chain: parse_pem_chain(&fixture("dstack/sev_snp_ask.pem")).unwrap(),
        ..Default::default()
    };
    let snp_now = Timestamp::parse("2026-07-01T00:00:00Z").unwrap();
    let snp_ev = Evidence::from_bytes(&report).unwrap();
    assert!(verifier.verify(&snp_ev, &snp_end, &policy, snp_now).is_ok());
    c.bench_function("snp_verify", |b| {
        b.iter(|| {
            let ev = Evidence::from_bytes(std::hint::black_box(&report)).unwrap();
            verifier.verify(&ev, &snp_end, &policy, snp_now).unwrap()
        })
    });

    let cache = VerificationCache::new(16);
    c.bench_function("tdx_verify_cache_hit", |b| {
        b.iter(|| {
            cache
                .verify(&verifier, &tdx_ev, &tdx_end, &policy, tdx_now)
                .unwrap()
        })
    });
}

fn page_hashing(c: &mut Criterion) {
    use chrysalis_attestation::measure::{sha384, sha384_pages};
    let data: Vec<u8> = (0..8 * 4096u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let pages: Vec<&[u8; 4096]> = data
        .chunks_exact(4096)
        .map(|c| c.try_into().unwrap())
        .collect();
    let mut group = c.benchmark_group("sha384_8_pages");
    group.throughput(criterion::Throughput::Bytes(data.len() as u64));
    // Named after the kernel this CPU gets: avx512x8, avx2x4 or sha2.
    group.bench_function(sha384_pages::kernel(), |b| {
        b.iter(|| sha384_pages::pages(std::hint::black_box(&pages)))
    });
    group.bench_function("sha2_one_at_a_time", |b| {
        b.iter(|| {
            pages
                .iter()
                .map(|p| sha384(&std::hint::black_box(p)[..]))
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench, page_hashing
}
criterion_main!(benches);
