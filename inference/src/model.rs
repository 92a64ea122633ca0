//! Loading a model: the files are read once into memory (so what is hashed is what is run, even
//! when the disk belongs to an untrusted host), their SHA-256 becomes the model's identity (for a
//! Hugging Face directory, the digest of its manifest, [`crate::hf`]), and the weights are built
//! for the native CPU engine or for candle.

use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};
use sha2::{Digest, Sha256};

use crate::cpu::transformer::{BatchItem, KvCache, Transformer};
use crate::cpu::{gguf_config, GgufSource};
use crate::error::InferenceError;
use crate::hf::{self, HfDir, ModelFile};
use crate::template::{ChatTemplate, CHATML};
use crate::tokenizer::Tokenizer;

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// On CPU, the native engine ([`crate::cpu`]): Q4_0, Q4_1 and Q8_0 matrices as the file holds
    /// them, any other format requantized to Q8_0 at load; batched decoding. On CUDA, candle with
    /// the file's tensors. The default.
    #[default]
    Auto,
    /// candle's quantized models with exactly the tensors the file holds, whatever their format
    /// (no batched decoding).
    Native,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            other => Err(format!("precision {other:?}: expected auto or native")),
        }
    }
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when this build has CUDA and a GPU is present, else CPU.
    #[default]
    Auto,
    /// CPU.
    Cpu,
    /// CUDA device 0 (only in a `--features cuda` build).
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("device {other:?}: expected auto, cpu or cuda")),
        }
    }
}

impl DeviceChoice {
    /// The candle device.
    pub fn device(self) -> Result<Device, InferenceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(InferenceError::UnsupportedModel(
                        "--device cuda: this build has no CUDA support (build with --features cuda)".into(),
                    ));
                }
                Ok(Device::new_cuda(0)?)
            }
            Self::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(d) = Device::new_cuda(0) {
                        return Ok(d);
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

/// Options for loading.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Weight precision.
    pub precision: Precision,
    /// Device.
    pub device: DeviceChoice,
    /// Name to serve the model under (default: the file stem).
    pub name: Option<String>,
}

/// What the model file is, for measurement and for clients.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelIdentity {
    /// Name it is served under.
    pub name: String,
    /// SHA-256 of the model file's bytes, as loaded.
    #[serde(with = "hex::serde")]
    pub sha256: [u8; 32],
    /// File size in bytes.
    pub size: u64,
    /// `general.architecture`.
    pub architecture: String,
    /// Context length the engine serves.
    pub context_length: usize,
    /// For a Hugging Face directory, the files in its manifest (`sha256` is the manifest's
    /// digest); empty for a single GGUF file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ModelFile>,
}

/// Weights as loaded. Llama weights clone cheaply (tensors are shared) with an empty KV cache;
/// candle's quantized qwen2 model is not `Clone` and keeps its KV cache inside, so qwen2 sessions
/// take an instance from a pool and give it back (cache cleared) when they end. Only when the
/// pool is empty (more sessions at once than ever before) is one more built, from the GGUF bytes
/// kept in memory (never re-read from disk: the bytes are the ones that were hashed).
enum Weights {
    Llama(Box<quantized_llama::ModelWeights>),
    Qwen2(Box<quantized_qwen2::ModelWeights>),
    Native {
        model: Arc<Transformer>,
        cache: KvCache,
    },
    HfLlama {
        model: Box<llama::Llama>,
        cache: Box<llama::Cache>,
    },
    HfQwen2(Box<qwen2::ModelForCausalLM>),
    /// A session's weights after they went back to their pool (only while it is dropped).
    Released,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Llama(_) => "Weights::Llama",
            Self::Qwen2(_) => "Weights::Qwen2",
            Self::Native { .. } => "Weights::Native",
            Self::HfLlama { .. } => "Weights::HfLlama",
            Self::HfQwen2(_) => "Weights::HfQwen2",
            Self::Released => "Weights::Released",
        })
    }
}

