//! The native CPU engine: our own llama-family forward pass on quantized weights, with batched
//! decoding across sequences. candle still reads the files; the arithmetic here is ours.

pub mod quant;
pub mod transformer;

use std::io::Cursor;
use std::sync::OnceLock;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Device;

use crate::error::InferenceError;
use quant::Format;
use transformer::{Config, RawTensor, RopeStyle, TensorSource};

/// Tensors of a GGUF held in memory.
pub struct GgufSource<'a> {
    content: &'a gguf_file::Content,
    reader: Cursor<&'a [u8]>,
}

impl std::fmt::Debug for GgufSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GgufSource")
    }
}

impl<'a> GgufSource<'a> {
    /// Over the parsed header and the file's bytes.
    pub fn new(content: &'a gguf_file::Content, bytes: &'a [u8]) -> Self {
        Self {
            content,
            reader: Cursor::new(bytes),
        }
    }
}

impl TensorSource for GgufSource<'_> {
    fn tensor(&mut self, name: &str) -> Result<Option<RawTensor>, InferenceError> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu)?;
        let shape = q.shape().dims().to_vec();
        let format = match q.dtype() {
            GgmlDType::Q4_0 => Some(Format::Q4_0),
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q8_0 => Some(Format::Q8_0),
            _ => None,
        };
        Ok(Some(match format {
            Some(format) if shape.len() == 2 => RawTensor::Ggml {
                format,
                shape,
                bytes: q.data()?.into_owned(),
            },
            _ => RawTensor::F32 {
                shape,
                data: q
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
            },
        }))
    }
}

/// The model shape from GGUF metadata (`llama` and `qwen2`).
pub fn gguf_config(ct: &gguf_file::Content, arch: &str) -> Result<Config, InferenceError> {
    let md = &ct.metadata;
    let get_u = |key: &str| -> Option<usize> {
        md.get(&format!("{arch}.{key}"))
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_u64().ok().map(|x| x as u32))
            })
            .map(|v| v as usize)
    };
    let get_f = |key: &str| -> Option<f32> {
        md.get(&format!("{arch}.{key}"))
            .and_then(|v| v.to_f32().ok())
    };
    let need = |key: &str| {
        get_u(key)
            .ok_or_else(|| InferenceError::BadModel(format!("GGUF metadata {arch}.{key} missing")))
    };
    let n_embd = need("embedding_length")?;
    let n_head = need("attention.head_count")?;
    let head_dim = get_u("attention.key_length").unwrap_or(n_embd / n_head.max(1));
    let vocab = match get_u("vocab_size") {
        Some(v) => v,
        None => ct
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first().copied())
            .ok_or_else(|| InferenceError::BadModel("token_embd.weight missing".into()))?,
    };
    let (rope_style, default_eps) = match arch {
        "qwen2" => (RopeStyle::Halves, 1e-6),
        _ => (RopeStyle::Interleaved, 1e-5),
    };
    Ok(Config {
        n_layer: need("block_count")?,
        n_embd,
        n_head,
        n_head_kv: get_u("attention.head_count_kv").unwrap_or(n_head),
        head_dim,
        n_ff: need("feed_forward_length")?,
        vocab,
        eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(default_eps),
        rope_base: get_f("rope.freq_base").unwrap_or(10_000.0),
        n_rot: get_u("rope.dimension_count").unwrap_or(head_dim),
        rope_style,
        context_length: get_u("context_length").unwrap_or(2048),
    })
}

/// The engine's compute threads: `RAYON_NUM_THREADS` (set by `--threads`) or one per core.
///
/// A forward pass runs entirely on this pool ([`run`]), so each parallel matrix product is split
/// among threads that are already awake, instead of waking a pool and parking the caller for
/// every one of the hundred-odd products of a decode step.
pub fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("chrysalis-compute-{i}"))
            .build()
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(target: "chrysalis::model", error = %e, "no compute pool; using rayon's global pool");
                None
            }
        }
    })
    .as_ref()
}

/// Run `f` on the compute pool.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}
