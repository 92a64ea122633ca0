//! Quantized weights and the CPU kernels of the native engine.
//!
//! Weights keep the GGML block formats the file holds where we have a kernel for them (Q4_0,
//! Q4_1, Q8_0: 32 weights per block, f16 scales, byte layout as in ggml), so the arithmetic is the
//! file's own; anything else is requantized to Q8_0 at load. Activations are quantized per row to
//! [`BlockQ8`] (ggml's Q8_1: an i8 block, its scale, and the scaled sum that Q4_0 and Q4_1 need
//! for their offsets), and each output is a sum of integer block dot products.
//!
//! The x86-64 build (x86-64-v3: AVX2, FMA, F16C) uses AVX2 through `safe_arch`, which wraps the
//! intrinsics in safe functions, so this crate stays free of `unsafe`; other targets use the
//! scalar code, which is also the reference the SIMD code is tested against.

use half::f16;
use rayon::prelude::*;

use crate::error::InferenceError;

/// Weights per block, in every format here.
pub const QK: usize = 32;

/// GGML Q4_0: `w = d * (q - 8)`, 4-bit `q`; byte `j` holds weight `j` (low nibble) and `j + 16`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Packed nibbles.
    pub qs: [u8; 16],
}

/// GGML Q4_1: `w = d * q + m`, 4-bit `q`, nibbles packed as in Q4_0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Packed nibbles.
    pub qs: [u8; 16],
}

/// GGML Q8_0: `w = d * q`, 8-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; 32],
}

/// A quantized block of activations: `x ≈ d * q`, and `s = d * Σq`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BlockQ8 {
    /// Scale.
    pub d: f32,
    /// Scale times the sum of the quants.
    pub s: f32,
    /// Quants.
    pub qs: [i8; 32],
}

/// A GGML weight block: how it is laid out in a file and what it stands for.
trait Block: Sized {
    /// Bytes in a file.
    const BYTES: usize;
    /// From its bytes (exactly [`Self::BYTES`]).
    fn parse(b: &[u8]) -> Self;
    /// The 32 weights.
    fn dequantize(&self, out: &mut [f32]);
}

/// Weight `j` and `j + 16` from byte `j`'s low and high nibble, each mapped by `f`.
fn unpack_nibbles(qs: &[u8; 16], out: &mut [f32], f: impl Fn(u8) -> f32) {
    let (lo, hi) = out.split_at_mut(16.min(out.len()));
    for ((q, l), h) in qs.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
        *l = f(q & 0x0F);
        *h = f(q >> 4);
    }
}

impl Block for BlockQ4_0 {
    const BYTES: usize = 18;
    fn parse(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            qs: array(b.get(2..).unwrap_or_default()),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        unpack_nibbles(&self.qs, out, |q| d * (f32::from(q) - 8.0));
    }
}

impl Block for BlockQ4_1 {
    const BYTES: usize = 20;
    fn parse(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qs: array(b.get(4..).unwrap_or_default()),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        unpack_nibbles(&self.qs, out, |q| d * f32::from(q) + m);
    }
}

impl Block for BlockQ8_0 {
    const BYTES: usize = 34;
    fn parse(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            qs: array::<32>(b.get(2..).unwrap_or_default()).map(|b| b as i8),
        }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (v, &q) in out.iter_mut().zip(&self.qs) {
            *v = d * f32::from(q);
        }
    }
}

fn parse_blocks<B: Block>(bytes: &[u8]) -> Vec<B> {
    bytes.chunks_exact(B::BYTES).map(B::parse).collect()
}

fn dequantize_blocks<B: Block>(blocks: &[B], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        b.dequantize(o);
    }
}

/// The blocks of a weight matrix, row after row.
#[derive(Debug, Clone, PartialEq)]
pub enum QData {
    /// Q4_0 blocks.
    Q4_0(Vec<BlockQ4_0>),
    /// Q4_1 blocks.
    Q4_1(Vec<BlockQ4_1>),
    /// Q8_0 blocks.
    Q8_0(Vec<BlockQ8_0>),
}

/// A quantized matrix of `rows` outputs by `cols` inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct QMatrix {
    /// Output dimension.
    pub rows: usize,
    /// Input dimension (a multiple of [`QK`]).
    pub cols: usize,
    /// Blocks.
    pub data: QData,
}

