//! Hugging Face model directories: `config.json`, `tokenizer.json`, `tokenizer_config.json`
//! (with `chat_template.jinja` and `generation_config.json` when present), and the weights as
//! safetensors, in one file or in shards listed by `model.safetensors.index.json`.
//!
//! Every file the loader uses is read once into memory and hashed; the model's identity is the
//! SHA-256 of a manifest in `sha256sum` format (one `HEX  NAME` line per file, sorted by name),
//! so an auditor can recompute it with coreutils alone (docs/inference.md). Files the loader does
//! not read (READMEs, other formats) are not part of the identity and have no effect.
//!
//! Weight files are read one at a time and released once converted. Every tensor is checked
//! against what the architecture uses: a missing tensor, a wrong shape or a tensor this engine
//! would ignore (a newer architecture's extra weights) is refused, never run partially.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cpu::quant::QMatrix;
use crate::cpu::transformer::{Config, RawTensor, RopeStyle, TensorSource};
use crate::error::InferenceError;
use crate::tokenizer::{token_content, HfTokenizerHints};

/// The index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Weights in one file.
pub const SINGLE_FILE: &str = "model.safetensors";

/// One file of a model directory, as it entered the identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelFile {
    /// Name inside the directory.
    pub name: String,
    /// SHA-256 of its bytes.
    #[serde(with = "hex::serde")]
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

/// Files in manifest order: by name, bytewise.
pub fn sorted_manifest(files: &[ModelFile]) -> Vec<ModelFile> {
    let mut sorted = files.to_vec();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    sorted
}

