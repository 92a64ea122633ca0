#!/usr/bin/env python3
"""Build a Hugging Face model directory (safetensors, sharded) from the embedded default GGUF.

No Hugging Face checkpoint can be fetched from the registries this project may use, so the
safetensors test model is made from the default GGUF with independent tools:

- weights: dequantized by gguf-py (llama.cpp's own Python package), the Q/K row order that
  llama.cpp's converter applies to Hugging Face checkpoints undone, stored as BF16 (SmolLM2's
  published dtype) in two shards with `model.safetensors.index.json`, written here from the
  safetensors format description (8-byte header length, JSON header, data);
- tokenizer: `tokenizer.json` made by the Hugging Face `tokenizers` library from the GGUF's
  vocabulary, merges and control tokens, with SmolLM's pre-tokenizer (digits isolated, then
  byte-level GPT-2 split). The script checks that this tokenizer gives llama.cpp's ids on the
  reference strings before it writes anything;
- two more `tokenizer.json` variants over the same vocabulary, Qwen2-style (NFC, its split
  regex) and Llama-3-style (its split regex, ignore_merges, a BOS-adding post-processor), with the
  `tokenizers` library's ids for a set of strings: the Rust tokenizer must give the same.

Writes DIR/ (the model), DIR.reference.json (ids, file digests, the manifest digest computed
here as `sha256sum` would) and DIR.tokenizers/ (the variants).

Usage: make-hf-model.py GGUF DIR LLAMA_CPP_REFERENCE_JSON
"""

import hashlib
import json
import os
import shutil
import sys

import gguf
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

EXTRA_STRINGS = [
    "Cafe\u0301 de\u0301ja\u0300 vu",  # combining accents: NFC composes them
    "\u1100\u1161\u11a8 and \uac01",  # Hangul jamo vs the precomposed syllable
    "DON'T I'LL You'RE",
    "1234567 3.14159 12 345",
    "a   b\n\n  c\t\td  ",
    "日本語のテキストです。",
    "🦀🔒 emoji and ZWJ 👩‍💻",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n",
    "tabs\tand\r\nwindows newlines",
]

GGUF_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_name(name):
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, layer, part = name.split(".", 2)
    return f"model.layers.{layer}.{GGUF_TO_HF[part]}"