/// How sessions get their own copy of the weights.
enum WeightSource {
    Llama(Box<quantized_llama::ModelWeights>),
    Qwen2 {
        bytes: Arc<Vec<u8>>,
        pool: Qwen2Pool,
    },
    Native(Arc<Transformer>),
    HfLlama {
        model: Box<llama::Llama>,
        config: Box<llama::Config>,
        dtype: candle_core::DType,
    },
    HfQwen2(Box<qwen2::ModelForCausalLM>),
}

impl std::fmt::Debug for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Llama(_) => "WeightSource::Llama",
            Self::Qwen2 { .. } => "WeightSource::Qwen2",
            Self::Native(_) => "WeightSource::Native",
            Self::HfLlama { .. } => "WeightSource::HfLlama",
            Self::HfQwen2(_) => "WeightSource::HfQwen2",
        })
    }
}

impl WeightSource {
    fn instantiate(&self, device: &Device) -> Result<Weights, InferenceError> {
        match self {
            Self::Llama(w) => Ok(Weights::Llama(w.clone())),
            Self::Native(m) => Ok(Weights::Native {
                cache: m.new_cache(),
                model: Arc::clone(m),
            }),
            Self::HfLlama {
                model,
                config,
                dtype,
            } => Ok(Weights::HfLlama {
                model: model.clone(),
                cache: Box::new(llama::Cache::new(true, *dtype, config, device)?),
            }),
            Self::HfQwen2(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                Ok(Weights::HfQwen2(m))
            }
            Self::Qwen2 { bytes, pool } => {
                let idle = pool.lock().map_err(|_| poisoned())?.pop();
                let model = match idle {
                    Some(m) => m,
                    None => Box::new(build_qwen2(bytes, device)?),
                };
                Ok(Weights::Qwen2(model))
            }
        }
    }
}

/// Idle candle qwen2 instances, KV caches cleared.
type Qwen2Pool = Arc<std::sync::Mutex<Vec<Box<quantized_qwen2::ModelWeights>>>>;

fn poisoned() -> InferenceError {
    InferenceError::Internal("qwen2 pool lock poisoned".into())
}

fn build_qwen2(
    bytes: &[u8],
    device: &Device,
) -> Result<quantized_qwen2::ModelWeights, InferenceError> {
    let mut r = Cursor::new(bytes);
    let ct = gguf_file::Content::read(&mut r)
        .map_err(|e| InferenceError::BadModel(format!("GGUF: {e}")))?;
    Ok(quantized_qwen2::ModelWeights::from_gguf(
        ct, &mut r, device,
    )?)
}

/// A loaded model: weights (shared), tokenizer, chat template, identity.
#[derive(Debug)]
pub struct Model {
    weights: WeightSource,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template.
    pub template: ChatTemplate,
    /// Identity.
    pub identity: ModelIdentity,
    device: Device,
}