fn bad(msg: String) -> InferenceError {
    InferenceError::BadModel(msg)
}

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([
        b.get(i).copied().unwrap_or(0),
        b.get(i + 1).copied().unwrap_or(0),
    ])
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    a
}

/// The ggml name of a block format we keep as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Q4_0, 18 bytes per block.
    Q4_0,
    /// Q4_1, 20 bytes per block.
    Q4_1,
    /// Q8_0, 34 bytes per block.
    Q8_0,
}

impl Format {
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => BlockQ4_0::BYTES,
            Self::Q4_1 => BlockQ4_1::BYTES,
            Self::Q8_0 => BlockQ8_0::BYTES,
        }
    }
}

impl QMatrix {
    /// Read ggml block bytes (row-major, `rows * cols / 32` blocks).
    pub fn from_ggml(
        format: Format,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, InferenceError> {
        if !cols.is_multiple_of(QK) {
            return Err(bad(format!(
                "a quantized matrix needs a width that is a multiple of {QK}, not {cols}"
            )));
        }
        let blocks = rows * cols / QK;
        let want = blocks * format.block_bytes();
        if bytes.len() != want {
            return Err(bad(format!(
                "{format:?} matrix {rows}x{cols}: {} bytes, expected {want}",
                bytes.len()
            )));
        }
        let data = match format {
            Format::Q4_0 => QData::Q4_0(parse_blocks(bytes)),
            Format::Q4_1 => QData::Q4_1(parse_blocks(bytes)),
            Format::Q8_0 => QData::Q8_0(parse_blocks(bytes)),
        };
        Ok(Self { rows, cols, data })
    }

    /// Quantize f32 weights (row-major) to Q8_0, as ggml does.
    pub fn quantize_q8_0(rows: usize, cols: usize, w: &[f32]) -> Result<Self, InferenceError> {
        if !cols.is_multiple_of(QK) || w.len() != rows * cols {
            return Err(bad(format!(
                "cannot quantize {} values as a {rows}x{cols} matrix with blocks of {QK}",
                w.len()
            )));
        }
        let blocks = w
            .chunks_exact(QK)
            .map(|x| {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut qs = [0i8; 32];
                for (q, v) in qs.iter_mut().zip(x) {
                    *q = (v * id).round() as i8;
                }
                BlockQ8_0 {
                    d: f16::from_f32(d),
                    qs,
                }
            })
            .collect();
        Ok(Self {
            rows,
            cols,
            data: QData::Q8_0(blocks),
        })
    }

    /// Which format the blocks are in.
    pub fn format(&self) -> Format {
        match self.data {
            QData::Q4_0(_) => Format::Q4_0,
            QData::Q4_1(_) => Format::Q4_1,
            QData::Q8_0(_) => Format::Q8_0,
        }
    }

    /// Bytes the blocks take.
    pub fn bytes(&self) -> usize {
        self.rows * self.cols / QK * self.format().block_bytes()
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), InferenceError> {
        let bpr = self.cols / QK;
        let range = r * bpr..(r + 1) * bpr;
        let missing = || InferenceError::BadRequest(format!("row {r} outside the matrix"));
        match &self.data {
            QData::Q4_0(b) => dequantize_blocks(b.get(range).ok_or_else(missing)?, out),
            QData::Q4_1(b) => dequantize_blocks(b.get(range).ok_or_else(missing)?, out),
            QData::Q8_0(b) => dequantize_blocks(b.get(range).ok_or_else(missing)?, out),
        }
        Ok(())
    }

    /// The whole matrix as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>, InferenceError> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_f32(r, o)?;
        }
        Ok(out)
    }

    /// Stack matrices of the same width into one (outputs of the first, then the next...), so
    /// that one pass over the activations computes them all. Mixed formats become Q8_0.
    pub fn stack(parts: Vec<QMatrix>) -> Result<Self, InferenceError> {
        let cols = parts.first().map(|p| p.cols).unwrap_or(0);
        if parts.iter().any(|p| p.cols != cols) {
            return Err(bad("stacked matrices differ in width".into()));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let format = parts.first().map(QMatrix::format);
        if parts.iter().all(|p| Some(p.format()) == format) {
            let mut it = parts.into_iter();
            let Some(first) = it.next() else {
                return Err(bad("nothing to stack".into()));
            };
            let mut data = first.data;
            for p in it {
                match (&mut data, p.data) {
                    (QData::Q4_0(a), QData::Q4_0(b)) => a.extend(b),
                    (QData::Q4_1(a), QData::Q4_1(b)) => a.extend(b),
                    (QData::Q8_0(a), QData::Q8_0(b)) => a.extend(b),
                    _ => return Err(InferenceError::Internal("stack: formats differ".into())),
                }
            }
            return Ok(Self { rows, cols, data });
        }
        let mut all = Vec::with_capacity(rows * cols);
        for p in &parts {
            all.extend(p.to_f32()?);
        }
        Self::quantize_q8_0(rows, cols, &all)
    }
}

