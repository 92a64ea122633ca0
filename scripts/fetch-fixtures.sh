#!/usr/bin/env bash
# Fetch the large real inputs the measurement tests use, pinned by SHA-256, into
# target/fixtures/. Sources: Debian's archive and crates.io (the only registries CI reaches).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/fixtures
mkdir -p "$out/dl"

fetch() { # url sha256 file
  local url=$1 sum=$2 file=$out/dl/$3
  if [ -f "$file" ] && echo "$sum  $file" | sha256sum -c --quiet 2>/dev/null; then return 0; fi
  echo "fetching $url"
  curl -fsSL --retry 3 -o "$file.part" "$url"
  echo "$sum  $file.part" | sha256sum -c --quiet || { echo "checksum mismatch for $url" >&2; rm -f "$file.part"; exit 1; }
  mv "$file.part" "$file"
}

# Debian bookworm OVMF (TDX and SEV metadata in /usr/share/ovmf/OVMF.fd).
fetch https://deb.debian.org/debian/pool/main/e/edk2/ovmf_2022.11-6+deb12u2_all.deb \
  e73d3d1a8799f7f6fc16b73501d913edcdd86237556fbff30693e747e6dc262e ovmf_2022.11-6+deb12u2_all.deb
if [ ! -f "$out/debian-bookworm-OVMF.fd" ]; then
  rm -rf "$out/ovmf-x" && mkdir -p "$out/ovmf-x"
  (cd "$out/ovmf-x" && ar x ../dl/ovmf_2022.11-6+deb12u2_all.deb && tar xf data.tar.* ./usr/share/ovmf/OVMF.fd)
  cp "$out/ovmf-x/usr/share/ovmf/OVMF.fd" "$out/debian-bookworm-OVMF.fd"
  rm -rf "$out/ovmf-x"
fi

# Debian trixie OVMF (a 4 MiB image with TDX and SEV metadata).
fetch https://deb.debian.org/debian/pool/main/e/edk2/ovmf_2025.02-8_all.deb \
  d82312d863b18aebde958133144185c45685d3c6e1d217b4969913d713c05bf7 ovmf_2025.02-8_all.deb
if [ ! -f "$out/debian-trixie-OVMF.fd" ]; then
  rm -rf "$out/ovmf-x" && mkdir -p "$out/ovmf-x"
  (cd "$out/ovmf-x" && ar x ../dl/ovmf_2025.02-8_all.deb && tar xf data.tar.* ./usr/share/ovmf/OVMF.fd)
  cp "$out/ovmf-x/usr/share/ovmf/OVMF.fd" "$out/debian-trixie-OVMF.fd"
  rm -rf "$out/ovmf-x"
fi

# crate tdx 0.1.2: tests/data/OVMF.inteltdx.fd.
fetch https://static.crates.io/crates/tdx/tdx-0.1.2.crate \
  820ee90f5e642ed0a36b8e80cf9b4d2e074a14a03ec9b4c5f26f92bd9efe69b8 tdx-0.1.2.crate
[ -f "$out/OVMF.inteltdx.fd" ] || tar -xzf "$out/dl/tdx-0.1.2.crate" -O tdx-0.1.2/tests/data/OVMF.inteltdx.fd > "$out/OVMF.inteltdx.fd"

# crate sev 8.0.0: tests/measurement/ OVMF fragments (an AmdSev build with kernel hashes).
fetch https://static.crates.io/crates/sev/sev-8.0.0.crate \
  5031e00ad6d00d24f6b9990a181fdc8dc6e6222ba9ef657f2d8cf29e4c36b948 sev-8.0.0.crate
for f in ovmf_AmdSev_suffix.bin ovmf_OvmfX64_suffix.bin; do
  [ -f "$out/$f" ] || tar -xzf "$out/dl/sev-8.0.0.crate" -O "sev-8.0.0/tests/measurement/$f" > "$out/$f"
done
# A real signed Debian kernel (EFI stub) for the Authenticode tests. Debian rotates kernel
# versions in its archive, so the current bookworm cloud kernel is taken through apt, which
# verifies it against the signed archive metadata; tests compare with an independent
# implementation (LIEF) instead of a pinned value.
if [ ! -f "$out/vmlinuz-cloud-amd64" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
    download() { (cd "$out/kernel-x" && apt-get download -qq "$1" 2>/dev/null && dpkg-deb --fsys-tarfile ./*.deb | tar x ./boot); }
    rm -rf "$out/kernel-x" && mkdir -p "$out/kernel-x"
    pkg=$(kernel_pkg)
    # Stale or missing package lists: refresh once and retry.
    if [ -z "$pkg" ] || ! download "$pkg"; then
      apt-get update -qq
      pkg=$(kernel_pkg)
      rm -rf "$out/kernel-x" && mkdir -p "$out/kernel-x"
      download "$pkg"
    fi
    cp "$out"/kernel-x/boot/vmlinuz-* "$out/vmlinuz-cloud-amd64"
    echo "$pkg" > "$out/vmlinuz-cloud-amd64.package"
    rm -rf "$out/kernel-x"
  else
    echo "apt-get missing: no Debian kernel fixture" >&2
  fi
fi
sha256sum "$out"/*.fd "$out"/*.bin "$out"/vmlinuz-* 2>/dev/null || true

# Debian trixie packages of the image recipes (images/default.toml, the image tests), cached here
# so that `chrysalis image build --cache target/fixtures/dl` reads them without a download.
fetch https://deb.debian.org/debian/pool/main/l/linux-signed-amd64/linux-image-6.12.107+deb13-cloud-amd64_6.12.107-1_amd64.deb \
  04434ff520f860423eafe4203d986a35682ce73c2f71baa39e988ca0da93ac91 linux-image-6.12.107+deb13-cloud-amd64_6.12.107-1_amd64.deb
fetch https://deb.debian.org/debian/pool/main/g/glibc/libc6_2.41-12+deb13u4_amd64.deb \
  967aa62605721081c3eb2a17650611a792aa802d76a6511d1840242623d204c9 libc6_2.41-12+deb13u4_amd64.deb
fetch https://deb.debian.org/debian/pool/main/g/gcc-14/libgcc-s1_14.2.0-19_amd64.deb \
  3c71917b490d1a17aed43196a2787a256ecf060526cdb20216a74bedc061b150 libgcc-s1_14.2.0-19_amd64.deb
