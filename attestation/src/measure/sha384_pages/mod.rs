//! SHA-384 of many 4 KiB pages at once. The SNP launch digest hashes every firmware page, and
//! the pages are independent, so several are compressed in lockstep, one per 64-bit lane of a
//! vector register. A single SHA-384 stream cannot be vectorised this way (each round needs the
//! last), and the CPUs this runs on have no SHA-512 instructions, so this is where the speed
//! comes from (`cargo bench -p chrysalis-attestation --bench verify -- sha384_8_pages`):
//! - [`avx512`]: eight lanes, AVX-512F (native 64-bit rotates, three-input logic), chosen at run
//!   time when the CPU has it (Intel since Skylake-SP, which includes every TDX host; AMD since
//!   Zen 4). About 3.7 times `sha2`'s single-stream throughput on this machine.
//! - [`avx2`]: four lanes, AVX2, built where AVX2 is enabled at compile time (this workspace
//!   builds for x86-64-v3, so everywhere it runs). About 1.6 times `sha2`.
//! - elsewhere, `sha2` one page at a time.
//!
//! The arithmetic is FIPS 180-4's (SHA-384: the SHA-512 compression, its own initial value, the
//! digest truncated to six words), lane by lane. Every lane of both kernels is compared with
//! `sha2` in the unit tests below and, through the launch digest, with `sev` and
//! `sev-snp-measure`.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Bytes in a page.
pub const PAGE: usize = 4096;

/// Fewer pages than this are hashed one at a time: with three, a kernel's repeated lanes are
/// still cheaper than three single streams; with two they are not.
const MIN_LANES_USED: usize = 3;

/// The page kernels, widest first.
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    Avx2,
    Sha2,
}

impl Kernel {
    /// The widest kernel this CPU has (AVX-512 is detected at run time, AVX2 is compiled in).
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = avx512::detect() {
            return Self::Avx512(simd);
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        return Self::Avx2;
        #[allow(unreachable_code)]
        Self::Sha2
    }
}

/// Which kernel [`pages`] uses on this CPU: `"avx512x8"`, `"avx2x4"` or `"sha2"`.
pub fn kernel() -> &'static str {
    match Kernel::detect() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512(_) => "avx512x8",
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        Kernel::Avx2 => "avx2x4",
        Kernel::Sha2 => "sha2",
    }
}

/// SHA-384 of each page, in order, through the widest kernel this CPU has.
pub fn pages(pages: &[&[u8; PAGE]]) -> Vec<[u8; 48]> {
    match Kernel::detect() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512(simd) => in_batches(pages, |lanes| avx512::eight_pages(simd, lanes)),
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        Kernel::Avx2 => in_batches(pages, avx2::four_pages),
        Kernel::Sha2 => pages.iter().map(|p| one(p)).collect(),
    }
}

/// `pages` through an `N`-lane kernel, `N` at a time; batches too small for it one at a time.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn in_batches<const N: usize>(
    pages: &[&[u8; PAGE]],
    kernel: impl Fn([&[u8; PAGE]; N]) -> [[u8; 48]; N],
) -> Vec<[u8; 48]> {
    let mut out = Vec::with_capacity(pages.len());
    for batch in pages.chunks(N) {
        match lanes::<N>(batch) {
            Some(lanes) => out.extend(kernel(lanes).iter().take(batch.len())),
            None => out.extend(batch.iter().map(|p| one(p))),
        }
    }
    out
}

fn one(page: &[u8; PAGE]) -> [u8; 48] {
    super::sha384(&page[..])
}

/// A batch of [`MIN_LANES_USED`] to `N` pages as `N` lanes, the last page repeated into the
/// lanes left over (their digests are dropped); `None` for smaller batches.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn lanes<'p, const N: usize>(batch: &[&'p [u8; PAGE]]) -> Option<[&'p [u8; PAGE]; N]> {
    let last = *batch.last()?;
    (batch.len() >= MIN_LANES_USED && batch.len() <= N)
        .then(|| std::array::from_fn(|i| batch.get(i).copied().unwrap_or(last)))
}

/// The big-endian word at byte `offset` of each page, one per lane.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn lane_words<const N: usize>(pages: [&[u8; PAGE]; N], offset: usize) -> [u64; N] {
    pages.map(|p| {
        let mut b = [0u8; 8];
        if let Some(src) = p.get(offset..offset + 8) {
            b.copy_from_slice(src);
        }
        u64::from_be_bytes(b)
    })
}

/// Each lane's digest from the final state, lane by lane: the first six words, big-endian.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn lane_digests<const N: usize>(state: [[u64; N]; 8]) -> [[u8; 48]; N] {
    std::array::from_fn(|lane| {
        let mut digest = [0u8; 48];
        for (dst, word) in digest.chunks_exact_mut(8).zip(&state) {
            if let Some(w) = word.get(lane) {
                dst.copy_from_slice(&w.to_be_bytes());
            }
        }
        digest
    })
}

/// FIPS 180-4 §5.3.4: SHA-384's initial hash value.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const IV: [u64; 8] = [
    0xcbbb_9d5d_c105_9ed8,
    0x629a_292a_367c_d507,
    0x9159_015a_3070_dd17,
    0x152f_ecd8_f70e_5939,
    0x6733_2667_ffc0_0b31,
    0x8eb4_4a87_6858_1511,
    0xdb0c_2e0d_64f9_8fa7,
    0x47b5_481d_befa_4fa4,
];