/// Quantize activation rows (`x.len()` a multiple of `cols`, `cols` of [`QK`]) to Q8 blocks,
/// with ggml's x86 arithmetic: `q = round_half_even(x * 127 / amax)`, scale and sum kept at f16
/// precision as its Q8_1 blocks store them.
pub fn quantize_rows(x: &[f32], out: &mut Vec<BlockQ8>) {
    out.clear();
    out.extend(x.chunks_exact(QK).map(|v| {
        let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (q, x) in qs.iter_mut().zip(v) {
            *q = (x * id).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        BlockQ8 {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            qs,
        }
    }));
}

/// Scalar dot products: the reference for the SIMD ones, and the code other targets run.
pub mod scalar {
    use super::{BlockQ4_0, BlockQ4_1, BlockQ8, BlockQ8_0};

    fn nibble_dot(qs: &[u8; 16], a: &[i8; 32]) -> i32 {
        let mut s = 0i32;
        for (j, &q) in qs.iter().enumerate() {
            let lo = a.get(j).copied().unwrap_or(0);
            let hi = a.get(j + 16).copied().unwrap_or(0);
            s += i32::from(q & 0x0F) * i32::from(lo) + i32::from(q >> 4) * i32::from(hi);
        }
        s
    }

    /// Q4_0 weights · Q8 activations.
    pub fn dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let d = w.d.to_f32();
                d * a.d * nibble_dot(&w.qs, &a.qs) as f32 - 8.0 * d * a.s
            })
            .sum()
    }

    /// Q4_1 weights · Q8 activations.
    pub fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| w.d.to_f32() * a.d * nibble_dot(&w.qs, &a.qs) as f32 + w.m.to_f32() * a.s)
            .sum()
    }

    /// Q4_0 weights · four activation rows.
    pub fn dot4_q4_0(w: &[BlockQ4_0], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        a.map(|a| dot_q4_0(w, a))
    }

    /// Q4_1 weights · four activation rows.
    pub fn dot4_q4_1(w: &[BlockQ4_1], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        a.map(|a| dot_q4_1(w, a))
    }

    /// Q8_0 weights · four activation rows.
    pub fn dot4_q8_0(w: &[BlockQ8_0], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        a.map(|a| dot_q8_0(w, a))
    }

    /// Q8_0 weights · Q8 activations.
    pub fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let s: i32 =
                    w.qs.iter()
                        .zip(&a.qs)
                        .map(|(&x, &y)| i32::from(x) * i32::from(y))
                        .sum();
                w.d.to_f32() * a.d * s as f32
            })
            .sum()
    }
}

/// AVX2 dot products (the x86-64-v3 build).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
pub mod avx2 {
    use safe_arch::{
        abs_i8_m256i, add_m128, add_m256, bitand_m256i, cast_to_m128_from_m256,
        convert_to_m256_from_i32_m256i, extract_m128_from_m256, fused_mul_add_m256,
        load_unaligned_m128i, load_unaligned_m256i, m256, m256i, mul_i16_horizontal_add_m256i,
        mul_u8i8_add_horizontal_saturating_m256i, set_m128i_m256i, set_splat_i16_m256i,
        set_splat_i8_m256i, set_splat_m256, shr_imm_u16_m128i, sign_apply_i8_m256i, zeroed_m256,
    };

