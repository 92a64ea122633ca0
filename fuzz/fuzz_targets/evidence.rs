#![no_main]
use std::sync::OnceLock;

use chrysalis_attestation::verify::Endorsements;
use libfuzzer_sys::fuzz_target;

fn endorsements() -> &'static Endorsements {
    static E: OnceLock<Endorsements> = OnceLock::new();
    E.get_or_init(|| {
        chrysalis_attestation::fuzz_targets::sample_endorsements(
            include_bytes!("../../attestation/testdata/dcap-qvl/tdx_quote_collateral.json"),
            include_bytes!("../../attestation/testdata/sev/vcek_milan.der"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    chrysalis_attestation::fuzz_targets::evidence(data, endorsements());
});