def undo_rope_permutation(w, n_head):
    """llama.cpp's converter interleaves each head's two rotary halves; restore the halves."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns, rounding to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, arr in tensors:
        data = to_bf16_bits(arr).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as out:
        out.write(len(head).to_bytes(8, "little"))
        out.write(head)
        for b in blobs:
            out.write(b)
    return offset


def base_tokenizer(tokens, merges, types):
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    return vocab, pairs, [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]


def make_tokenizer(vocab, pairs, added, pre, normalizer=None, ignore_merges=False, post=None):
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges))
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = post if post is not None else processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens(added)
    return tk


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    gguf_path, out_dir, ref_path = sys.argv[1:4]
    reader = gguf.GGUFReader(gguf_path)
    if field(reader, "general.architecture") != "llama" or field(reader, "tokenizer.ggml.pre") != "smollm":
        sys.exit("make-hf-model: expected the SmolLM2 GGUF (llama, smollm pre-tokenizer)")
    n_head = int(field(reader, "llama.attention.head_count"))
    n_head_kv = int(field(reader, "llama.attention.head_count_kv"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    types = field(reader, "tokenizer.ggml.token_type")

    # The tokenizer first: it must reproduce llama.cpp's ids before anything is written.
    vocab, pairs, added = base_tokenizer(tokens, merges, types)
    smollm = make_tokenizer(
        vocab, pairs, added,
        pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]),
    )
    reference = json.load(open(ref_path))
    for t in reference["tokenize"]:
        if not t["special"] and "<|" in t["text"]:
            continue  # the tokenizers library always matches added tokens
        got = smollm.encode(t["text"], add_special_tokens=False).ids
        if got != t["ids"]:
            sys.exit(f"make-hf-model: tokenizer.json disagrees with llama.cpp on {t['text']!r}: {got} != {t['ids']}")

    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    smollm.save(os.path.join(tmp, "tokenizer.json"))

    eos_id = int(field(reader, "tokenizer.ggml.eos_token_id"))
    bos_id = int(field(reader, "tokenizer.ggml.bos_token_id"))
    eps = float(np.format_float_positional(np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon"))))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(field(reader, "llama.embedding_length")),
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "hidden_act": "silu",
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "rms_norm_eps": eps,
        "rope_theta": float(field(reader, "llama.rope.freq_base")),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "vocab_size": len(tokens),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "bfloat16",
    }
    json.dump(config, open(os.path.join(tmp, "config.json"), "w"), indent=2)
    json.dump({"bos_token_id": bos_id, "eos_token_id": eos_id}, open(os.path.join(tmp, "generation_config.json"), "w"), indent=2)
    json.dump({
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "bos_token": tokens[bos_id],
        "eos_token": tokens[eos_id],
        "chat_template": field(reader, "tokenizer.chat_template"),
        "model_max_length": config["max_position_embeddings"],
        "tokenizer_class": "GPT2Tokenizer",
    }, open(os.path.join(tmp, "tokenizer_config.json"), "w"), indent=2)

    # Weights, in two shards.
    tensors = []
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            w = undo_rope_permutation(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = undo_rope_permutation(w, n_head_kv)
        tensors.append((hf_name(t.name), w))
    half = len(tensors) // 2
    shards = [tensors[:half], tensors[half:]]
    weight_map, total = {}, 0
    for i, part in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(os.path.join(tmp, name), part)
        weight_map.update({n: name for n, _ in part})
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
              open(os.path.join(tmp, "model.safetensors.index.json"), "w"), indent=2)

    # Tokenizer variants and every tokenizer's ids for the test strings.
    variants_dir = out_dir + ".tokenizers"
    shutil.rmtree(variants_dir, ignore_errors=True)
    os.makedirs(variants_dir)
    qwen2 = make_tokenizer(
        vocab, pairs, added,
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]),
        normalizer=normalizers.NFC(),
    )
    llama3 = make_tokenizer(
        vocab, pairs, added,
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]),
        ignore_merges=True,
        post=processors.TemplateProcessing(single=f"{tokens[bos_id]} $A", special_tokens=[(tokens[bos_id], bos_id)]),
    )
    qwen2.save(os.path.join(variants_dir, "qwen2-style.json"))
    llama3.save(os.path.join(variants_dir, "llama3-style.json"))
    strings = [t["text"] for t in reference["tokenize"]] + EXTRA_STRINGS
    ids = {}
    for name, tk in [("smollm", smollm), ("qwen2-style", qwen2), ("llama3-style", llama3)]:
        ids[name] = [{"text": s, "ids": tk.encode(s, add_special_tokens=False).ids} for s in strings]
    with_bos = llama3.encode("hi", add_special_tokens=True).ids
    if with_bos[:1] != [bos_id]:
        sys.exit("make-hf-model: the llama3-style post-processor does not add BOS")

    files = {n: sha256_file(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
    manifest = "".join(f"{files[n]}  {n}\n" for n in sorted(files, key=lambda s: s.encode()))
    out = {
        "gguf_sha256": sha256_file(gguf_path),
        "files": files,
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
        "tokenize": ids,
        "tool_versions": {"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.17.1",
                          "tokenizers": __import__("tokenizers").__version__,
                          "numpy": np.__version__},
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    json.dump(out, open(out_dir + ".reference.json", "w"), indent=1, ensure_ascii=False)
    print(f"make-hf-model: {out_dir} ({total >> 20} MiB of BF16 weights, {len(shards)} shards), "
          f"manifest {out['manifest_sha256']}")


if __name__ == "__main__":
    main()
