//! Hugging Face model directories (safetensors weights, `tokenizer.json`).
//!
//! Two kinds of tests:
//! - a tiny random llama written here as a Hugging Face directory: loading, the two engines
//!   against each other, and every malformed or unsupported directory refused with a clear error;
//! - the default model as a Hugging Face directory (`make hf-model`:
//!   `scripts/make-hf-model.py` writes it from the GGUF with gguf-py and the `tokenizers`
//!   library): tokenizers against the `tokenizers` library's ids, the manifest digest against the
//!   one the script computed, and the weights against candle's full-precision llama and against
//!   the GGUF. Under `make test` (CHRYSALIS_REQUIRE_FIXTURES=1) a missing directory fails.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

mod common;
use common::cosine;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrysalis_inference::tokenizer::{HfTokenizerHints, Tokenizer};
use chrysalis_inference::{
    load_default, InferenceError, LoadOptions, Message, Model, Precision, SamplingParams, Sequence,
};

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

fn greedy(m: &Arc<Model>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = Sequence::from_tokens(Arc::clone(m), prompt.to_vec(), SamplingParams::greedy(n))
        .expect("sequence");
    while !seq.is_done() {
        seq.step().expect("step");
    }
    seq.generated().to_vec()
}

fn prefill(m: &Model, tokens: &[u32]) -> Vec<f32> {
    m.session()
        .expect("session")
        .feed(tokens)
        .expect("prefill")
        .to_vec1()
        .expect("logits")
}

// ---------------------------------------------------------------------------------------------
// A tiny random llama, written as a Hugging Face directory.

const VOCAB: usize = 260;
const EMBD: usize = 32;
const FF: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;

struct TinyDir {
    path: PathBuf,
}

impl Drop for TinyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A byte-level BPE `tokenizer.json`: the 256 byte characters, three merges, and `<|im_end|>`.
fn tiny_tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (b, c) in chrysalis_inference::tokenizer::byte_to_unicode()
        .into_iter()
        .enumerate()
    {
        vocab.insert(c.to_string(), b.into());
    }
    vocab.insert("he".into(), 256.into());
    vocab.insert("ll".into(), 257.into());
    vocab.insert("hell".into(), 258.into());
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 259, "content": "<|im_end|>", "special": true,
                          "normalized": false, "lstrip": false, "rstrip": false,
                          "single_word": false}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": ["h e", "l l", "he ll"]}
    })
}

fn tiny_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": EMBD, "intermediate_size": FF, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "hidden_act": "silu",
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "vocab_size": VOCAB, "eos_token_id": 259
    })
}

/// The tensors of the tiny model (deterministic pseudo-random values).
fn tiny_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = |n: usize, scale: f32| common::random_values(n, scale, &mut state);
    let (q, kv) = (EMBD, EMBD / HEADS * KV_HEADS);
    let mut t = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let data = if name.ends_with("norm.weight") {
            rand(n, 0.1).into_iter().map(|x| 1.0 + x).collect()
        } else {
            rand(n, scale)
        };
        t.push((name, shape, data));
    };
    put("model.embed_tokens.weight".into(), vec![VOCAB, EMBD], 1.0);
    put("lm_head.weight".into(), vec![VOCAB, EMBD], 0.3);
    put("model.norm.weight".into(), vec![EMBD], 0.0);
    for i in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        put(p("input_layernorm.weight"), vec![EMBD], 0.0);
        put(p("post_attention_layernorm.weight"), vec![EMBD], 0.0);
        put(p("self_attn.q_proj.weight"), vec![q, EMBD], 0.3);
        put(p("self_attn.k_proj.weight"), vec![kv, EMBD], 0.3);
        put(p("self_attn.v_proj.weight"), vec![kv, EMBD], 0.3);
        put(p("self_attn.o_proj.weight"), vec![EMBD, q], 0.3);
        put(p("mlp.gate_proj.weight"), vec![FF, EMBD], 0.3);
        put(p("mlp.up_proj.weight"), vec![FF, EMBD], 0.3);
        put(p("mlp.down_proj.weight"), vec![EMBD, FF], 0.3);
    }
    t
}

/// A safetensors file of `tensors` as BF16.
fn safetensors_bf16(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let b = d
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect();
            (n.clone(), s.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b)
                    .expect("view"),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None).expect("serialize")
}

