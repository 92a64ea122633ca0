#!/usr/bin/env bash
# `make image`: build the enclave reproducibly, then the default recipe into images/out/.
#
# Reproducibility of the Rust build: --locked dependencies, a fixed SOURCE_DATE_EPOCH, paths of
# this checkout and of the cargo registry remapped (so the binary does not depend on where the
# tree or CARGO_HOME lives), no debug info, symbols stripped, a separate target directory so the
# flags never mix with development builds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
recipe=${RECIPE:-images/default.toml}
out=${OUT:-images/out}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_INCREMENTAL=0
export RUSTFLAGS="-C target-cpu=x86-64-v3 --remap-path-prefix=$root=/chrysalis --remap-path-prefix=$cargo_home=/cargo -C link-arg=-Wl,--build-id=sha1"
echo "image: building chrysalis-enclave (release, reproducible flags) into target/image"
cargo build --release --locked -p chrysalis-enclave --target-dir target/image
sha256sum target/image/release/chrysalis-enclave
cargo build --locked -p chrysalis-client
./target/debug/chrysalis image build --recipe "$recipe" --out "$out" --cache target/fixtures/dl
./target/debug/chrysalis image verify "$out"
# Reproducibility of the full recipe: build again elsewhere, later, and compare every file.
again=$(mktemp -d)
sleep 1
./target/debug/chrysalis image build --recipe "$recipe" --out "$again/out" --cache target/fixtures/dl >/dev/null
for f in "$out"/*; do
  cmp "$f" "$again/out/$(basename "$f")" || { echo "image: $(basename "$f") differs between two builds" >&2; exit 1; }
done
rm -rf "$again"
echo "image: a second build in another directory is byte-identical"
