//! The llama-family transformer (llama, qwen2) on the CPU, decoding many sequences in one pass.
//!
//! A forward pass takes any number of sequences, each with its own KV cache, position and
//! tokens (a prompt chunk or the last sampled token): their rows go through every matrix
//! together, so the weights are read once per step for the whole batch, and only attention is
//! per sequence. Matrices that read the same input are stacked (Q, K and V; gate and up), so a
//! layer is four parallel matrix products. Logits are computed only for the rows that need them.

use rayon::prelude::*;

use super::quant::{matmul, quantize_rows, BlockQ8, Format, QMatrix, QK};
use crate::error::InferenceError;

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF llama weights (the converter permutes Q and K for it).
    Interleaved,
    /// Halves `(i, i + n/2)`: qwen2, and llama weights as Hugging Face stores them.
    Halves,
}

/// The shape and constants of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Feed-forward size.
    pub n_ff: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Rotary base frequency.
    pub rope_base: f32,
    /// Dimensions of each head that are rotated.
    pub n_rot: usize,
    /// Rotary pairing.
    pub rope_style: RopeStyle,
    /// Positions a sequence may use.
    pub context_length: usize,
}

impl Config {
    fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Check the shape is one this code can run.
    pub fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: String| Err(InferenceError::BadModel(m));
        if self.n_layer == 0 || self.n_embd == 0 || self.n_head == 0 || self.n_head_kv == 0 {
            return bad(format!("model shape {self:?} has an empty dimension"));
        }
        // Far above any published model, and low enough that no size computed from them
        // overflows or asks for absurd memory before a tensor is even read.
        for (what, n, max) in [
            ("layer count", self.n_layer, 1 << 10),
            ("hidden size", self.n_embd, 1 << 18),
            ("head count", self.n_head, 1 << 12),
            ("head size", self.head_dim, 1 << 12),
            ("feed-forward size", self.n_ff, 1 << 20),
            ("vocabulary", self.vocab, 1 << 22),
            ("context length", self.context_length, 1 << 21),
        ] {
            if n > max {
                return bad(format!("{what} {n} is out of range (at most {max})"));
            }
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "{} query heads do not divide into {} key/value heads",
                self.n_head, self.n_head_kv
            ));
        }
        if self.n_rot > self.head_dim || !self.n_rot.is_multiple_of(2) {
            return bad(format!(
                "rotary dimensions {} for heads of {}",
                self.n_rot, self.head_dim
            ));
        }
        for (what, n) in [
            ("hidden size", self.n_embd),
            ("attention size", self.q_dim()),
            ("feed-forward size", self.n_ff),
        ] {
            if !n.is_multiple_of(QK) {
                return bad(format!("{what} {n} is not a multiple of {QK}"));
            }
        }
        Ok(())
    }
}

/// A tensor as a source hands it over: ggml blocks we keep, or f32 values.
#[derive(Debug)]
pub enum RawTensor {
    /// Blocks in a format with a kernel here; `shape` is (rows, cols).
    Ggml {
        /// Block format.
        format: Format,
        /// Dimensions, outermost first.
        shape: Vec<usize>,
        /// Block bytes.
        bytes: Vec<u8>,
    },
    /// A matrix already in the engine's form (a source that converts as it reads).
    Matrix(QMatrix),
    /// Values; `shape` outermost first.
    F32 {
        /// Dimensions, outermost first.
        shape: Vec<usize>,
        /// Values, row-major.
        data: Vec<f32>,
    },
}

/// Where weights come from, by their GGUF names (`blk.N.attn_q.weight`, `token_embd.weight`).
pub trait TensorSource {
    /// The tensor, or `None` when the model has no tensor of that name.
    fn tensor(&mut self, name: &str) -> Result<Option<RawTensor>, InferenceError>;
}

fn required(src: &mut dyn TensorSource, name: &str) -> Result<RawTensor, InferenceError> {
    src.tensor(name)?
        .ok_or_else(|| InferenceError::BadModel(format!("tensor {name} missing")))
}