fn tiny_dir(tag: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> TinyDir {
    let path = std::env::temp_dir().join(format!("chrysalis-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("dir");
    let write = |name: &str, bytes: &[u8]| std::fs::write(path.join(name), bytes).expect("write");
    write("config.json", tiny_config().to_string().as_bytes());
    write(
        "tokenizer.json",
        tiny_tokenizer_json().to_string().as_bytes(),
    );
    write(
        "tokenizer_config.json",
        br#"{"eos_token": "<|im_end|>", "add_bos_token": false}"#,
    );
    write("model.safetensors", &safetensors_bf16(tensors));
    TinyDir { path }
}

fn load(path: &Path, precision: Precision) -> Result<Model, InferenceError> {
    Model::load(
        path,
        &LoadOptions {
            precision,
            ..Default::default()
        },
    )
}

#[test]
fn tiny_directory_loads_on_both_engines_and_they_agree() {
    let dir = tiny_dir("ok", &tiny_tensors());
    let native = load(&dir.path, Precision::Auto).expect("native");
    let candle = load(&dir.path.join("config.json"), Precision::Native).expect("candle");
    assert_eq!(native.identity.architecture, "llama");
    assert_eq!(native.identity.files.len(), 4);
    assert_eq!(native.identity.sha256, candle.identity.sha256);
    assert_eq!(
        native.identity.size,
        native.identity.files.iter().map(|f| f.size).sum::<u64>()
    );
    // The tokenizer: merges applied, the added token matched whole.
    assert_eq!(
        native.tokenizer.encode("hello<|im_end|>", true),
        vec![258, 111, 259]
    );
    assert!(native.tokenizer.is_eog(259));
    for prompt in [
        vec![258u32, 32, 104, 101],
        (0..40).map(|i| i * 6 % 256).collect(),
    ] {
        let a = prefill(&native, &prompt);
        let b = prefill(&candle, &prompt);
        let cos = cosine(&a, &b);
        assert!(cos > 0.999, "native vs candle cosine {cos}");
    }
    // Decoding step by step agrees with one prefill of the same tokens.
    let (native, candle) = (Arc::new(native), Arc::new(candle));
    let g = greedy(&native, &[258, 32], 6);
    assert_eq!(g.len(), 6);
    let mut s = native.session().expect("session");
    s.feed(&[258, 32]).expect("feed");
    let full: Vec<f32> = s.feed(&g[..5]).expect("feed").to_vec1().expect("logits");
    assert_eq!(argmax(&full) as u32, g[5]);
    let c = greedy(&candle, &[258, 32], 6);
    eprintln!("tiny greedy: native {g:?}, candle {c:?}");
}

#[test]
fn bos_is_added_once_whether_or_not_the_template_writes_it() {
    let dir = tiny_dir("bos", &tiny_tensors());
    let request = chrysalis_inference::GenerateRequest {
        model: String::new(),
        messages: vec![Message::new("user", "hell")],
        params: SamplingParams::greedy(1),
    };
    for (template, want) in [
        (
            "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
            vec![259, 258],
        ),
        (
            "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            vec![259, 258],
        ),
    ] {
        std::fs::write(
            dir.path.join("tokenizer_config.json"),
            serde_json::json!({
                "bos_token": "<|im_end|>", "eos_token": "<|im_end|>",
                "add_bos_token": true, "chat_template": template
            })
            .to_string(),
        )
        .expect("write");
        let m = Arc::new(load(&dir.path, Precision::Auto).expect("load"));
        assert_eq!(m.tokenizer.bos_to_add(), Some(259));
        let seq = Sequence::new(m, &request).expect("sequence");
        assert_eq!(seq.prompt_tokens(), want.as_slice(), "{template}");
    }
}

#[test]
fn malformed_or_unsupported_directories_are_refused() {
    let good = tiny_tensors();
    // A missing tensor.
    let missing: Vec<_> = good
        .iter()
        .filter(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
        .cloned()
        .collect();
    // A tensor the engine would ignore (a newer architecture's per-head norms).
    let mut extra = good.clone();
    extra.push((
        "model.layers.0.self_attn.q_norm.weight".into(),
        vec![EMBD / HEADS],
        vec![1.0; EMBD / HEADS],
    ));
    // A wrong shape.
    let mut reshaped = good.clone();
    if let Some(t) = reshaped
        .iter_mut()
        .find(|t| t.0 == "model.layers.0.self_attn.k_proj.weight")
    {
        t.1 = vec![EMBD, EMBD / HEADS * KV_HEADS];
    }
    for (tag, tensors, want) in [
        ("missing", missing, "missing"),
        ("extra", extra, "would not be used"),
        ("shape", reshaped, "shape"),
    ] {
        let dir = tiny_dir(tag, &tensors);
        for precision in [Precision::Auto, Precision::Native] {
            let e = load(&dir.path, precision).expect_err(tag).to_string();
            assert!(e.contains(want), "{tag}: {e}");
        }
    }

    let dir = tiny_dir("files", &good);
    let p = |n: &str| dir.path.join(n);
    // A truncated weight file.
    let st = std::fs::read(p("model.safetensors")).expect("read");
    std::fs::write(p("model.safetensors"), &st[..st.len() / 2]).expect("write");
    let e = load(&dir.path, Precision::Auto)
        .expect_err("truncated")
        .to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
    std::fs::write(p("model.safetensors"), &st).expect("write");
    // An unsupported architecture and an unsupported tokenizer.
    let mut cfg = tiny_config();
    cfg["model_type"] = "qwen3".into();
    std::fs::write(p("config.json"), cfg.to_string()).expect("write");
    assert!(matches!(
        load(&dir.path, Precision::Auto),
        Err(InferenceError::UnsupportedModel(_))
    ));
    // More layers than the weights hold: the first missing one is named.
    let mut cfg = tiny_config();
    cfg["num_hidden_layers"] = 1000.into();
    std::fs::write(p("config.json"), cfg.to_string()).expect("write");
    let e = load(&dir.path, Precision::Auto)
        .expect_err("layers")
        .to_string();
    assert!(e.contains("missing") && e.contains("model.layers."), "{e}");
    std::fs::write(p("config.json"), tiny_config().to_string()).expect("write");
    let mut tok = tiny_tokenizer_json();
    tok["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁"});
    std::fs::write(p("tokenizer.json"), tok.to_string()).expect("write");
    let e = load(&dir.path, Precision::Auto)
        .expect_err("metaspace")
        .to_string();
    assert!(e.contains("Metaspace"), "{e}");
    // No tokenizer at all.
    std::fs::remove_file(p("tokenizer.json")).expect("rm");
    let e = load(&dir.path, Precision::Auto)
        .expect_err("no tokenizer")
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    // Several weight files and no index to choose.
    std::fs::write(p("tokenizer.json"), tiny_tokenizer_json().to_string()).expect("write");
    std::fs::write(p("other.safetensors"), &st).expect("write");
    std::fs::remove_file(p("model.safetensors")).expect("rm");
    std::fs::write(p("second.safetensors"), &st).expect("write");
    let e = load(&dir.path, Precision::Auto)
        .expect_err("ambiguous")
        .to_string();
    assert!(e.contains("several"), "{e}");
}

#[test]
fn an_index_naming_a_path_outside_the_directory_is_refused() {
    let dir = tiny_dir("index", &tiny_tensors());
    std::fs::write(
        dir.path.join("model.safetensors.index.json"),
        br#"{"weight_map": {"model.embed_tokens.weight": "../elsewhere.safetensors"}}"#,
    )
    .expect("write");
    let e = load(&dir.path, Precision::Auto)
        .expect_err("escape")
        .to_string();
    assert!(e.contains("not a plain file name"), "{e}");
    // An index is checked before any weight file is read: an extra tensor, a missing one.
    let mut map: serde_json::Map<String, serde_json::Value> = tiny_tensors()
        .iter()
        .map(|t| (t.0.clone(), "model.safetensors".into()))
        .collect();
    map.insert(
        "model.layers.0.self_attn.q_norm.weight".into(),
        "model.safetensors".into(),
    );
    let write_index = |map: &serde_json::Map<String, serde_json::Value>| {
        std::fs::write(
            dir.path.join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": map }).to_string(),
        )
        .expect("write")
    };
    write_index(&map);
    let e = load(&dir.path, Precision::Auto)
        .expect_err("extra")
        .to_string();
    assert!(
        e.contains("q_norm") && e.contains("would not be used"),
        "{e}"
    );
    map.remove("model.layers.0.self_attn.q_norm.weight");
    map.remove("model.norm.weight");
    write_index(&map);
    let e = load(&dir.path, Precision::Auto)
        .expect_err("missing")
        .to_string();
    assert!(e.contains("model.norm.weight missing"), "{e}");
    map.insert("model.norm.weight".into(), "model.safetensors".into());
    write_index(&map);
    load(&dir.path, Precision::Auto).expect("a complete index loads");
}

// ---------------------------------------------------------------------------------------------
// The default model as a Hugging Face directory.

#[derive(serde::Deserialize)]
struct HfReference {
    gguf_sha256: String,
    files: HashMap<String, String>,
    manifest_sha256: String,
    tokenize: HashMap<String, Vec<Tok>>,
}

#[derive(serde::Deserialize)]
struct Tok {
    text: String,
    ids: Vec<u32>,
}

fn hf_dir() -> Option<(PathBuf, HfReference)> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct-hf"
    ));
    let reference = dir.with_extension("reference.json");
    match std::fs::read_to_string(&reference) {
        Ok(text) if dir.is_dir() => Some((dir, serde_json::from_str(&text).expect("reference"))),
        _ if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() => {
            panic!("{} missing: run `make hf-model`", dir.display())
        }
        _ => {
            eprintln!("skipping: {} missing (make hf-model)", dir.display());
            None
        }
    }
}

