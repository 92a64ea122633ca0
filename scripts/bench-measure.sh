#!/usr/bin/env bash
# Whole command against whole command: `chrysalis measure snp` vs PyPI sev-snp-measure on the
# same inputs, and `chrysalis measure tdx` (MRTD) on a 4 MiB firmware. Mean wall time of N runs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50}
F=target/fixtures
cargo build --release -q -p chrysalis-client
BIN=target/release/chrysalis
REF=.venv/bin/sev-snp-measure

# Mean wall time of N runs of a whole command, in ms. `perf stat -r` where perf works (it
# forks and execs each run itself, and reports the spread); otherwise a shell loop, whose own
# fork per run (about 0.2 ms here) is counted in both tools' times.
if perf stat -r 1 true >/dev/null 2>&1; then HARNESS="perf stat -r $N"; else HARNESS="shell loop x$N"; fi
mean_ms() { # command...
  "$@" >/dev/null # warm-up
  if [[ $HARNESS == perf* ]]; then
    perf stat -r "$N" "$@" 2>&1 >/dev/null | python3 -c '
import sys, re
out = sys.stdin.read()
m = re.search(r"^\s*([0-9.]+) (?:\+- [0-9.]+ )?seconds time elapsed", out, re.M)
print("%.2f" % (float(m.group(1)) * 1000)) if m else sys.exit("perf stat gave no elapsed time: " + out)
' && return
  fi
  local start end
  start=$(date +%s%N)
  for _ in $(seq "$N"); do "$@" >/dev/null; done
  end=$(date +%s%N)
  echo "scale=2; ($end - $start) / $N / 1000000" | bc
}

echo "harness: $HARNESS"
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