    use super::{BlockQ4_0, BlockQ4_1, BlockQ8, BlockQ8_0};

    /// The 32 nibbles of a block as bytes 0..=15, in weight order.
    #[inline(always)]
    fn nibbles(qs: &[u8; 16]) -> m256i {
        let x = load_unaligned_m128i(qs);
        let both = set_m128i_m256i(shr_imm_u16_m128i::<4>(x), x);
        bitand_m256i(both, set_splat_i8_m256i(0x0F))
    }

    /// Eight i32 sums of u8 × i8 products, as f32.
    #[inline(always)]
    fn dot_u8_i8(u: m256i, s: m256i) -> m256 {
        let p16 = mul_u8i8_add_horizontal_saturating_m256i(u, s);
        convert_to_m256_from_i32_m256i(mul_i16_horizontal_add_m256i(p16, set_splat_i16_m256i(1)))
    }

    #[inline(always)]
    fn hsum(v: m256) -> f32 {
        let s = add_m128(cast_to_m128_from_m256(v), extract_m128_from_m256::<1>(v));
        s.to_array().iter().sum()
    }

    /// One weight row against one activation row (the decode hot path): the operations of
    /// [`tile`] in the same order, written over the pairs of both slices at once.
    #[inline(always)]
    fn single<B, W: Copy>(
        w: &[B],
        a: &[BlockQ8],
        prep: impl Fn(&B) -> (W, f32, f32),
        mul: impl Fn(W, m256i) -> m256,
    ) -> f32 {
        let (mut acc0, mut acc1) = (zeroed_m256(), zeroed_m256());
        let mut off = 0f32;
        let (wp, ap) = (w.chunks_exact(2), a.chunks_exact(2));
        let (wr, ar) = (wp.remainder(), ap.remainder());
        for (w, a) in wp.zip(ap) {
            if let ([w0, w1], [x0, x1]) = (w, a) {
                let ((l0, d0, m0), (l1, d1, m1)) = (prep(w0), prep(w1));
                acc0 = fused_mul_add_m256(
                    set_splat_m256(d0 * x0.d),
                    mul(l0, load_unaligned_m256i(&x0.qs)),
                    acc0,
                );
                acc1 = fused_mul_add_m256(
                    set_splat_m256(d1 * x1.d),
                    mul(l1, load_unaligned_m256i(&x1.qs)),
                    acc1,
                );
                off += m0 * x0.s + m1 * x1.s;
            }
        }
        for (w, x) in wr.iter().zip(ar) {
            let (l, d, m) = prep(w);
            acc0 = fused_mul_add_m256(
                set_splat_m256(d * x.d),
                mul(l, load_unaligned_m256i(&x.qs)),
                acc0,
            );
            off += m * x.s;
        }
        hsum(add_m256(acc0, acc1)) + off
    }