/// The manifest digest: SHA-256 over `sha256sum`-format lines, sorted by file name.
pub fn manifest_digest(files: &[ModelFile]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in sorted_manifest(files) {
        h.update(hex::encode(f.sha256));
        h.update(b"  ");
        h.update(f.name.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

/// A model directory read into memory.
pub struct HfDir {
    /// The directory.
    pub path: PathBuf,
    /// Every file read, in the order read ([`HfDir::manifest`] gives them sorted).
    files: Vec<ModelFile>,
    contents: HashMap<String, Vec<u8>>,
    /// Weight files, in name order.
    pub shards: Vec<String>,
    /// With an index, the tensor names it maps to files.
    indexed: Option<Vec<String>>,
}

impl std::fmt::Debug for HfDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfDir")
            .field("path", &self.path)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn bad(file: &str, why: impl std::fmt::Display) -> InferenceError {
    InferenceError::BadModel(format!("{file}: {why}"))
}

/// A file name we accept in a manifest: plain, no directories, nothing `sha256sum` would escape.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

impl HfDir {
    /// The directory a path names: the directory itself, or the one holding a `.safetensors` or
    /// `config.json` file.
    pub fn dir_of(path: &Path) -> Option<PathBuf> {
        if path.is_dir() {
            return Some(path.to_path_buf());
        }
        let is_st = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let is_config = path.file_name().is_some_and(|n| n == "config.json");
        (is_st || is_config).then(|| {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        })
    }

    /// Read the small files a model directory's loader uses and list its weight files (read
    /// later, one at a time, by [`convert_shards`]).
    pub fn read(
        dir: &Path,
        read: &dyn Fn(&Path) -> Result<Vec<u8>, InferenceError>,
    ) -> Result<Self, InferenceError> {
        let mut me = Self {
            path: dir.to_path_buf(),
            files: Vec::new(),
            contents: HashMap::new(),
            shards: Vec::new(),
            indexed: None,
        };
        for name in ["config.json", "tokenizer.json"] {
            if !dir.join(name).is_file() {
                return Err(InferenceError::BadModel(format!(
                    "{}: no {name}; a Hugging Face model directory needs config.json, \
                     tokenizer.json and safetensors weights",
                    dir.display()
                )));
            }
            me.add(name, read)?;
        }
        for name in [
            "tokenizer_config.json",
            "generation_config.json",
            "chat_template.jinja",
        ] {
            if dir.join(name).is_file() {
                me.add(name, read)?;
            }
        }
        let shards: Vec<String> = if dir.join(INDEX_FILE).is_file() {
            me.add(INDEX_FILE, read)?;
            let index: Value = me.json(INDEX_FILE)?.unwrap_or(Value::Null);
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| bad(INDEX_FILE, "no weight_map"))?;
            let mut names: Vec<String> = map
                .values()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(INDEX_FILE, "a weight_map entry is not a file name"))
                })
                .collect::<Result<_, _>>()?;
            names.sort();
            names.dedup();
            me.indexed = Some(map.keys().cloned().collect());
            names
        } else if dir.join(SINGLE_FILE).is_file() {
            vec![SINGLE_FILE.to_owned()]
        } else {
            let io = |source| InferenceError::Io {
                path: dir.display().to_string(),
                source,
            };
            let mut found: Vec<String> = std::fs::read_dir(dir)
                .map_err(io)?
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            found.sort();
            match found.len() {
                1 => found,
                0 => {
                    return Err(InferenceError::BadModel(format!(
                        "{}: no safetensors weights ({SINGLE_FILE}, or shards with {INDEX_FILE})",
                        dir.display()
                    )))
                }
                _ => {
                    return Err(InferenceError::BadModel(format!(
                        "{}: several .safetensors files and no {INDEX_FILE} to say which belong \
                         to the model",
                        dir.display()
                    )))
                }
            }
        };
        if shards.is_empty() {
            return Err(bad(INDEX_FILE, "weight_map is empty"));
        }
        if let Some(bad_name) = shards.iter().find(|s| !plain_name(s)) {
            return Err(InferenceError::BadModel(format!(
                "{}: file name {bad_name:?} is not a plain file name in the directory",
                dir.display()
            )));
        }
        me.shards = shards;
        Ok(me)
    }

    /// The files read so far, in manifest order (the identity's list).
    pub fn manifest(&self) -> Vec<ModelFile> {
        sorted_manifest(&self.files)
    }

    /// Read a file, hash it into the manifest and keep its bytes.
    fn add(
        &mut self,
        name: &str,
        read: &dyn Fn(&Path) -> Result<Vec<u8>, InferenceError>,
    ) -> Result<(), InferenceError> {
        if !plain_name(name) {
            return Err(InferenceError::BadModel(format!(
                "{}: file name {name:?} is not a plain file name in the directory",
                self.path.display()
            )));
        }
        if self.contents.contains_key(name) {
            return Ok(());
        }
        let bytes = self.read_file(name, read)?;
        self.contents.insert(name.to_owned(), bytes);
        Ok(())
    }

    /// Read a file and hash it into the manifest; the bytes are the caller's (weight files are
    /// not kept).
    fn read_file(
        &mut self,
        name: &str,
        read: &dyn Fn(&Path) -> Result<Vec<u8>, InferenceError>,
    ) -> Result<Vec<u8>, InferenceError> {
        let bytes = read(&self.path.join(name))?;
        self.files.push(ModelFile {
            name: name.to_owned(),
            sha256: Sha256::digest(&bytes).into(),
            size: bytes.len() as u64,
        });
        Ok(bytes)
    }

    /// A file's bytes, when it was read and not taken.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.contents.get(name).map(Vec::as_slice)
    }

    /// A JSON file, when it was read.
    pub fn json(&self, name: &str) -> Result<Option<Value>, InferenceError> {
        self.bytes(name)
            .map(|b| serde_json::from_slice(b).map_err(|e| bad(name, format!("not JSON: {e}"))))
            .transpose()
    }

    /// The identity digest ([`manifest_digest`]), complete once the weights are converted.
    pub fn digest(&self) -> [u8; 32] {
        manifest_digest(&self.files)
    }

    /// Bytes read in all (once the weights are converted, the whole directory).
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`
    /// (a string, or a list of named templates of which `default` is used).
    pub fn chat_template(&self) -> Result<Option<String>, InferenceError> {
        if let Some(b) = self.bytes("chat_template.jinja") {
            return String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| bad("chat_template.jinja", "not UTF-8"));
        }
        let Some(tc) = self.json("tokenizer_config.json")? else {
            return Ok(None);
        };
        Ok(match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_owned),
            _ => None,
        })
    }

    /// What `tokenizer_config.json`, `generation_config.json` and `config.json` say about the
    /// tokenizer's special tokens.
    pub fn tokenizer_hints(&self) -> Result<HfTokenizerHints, InferenceError> {
        let tc = self.json("tokenizer_config.json")?.unwrap_or(Value::Null);
        let mut eos_ids = Vec::new();
        for name in ["generation_config.json", "config.json"] {
            let v = self.json(name)?.unwrap_or(Value::Null);
            match v.get("eos_token_id") {
                Some(Value::Number(n)) => eos_ids.extend(n.as_u64()),
                Some(Value::Array(a)) => eos_ids.extend(a.iter().filter_map(Value::as_u64)),
                _ => {}
            }
        }
        let mut ids: Vec<u32> = eos_ids
            .into_iter()
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        ids.dedup();
        Ok(HfTokenizerHints {
            bos_token: tc.get("bos_token").and_then(token_content),
            eos_token: tc.get("eos_token").and_then(token_content),
            add_bos_token: tc.get("add_bos_token").and_then(Value::as_bool),
            eos_ids: ids,
        })
    }
}

/// A model's shape from `config.json`, with what the engines need beyond [`Config`].
#[derive(Debug, Clone)]
pub struct HfConfig {
    /// `llama` or `qwen2`.
    pub architecture: String,
    /// The shape the native engine uses.
    pub config: Config,
    /// Output projection tied to the embeddings.
    pub tied: bool,
    /// Q/K/V carry biases.
    pub attention_bias: bool,
    /// Llama 3 rope scaling: per-pair divisors of the rotary frequencies.
    pub rope_factors: Option<Vec<f32>>,
    /// The rope scaling as `config.json` gives it (candle's llama takes it as is).
    pub rope_scaling: Option<Llama3Scaling>,
}

/// Llama 3 rope scaling parameters.
#[derive(Debug, Clone, Copy)]
pub struct Llama3Scaling {
    /// Overall factor.
    pub factor: f32,
    /// Low-frequency factor.
    pub low_freq_factor: f32,
    /// High-frequency factor.
    pub high_freq_factor: f32,
    /// Context the model was trained on before scaling.
    pub original_max_position_embeddings: usize,
}

impl Llama3Scaling {
    /// The divisor of each pair's frequency (Llama 3's smooth interpolation between unscaled
    /// high frequencies and low frequencies divided by `factor`).
    pub fn divisors(&self, inv_freq: &[f32]) -> Vec<f32> {
        let orig = self.original_max_position_embeddings as f32;
        let low_wavelen = orig / self.low_freq_factor;
        let high_wavelen = orig / self.high_freq_factor;
        inv_freq
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    self.factor
                } else {
                    let smooth = (orig / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                }
            })
            .collect()
    }
}

/// Parse `config.json`.
pub fn parse_config(v: &Value) -> Result<HfConfig, InferenceError> {
    let f = "config.json";
    let model_type = v
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(f, "no model_type"))?;
    let architecture = match model_type {
        "llama" | "qwen2" => model_type.to_owned(),
        other => {
            let archs = v
                .get("architectures")
                .map(Value::to_string)
                .unwrap_or_default();
            return Err(InferenceError::UnsupportedModel(format!(
                "model_type {other:?} {archs}: supported are llama and qwen2"
            )));
        }
    };
    let uint = |key: &str| -> Result<Option<usize>, InferenceError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(f, format!("{key} is not a non-negative integer"))),
        }
    };
    let need = |key: &str| uint(key)?.ok_or_else(|| bad(f, format!("{key} missing")));
    let float = |key: &str| v.get(key).and_then(Value::as_f64);
    let flag = |key: &str| v.get(key).and_then(Value::as_bool);
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            return Err(InferenceError::UnsupportedModel(format!(
                "hidden_act {act:?}: only silu is supported"
            )));
        }
    }
    if flag("mlp_bias") == Some(true) {
        return Err(InferenceError::UnsupportedModel(
            "mlp_bias is not supported".into(),
        ));
    }
    if float("partial_rotary_factor").is_some_and(|p| p != 1.0) {
        return Err(InferenceError::UnsupportedModel(
            "partial_rotary_factor other than 1 is not supported".into(),
        ));
    }
    if flag("use_sliding_window") == Some(true) {
        return Err(InferenceError::UnsupportedModel(
            "sliding-window attention is not supported".into(),
        ));
    }
    let n_embd = need("hidden_size")?;
    let n_head = need("num_attention_heads")?;
    if n_head == 0 {
        return Err(bad(f, "num_attention_heads is 0"));
    }
    let head_dim = uint("head_dim")?.unwrap_or(n_embd / n_head);
    let context_length = uint("max_position_embeddings")?.unwrap_or(2048);
    let rope_base = float("rope_theta").unwrap_or(10_000.0) as f32;
    let rope_scaling = match v.get("rope_scaling") {
        None | Some(Value::Null) => None,
        Some(s) => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match kind {
                "default" => None,
                "llama3" => {
                    let num = |k: &str| {
                        s.get(k)
                            .and_then(Value::as_f64)
                            .ok_or_else(|| bad(f, format!("rope_scaling.{k} missing")))
                    };
                    Some(Llama3Scaling {
                        factor: num("factor")? as f32,
                        low_freq_factor: num("low_freq_factor")? as f32,
                        high_freq_factor: num("high_freq_factor")? as f32,
                        original_max_position_embeddings: num("original_max_position_embeddings")?
                            as usize,
                    })
                }
                other => {
                    return Err(InferenceError::UnsupportedModel(format!(
                        "rope_scaling type {other:?}: supported are default and llama3"
                    )))
                }
            }
        }
    };
    let config = Config {
        n_layer: need("num_hidden_layers")?,
        n_embd,
        n_head,
        n_head_kv: uint("num_key_value_heads")?.unwrap_or(n_head),
        head_dim,
        n_ff: need("intermediate_size")?,
        vocab: need("vocab_size")?,
        eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
        rope_base,
        n_rot: head_dim,
        // Hugging Face checkpoints rotate the two halves of each head (`rotate_half`).
        rope_style: RopeStyle::Halves,
        context_length,
    };
    config.validate()?;
    if let Some(s) = &rope_scaling {
        if !(s.factor > 0.0 && s.high_freq_factor > s.low_freq_factor && s.low_freq_factor > 0.0) {
            return Err(bad(f, "rope_scaling factors out of range"));
        }
    }
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| rope_base.powf(-2.0 * i as f32 / head_dim as f32))
        .collect();
    Ok(HfConfig {
        attention_bias: architecture == "qwen2" || flag("attention_bias") == Some(true),
        tied: flag("tie_word_embeddings").unwrap_or(false),
        rope_factors: rope_scaling.map(|s| s.divisors(&inv_freq)),
        rope_scaling,
        architecture,
        config,
    })
}

/// A dimension of a tensor, from the configuration.
#[derive(Clone, Copy)]
enum Dim {
    Vocab,
    Embd,
    Q,
    Kv,
    Ff,
}

/// Whole-model tensors: engine (GGUF) name, Hugging Face name, shape.
const MODEL_TENSORS: [(&str, &str, &[Dim]); 3] = [
    (
        "token_embd.weight",
        "model.embed_tokens.weight",
        &[Dim::Vocab, Dim::Embd],
    ),
    ("output_norm.weight", "model.norm.weight", &[Dim::Embd]),
    ("output.weight", "lm_head.weight", &[Dim::Vocab, Dim::Embd]),
];

/// Per-layer tensors (`blk.N.` / `model.layers.N.`): engine name, Hugging Face name, shape. The
/// biases are present only with `attention_bias`.
const LAYER_TENSORS: [(&str, &str, &[Dim]); 12] = [
    ("attn_norm.weight", "input_layernorm.weight", &[Dim::Embd]),
    (
        "ffn_norm.weight",
        "post_attention_layernorm.weight",
        &[Dim::Embd],
    ),
    (
        "attn_q.weight",
        "self_attn.q_proj.weight",
        &[Dim::Q, Dim::Embd],
    ),
    (
        "attn_k.weight",
        "self_attn.k_proj.weight",
        &[Dim::Kv, Dim::Embd],
    ),
    (
        "attn_v.weight",
        "self_attn.v_proj.weight",
        &[Dim::Kv, Dim::Embd],
    ),
    (
        "attn_output.weight",
        "self_attn.o_proj.weight",
        &[Dim::Embd, Dim::Q],
    ),
    (
        "ffn_gate.weight",
        "mlp.gate_proj.weight",
        &[Dim::Ff, Dim::Embd],
    ),
    ("ffn_up.weight", "mlp.up_proj.weight", &[Dim::Ff, Dim::Embd]),
    (
        "ffn_down.weight",
        "mlp.down_proj.weight",
        &[Dim::Embd, Dim::Ff],
    ),
    ("attn_q.bias", "self_attn.q_proj.bias", &[Dim::Q]),
    ("attn_k.bias", "self_attn.k_proj.bias", &[Dim::Kv]),
    ("attn_v.bias", "self_attn.v_proj.bias", &[Dim::Kv]),
];

/// The Hugging Face name of an engine (GGUF) tensor name, for the tensors the engine uses.
fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf, _)) = MODEL_TENSORS.iter().find(|(g, _, _)| *g == gguf) {
        return Some((*hf).to_owned());
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let (_, hf, _) = LAYER_TENSORS.iter().find(|(g, _, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The tensors (Hugging Face names and shapes) a model of this configuration consists of.
pub fn expected_tensors(c: &HfConfig) -> BTreeMap<String, Vec<usize>> {
    let k = &c.config;
    let size = |d: &Dim| match d {
        Dim::Vocab => k.vocab,
        Dim::Embd => k.n_embd,
        Dim::Q => k.n_head * k.head_dim,
        Dim::Kv => k.n_head_kv * k.head_dim,
        Dim::Ff => k.n_ff,
    };
    let shape = |dims: &[Dim]| dims.iter().map(size).collect::<Vec<_>>();
    let mut m = BTreeMap::new();
    for (_, hf, dims) in MODEL_TENSORS {
        if !(c.tied && hf == "lm_head.weight") {
            m.insert(hf.to_owned(), shape(dims));
        }
    }
    for i in 0..k.n_layer {
        for (_, hf, dims) in LAYER_TENSORS {
            if c.attention_bias || !hf.ends_with(".bias") {
                m.insert(format!("model.layers.{i}.{hf}"), shape(dims));
            }
        }
    }
    m
}

/// Tensors a checkpoint may carry that no engine needs: rotary tables some exporters saved, and
/// a tied model's copy of the embeddings.
fn ignorable(name: &str, c: &HfConfig) -> bool {
    name.ends_with(".rotary_emb.inv_freq") || (c.tied && name == "lm_head.weight")
}

/// Little-endian F32/F16/BF16 values as f32.
fn to_f32(d: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .filter_map(|c| c.try_into().ok())
            .map(f)
            .collect()
    }
    match d {
        Dtype::F32 => Some(each(bytes, f32::from_le_bytes)),
        Dtype::F16 => Some(each(bytes, |b| half::f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => Some(each(bytes, |b| half::bf16::from_le_bytes(b).to_f32())),
        _ => None,
    }
}

/// Read the weight files one at a time, hashing each into the manifest, check every tensor
/// against the configuration and convert it, and release the file before the next: peak memory
/// is one file plus what was converted so far. `convert` gets each tensor the model uses
/// (Hugging Face name, shape, values as f32). A missing tensor, a wrong shape, an unsupported
/// dtype, a tensor in two files, or one the engine would not use (a newer architecture's extra
/// weights) is an error, never a partial model. With an index, its list is checked first, before
/// any weight file is read.
pub fn convert_shards<T>(
    dir: &mut HfDir,
    c: &HfConfig,
    read: &dyn Fn(&Path) -> Result<Vec<u8>, InferenceError>,
    mut convert: impl FnMut(&str, Vec<usize>, Vec<f32>) -> Result<T, InferenceError>,
) -> Result<HashMap<String, T>, InferenceError> {
    let want = expected_tensors(c);
    let extra = |name: &str| {
        InferenceError::UnsupportedModel(format!(
            "tensor {name} would not be used by this {} engine; refusing to run the model \
             partially",
            c.architecture
        ))
    };
    let missing =
        |name: &str| InferenceError::BadModel(format!("tensor {name} missing from the weights"));
    if let Some(indexed) = &dir.indexed {
        if let Some(name) = indexed
            .iter()
            .find(|n| !want.contains_key(*n) && !ignorable(n, c))
        {
            return Err(extra(name));
        }
        if let Some(name) = want.keys().find(|k| !indexed.contains(k)) {
            return Err(missing(name));
        }
    }
    let mut out = HashMap::with_capacity(want.len());
    for shard in dir.shards.clone() {
        let bytes = dir.read_file(&shard, read)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(&shard, format!("not a safetensors file: {e}")))?;
        let mut views = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in views {
            let Some(shape) = want.get(&name) else {
                if ignorable(&name, c) {
                    continue;
                }
                return Err(extra(&name));
            };
            if out.contains_key(&name) {
                return Err(bad(
                    &shard,
                    format!("tensor {name} is in more than one file"),
                ));
            }
            if view.shape() != shape.as_slice() {
                return Err(InferenceError::BadModel(format!(
                    "tensor {name}: shape {:?}, config.json implies {shape:?}",
                    view.shape()
                )));
            }
            let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                InferenceError::UnsupportedModel(format!(
                    "tensor {name}: dtype {:?} (supported: F32, F16, BF16)",
                    view.dtype()
                ))
            })?;
            if data.len() != shape.iter().product::<usize>() {
                return Err(InferenceError::BadModel(format!(
                    "tensor {name}: data does not match its shape"
                )));
            }
            let t = convert(&name, view.shape().to_vec(), data)?;
            out.insert(name, t);
        }
    }
    if let Some(name) = want.keys().find(|k| !out.contains_key(*k)) {
        return Err(missing(name));
    }
    Ok(out)
}

/// The native engine's conversion: matrices to Q8_0 blocks as they are read, vectors as f32.
pub fn native_tensor(
    _name: &str,
    shape: Vec<usize>,
    data: Vec<f32>,
) -> Result<RawTensor, InferenceError> {
    match shape.as_slice() {
        &[rows, cols] => Ok(RawTensor::Matrix(QMatrix::quantize_q8_0(
            rows, cols, &data,
        )?)),
        _ => Ok(RawTensor::F32 { shape, data }),
    }
}

/// The native engine's view of converted tensors: GGUF names mapped to Hugging Face ones.
#[derive(Debug)]
pub struct HfSource<'c> {
    tensors: HashMap<String, RawTensor>,
    config: &'c HfConfig,
}

impl<'c> HfSource<'c> {
    /// Over the tensors [`convert_shards`] made with [`native_tensor`].
    pub fn new(tensors: HashMap<String, RawTensor>, config: &'c HfConfig) -> Self {
        Self { tensors, config }
    }
}

impl TensorSource for HfSource<'_> {
    fn tensor(&mut self, name: &str) -> Result<Option<RawTensor>, InferenceError> {
        if name == "rope_freqs.weight" {
            return Ok(self.config.rope_factors.clone().map(|data| RawTensor::F32 {
                shape: vec![data.len()],
                data,
            }));
        }
        if name == "output.weight" && self.config.tied {
            return Ok(None);
        }
        Ok(hf_name(name).and_then(|hf| self.tensors.remove(&hf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_sha256sum_format_sorted_by_name() {
        let files = vec![
            ModelFile {
                name: "tokenizer.json".into(),
                sha256: [2; 32],
                size: 1,
            },
            ModelFile {
                name: "config.json".into(),
                sha256: [1; 32],
                size: 1,
            },
        ];
        let text = format!(
            "{}  config.json\n{}  tokenizer.json\n",
            hex::encode([1u8; 32]),
            hex::encode([2u8; 32])
        );
        let want: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        assert_eq!(manifest_digest(&files), want);
        let mut reversed = files.clone();
        reversed.reverse();
        assert_eq!(manifest_digest(&reversed), want);
    }

    #[test]
    fn names_with_paths_or_controls_are_not_plain() {
        for n in ["a/b", "..", "", "x\ny", "a\\b"] {
            assert!(!plain_name(n), "{n:?}");
        }
        assert!(plain_name("model-00001-of-00002.safetensors"));
    }

    #[test]
    fn dtype_conversion() {
        let one_f16 = half::f16::from_f32(1.5).to_le_bytes();
        let one_bf16 = half::bf16::from_f32(-2.0).to_le_bytes();
        assert_eq!(to_f32(Dtype::F16, &one_f16), Some(vec![1.5]));
        assert_eq!(to_f32(Dtype::BF16, &one_bf16), Some(vec![-2.0]));
        assert_eq!(to_f32(Dtype::F32, &0.25f32.to_le_bytes()), Some(vec![0.25]));
        assert_eq!(to_f32(Dtype::I8, &[1]), None);
    }

    fn config_json(extra: &str) -> Value {
        serde_json::from_str(&format!(
            r#"{{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 100, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "tie_word_embeddings": true{extra}}}"#
        ))
        .expect("json")
    }

    #[test]
    fn config_maps_onto_the_engine() {
        let c = parse_config(&config_json("")).expect("config");
        assert_eq!(c.architecture, "llama");
        assert_eq!(c.config.head_dim, 16);
        assert_eq!(c.config.n_head_kv, 2);
        assert_eq!(c.config.rope_style, RopeStyle::Halves);
        assert!(c.tied && !c.attention_bias && c.rope_factors.is_none());
        let e = expected_tensors(&c);
        assert!(!e.contains_key("lm_head.weight"));
        assert_eq!(
            e.get("model.layers.1.self_attn.k_proj.weight"),
            Some(&vec![32, 64])
        );
        assert_eq!(e.len(), 2 + 2 * 9);
    }

    #[test]
    fn unsupported_configs_are_refused() {
        for extra in [
            r#", "hidden_act": "gelu""#,
            r#", "mlp_bias": true"#,
            r#", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#,
            r#", "use_sliding_window": true"#,
        ] {
            assert!(
                matches!(
                    parse_config(&config_json(extra)),
                    Err(InferenceError::UnsupportedModel(_))
                ),
                "{extra}"
            );
        }
        let mut v = config_json("");
        v["model_type"] = "qwen3".into();
        assert!(matches!(
            parse_config(&v),
            Err(InferenceError::UnsupportedModel(_))
        ));
        let mut v = config_json("");
        v["hidden_size"] = (-1).into();
        assert!(matches!(parse_config(&v), Err(InferenceError::BadModel(_))));
        for (key, n) in [
            ("max_position_embeddings", 1u64 << 40),
            ("num_hidden_layers", 1 << 30),
            ("vocab_size", 1 << 40),
        ] {
            let mut v = config_json("");
            v[key] = n.into();
            assert!(
                matches!(parse_config(&v), Err(InferenceError::BadModel(_))),
                "{key}"
            );
        }
    }

    #[test]
    fn llama3_rope_divisors() {
        // Llama 3.1's published scaling: high frequencies untouched, low ones divided by 8,
        // a smooth blend between.
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let inv: Vec<f32> = (0..64)
            .map(|i| 500_000f32.powf(-2.0 * i as f32 / 128.0))
            .collect();
        let d = s.divisors(&inv);
        assert_eq!(d.first(), Some(&1.0));
        assert_eq!(d.last(), Some(&8.0));
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "monotonic");
        assert!(d.iter().any(|&x| x > 1.0 && x < 8.0), "a blended band");
    }
}