fn matrix(t: RawTensor, name: &str, rows: usize, cols: usize) -> Result<QMatrix, InferenceError> {
    let shape_ok = |shape: &[usize]| shape == [rows, cols];
    match t {
        RawTensor::Ggml {
            format,
            shape,
            bytes,
        } if shape_ok(&shape) => QMatrix::from_ggml(format, rows, cols, &bytes),
        RawTensor::F32 { shape, data } if shape_ok(&shape) => {
            QMatrix::quantize_q8_0(rows, cols, &data)
        }
        RawTensor::Matrix(m) if m.rows == rows && m.cols == cols => Ok(m),
        RawTensor::Matrix(m) => Err(InferenceError::BadModel(format!(
            "{name}: shape [{}, {}], expected [{rows}, {cols}]",
            m.rows, m.cols
        ))),
        RawTensor::Ggml { shape, .. } | RawTensor::F32 { shape, .. } => {
            Err(InferenceError::BadModel(format!(
                "{name}: shape {shape:?}, expected [{rows}, {cols}]"
            )))
        }
    }
}

fn vector(t: RawTensor, name: &str, n: usize) -> Result<Vec<f32>, InferenceError> {
    let (shape, data) = match t {
        RawTensor::F32 { shape, data } => (shape, data),
        RawTensor::Matrix(m) => (vec![m.rows, m.cols], m.to_f32()?),
        RawTensor::Ggml {
            format,
            shape,
            bytes,
        } => {
            let m = QMatrix::from_ggml(format, 1, n, &bytes)?;
            (shape, m.to_f32()?)
        }
    };
    if shape.iter().product::<usize>() != n || data.len() != n {
        return Err(InferenceError::BadModel(format!(
            "{name}: shape {shape:?}, expected [{n}]"
        )));
    }
    Ok(data)
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked.
    qkv: QMatrix,
    qkv_bias: Option<Vec<f32>>,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked.
    gate_up: QMatrix,
    down: QMatrix,
}