    /// Q4_0 weights · Q8 activations.
    #[inline(always)]
    pub fn dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8]) -> f32 {
        single(w, a, prep_q4_0, dot_u8_i8)
    }

    /// Q4_1 weights · Q8 activations.
    #[inline(always)]
    pub fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8]) -> f32 {
        single(w, a, prep_q4_1, dot_u8_i8)
    }

    /// Q8_0 weights · Q8 activations.
    #[inline(always)]
    pub fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8]) -> f32 {
        single(w, a, prep_q8_0, mul_q8_0)
    }

    /// `N` activation rows against one weight row. Each weight block is loaded and unpacked once
    /// for all `N` (`prep` gives its lanes, scale and offset coefficient; `mul` the lane products
    /// with an activation block). Two accumulators per row (even and odd blocks) keep consecutive
    /// blocks from waiting on each other. Every row is summed in the same order whatever `N`, so
    /// a sequence's results do not depend on what it is batched with.
    #[inline(always)]
    fn tile<const N: usize, B, W: Copy>(
        w: &[B],
        a: [&[BlockQ8]; N],
        prep: impl Fn(&B) -> (W, f32, f32),
        mul: impl Fn(W, m256i) -> m256,
    ) -> [f32; N] {
        let mut acc0 = [zeroed_m256(); N];
        let mut acc1 = [zeroed_m256(); N];
        let mut off = [0f32; N];
        let (pairs, rest) = w.as_chunks::<2>();
        let mut acts = a.map(|x| x.as_chunks::<2>().0.iter());
        for [w0, w1] in pairs {
            let ((l0, d0, m0), (l1, d1, m1)) = (prep(w0), prep(w1));
            for (((acc0, acc1), off), act) in acc0
                .iter_mut()
                .zip(acc1.iter_mut())
                .zip(off.iter_mut())
                .zip(acts.iter_mut())
            {
                let Some([x0, x1]) = act.next() else { continue };
                *acc0 = fused_mul_add_m256(
                    set_splat_m256(d0 * x0.d),
                    mul(l0, load_unaligned_m256i(&x0.qs)),
                    *acc0,
                );
                *acc1 = fused_mul_add_m256(
                    set_splat_m256(d1 * x1.d),
                    mul(l1, load_unaligned_m256i(&x1.qs)),
                    *acc1,
                );
                *off += m0 * x0.s + m1 * x1.s;
            }
        }
        if let [wl] = rest {
            let last = w.len() - 1;
            let (l, d, m) = prep(wl);
            for ((acc0, off), a) in acc0.iter_mut().zip(off.iter_mut()).zip(a) {
                let Some(x) = a.get(last) else { continue };
                *acc0 = fused_mul_add_m256(
                    set_splat_m256(d * x.d),
                    mul(l, load_unaligned_m256i(&x.qs)),
                    *acc0,
                );
                *off += m * x.s;
            }
        }
        let mut out = [0f32; N];
        for (((o, a0), a1), off) in out.iter_mut().zip(acc0).zip(acc1).zip(off) {
            *o = hsum(add_m256(a0, a1)) + off;
        }
        out
    }

    #[inline(always)]
    fn prep_q4_0(b: &BlockQ4_0) -> (m256i, f32, f32) {
        let d = b.d.to_f32();
        (nibbles(&b.qs), d, -8.0 * d)
    }

    #[inline(always)]
    fn prep_q4_1(b: &BlockQ4_1) -> (m256i, f32, f32) {
        (nibbles(&b.qs), b.d.to_f32(), b.m.to_f32())
    }

    /// Q8_0 weights are signed: maddubs needs the magnitudes, with the signs moved onto the
    /// activations.
    #[inline(always)]
    fn prep_q8_0(b: &BlockQ8_0) -> ((m256i, m256i), f32, f32) {
        let x = load_unaligned_m256i(&b.qs);
        ((abs_i8_m256i(x), x), b.d.to_f32(), 0.0)
    }

    #[inline(always)]
    fn mul_q8_0((ax, x): (m256i, m256i), y: m256i) -> m256 {
        dot_u8_i8(ax, sign_apply_i8_m256i(y, x))
    }

    /// Q4_0 weights · four activation rows.
    #[inline(always)]
    pub fn dot4_q4_0(w: &[BlockQ4_0], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        tile(w, a, prep_q4_0, dot_u8_i8)
    }

    /// Q4_1 weights · four activation rows.
    #[inline(always)]
    pub fn dot4_q4_1(w: &[BlockQ4_1], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        tile(w, a, prep_q4_1, dot_u8_i8)
    }

    /// Q8_0 weights · four activation rows.
    #[inline(always)]
    pub fn dot4_q8_0(w: &[BlockQ8_0], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        tile(w, a, prep_q8_0, mul_q8_0)
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use avx2 as kernels;
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
use scalar as kernels;

/// The name of the dot-product kernels this build uses.
pub const KERNELS: &str = if cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)) {
    "avx2"
} else {
    "scalar"
};

/// How far ahead of the row being computed its successors' weights are requested.
const PREFETCH_ROWS_AHEAD: usize = 2;

