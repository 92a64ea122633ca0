//! Loading a model: the file is read once into memory (so what is hashed is what is run, even
//! when the disk belongs to an untrusted host), its SHA-256 becomes the model's identity, and the
//! weights are built by candle from the GGUF.

use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use sha2::{Digest, Sha256};

use crate::error::InferenceError;
use crate::template::{ChatTemplate, CHATML};
use crate::tokenizer::Tokenizer;

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Requantize block formats that candle has no SIMD kernel for (Q4_1, Q5_0, Q5_1) to Q8_0
    /// on CPU, keep everything else. The default: several times faster decoding.
    #[default]
    Auto,
    /// Exactly the tensors the file holds.
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
}

/// Weights as loaded. Llama weights clone cheaply (tensors are shared) with an empty KV cache;
/// candle's qwen2 model is not `Clone`, so each qwen2 session is built from the GGUF bytes kept in
/// memory (never re-read from disk: the bytes are the ones that were hashed).
enum Weights {
    Llama(Box<quantized_llama::ModelWeights>),
    Qwen2(Box<quantized_qwen2::ModelWeights>),
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Llama(_) => "Weights::Llama",
            Self::Qwen2(_) => "Weights::Qwen2",
        })
    }
}

/// How sessions get their own copy of the weights.
enum WeightSource {
    Llama(Box<quantized_llama::ModelWeights>),
    Qwen2(Arc<Vec<u8>>),
}

impl std::fmt::Debug for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Llama(_) => "WeightSource::Llama",
            Self::Qwen2(_) => "WeightSource::Qwen2",
        })
    }
}

impl WeightSource {
    fn instantiate(&self, device: &Device) -> Result<Weights, InferenceError> {
        match self {
            Self::Llama(w) => Ok(Weights::Llama(w.clone())),
            Self::Qwen2(bytes) => {
                let mut r = Cursor::new(bytes.as_slice());
                let ct = gguf_file::Content::read(&mut r)
                    .map_err(|e| InferenceError::BadModel(format!("GGUF: {e}")))?;
                Ok(Weights::Qwen2(Box::new(
                    quantized_qwen2::ModelWeights::from_gguf(ct, &mut r, device)?,
                )))
            }
        }
    }
}

impl Weights {
    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward(x, pos),
            Self::Qwen2(m) => m.forward(x, pos),
        }
    }
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

fn needs_requant(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// Rewrite the GGUF in memory with slow block formats requantized to Q8_0.
fn requantize_gguf(
    ct: &gguf_file::Content,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, InferenceError> {
    if !ct
        .tensor_infos
        .values()
        .any(|t| needs_requant(t.ggml_dtype))
    {
        return Ok(None);
    }
    let mut reader = Cursor::new(bytes);
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let q = ct.tensor(&mut reader, name, &Device::Cpu)?;
        let q = if needs_requant(q.dtype()) {
            let f = q.dequantize(&Device::Cpu)?;
            QTensor::quantize(&f, GgmlDType::Q8_0)?
        } else {
            q
        };
        tensors.push((name.clone(), q));
    }
    let mut md: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    md.sort_by(|a, b| a.0.cmp(b.0));
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &tensor_refs)?;
    Ok(Some(out.into_inner()))
}

impl Model {
    /// Load a GGUF model file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self, InferenceError> {
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if path.is_dir() || path.extension().is_some_and(|e| e == "safetensors") {
            return Err(InferenceError::UnsupportedModel(format!(
                "{}: safetensors models are not supported yet; convert to GGUF",
                path.display()
            )));
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

        let requant = match (opts.precision, device.is_cpu()) {
            (Precision::Auto, true) => requantize_gguf(&ct, bytes)?,
            _ => None,
        };
        let (ct, data): (gguf_file::Content, &[u8]) = match &requant {
            Some(b) => (
                gguf_file::Content::read(&mut Cursor::new(b.as_slice()))
                    .map_err(|e| InferenceError::Internal(format!("requantized GGUF: {e}")))?,
                b.as_slice(),
            ),
            None => (ct, bytes),
        };
        let mut reader = Cursor::new(data);
        let (weights, context_length) = match arch.as_str() {
            "llama" => (
                WeightSource::Llama(Box::new(quantized_llama::ModelWeights::from_gguf(
                    ct,
                    &mut reader,
                    &device,
                )?)),
                file_ctx.min(quantized_llama::MAX_SEQ_LEN),
            ),
            "qwen2" => {
                // Build once now, so a bad file fails at load and not at the first request.
                quantized_qwen2::ModelWeights::from_gguf(ct, &mut reader, &device)?;
                (WeightSource::Qwen2(Arc::new(data.to_vec())), file_ctx)
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
        };
        tracing::info!(target: "chrysalis::model", model = %identity.name, sha256 = %hex::encode(sha256), size, requantized = requant.is_some(), device = ?device, "model loaded");
        Ok(Self {
            weights,
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
        })
    }
}

/// One sequence being decoded.
#[derive(Debug)]
pub struct Session {
    weights: Weights,
    pos: usize,
    device: Device,
}

impl Session {
    /// Feed tokens; returns the logits after the last one (1-D, vocabulary size, f32).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Tensor, InferenceError> {
        if tokens.is_empty() {
            return Err(InferenceError::BadRequest("empty input".into()));
        }
        let x = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&x, self.pos)?;
        self.pos += tokens.len();
        Ok(logits.squeeze(0)?.to_dtype(candle_core::DType::F32)?)
    }

    /// Tokens in the cache.
    pub fn position(&self) -> usize {
        self.pos
    }
}

/// A model shared between threads.
pub type SharedModel = Arc<Model>;