#[test]
fn tokenizer_json_variants_match_the_tokenizers_library() {
    let Some((dir, r)) = hf_dir() else { return };
    let variants = dir.with_extension("tokenizers");
    let mut checked = 0;
    for (name, path) in [
        ("smollm", dir.join("tokenizer.json")),
        ("qwen2-style", variants.join("qwen2-style.json")),
        ("llama3-style", variants.join("llama3-style.json")),
    ] {
        let json = std::fs::read(&path).expect("tokenizer.json");
        let tok = Tokenizer::from_hf(
            &json,
            &HfTokenizerHints {
                eos_token: Some("<|im_end|>".into()),
                ..Default::default()
            },
        )
        .expect(name);
        for t in r.tokenize.get(name).expect("ids") {
            assert_eq!(tok.encode(&t.text, true), t.ids, "{name}: {:?}", t.text);
            checked += 1;
        }
        // Only the Llama-3-style post-processor adds BOS (`<|im_start|>` here).
        assert_eq!(
            tok.bos_to_add(),
            (name == "llama3-style").then_some(1),
            "{name}"
        );
    }
    assert!(checked >= 3 * 15, "{checked}");
}

#[test]
fn default_model_directory_identity_and_tokens() {
    let Some((dir, r)) = hf_dir() else { return };
    let m = load(&dir, Precision::Auto).expect("load");
    assert_eq!(hex::encode(m.identity.sha256), r.manifest_sha256);
    assert_eq!(m.identity.files.len(), r.files.len());
    for f in &m.identity.files {
        assert_eq!(
            Some(&hex::encode(f.sha256)),
            r.files.get(&f.name),
            "{}",
            f.name
        );
    }
    assert_eq!(r.gguf_sha256, chrysalis_inference::DEFAULT_MODEL_SHA256);
    // The directory's tokenizer and template give exactly the GGUF's prompt tokens.
    let gguf = load_default(&LoadOptions::default()).expect("default model");
    for t in r.tokenize.get("smollm").expect("ids") {
        assert_eq!(
            m.tokenizer.encode(&t.text, true),
            gguf.tokenizer.encode(&t.text, true)
        );
        assert_eq!(m.tokenizer.decode(&t.ids), gguf.tokenizer.decode(&t.ids));
    }
    let chat = [Message::new("user", "What is the capital of France?")];
    assert_eq!(
        m.template.render(&chat).expect("render"),
        gguf.template.render(&chat).expect("render")
    );
}

