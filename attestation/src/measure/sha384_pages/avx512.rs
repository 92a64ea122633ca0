//! Eight lanes: AVX-512F, one page per 64-bit lane of a 512-bit register, with the native
//! 64-bit rotate (`vprorq`) and three-input logic (`vpternlogq`: the three-way XORs, Ch and Maj
//! are one instruction each). The workspace builds for x86-64-v3, so AVX-512 is detected at run
//! time; `pulp` does the detection and holds the only `unsafe` (entering code compiled with the
//! AVX-512 target features, and the intrinsics), behind its `V4` token: a value of that type
//! exists only on a CPU that has the features.

use core::arch::x86_64::__m512i;
use pulp::x86::V4;

use super::{lane_digests, lane_words, IV, K, PAD_WORDS, PAGE};

/// The AVX-512 token when this CPU has AVX-512 (F, BW, CD, DQ, VL); `pulp` caches the answer.
pub(super) fn detect() -> Option<V4> {
    V4::try_new()
}

#[inline(always)]
fn splat(simd: V4, x: u64) -> __m512i {
    simd.avx512f._mm512_set1_epi64(x as i64)
}

#[inline(always)]
fn add(simd: V4, a: __m512i, b: __m512i) -> __m512i {
    simd.avx512f._mm512_add_epi64(a, b)
}

/// `a ^ b ^ c` in one instruction (truth table 0x96).
#[inline(always)]
fn xor3(simd: V4, a: __m512i, b: __m512i, c: __m512i) -> __m512i {
    simd.avx512f._mm512_ternarylogic_epi64::<0x96>(a, b, c)
}

/// Rotate each lane right by `N` bits.
#[inline(always)]
fn rotr<const N: i32>(simd: V4, x: __m512i) -> __m512i {
    simd.avx512f._mm512_ror_epi64::<N>(x)
}

/// Σ: the XOR of three rotations of each lane (right by `A`, `B` and `C` bits).
#[inline(always)]
fn big_sigma<const A: i32, const B: i32, const C: i32>(simd: V4, x: __m512i) -> __m512i {
    xor3(
        simd,
        rotr::<A>(simd, x),
        rotr::<B>(simd, x),
        rotr::<C>(simd, x),
    )
}

/// One compression of eight blocks, lane `i` of `block` holding block `i`'s message words.
// The schedule indexes `w: [_; 80]` at t−16..t for t in 16..80: always in bounds, and written
// as FIPS 180-4 writes it.
#[allow(clippy::indexing_slicing)]
#[inline(always)]
fn compress(simd: V4, state: &mut [__m512i; 8], block: [__m512i; 16]) {
    let mut w = [splat(simd, 0); 80];
    w[..16].copy_from_slice(&block);
    for t in 16..80 {
        let (x, y) = (w[t - 15], w[t - 2]);
        let shr7 = simd.avx512f._mm512_srli_epi64::<7>(x);
        let s0 = xor3(simd, rotr::<1>(simd, x), rotr::<8>(simd, x), shr7);
        let shr6 = simd.avx512f._mm512_srli_epi64::<6>(y);
        let s1 = xor3(simd, rotr::<19>(simd, y), rotr::<61>(simd, y), shr6);
        w[t] = add(simd, add(simd, w[t - 16], s0), add(simd, w[t - 7], s1));
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (wt, kt) in w.iter().zip(K) {
        let big_s1 = big_sigma::<14, 18, 41>(simd, e);
        // Ch(e, f, g) = e ? f : g (truth table 0xca).
        let ch = simd.avx512f._mm512_ternarylogic_epi64::<0xca>(e, f, g);
        let t1 = add(
            simd,
            add(simd, h, big_s1),
            add(simd, ch, add(simd, *wt, splat(simd, kt))),
        );
        let big_s0 = big_sigma::<28, 34, 39>(simd, a);
        // Maj(a, b, c): the majority of the three bits (truth table 0xe8).
        let maj = simd.avx512f._mm512_ternarylogic_epi64::<0xe8>(a, b, c);
        let t2 = add(simd, big_s0, maj);
        h = g;
        g = f;
        f = e;
        e = add(simd, d, t1);
        d = c;
        c = b;
        b = a;
        a = add(simd, t1, t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = add(simd, *s, v);
    }
}

pub(super) fn eight_pages(simd: V4, pages: [&[u8; PAGE]; 8]) -> [[u8; 48]; 8] {
    simd.vectorize(
        #[inline(always)]
        || {
            let mut state = IV.map(|x| splat(simd, x));
            for block in 0..PAGE / 128 {
                let w: [__m512i; 16] = std::array::from_fn(
                    #[inline(always)]
                    |i| pulp::cast(lane_words(pages, block * 128 + i * 8)),
                );
                compress(simd, &mut state, w);
            }
            compress(simd, &mut state, PAD_WORDS.map(|x| splat(simd, x)));
            lane_digests(state.map(pulp::cast::<__m512i, [u64; 8]>))
        },
    )
}
