//! Four lanes: AVX2, one page per 64-bit lane of a 256-bit register. AVX2 has no 64-bit
//! rotate, so each rotation is two shifts and an OR (the rotation by 8 is one byte shuffle).

use safe_arch::{
    add_i64_m256i, bitand_m256i, bitandnot_m256i, bitor_m256i, bitxor_m256i, m256i,
    set_splat_i64_m256i, shl_imm_u64_m256i, shr_imm_u64_m256i, shuffle_av_i8z_half_m256i,
};

use super::{lane_digests, lane_words, IV, K, PAD_WORDS, PAGE};

fn splat(x: u64) -> m256i {
    set_splat_i64_m256i(x as i64)
}

/// Rotate each lane right by `N` bits (`M` = 64 − `N`).
fn rotr<const N: i32, const M: i32>(x: m256i) -> m256i {
    bitor_m256i(shr_imm_u64_m256i::<N>(x), shl_imm_u64_m256i::<M>(x))
}

/// Rotate each lane right by 8 bits: a byte shuffle, one instruction.
fn rotr8(x: m256i) -> m256i {
    let by_byte = m256i::from([
        1i8, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15, 8, //
        1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15, 8,
    ]);
    shuffle_av_i8z_half_m256i(x, by_byte)
}

fn xor3(a: m256i, b: m256i, c: m256i) -> m256i {
    bitxor_m256i(bitxor_m256i(a, b), c)
}

fn add(a: m256i, b: m256i) -> m256i {
    add_i64_m256i(a, b)
}

/// One compression of four blocks, lane `i` of `block` holding block `i`'s message words.
// The schedule indexes `w: [_; 80]` at t−16..t for t in 16..80: always in bounds, and
// written as FIPS 180-4 writes it.
#[allow(clippy::indexing_slicing)]
fn compress(state: &mut [m256i; 8], block: [m256i; 16]) {
    let mut w = [splat(0); 80];
    w[..16].copy_from_slice(&block);
    for t in 16..80 {
        let s0 = xor3(
            rotr::<1, 63>(w[t - 15]),
            rotr8(w[t - 15]),
            shr_imm_u64_m256i::<7>(w[t - 15]),
        );
        let s1 = xor3(
            rotr::<19, 45>(w[t - 2]),
            rotr::<61, 3>(w[t - 2]),
            shr_imm_u64_m256i::<6>(w[t - 2]),
        );
        w[t] = add(add(w[t - 16], s0), add(w[t - 7], s1));
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    // Maj(a, b, c) = b ^ ((a ^ b) & (b ^ c)), and this round's b ^ c is the last round's a ^ b.
    let mut b_xor_c = bitxor_m256i(b, c);
    for (wt, kt) in w.iter().zip(K) {
        let big_s1 = xor3(rotr::<14, 50>(e), rotr::<18, 46>(e), rotr::<41, 23>(e));
        let ch = bitxor_m256i(bitand_m256i(e, f), bitandnot_m256i(e, g));
        let t1 = add(add(h, big_s1), add(ch, add(*wt, splat(kt))));
        let big_s0 = xor3(rotr::<28, 36>(a), rotr::<34, 30>(a), rotr::<39, 25>(a));
        let a_xor_b = bitxor_m256i(a, b);
        let maj = bitxor_m256i(b, bitand_m256i(a_xor_b, b_xor_c));
        b_xor_c = a_xor_b;
        let t2 = add(big_s0, maj);
        h = g;
        g = f;
        f = e;
        e = add(d, t1);
        d = c;
        c = b;
        b = a;
        a = add(t1, t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = add(*s, v);
    }
}

pub(super) fn four_pages(pages: [&[u8; PAGE]; 4]) -> [[u8; 48]; 4] {
    let mut state = IV.map(splat);
    for block in 0..PAGE / 128 {
        let w: [m256i; 16] = std::array::from_fn(|i| {
            lane_words(pages, block * 128 + i * 8)
                .map(|x| x as i64)
                .into()
        });
        compress(&mut state, w);
    }
    compress(&mut state, PAD_WORDS.map(splat));
    lane_digests(state.map(|s| <[i64; 4]>::from(s).map(|x| x as u64)))
}