/// Reports load progress: a bar on a terminal, structured logs otherwise.
fn read_with_progress(path: &Path) -> Result<Vec<u8>, InferenceError> {
    let io = |source| InferenceError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "loading model {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut chunk = vec![0u8; 8 << 20];
    let mut next_log = 0u64;
    loop {
        let n = file.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let done = buf.len() as u64;
        match &bar {
            Some(b) => b.set_position(done),
            None if total > 0 && done * 100 / total >= next_log => {
                tracing::info!(target: "chrysalis::model", path = %path.display(), bytes = done, total, percent = done * 100 / total, "loading model");
                next_log += 25;
            }
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(buf)
}

impl Model {
    /// Load a model: a GGUF file, or a Hugging Face directory (the directory, or its
    /// `config.json` or a `.safetensors` file in it).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self, InferenceError> {
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if !is_gguf {
            if let Some(dir) = HfDir::dir_of(path) {
                return Self::load_hf(&dir, opts);
            }
        }
        let bytes = read_with_progress(path)?;
        if !is_gguf && bytes.get(..4) != Some(b"GGUF") {
            return Err(InferenceError::BadModel(format!(
                "{} is not a GGUF file",
                path.display()
            )));
        }
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let size = bytes.len() as u64;
        let name = opts.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        Self::from_bytes(&bytes, name, sha256, size, opts)
    }

    fn from_bytes(
        bytes: &[u8],
        name: String,
        sha256: [u8; 32],
        size: u64,
        opts: &LoadOptions,
    ) -> Result<Self, InferenceError> {
        let device = opts.device.device()?;
        let ct = gguf_file::Content::read(&mut Cursor::new(bytes))
            .map_err(|e| InferenceError::BadModel(format!("GGUF: {e}")))?;
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| {
                InferenceError::BadModel("GGUF metadata general.architecture missing".into())
            })?;
        let tokenizer = Tokenizer::from_gguf(&ct)?;
        let token_text = |key: &str| {
            ct.metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .and_then(|id| tokenizer.token_text(id))
                .unwrap_or("")
                .to_owned()
        };
        let template_src = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| CHATML.to_owned());
        let template = ChatTemplate::new(
            &template_src,
            &token_text("tokenizer.ggml.bos_token_id"),
            &token_text("tokenizer.ggml.eos_token_id"),
        )?;
        let ctx_key = format!("{arch}.context_length");
        let file_ctx = ct
            .metadata
            .get(&ctx_key)
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(2048) as usize;

        let native = opts.precision == Precision::Auto && device.is_cpu();
        let mut reader = Cursor::new(bytes);
        let (weights, context_length) = match arch.as_str() {
            "llama" | "qwen2" if native => {
                let config = gguf_config(&ct, &arch)?;
                let model = Transformer::load(config, &mut GgufSource::new(&ct, bytes))?;
                let context = model.config.context_length;
                tracing::info!(target: "chrysalis::model", engine = "native", kernels = crate::cpu::quant::KERNELS, formats = ?model.formats(), weight_mib = model.weight_bytes() >> 20, "weights ready");
                (WeightSource::Native(Arc::new(model)), context)
            }
            "llama" => (
                WeightSource::Llama(Box::new(quantized_llama::ModelWeights::from_gguf(
                    ct,
                    &mut reader,
                    &device,
                )?)),
                file_ctx.min(quantized_llama::MAX_SEQ_LEN),
            ),
            "qwen2" => {
                // Built once now, so a bad file fails at load and not at the first request; that
                // instance is the pool's first.
                let first = quantized_qwen2::ModelWeights::from_gguf(ct, &mut reader, &device)?;
                (
                    WeightSource::Qwen2 {
                        bytes: Arc::new(bytes.to_vec()),
                        pool: Arc::new(std::sync::Mutex::new(vec![Box::new(first)])),
                    },
                    file_ctx,
                )
            }
            other => {
                return Err(InferenceError::UnsupportedModel(format!(
                    "architecture {other:?}: supported are llama and qwen2"
                )))
            }
        };
        if tokenizer.vocab_size() == 0 {
            return Err(InferenceError::BadModel("empty vocabulary".into()));
        }
        let identity = ModelIdentity {
            name,
            sha256,
            size,
            architecture: arch,
            context_length,
            files: Vec::new(),
        };
        tracing::info!(target: "chrysalis::model", model = %identity.name, sha256 = %hex::encode(sha256), size, precision = ?opts.precision, device = ?device, "model loaded");
        Ok(Self {
            weights,
            tokenizer,
            template,
            identity,
            device,
        })
    }

    /// Load a Hugging Face model directory ([`crate::hf`]).
    fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<Self, InferenceError> {
        let device = opts.device.device()?;
        let mut files = HfDir::read(dir, &read_with_progress)?;
        let config_json = files
            .json("config.json")?
            .ok_or_else(|| InferenceError::Internal("config.json was not read".into()))?;
        let cfg = hf::parse_config(&config_json)?;
        let hints = files.tokenizer_hints()?;
        let tokenizer =
            Tokenizer::from_hf(files.bytes("tokenizer.json").unwrap_or_default(), &hints)?;
        if tokenizer.vocab_size() > cfg.config.vocab {
            return Err(InferenceError::BadModel(format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                cfg.config.vocab
            )));
        }
        let template = ChatTemplate::new(
            files.chat_template()?.as_deref().unwrap_or(CHATML),
            hints.bos_token.as_deref().unwrap_or(""),
            hints.eos_token.as_deref().unwrap_or(""),
        )?;
        let native = opts.precision == Precision::Auto && device.is_cpu();
        let source = if native {
            let tensors =
                hf::convert_shards(&mut files, &cfg, &read_with_progress, hf::native_tensor)?;
            let model =
                Transformer::load(cfg.config.clone(), &mut hf::HfSource::new(tensors, &cfg))?;
            tracing::info!(target: "chrysalis::model", engine = "native", kernels = crate::cpu::quant::KERNELS, formats = ?model.formats(), weight_mib = model.weight_bytes() >> 20, "weights ready");
            WeightSource::Native(Arc::new(model))
        } else {
            candle_hf(&cfg, &mut files, &device)?
        };
        let identity = ModelIdentity {
            name: opts.name.clone().unwrap_or_else(|| {
                dir.canonicalize()
                    .ok()
                    .and_then(|d| d.file_name().map(|s| s.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into())
            }),
            sha256: files.digest(),
            size: files.total_size(),
            architecture: cfg.architecture.clone(),
            context_length: cfg.config.context_length,
            files: files.manifest(),
        };
        tracing::info!(target: "chrysalis::model", model = %identity.name, manifest_sha256 = %hex::encode(identity.sha256), files = identity.files.len(), size = identity.size, precision = ?opts.precision, device = ?device, "model loaded");
        Ok(Self {
            weights: source,
            tokenizer,
            template,
            identity,
            device,
        })
    }

    /// A fresh sequence (its own KV cache; the weights are shared).
    pub fn session(&self) -> Result<Session, InferenceError> {
        Ok(Session {
            weights: self.weights.instantiate(&self.device)?,
            pos: 0,
            device: self.device.clone(),
            give_back: match &self.weights {
                WeightSource::Qwen2 { pool, .. } => Some(Arc::clone(pool)),
                _ => None,
            },
        })
    }

    /// candle qwen2 instances idle in this model's pool (0 for other models).
    pub fn idle_instances(&self) -> usize {
        match &self.weights {
            WeightSource::Qwen2 { pool, .. } => pool.lock().map_or(0, |p| p.len()),
            _ => 0,
        }
    }
}

