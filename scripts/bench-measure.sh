#!/usr/bin/env bash
# Whole command against whole command: `chrysalis measure snp` vs PyPI sev-snp-measure on the
# same inputs, and `chrysalis measure tdx` (MRTD) on a 4 MiB firmware. Mean wall time of N runs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20}
F=target/fixtures
cargo build --release -q -p chrysalis-client
BIN=target/release/chrysalis
REF=.venv/bin/sev-snp-measure

mean_ms() { # command...
  local start end
  "$@" >/dev/null # warm-up
  start=$(date +%s%N)
  for _ in $(seq "$N"); do "$@" >/dev/null; done
  end=$(date +%s%N)
  echo "scale=2; ($end - $start) / $N / 1000000" | bc
}

snp_args=(--vcpus 4 --vcpu-type EPYC-Milan)
ours=$(mean_ms "$BIN" measure snp --firmware $F/debian-bookworm-OVMF.fd "${snp_args[@]}")
theirs=$(mean_ms "$REF" --mode snp --ovmf $F/debian-bookworm-OVMF.fd "${snp_args[@]}")
echo "snp launch digest, debian OVMF.fd, 4 vCPUs: chrysalis ${ours} ms, sev-snp-measure ${theirs} ms, ratio $(echo "scale=1; $theirs / $ours" | bc)x"
k=$(mktemp); head -c 12000000 /dev/zero > "$k"
ours=$(mean_ms "$BIN" measure snp --firmware $F/ovmf_AmdSev_suffix.bin "${snp_args[@]}" --kernel "$k" --cmdline console=ttyS0)
theirs=$(mean_ms "$REF" --mode snp --ovmf $F/ovmf_AmdSev_suffix.bin "${snp_args[@]}" --kernel "$k" --append console=ttyS0)
echo "snp launch digest, AmdSev OVMF + 12 MB kernel: chrysalis ${ours} ms, sev-snp-measure ${theirs} ms, ratio $(echo "scale=1; $theirs / $ours" | bc)x"
rm -f "$k"
for fw in debian-trixie-OVMF.fd debian-bookworm-OVMF.fd; do
  echo "tdx mrtd, $fw ($(stat -c %s $F/$fw) bytes): $(mean_ms "$BIN" measure tdx --firmware $F/$fw) ms"
done
