//! A tiny qwen2 GGUF written here (random weights, Q8_0 matrices, Q/K/V biases, half-split
//! rotary pairs): our native engine against candle's quantized qwen2 on the same file, and the
//! pool that lets candle qwen2 sessions reuse their weights instead of rebuilding them.

mod common;

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use chrysalis_inference::{LoadOptions, Model, Precision, SamplingParams, Sequence};
use common::cosine;

const VOCAB: usize = 258;
const EMBD: usize = 64;
const FF: usize = 128;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;

fn write_tiny_qwen2(path: &std::path::Path) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut put = |name: String, shape: &[usize], scale: f32, dtype: GgmlDType| {
        let n = shape.iter().product();
        let mut data = common::random_values(n, scale, &mut state);
        if name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x += 1.0);
        }
        let t = Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor");
        tensors.push((name, QTensor::quantize(&t, dtype).expect("quantize")));
    };
    let kv = EMBD / HEADS * KV_HEADS;
    put(
        "token_embd.weight".into(),
        &[VOCAB, EMBD],
        1.0,
        GgmlDType::Q8_0,
    );
    put("output.weight".into(), &[VOCAB, EMBD], 0.3, GgmlDType::Q8_0);
    put("output_norm.weight".into(), &[EMBD], 0.1, GgmlDType::F32);
    for i in 0..LAYERS {
        let p = |s: &str| format!("blk.{i}.{s}");
        put(p("attn_norm.weight"), &[EMBD], 0.1, GgmlDType::F32);
        put(p("ffn_norm.weight"), &[EMBD], 0.1, GgmlDType::F32);
        put(p("attn_q.weight"), &[EMBD, EMBD], 0.3, GgmlDType::Q8_0);
        put(p("attn_k.weight"), &[kv, EMBD], 0.3, GgmlDType::Q8_0);
        put(p("attn_v.weight"), &[kv, EMBD], 0.3, GgmlDType::Q8_0);
        put(p("attn_q.bias"), &[EMBD], 0.5, GgmlDType::F32);
        put(p("attn_k.bias"), &[kv], 0.5, GgmlDType::F32);
        put(p("attn_v.bias"), &[kv], 0.5, GgmlDType::F32);
        put(p("attn_output.weight"), &[EMBD, EMBD], 0.3, GgmlDType::Q8_0);
        put(p("ffn_gate.weight"), &[FF, EMBD], 0.3, GgmlDType::Q8_0);
        put(p("ffn_up.weight"), &[FF, EMBD], 0.3, GgmlDType::Q8_0);
        put(p("ffn_down.weight"), &[EMBD, FF], 0.3, GgmlDType::Q8_0);
    }
    let mut tokens: Vec<gguf_file::Value> = chrysalis_inference::tokenizer::byte_to_unicode()
        .into_iter()
        .map(|c| gguf_file::Value::String(c.to_string()))
        .collect();
    tokens.push(gguf_file::Value::String("he".into()));
    tokens.push(gguf_file::Value::String("<|im_end|>".into()));
    let mut types = vec![gguf_file::Value::I32(1); VOCAB - 1];
    types.push(gguf_file::Value::I32(3));
    let u = |v: usize| gguf_file::Value::U32(v as u32);
    let s = |v: &str| gguf_file::Value::String(v.into());
    let metadata: Vec<(&str, gguf_file::Value)> = vec![
        ("general.architecture", s("qwen2")),
        ("qwen2.context_length", u(256)),
        ("qwen2.embedding_length", u(EMBD)),
        ("qwen2.block_count", u(LAYERS)),
        ("qwen2.feed_forward_length", u(FF)),
        ("qwen2.attention.head_count", u(HEADS)),
        ("qwen2.attention.head_count_kv", u(KV_HEADS)),
        (
            "qwen2.attention.layer_norm_rms_epsilon",
            gguf_file::Value::F32(1e-6),
        ),
        ("qwen2.rope.freq_base", gguf_file::Value::F32(10_000.0)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("qwen2")),
        ("tokenizer.ggml.tokens", gguf_file::Value::Array(tokens)),
        ("tokenizer.ggml.token_type", gguf_file::Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            gguf_file::Value::Array(vec![s("h e")]),
        ),
        ("tokenizer.ggml.eos_token_id", u(VOCAB - 1)),
    ];
    let md: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).expect("create");
    gguf_file::write(&mut f, &md, &ts).expect("write gguf");
}

fn load(path: &std::path::Path, precision: Precision) -> Model {
    Model::load(
        path,
        &LoadOptions {
            precision,
            ..Default::default()
        },
    )
    .expect("load")
}

fn logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    m.session()
        .expect("session")
        .feed(tokens)
        .expect("feed")
        .to_vec1()
        .expect("logits")
}

#[test]
fn native_engine_matches_candle_qwen2_and_sessions_reuse_pooled_weights() {
    let path = std::env::temp_dir().join(format!("chrysalis-qwen2-{}.gguf", std::process::id()));
    write_tiny_qwen2(&path);
    let native = Arc::new(load(&path, Precision::Auto));
    let candle = Arc::new(load(&path, Precision::Native));
    std::fs::remove_file(&path).expect("rm");
    assert_eq!(native.identity.architecture, "qwen2");
    assert_eq!(
        native.tokenizer.encode("hello", false),
        vec![256, 108, 108, 111]
    );

    let prompts: [Vec<u32>; 2] = [vec![256, 32, 104], (0..48).map(|i| (i * 7) % 256).collect()];
    for p in &prompts {
        let (a, b) = (logits(&native, p), logits(&candle, p));
        let cos = cosine(&a, &b);
        assert!(cos > 0.999, "native vs candle qwen2: cosine {cos}");
    }

    // The pool: the instance built at load serves the first session and comes back after it.
    assert_eq!(candle.idle_instances(), 1);
    let first = logits(&candle, &prompts[1]);
    assert_eq!(candle.idle_instances(), 1, "returned after use");
    {
        let a = candle.session().expect("a");
        let b = candle.session().expect("b");
        assert_eq!(candle.idle_instances(), 0);
        drop((a, b));
    }
    assert_eq!(
        candle.idle_instances(),
        2,
        "one more was built for two at once"
    );
    // A reused instance starts from an empty cache: the same prompt gives the same logits.
    assert_eq!(logits(&candle, &prompts[1]), first);
    // Generation through the engine on a pooled instance, twice: identical greedy tokens.
    let greedy = || {
        let mut s = Sequence::from_tokens(
            Arc::clone(&candle),
            prompts[0].clone(),
            SamplingParams::greedy(8),
        )
        .expect("sequence");
        while !s.is_done() {
            s.step().expect("step");
        }
        s.generated().to_vec()
    };
    assert_eq!(greedy(), greedy());
    assert_eq!(native.idle_instances(), 0, "the native engine has no pool");
}