/// One sequence being decoded.
pub struct Session {
    weights: Weights,
    /// Position of a candle session (a native session's cache keeps its own).
    pos: usize,
    device: Device,
    /// Where a candle qwen2 instance goes back when the session ends.
    give_back: Option<Qwen2Pool>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("weights", &self.weights)
            .field("position", &self.position())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(pool) = self.give_back.take() else {
            return;
        };
        let weights = std::mem::replace(&mut self.weights, Weights::Released);
        if let Weights::Qwen2(mut m) = weights {
            m.clear_kv_cache();
            if let Ok(mut idle) = pool.lock() {
                idle.push(m);
            }
        }
    }
}

/// One session's part of [`feed_many`].
#[derive(Debug)]
pub struct Feed<'a> {
    /// The session.
    pub session: &'a mut Session,
    /// Tokens to feed.
    pub tokens: &'a [u32],
    /// Whether the logits after the last token are wanted.
    pub logits: bool,
}

impl Session {
    /// Feed tokens; returns the logits after the last one (1-D, vocabulary size, f32).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Tensor, InferenceError> {
        let mut one = [Feed {
            session: self,
            tokens,
            logits: true,
        }];
        feed_many(&mut one)
            .pop()
            .unwrap_or_else(|| Err(InferenceError::Internal("no result".into())))?
            .ok_or_else(|| InferenceError::Internal("no logits".into()))
    }

    /// Tokens in the cache.
    pub fn position(&self) -> usize {
        match &self.weights {
            Weights::Native { cache, .. } => cache.position(),
            _ => self.pos,
        }
    }

    /// The native model this session runs on, if any (sessions of one model batch together).
    fn native(&self) -> Option<&Arc<Transformer>> {
        match &self.weights {
            Weights::Native { model, .. } => Some(model),
            _ => None,
        }
    }

    fn feed_candle(&mut self, tokens: &[u32]) -> Result<Tensor, InferenceError> {
        let x = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.weights {
            Weights::Llama(m) => m.forward(&x, self.pos)?,
            Weights::Qwen2(m) => m.forward(&x, self.pos)?,
            Weights::HfLlama { model, cache } => model.forward(&x, self.pos, cache)?,
            Weights::HfQwen2(m) => m.forward(&x, self.pos)?,
            Weights::Native { .. } | Weights::Released => {
                return Err(InferenceError::Internal(
                    "native or released session fed as candle".into(),
                ))
            }
        };
        self.pos += tokens.len();
        // The last position's logits, whatever leading dimensions the model keeps.
        Ok(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?)
    }
}