#[test]
fn default_model_directory_runs_like_candle_and_like_the_gguf() {
    let Some((dir, _)) = hf_dir() else { return };
    let native = Arc::new(load(&dir, Precision::Auto).expect("native"));
    let candle = Arc::new(load(&dir, Precision::Native).expect("candle f32"));
    let gguf = load_default(&LoadOptions::default()).expect("default model");
    for prompt in [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers.",
    ] {
        let text = gguf
            .template
            .render(&[Message::new("user", prompt)])
            .expect("render");
        let ids = gguf.tokenizer.encode(&text, true);
        let (a, b, g) = (
            prefill(&native, &ids),
            prefill(&candle, &ids),
            prefill(&gguf, &ids),
        );
        // Same BF16 weights: our Q8_0 engine against candle's f32 arithmetic.
        let cos = cosine(&a, &b);
        assert!(cos > 0.999, "{prompt:?}: native vs candle cosine {cos}");
        assert_eq!(argmax(&a), argmax(&b), "{prompt:?}: first token");
        // The GGUF's Q4_1 weights went through BF16 and Q8_0: the same model, rounded twice.
        let cos_g = cosine(&a, &g);
        assert!(cos_g > 0.99, "{prompt:?}: directory vs GGUF cosine {cos_g}");
        let (gn, gc) = (greedy(&native, &ids, 12), greedy(&candle, &ids, 12));
        let same = gn.iter().zip(&gc).take_while(|(x, y)| x == y).count();
        eprintln!("{prompt:?}: cosine {cos:.6} (candle) {cos_g:.6} (gguf); greedy agrees for {same} of 12");
        assert!(same >= 4, "{prompt:?}: native {gn:?} vs candle {gc:?}");
    }
}