/// Weights of a loaded model, shared by every sequence.
#[derive(Debug)]
pub struct Transformer {
    /// Shape and constants.
    pub config: Config,
    embd: QMatrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None`: tied to the embeddings.
    output: Option<QMatrix>,
    /// Inverse frequency of each rotated pair.
    inv_freq: Vec<f32>,
}

/// The keys and values a sequence has seen, per layer (f32, as the reference outputs were made:
/// llama.cpp with an f32 cache).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pos: usize,
}

impl KvCache {
    /// Positions filled.
    pub fn position(&self) -> usize {
        self.pos
    }
}

/// One sequence's part of a batch.
#[derive(Debug)]
pub struct BatchItem<'a> {
    /// Its cache.
    pub cache: &'a mut KvCache,
    /// Tokens to feed, at the cache's next positions.
    pub tokens: &'a [u32],
    /// Whether the logits after the last token are wanted.
    pub logits: bool,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let ss: f64 = xr.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
        let scale = (1.0 / (ss / xr.len() as f64 + f64::from(eps)).sqrt()) as f32;
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// A dot product written with eight independent sums, which the compiler turns into SIMD.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for ((s, p), q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Transformer {
    /// Build from a tensor source. `output.weight` may be absent (tied embeddings); Q/K/V biases
    /// are used when present (qwen2).
    pub fn load(config: Config, src: &mut dyn TensorSource) -> Result<Self, InferenceError> {
        config.validate()?;
        let c = &config;
        let embd = matrix(
            required(src, "token_embd.weight")?,
            "token_embd.weight",
            c.vocab,
            c.n_embd,
        )?;
        let output = match src.tensor("output.weight")? {
            Some(t) => Some(matrix(t, "output.weight", c.vocab, c.n_embd)?),
            None => None,
        };
        let norm = vector(
            required(src, "output_norm.weight")?,
            "output_norm.weight",
            c.n_embd,
        )?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let name = |s: &str| format!("blk.{i}.{s}");
            let mut get_m =
                |s: &str, rows: usize, cols: usize| -> Result<QMatrix, InferenceError> {
                    matrix(required(src, &name(s))?, &name(s), rows, cols)
                };
            let q = get_m("attn_q.weight", c.q_dim(), c.n_embd)?;
            let k = get_m("attn_k.weight", c.kv_dim(), c.n_embd)?;
            let v = get_m("attn_v.weight", c.kv_dim(), c.n_embd)?;
            let wo = get_m("attn_output.weight", c.n_embd, c.q_dim())?;
            let gate = get_m("ffn_gate.weight", c.n_ff, c.n_embd)?;
            let up = get_m("ffn_up.weight", c.n_ff, c.n_embd)?;
            let down = get_m("ffn_down.weight", c.n_embd, c.n_ff)?;
            let mut bias = Vec::new();
            for (s, n) in [
                ("attn_q.bias", c.q_dim()),
                ("attn_k.bias", c.kv_dim()),
                ("attn_v.bias", c.kv_dim()),
            ] {
                match src.tensor(&name(s))? {
                    Some(t) => bias.push(Some(vector(t, &name(s), n)?)),
                    None => bias.push(None),
                }
            }
            let qkv_bias = if bias.iter().all(Option::is_none) {
                None
            } else {
                let dims = [c.q_dim(), c.kv_dim(), c.kv_dim()];
                Some(
                    bias.into_iter()
                        .zip(dims)
                        .flat_map(|(b, n)| b.unwrap_or_else(|| vec![0.0; n]))
                        .collect(),
                )
            };
            layers.push(Layer {
                attn_norm: vector(
                    required(src, &name("attn_norm.weight"))?,
                    &name("attn_norm.weight"),
                    c.n_embd,
                )?,
                qkv: QMatrix::stack(vec![q, k, v])?,
                qkv_bias,
                wo,
                ffn_norm: vector(
                    required(src, &name("ffn_norm.weight"))?,
                    &name("ffn_norm.weight"),
                    c.n_embd,
                )?,
                gate_up: QMatrix::stack(vec![gate, up])?,
                down,
            });
        }
        let mut inv_freq: Vec<f32> = (0..c.n_rot / 2)
            .map(|i| c.rope_base.powf(-2.0 * i as f32 / c.n_rot as f32))
            .collect();
        // Llama 3.x frequency factors, when the file carries them.
        if let Some(t) = src.tensor("rope_freqs.weight")? {
            let f = vector(t, "rope_freqs.weight", inv_freq.len())?;
            for (x, d) in inv_freq.iter_mut().zip(f) {
                *x /= d;
            }
        }
        Ok(Self {
            config,
            embd,
            layers,
            norm,
            output,
            inv_freq,
        })
    }

    /// Bytes the weight matrices take.
    pub fn weight_bytes(&self) -> usize {
        self.embd.bytes()
            + self.output.as_ref().map_or(0, QMatrix::bytes)
            + self
                .layers
                .iter()
                .map(|l| l.qkv.bytes() + l.wo.bytes() + l.gate_up.bytes() + l.down.bytes())
                .sum::<usize>()
    }

    /// The formats the matrices are held in (for logs).
    pub fn formats(&self) -> Vec<Format> {
        let mut f: Vec<Format> = std::iter::once(self.embd.format())
            .chain(self.layers.iter().flat_map(|l| {
                [
                    l.qkv.format(),
                    l.wo.format(),
                    l.gate_up.format(),
                    l.down.format(),
                ]
            }))
            .collect();
        f.sort_by_key(|x| *x as u8);
        f.dedup();
        f
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.config.n_layer],
            v: vec![Vec::new(); self.config.n_layer],
            pos: 0,
        }
    }

    fn rope(&self, x: &mut [f32], pos: usize) {
        let hd = self.config.head_dim;
        let half = self.config.n_rot / 2;
        for head in x.chunks_exact_mut(hd) {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let (sin, cos) = (pos as f32 * f).sin_cos();
                let (a, b) = match self.config.rope_style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (Some(&x0), Some(&x1)) = (head.get(a), head.get(b)) else {
                    continue;
                };
                if let Some(v) = head.get_mut(a) {
                    *v = x0 * cos - x1 * sin;
                }
                if let Some(v) = head.get_mut(b) {
                    *v = x0 * sin + x1 * cos;
                }
            }
        }
    }

    /// Whether `tokens` can be fed to a sequence with this cache: not empty, inside the
    /// vocabulary and the context. [`Self::forward`] checks every item so before it changes any.
    pub fn check(&self, cache: &KvCache, tokens: &[u32]) -> Result<(), InferenceError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(InferenceError::BadRequest("empty input".into()));
        }
        if cache.pos + tokens.len() > c.context_length {
            return Err(InferenceError::BadRequest(format!(
                "{} positions exceed the context of {}",
                cache.pos + tokens.len(),
                c.context_length
            )));
        }
        if cache.k.len() != c.n_layer {
            return Err(InferenceError::Internal("a cache of another model".into()));
        }
        if let Some(t) = tokens.iter().find(|t| **t as usize >= c.vocab) {
            return Err(InferenceError::BadRequest(format!(
                "token id {t} outside the vocabulary of {}",
                c.vocab
            )));
        }
        Ok(())
    }

    /// Run a batch. Returns, per item, the logits after its last token when it asked for them.
    pub fn forward(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, InferenceError> {
        let c = &self.config;
        let (d, qd, kvd, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim);
        // Row r belongs to item `owner[r]` at position `pos[r]`.
        let mut owner = Vec::new();
        let mut pos = Vec::new();
        for (i, it) in items.iter().enumerate() {
            self.check(it.cache, it.tokens)?;
            for j in 0..it.tokens.len() {
                owner.push(i);
                pos.push(it.cache.pos + j);
            }
        }
        let rows = owner.len();
        let mut x = vec![0f32; rows * d];
        for (xr, tok) in x
            .chunks_exact_mut(d)
            .zip(items.iter().flat_map(|it| it.tokens.iter()))
        {
            self.embd.row_f32(*tok as usize, xr)?;
        }

        let mut h = vec![0f32; rows * d];
        let mut hq: Vec<BlockQ8> = Vec::new();
        let mut qkv = Vec::new();
        let mut proj = Vec::new();
        let mut att = vec![0f32; rows * qd];
        let mut ff = vec![0f32; rows * c.n_ff];
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.eps, &mut h);
            quantize_rows(&h, &mut hq);
            matmul(&layer.qkv, &hq, rows, &mut qkv)?;
            let width = qd + 2 * kvd;
            for (r, row) in qkv.chunks_exact_mut(width).enumerate() {
                if let Some(b) = &layer.qkv_bias {
                    for (v, b) in row.iter_mut().zip(b) {
                        *v += b;
                    }
                }
                let p = pos.get(r).copied().unwrap_or(0);
                let (q, kv) = row.split_at_mut(qd);
                self.rope(q, p);
                self.rope(kv.get_mut(..kvd).unwrap_or_default(), p);
            }
            // Append this step's keys and values, then attend.
            let mut r = 0;
            for it in items.iter_mut() {
                for _ in 0..it.tokens.len() {
                    let row = qkv.get(r * width..(r + 1) * width).unwrap_or_default();
                    if let (Some(k), Some(v)) = (it.cache.k.get_mut(li), it.cache.v.get_mut(li)) {
                        k.extend_from_slice(row.get(qd..qd + kvd).unwrap_or_default());
                        v.extend_from_slice(row.get(qd + kvd..).unwrap_or_default());
                    }
                    r += 1;
                }
            }
            let caches: Vec<(&[f32], &[f32])> = items
                .iter()
                .map(|it| {
                    (
                        it.cache.k.get(li).map(Vec::as_slice).unwrap_or_default(),
                        it.cache.v.get(li).map(Vec::as_slice).unwrap_or_default(),
                    )
                })
                .collect();
            let qkv_ref = &qkv;
            let (owner, pos) = (&owner, &pos);
            // One task per (row, head); a task attends over that row's sequence up to its position.
            let min_len = if rows == 1 { c.n_head } else { 1 };
            att.par_chunks_mut(hd)
                .with_min_len(min_len)
                .enumerate()
                .for_each(|(idx, out)| {
                    let (r, head) = (idx / c.n_head, idx % c.n_head);
                    let kvh = head / group;
                    let (Some(&it), Some(&p)) = (owner.get(r), pos.get(r)) else {
                        return;
                    };
                    let Some(&(kc, vc)) = caches.get(it) else {
                        return;
                    };
                    let q = qkv_ref
                        .get(r * width + head * hd..r * width + (head + 1) * hd)
                        .unwrap_or_default();
                    let n = p + 1;
                    let mut scores: Vec<f32> = (0..n)
                        .map(|t| {
                            let k = kc.get(t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd);
                            dot(q, k.unwrap_or_default()) * scale
                        })
                        .collect();
                    let max = scores.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v));
                    let mut sum = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    out.iter_mut().for_each(|o| *o = 0.0);
                    for (t, s) in scores.iter().enumerate() {
                        let w = s / sum;
                        let v = vc
                            .get(t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd)
                            .unwrap_or_default();
                        for (o, v) in out.iter_mut().zip(v) {
                            *o += w * v;
                        }
                    }
                });
            quantize_rows(&att, &mut hq);
            matmul(&layer.wo, &hq, rows, &mut proj)?;
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }

            rms_norm(&x, &layer.ffn_norm, c.eps, &mut h);
            quantize_rows(&h, &mut hq);
            matmul(&layer.gate_up, &hq, rows, &mut proj)?;
            for (f, gu) in ff
                .chunks_exact_mut(c.n_ff)
                .zip(proj.chunks_exact(2 * c.n_ff))
            {
                let (g, u) = gu.split_at(c.n_ff);
                for ((o, g), u) in f.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            }
            quantize_rows(&ff, &mut hq);
            matmul(&layer.down, &hq, rows, &mut proj)?;
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
        }
        for it in items.iter_mut() {
            it.cache.pos += it.tokens.len();
        }

        // Logits for the last row of each item that wants them.
        let mut last_rows = Vec::new();
        let mut r = 0;
        for it in items.iter() {
            r += it.tokens.len();
            if it.logits {
                last_rows.push(r - 1);
            }
        }
        let mut results: Vec<Option<Vec<f32>>> = vec![None; items.len()];
        if last_rows.is_empty() {
            return Ok(results);
        }
        let sel: Vec<f32> = last_rows
            .iter()
            .flat_map(|r| {
                x.get(r * d..(r + 1) * d)
                    .unwrap_or_default()
                    .iter()
                    .copied()
            })
            .collect();
        let mut normed = vec![0f32; sel.len()];
        rms_norm(&sel, &self.norm, c.eps, &mut normed);
        quantize_rows(&normed, &mut hq);
        let mut logits = Vec::new();
        matmul(
            self.output.as_ref().unwrap_or(&self.embd),
            &hq,
            last_rows.len(),
            &mut logits,
        )?;
        let mut chunks = logits.chunks_exact(c.vocab);
        for (slot, it) in results.iter_mut().zip(items.iter()) {
            if it.logits {
                *slot = chunks.next().map(<[f32]>::to_vec);
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A tiny random model, to test batching against one-at-a-time decoding.
    struct Random(HashMap<String, RawTensor>);

    impl TensorSource for Random {
        fn tensor(&mut self, name: &str) -> Result<Option<RawTensor>, InferenceError> {
            Ok(self.0.remove(name))
        }
    }

    fn config() -> Config {
        Config {
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 16,
            n_ff: 96,
            vocab: 50,
            eps: 1e-5,
            rope_base: 10000.0,
            n_rot: 16,
            rope_style: RopeStyle::Interleaved,
            context_length: 64,
        }
    }

    fn random_model(c: &Config) -> Transformer {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32 * scale
                })
                .collect()
        };
        let mut t = HashMap::new();
        let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let data = next(n, scale).into_iter().map(|v| v + offset).collect();
            t.insert(name, RawTensor::F32 { shape, data });
        };
        put(
            "token_embd.weight".into(),
            vec![c.vocab, c.n_embd],
            2.0,
            0.0,
        );
        put("output_norm.weight".into(), vec![c.n_embd], 0.2, 1.0);
        for i in 0..c.n_layer {
            put(
                format!("blk.{i}.attn_q.weight"),
                vec![c.q_dim(), c.n_embd],
                0.5,
                0.0,
            );
            put(
                format!("blk.{i}.attn_k.weight"),
                vec![c.kv_dim(), c.n_embd],
                0.5,
                0.0,
            );
            put(
                format!("blk.{i}.attn_v.weight"),
                vec![c.kv_dim(), c.n_embd],
                0.5,
                0.0,
            );
            put(format!("blk.{i}.attn_q.bias"), vec![c.q_dim()], 0.1, 0.0);
            put(
                format!("blk.{i}.attn_output.weight"),
                vec![c.n_embd, c.q_dim()],
                0.5,
                0.0,
            );
            put(
                format!("blk.{i}.ffn_gate.weight"),
                vec![c.n_ff, c.n_embd],
                0.5,
                0.0,
            );
            put(
                format!("blk.{i}.ffn_up.weight"),
                vec![c.n_ff, c.n_embd],
                0.5,
                0.0,
            );
            put(
                format!("blk.{i}.ffn_down.weight"),
                vec![c.n_embd, c.n_ff],
                0.5,
                0.0,
            );
            put(
                format!("blk.{i}.attn_norm.weight"),
                vec![c.n_embd],
                0.2,
                1.0,
            );
            put(format!("blk.{i}.ffn_norm.weight"), vec![c.n_embd], 0.2, 1.0);
        }
        Transformer::load(c.clone(), &mut Random(t)).expect("load")
    }

    fn argmax(v: &[f32]) -> usize {
        v.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
            )
            .0
    }

    #[test]
    fn batched_prefill_and_decode_equal_one_sequence_at_a_time() {
        let c = config();
        let m = random_model(&c);
        let prompts: [&[u32]; 3] = [&[1, 7, 9, 3], &[4], &[12, 30, 2, 2, 8, 41]];
        // Alone: prefill token by token, then greedy decode.
        let alone: Vec<(Vec<f32>, Vec<u32>)> = prompts
            .iter()
            .map(|p| {
                let mut cache = m.new_cache();
                let mut logits = Vec::new();
                for t in p.iter() {
                    logits = m
                        .forward(&mut [BatchItem {
                            cache: &mut cache,
                            tokens: &[*t],
                            logits: true,
                        }])
                        .expect("forward")[0]
                        .clone()
                        .expect("logits");
                }
                let first = logits.clone();
                let mut out = Vec::new();
                for _ in 0..5 {
                    let next = argmax(&logits) as u32;
                    out.push(next);
                    logits = m
                        .forward(&mut [BatchItem {
                            cache: &mut cache,
                            tokens: &[next],
                            logits: true,
                        }])
                        .expect("forward")[0]
                        .clone()
                        .expect("logits");
                }
                (first, out)
            })
            .collect();
        // Together: all prompts in one batch (whole prompts), then batched decode steps.
        let mut caches: Vec<KvCache> = prompts.iter().map(|_| m.new_cache()).collect();
        let mut items: Vec<BatchItem> = caches
            .iter_mut()
            .zip(prompts)
            .map(|(cache, p)| BatchItem {
                cache,
                tokens: p,
                logits: true,
            })
            .collect();
        let firsts = m.forward(&mut items).expect("batched prefill");
        let mut outs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let mut logits: Vec<Vec<f32>> = firsts.into_iter().map(|l| l.expect("logits")).collect();
        for (i, (first, _)) in alone.iter().enumerate() {
            let cos = dot(first, &logits[i])
                / (dot(first, first).sqrt() * dot(&logits[i], &logits[i]).sqrt());
            assert!(cos > 0.9999, "prefill logits of sequence {i}: cosine {cos}");
        }
        for _ in 0..5 {
            let next: Vec<[u32; 1]> = logits.iter().map(|l| [argmax(l) as u32]).collect();
            for (o, n) in outs.iter_mut().zip(&next) {
                o.push(n[0]);
            }
            let mut items: Vec<BatchItem> = caches
                .iter_mut()
                .zip(&next)
                .map(|(cache, t)| BatchItem {
                    cache,
                    tokens: t,
                    logits: true,
                })
                .collect();
            logits = m
                .forward(&mut items)
                .expect("step")
                .into_iter()
                .map(|l| l.expect("logits"))
                .collect();
        }
        for (i, (_, want)) in alone.iter().enumerate() {
            assert_eq!(&outs[i], want, "sequence {i}");
        }
        assert!(caches
            .iter()
            .zip(prompts)
            .all(|(c, p)| c.position() == p.len() + 5));
    }

    #[test]
    fn logits_only_where_asked_and_limits_enforced() {
        let c = config();
        let m = random_model(&c);
        let (mut a, mut b) = (m.new_cache(), m.new_cache());
        let out = m
            .forward(&mut [
                BatchItem {
                    cache: &mut a,
                    tokens: &[1, 2],
                    logits: false,
                },
                BatchItem {
                    cache: &mut b,
                    tokens: &[3],
                    logits: true,
                },
            ])
            .expect("forward");
        assert!(out[0].is_none());
        assert_eq!(out[1].as_ref().map(Vec::len), Some(c.vocab));
        let too_long = vec![1u32; c.context_length];
        assert!(m
            .forward(&mut [BatchItem {
                cache: &mut a,
                tokens: &too_long,
                logits: true
            }])
            .is_err());
        assert!(m
            .forward(&mut [BatchItem {
                cache: &mut a,
                tokens: &[50],
                logits: true
            }])
            .is_err());
        assert!(m
            .forward(&mut [BatchItem {
                cache: &mut a,
                tokens: &[],
                logits: true
            }])
            .is_err());
        // A failed call leaves the cache where it was.
        assert_eq!(a.position(), 2);
    }

    #[test]
    fn rope_styles_rotate_the_pairs_they_name() {
        let mut c = config();
        let m = random_model(&c);
        let mut x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let orig = x.clone();
        m.rope(&mut x, 0);
        assert_eq!(x, orig, "position 0 is the identity");
        m.rope(&mut x, 3);
        // Interleaved: pair (0, 1) rotated by 3 radians (frequency 1 for the first pair).
        let (s, co) = 3f32.sin_cos();
        assert!(
            (x[0] - (0.0 * co - 1.0 * s)).abs() < 1e-5
                && (x[1] - (0.0 * s + 1.0 * co)).abs() < 1e-5
        );
        c.rope_style = RopeStyle::Halves;
        let m = random_model(&c);
        let mut y = orig.clone();
        m.rope(&mut y, 3);
        assert!(
            (y[0] - (0.0 * co - 8.0 * s)).abs() < 1e-4
                && (y[8] - (0.0 * s + 8.0 * co)).abs() < 1e-4
        );
        // Norms are preserved.
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&y) - n(&orig)).abs() / n(&orig) < 1e-5);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut c = config();
        c.n_head_kv = 3;
        assert!(c.validate().is_err());
        let mut c = config();
        c.n_embd = 60;
        assert!(c.validate().is_err());
        let c = config();
        let mut t = HashMap::new();
        t.insert(
            "token_embd.weight".to_string(),
            RawTensor::F32 {
                shape: vec![c.vocab, 32],
                data: vec![0.0; c.vocab * 32],
            },
        );
        assert!(Transformer::load(c, &mut Random(t)).is_err());
    }
}