/// Feed several sessions in one step. Sessions on the same native model go through the model
/// together (one pass over the weights for all of them); others are fed one by one. Returns, per
/// entry, the logits after its last token when they were asked for (candle sessions always
/// compute them).
pub fn feed_many(batch: &mut [Feed<'_>]) -> Vec<Result<Option<Tensor>, InferenceError>> {
    let mut results: Vec<Option<Result<Option<Tensor>, InferenceError>>> =
        batch.iter().map(|_| None).collect();
    // Entries that cannot run are answered alone, so they do not fail the others.
    for (slot, f) in results.iter_mut().zip(batch.iter()) {
        let checked = match &f.session.weights {
            Weights::Native { model, cache } => model.check(cache, f.tokens),
            _ if f.tokens.is_empty() => Err(InferenceError::BadRequest("empty input".into())),
            _ => Ok(()),
        };
        if let Err(e) = checked {
            *slot = Some(Err(e));
        }
    }
    // Group native sessions by model.
    let mut groups: Vec<(Arc<Transformer>, Vec<usize>)> = Vec::new();
    for (i, f) in batch.iter().enumerate() {
        if results.get(i).is_some_and(Option::is_some) {
            continue;
        }
        if let Some(m) = f.session.native() {
            match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, m)) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((Arc::clone(m), vec![i])),
            }
        }
    }
    for (model, idx) in groups {
        let mut items: Vec<BatchItem<'_>> = Vec::with_capacity(idx.len());
        let mut positions = Vec::with_capacity(idx.len());
        for (i, f) in batch.iter_mut().enumerate() {
            if !idx.contains(&i) {
                continue;
            }
            if let Weights::Native { cache, .. } = &mut f.session.weights {
                positions.push(i);
                items.push(BatchItem {
                    cache,
                    tokens: f.tokens,
                    logits: f.logits,
                });
            }
        }
        let out = crate::cpu::run(|| model.forward(&mut items));
        drop(items);
        match out {
            Ok(logits) => {
                for (i, l) in positions.iter().zip(logits) {
                    let t = l
                        .map(|v| Tensor::new(v, &Device::Cpu).map_err(InferenceError::from))
                        .transpose();
                    if let Some(slot) = results.get_mut(*i) {
                        *slot = Some(t);
                    }
                }
            }
            // Every entry was checked above, so this is the engine's failure: each entry is told.
            Err(e) => {
                let msg = e.to_string();
                for i in &positions {
                    if let Some(slot) = results.get_mut(*i) {
                        *slot = Some(Err(InferenceError::Internal(format!(
                            "batch failed: {msg}"
                        ))));
                    }
                }
            }
        }
    }
    for (i, f) in batch.iter_mut().enumerate() {
        if f.session.native().is_some() {
            continue;
        }
        if let Some(slot) = results.get_mut(i) {
            if slot.is_none() {
                *slot = Some(f.session.feed_candle(f.tokens).map(Some));
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(InferenceError::Internal("entry not fed".into()))))
        .collect()
}

