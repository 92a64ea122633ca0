# Chrysalis. Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
TD := attestation/testdata
CHRYSALIS := target/debug/chrysalis
FUZZ_RUNS ?= 20000
# Real evidence seeds every fuzz target (libFuzzer only reads these; it writes to fuzz/corpus).
FUZZ_SEEDS := $(addprefix ../,$(wildcard $(TD)/*/))

.PHONY: all build demo test test-rust fuzz-smoke fixtures venv bench lint fmt clean

all: build

build:
	$(CARGO) build --workspace

# The main job on its embedded default. Until the enclave exists, the demo verifies real
# evidence captured on real hardware, at times inside its collateral's validity, plus the
# development simulator (which is loudly not confidential).
demo: build
	@echo "== 1. A real Intel TDX quote (v4) with its Intel collateral, at 2025-06-20"
	$(CHRYSALIS) verify $(TD)/dcap-qvl/tdx_quote --collateral $(TD)/dcap-qvl/tdx_quote_collateral.json --at 2025-06-20T00:00:00Z --offline
	@echo
	@echo "== 2. A real AMD SEV-SNP report (Milan, v3) with its VCEK and ASK (JSON, as a script reads it)"
	@tail -c +5 $(TD)/dstack/sev_snp_attestation.bin | head -c 1184 > target/demo-snp-report.bin
	$(CHRYSALIS) verify target/demo-snp-report.bin --vcek $(TD)/dstack/sev_snp_vcek.pem --cert-chain $(TD)/dstack/sev_snp_ask.pem --at 2026-07-01T00:00:00Z --offline --json
	@echo
	@echo "== 3. The same TDX quote after its collateral expired: rejected (exit 1)"
	-$(CHRYSALIS) verify $(TD)/dcap-qvl/tdx_quote --collateral $(TD)/dcap-qvl/tdx_quote_collateral.json --at 2025-08-01T00:00:00Z --offline
	@echo
	@echo "== 4. A real TDX platform below every TCB level: rejected (exit 1)"
	-$(CHRYSALIS) verify $(TD)/dcap-qvl/tdx_quote_outdated --collateral $(TD)/dcap-qvl/tdx_quote_outdated_collateral.json --at 2026-02-20T00:00:00Z --offline
	@echo
	@echo "== 5. An auditor replays a real TDX guest's event log against its quote"
	@python3 -c 'import json,sys; v=json.load(open("$(TD)/dstack/quote-report.json")); open("target/demo-eventlog.json","w").write(v["event_log"]); open("target/demo-quote.hex","w").write(v["quote"])'
	$(CHRYSALIS) eventlog target/demo-eventlog.json --quote target/demo-quote.hex | tail -4

test: fixtures venv test-rust fuzz-smoke

# Tests that need the fetched firmware or the reference tool fail (not skip) under make test.
test-rust:
	CHRYSALIS_REQUIRE_FIXTURES=1 CHRYSALIS_REQUIRE_REFERENCE=1 $(CARGO) test --workspace

# Real firmware for the measurement tests, pinned by SHA-256 (Debian archive, crates.io).
fixtures:
	./scripts/fetch-fixtures.sh

# The independent SNP launch-digest implementation we compare with.
venv: .venv/stamp
.venv/stamp: Makefile
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check sev-snp-measure==0.0.13 lief==1.0.0
	touch .venv/stamp

# Fuzz targets: their code always runs on stable (attestation/tests/fuzz_smoke.rs, part of
# `cargo test`); the real libFuzzer targets run briefly when nightly and cargo-fuzz exist.
fuzz-smoke:
	@if $(CARGO) +nightly --version >/dev/null 2>&1 && $(CARGO) fuzz --version >/dev/null 2>&1; then \
		for t in evidence policy endorsements measure; do \
			mkdir -p fuzz/corpus/$$t; \
			(cd fuzz && $(CARGO) +nightly fuzz run -O $$t corpus/$$t $(FUZZ_SEEDS) -- -runs=$(FUZZ_RUNS) -max_len=8192) || exit 1; \
		done; \
	else \
		echo "fuzz-smoke: nightly or cargo-fuzz missing; the targets' code ran on stable in cargo test (fuzz_smoke)"; \
	fi

bench: fixtures venv
	$(CARGO) bench -p chrysalis-attestation --bench verify
	./scripts/bench-measure.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
