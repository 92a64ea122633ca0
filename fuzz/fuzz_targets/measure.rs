#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chrysalis_attestation::fuzz_targets::measure(data);
});