/// FIPS 180-4 §4.2.3: the SHA-384/512 round constants.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const K: [u64; 80] = [
    0x428a2f98d728ae22,
    0x7137449123ef65cd,
    0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc,
    0x3956c25bf348b538,
    0x59f111f1b605d019,
    0x923f82a4af194f9b,
    0xab1c5ed5da6d8118,
    0xd807aa98a3030242,
    0x12835b0145706fbe,
    0x243185be4ee4b28c,
    0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f,
    0x80deb1fe3b1696b1,
    0x9bdc06a725c71235,
    0xc19bf174cf692694,
    0xe49b69c19ef14ad2,
    0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5,
    0x240ca1cc77ac9c65,
    0x2de92c6f592b0275,
    0x4a7484aa6ea6e483,
    0x5cb0a9dcbd41fbd4,
    0x76f988da831153b5,
    0x983e5152ee66dfab,
    0xa831c66d2db43210,
    0xb00327c898fb213f,
    0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2,
    0xd5a79147930aa725,
    0x06ca6351e003826f,
    0x142929670a0e6e70,
    0x27b70a8546d22ffc,
    0x2e1b21385c26c926,
    0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df,
    0x650a73548baf63de,
    0x766a0abb3c77b2a8,
    0x81c2c92e47edaee6,
    0x92722c851482353b,
    0xa2bfe8a14cf10364,
    0xa81a664bbc423001,
    0xc24b8b70d0f89791,
    0xc76c51a30654be30,
    0xd192e819d6ef5218,
    0xd69906245565a910,
    0xf40e35855771202a,
    0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8,
    0x1e376c085141ab53,
    0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63,
    0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc,
    0x78a5636f43172f60,
    0x84c87814a1f0ab72,
    0x8cc702081a6439ec,
    0x90befffa23631e28,
    0xa4506cebde82bde9,
    0xbef9a3f7b2c67915,
    0xc67178f2e372532b,
    0xca273eceea26619c,
    0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e,
    0xf57d4f7fee6ed178,
    0x06f067aa72176fba,
    0x0a637dc5a2c898a6,
    0x113f9804bef90dae,
    0x1b710b35131c471b,
    0x28db77f523047d84,
    0x32caab7b40c72493,
    0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6,
    0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec,
    0x6c44198c4a475817,
];

/// The padding block of a 4096-byte message: 0x80, zeros, the length in bits (big-endian).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PAD_WORDS: [u64; 16] = {
    let mut w = [0u64; 16];
    w[0] = 0x80 << 56;
    w[15] = (PAGE as u64) * 8;
    w
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of pseudo-random bytes (xorshift), different for each seed.
    fn page(seed: u64) -> Box<[u8; PAGE]> {
        let mut p = Box::new([0u8; PAGE]);
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for b in p.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        p
    }

    /// Random pages, then the all-zero and all-0xff pages (the padding's edge cases).
    fn test_pages(n: u64) -> Vec<Box<[u8; PAGE]>> {
        let mut v: Vec<_> = (0..n).map(page).collect();
        v.push(Box::new([0u8; PAGE]));
        v.push(Box::new([0xffu8; PAGE]));
        v
    }

    fn refs(owned: &[Box<[u8; PAGE]>]) -> Vec<&[u8; PAGE]> {
        owned.iter().map(|p| &**p).collect()
    }

    /// Each lane of a kernel against `sha2`, over batches of `N` that mix random and special
    /// pages, each page in a different lane from one batch to the next.
    fn check_kernel<const N: usize>(kernel: impl Fn([&[u8; PAGE]; N]) -> [[u8; 48]; N]) {
        let owned = test_pages(3 * N as u64);
        let all = refs(&owned);
        for shift in 0..all.len() {
            let batch: [&[u8; PAGE]; N] = std::array::from_fn(|i| all[(shift + i) % all.len()]);
            for (lane, (digest, p)) in kernel(batch).iter().zip(batch).enumerate() {
                assert_eq!(digest, &one(p), "lane {lane}, batch from page {shift}");
            }
        }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn avx2_each_lane_equals_sha2() {
        check_kernel::<4>(avx2::four_pages);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_each_lane_equals_sha2() {
        let Some(simd) = avx512::detect() else {
            eprintln!("this CPU has no AVX-512: the eight-lane kernel is not exercised here");
            assert_ne!(kernel(), "avx512x8");
            return;
        };
        assert_eq!(kernel(), "avx512x8");
        check_kernel::<8>(|batch| avx512::eight_pages(simd, batch));
    }

    #[test]
    fn any_number_of_pages_equals_sha2() {
        // Every batch shape: none, one and two (one at a time), partial batches with repeated
        // lanes, full batches, and several batches with a remainder.
        let owned = test_pages(25);
        let all = refs(&owned);
        for n in 0..=all.len() {
            let got = pages(&all[..n]);
            let want: Vec<[u8; 48]> = all[..n].iter().map(|p| one(p)).collect();
            assert_eq!(got, want, "{n} pages through {}", kernel());
        }
    }
}