/// A model shared between threads.
pub type SharedModel = Arc<Model>;

/// candle's full-precision llama / qwen2 on a checked directory: f32 on CPU, bf16 on a GPU.
fn candle_hf(
    cfg: &hf::HfConfig,
    files: &mut HfDir,
    device: &Device,
) -> Result<WeightSource, InferenceError> {
    let c = &cfg.config;
    let dtype = if device.is_cpu() {
        candle_core::DType::F32
    } else {
        candle_core::DType::BF16
    };
    let tensors = hf::convert_shards(files, cfg, &read_with_progress, |_, shape, data| {
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    })?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, device);
    match cfg.architecture.as_str() {
        "llama" => {
            // candle's llama derives the head size and has no Q/K/V biases.
            if c.head_dim * c.n_head != c.n_embd || cfg.attention_bias {
                return Err(InferenceError::UnsupportedModel(
                    "this llama variant (explicit head_dim or attention biases) runs only on the \
                     native engine: --precision auto on CPU"
                        .into(),
                ));
            }
            let config = llama::Config {
                hidden_size: c.n_embd,
                intermediate_size: c.n_ff,
                vocab_size: c.vocab,
                num_hidden_layers: c.n_layer,
                num_attention_heads: c.n_head,
                num_key_value_heads: c.n_head_kv,
                use_flash_attn: false,
                rms_norm_eps: f64::from(c.eps),
                rope_theta: c.rope_base,
                bos_token_id: None,
                eos_token_id: None,
                rope_scaling: cfg.rope_scaling.map(|s| llama::Llama3RopeConfig {
                    factor: s.factor,
                    low_freq_factor: s.low_freq_factor,
                    high_freq_factor: s.high_freq_factor,
                    original_max_position_embeddings: s.original_max_position_embeddings,
                    rope_type: llama::Llama3RopeType::Llama3,
                }),
                max_position_embeddings: c.context_length,
                tie_word_embeddings: cfg.tied,
            };
            let model = llama::Llama::load(vb, &config)?;
            Ok(WeightSource::HfLlama {
                model: Box::new(model),
                config: Box::new(config),
                dtype,
            })
        }
        "qwen2" => {
            if c.head_dim * c.n_head != c.n_embd {
                return Err(InferenceError::UnsupportedModel(
                    "qwen2 with an explicit head_dim runs only on the native engine".into(),
                ));
            }
            let config = qwen2::Config {
                vocab_size: c.vocab,
                hidden_size: c.n_embd,
                intermediate_size: c.n_ff,
                num_hidden_layers: c.n_layer,
                num_attention_heads: c.n_head,
                num_key_value_heads: c.n_head_kv,
                max_position_embeddings: c.context_length,
                sliding_window: c.context_length,
                max_window_layers: c.n_layer,
                tie_word_embeddings: cfg.tied,
                rope_theta: f64::from(c.rope_base),
                rms_norm_eps: f64::from(c.eps),
                use_sliding_window: false,
                hidden_act: candle_nn::Activation::Silu,
            };
            Ok(WeightSource::HfQwen2(Box::new(
                qwen2::ModelForCausalLM::new(&config, vb)?,
            )))
        }
        other => Err(InferenceError::UnsupportedModel(format!(
            "architecture {other:?}"
        ))),
    }
}