fn prefetch_blocks<T>(blocks: Option<&[T]>) {
    #[cfg(target_arch = "x86_64")]
    {
        let per_line = (64 / std::mem::size_of::<T>().max(1)).max(1);
        for b in blocks.unwrap_or_default().iter().step_by(per_line) {
            safe_arch::prefetch_t0(b);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = blocks;
}

/// One task's share of a product: weight rows from `r0`, each against every activation row
/// (`out` holds, per weight row, one value per activation row).
#[inline(always)]
fn rows<B>(
    blocks: &[B],
    bpr: usize,
    r0: usize,
    out: &mut [f32],
    xq: &[BlockQ8],
    dot1: impl Fn(&[B], &[BlockQ8]) -> f32,
    dot4: impl Fn(&[B], [&[BlockQ8]; 4]) -> [f32; 4],
) {
    let batch = xq.len() / bpr.max(1);
    let act = |b: usize| xq.get(b * bpr..(b + 1) * bpr).unwrap_or_default();
    for (i, outs) in out.chunks_exact_mut(batch.max(1)).enumerate() {
        let r = r0 + i;
        // The weights come from far caches or memory: ask for a later row now.
        let ahead = (r + PREFETCH_ROWS_AHEAD) * bpr;
        prefetch_blocks(blocks.get(ahead..ahead + bpr));
        let row = blocks.get(r * bpr..(r + 1) * bpr).unwrap_or_default();
        if let [o] = outs {
            *o = dot1(row, xq);
            continue;
        }
        // Four activation rows at a time share each weight block's load and unpacking.
        let mut quads = outs.chunks_exact_mut(4);
        for (q, o4) in (&mut quads).enumerate() {
            o4.copy_from_slice(&dot4(
                row,
                [act(4 * q), act(4 * q + 1), act(4 * q + 2), act(4 * q + 3)],
            ));
        }
        let done = batch / 4 * 4;
        for (j, o) in quads.into_remainder().iter_mut().enumerate() {
            *o = dot1(row, act(done + j));
        }
    }
}

/// Rows of the weight matrix per parallel task: enough work to amortise the hand-off.
const MIN_ROWS_PER_TASK: usize = 16;

/// `out[b * rows + r] = Σ_c W[r][c] · x[b][c]` for the `batch` activation rows in `xq`
/// (each `cols / 32` blocks), in parallel over the rows of `W` on the current rayon pool.
pub fn matmul(
    w: &QMatrix,
    xq: &[BlockQ8],
    batch: usize,
    out: &mut Vec<f32>,
) -> Result<(), InferenceError> {
    let bpr = w.cols / QK;
    if xq.len() != batch * bpr {
        return Err(InferenceError::Internal(format!(
            "matmul: {} activation blocks for a batch of {batch} rows of {bpr}",
            xq.len()
        )));
    }
    out.clear();
    out.resize(batch * w.rows, 0.0);
    let threads = rayon::current_num_threads().max(1);
    let per_task = (w.rows / (threads * 4)).max(MIN_ROWS_PER_TASK);
    // Each task writes its rows for every batch row into a slice of `t` (row-major by weight
    // row), so tasks never share output; the transpose afterwards is cheap next to the dots.
    let mut t = if batch == 1 {
        std::mem::take(out)
    } else {
        vec![0f32; batch * w.rows]
    };
    t.par_chunks_mut(per_task * batch)
        .enumerate()
        .for_each(|(task, chunk)| {
            let r0 = task * per_task;
            // One activation row (every decode step of a single stream): its own loop. Going
            // through `rows` here measured about 10 % slower decoding (BENCHMARKS.md method).
            if batch == 1 {
                for (i, o) in chunk.iter_mut().enumerate() {
                    let r = r0 + i;
                    let wr = r * bpr..(r + 1) * bpr;
                    let ahead =
                        (r + PREFETCH_ROWS_AHEAD) * bpr..(r + PREFETCH_ROWS_AHEAD + 1) * bpr;
                    *o = match &w.data {
                        QData::Q4_0(b) => {
                            prefetch_blocks(b.get(ahead));
                            kernels::dot_q4_0(b.get(wr).unwrap_or_default(), xq)
                        }
                        QData::Q4_1(b) => {
                            prefetch_blocks(b.get(ahead));
                            kernels::dot_q4_1(b.get(wr).unwrap_or_default(), xq)
                        }
                        QData::Q8_0(b) => {
                            prefetch_blocks(b.get(ahead));
                            kernels::dot_q8_0(b.get(wr).unwrap_or_default(), xq)
                        }
                    };
                }
                return;
            }
            match &w.data {
                QData::Q4_0(b) => {
                    rows(b, bpr, r0, chunk, xq, kernels::dot_q4_0, kernels::dot4_q4_0)
                }
                QData::Q4_1(b) => {
                    rows(b, bpr, r0, chunk, xq, kernels::dot_q4_1, kernels::dot4_q4_1)
                }
                QData::Q8_0(b) => {
                    rows(b, bpr, r0, chunk, xq, kernels::dot_q8_0, kernels::dot4_q8_0)
                }
            }
        });
    if batch == 1 {
        *out = t;
    } else {
        for (r, vals) in t.chunks_exact(batch).enumerate() {
            for (b, v) in vals.iter().enumerate() {
                if let Some(o) = out.get_mut(b * w.rows + r) {
                    *o = *v;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (xorshift), so the tests need no RNG crate.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    fn q4_bytes(rows: usize, cols: usize, with_min: bool, seed: u64) -> Vec<u8> {
        let v = values(rows * cols / QK * 20, seed);
        let mut out = Vec::new();
        for blk in v.chunks_exact(20).take(rows * cols / QK) {
            out.extend(f16::from_f32(blk[0].abs() * 0.1 + 0.01).to_le_bytes());
            if with_min {
                out.extend(f16::from_f32(blk[1] * 0.5).to_le_bytes());
            }
            out.extend(blk[4..20].iter().map(|x| (x.to_bits() >> 7) as u8));
        }
        out
    }

    fn reference(w: &QMatrix, x: &[f32]) -> Vec<f32> {
        let wf = w.to_f32().expect("dequantize");
        let batch = x.len() / w.cols;
        let mut out = vec![0f32; batch * w.rows];
        for b in 0..batch {
            for r in 0..w.rows {
                out[b * w.rows + r] = (0..w.cols)
                    .map(|c| wf[r * w.cols + c] * x[b * w.cols + c])
                    .sum();
            }
        }
        out
    }

    fn matrices(rows: usize, cols: usize) -> Vec<QMatrix> {
        vec![
            QMatrix::from_ggml(Format::Q4_0, rows, cols, &q4_bytes(rows, cols, false, 3))
                .expect("q4_0"),
            QMatrix::from_ggml(Format::Q4_1, rows, cols, &q4_bytes(rows, cols, true, 5))
                .expect("q4_1"),
            QMatrix::quantize_q8_0(rows, cols, &values(rows * cols, 7)).expect("q8_0"),
        ]
    }

    #[test]
    fn simd_kernels_equal_scalar_ones() {
        let (rows, cols) = (8, 256);
        let mut xq = Vec::new();
        quantize_rows(&values(cols, 11), &mut xq);
        for w in matrices(rows, cols) {
            for r in 0..rows {
                let wr = r * cols / QK..(r + 1) * cols / QK;
                let (simd, scalar) = match &w.data {
                    QData::Q4_0(b) => (
                        kernels::dot_q4_0(&b[wr.clone()], &xq),
                        scalar::dot_q4_0(&b[wr], &xq),
                    ),
                    QData::Q4_1(b) => (
                        kernels::dot_q4_1(&b[wr.clone()], &xq),
                        scalar::dot_q4_1(&b[wr], &xq),
                    ),
                    QData::Q8_0(b) => (
                        kernels::dot_q8_0(&b[wr.clone()], &xq),
                        scalar::dot_q8_0(&b[wr], &xq),
                    ),
                };
                let tol = 1e-4 * scalar.abs().max(1.0);
                assert!(
                    (simd - scalar).abs() <= tol,
                    "{:?} row {r}: {simd} vs {scalar}",
                    w.format()
                );
            }
        }
    }

    /// A row's result must not depend on its batch: the four-row kernels give exactly, bit for
    /// bit, what the one-row kernels give (here with an odd number of blocks, for the tail).
    #[test]
    fn four_row_kernels_equal_one_row_kernels_exactly() {
        let (rows, cols) = (3, 7 * QK);
        let acts: Vec<Vec<BlockQ8>> = (0..4)
            .map(|i| {
                let mut q = Vec::new();
                quantize_rows(&values(cols, 100 + i), &mut q);
                q
            })
            .collect();
        let a = [&acts[0][..], &acts[1][..], &acts[2][..], &acts[3][..]];
        for w in matrices(rows, cols) {
            for r in 0..rows {
                let wr = r * cols / QK..(r + 1) * cols / QK;
                let (four, one) = match &w.data {
                    QData::Q4_0(b) => (
                        kernels::dot4_q4_0(&b[wr.clone()], a),
                        a.map(|a| kernels::dot_q4_0(&b[wr.clone()], a)),
                    ),
                    QData::Q4_1(b) => (
                        kernels::dot4_q4_1(&b[wr.clone()], a),
                        a.map(|a| kernels::dot_q4_1(&b[wr.clone()], a)),
                    ),
                    QData::Q8_0(b) => (
                        kernels::dot4_q8_0(&b[wr.clone()], a),
                        a.map(|a| kernels::dot_q8_0(&b[wr.clone()], a)),
                    ),
                };
                assert_eq!(
                    four.map(f32::to_bits),
                    one.map(f32::to_bits),
                    "{:?} row {r}",
                    w.format()
                );
            }
        }
    }

    #[test]
    fn matmul_matches_dequantized_f32_for_batches() {
        let (rows, cols) = (70, 128);
        // 1: the single-row kernels; 5: a tile of four rows and one more.
        for batch in [1, 3, 5] {
            let x = values(batch * cols, 13);
            let mut xq = Vec::new();
            quantize_rows(&x, &mut xq);
            for w in matrices(rows, cols) {
                let mut got = Vec::new();
                matmul(&w, &xq, batch, &mut got).expect("matmul");
                let want = reference(&w, &x);
                assert_eq!(got.len(), want.len());
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    // Only the activations' 8-bit rounding separates the two.
                    assert!(
                        (g - e).abs() <= 0.02 * scale,
                        "{:?} batch {batch} output {i}: {g} vs {e}",
                        w.format()
                    );
                }
            }
        }
    }

    #[test]
    fn q8_0_quantization_round_trips_closely_and_zero_blocks_stay_zero() {
        let mut v = values(64, 17);
        v[32..].iter_mut().for_each(|x| *x = 0.0);
        let m = QMatrix::quantize_q8_0(1, 64, &v).expect("q8_0");
        let back = m.to_f32().expect("f32");
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= 1.0 / 127.0, "{a} vs {b}");
        }
        assert!(back[32..].iter().all(|x| *x == 0.0));
    }

    #[test]
    fn stacking_keeps_rows_in_order_and_mixed_formats_become_q8_0() {
        let [a, b, c]: [QMatrix; 3] = matrices(4, 64).try_into().expect("three");
        let s = QMatrix::stack(vec![b.clone(), b.clone()]).expect("stack");
        assert_eq!((s.rows, s.format()), (8, Format::Q4_1));
        assert_eq!(
            s.to_f32().expect("f32")[..4 * 64],
            b.to_f32().expect("f32")[..]
        );
        let mixed = QMatrix::stack(vec![a.clone(), c.clone()]).expect("mixed");
        assert_eq!((mixed.rows, mixed.format()), (8, Format::Q8_0));
        let want = [a.to_f32().expect("a"), c.to_f32().expect("c")].concat();
        for (x, y) in mixed.to_f32().expect("f32").iter().zip(&want) {
            assert!((x - y).abs() <= 0.01, "{x} vs {y}");
        }
        assert!(QMatrix::stack(vec![
            a,
            QMatrix::quantize_q8_0(1, 32, &[0.0; 32]).expect("q")
        ])
        .is_err());
    }

    #[test]
    fn malformed_weights_are_errors() {
        assert!(QMatrix::from_ggml(Format::Q4_1, 2, 32, &[0u8; 39]).is_err());
        assert!(QMatrix::from_ggml(Format::Q8_0, 1, 33, &[0u8; 34]).is_err());
        assert!(QMatrix::quantize_q8_0(2, 32, &[0.0; 63]).is_err());
        let m = QMatrix::quantize_q8_0(1, 32, &[0.5; 32]).expect("q");
        assert!(m.row_f32(1, &mut [0.0; 32]).is_err());
        let mut out = Vec::new();
        assert!(matmul(&m, &[], 1, &mut out).is_err());
    }
}
