#!/usr/bin/env python3
"""Record llama.cpp's reference outputs for the inference tests.

Usage (after scripts/build-llama-ref.sh and make model):
    target/llama-venv/bin/python scripts/llama-reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
        > inference/testdata/llama-cpp-reference.json

Records, for the GGUF given: token ids of a set of test strings (plain and with special tokens
parsed), and for fixed chat prompts the prompt ids, the first 32 greedy tokens (with each step's runner-up
and top-2 logit margin) and the logits after the prompt (f32 little-endian, base64). Greedy decoding is done here with argmax over the
raw logits, so no sampler setting of llama.cpp is involved.

The KV cache is F32 (type_k = type_v = GGML_TYPE_F32), the arithmetic candle uses. With
llama.cpp's default F16 cache, K, V, Q and the attention weights are rounded to half precision;
that alone moves llama.cpp's own greedy output (it differs from itself-with-F32 from the 8th
token on the first prompt). Those default-cache greedy ids are recorded too, for the record.
"""
import base64, hashlib, json, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama

TOKENIZE = [
    ("Hello world", False),
    ("What is the capital of France?", False),
    ("In 2024, 1234567 people paid $3.50 each.", False),
    ("  leading spaces and trailing   ", False),
    ("line one\nline two\n\n\tindented", False),
    ("naïve café résumé — “quotes” ½ ² 東京 🙂", False),
    ("def f(x):\n    return x**2 + 10  # comment", False),
    ("don't won't I'm you're they've we'll she'd", False),
    ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|> is literal text here", False),
]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
]


def chat(prompt):
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def greedy(llm, ids, eog):
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    prefill = logits.copy()
    out, ties = [], []
    for _ in range(32):
        tok = int(np.argmax(logits))
        second = int(np.argsort(-logits)[1])
        out.append(tok)
        ties.append({"runner_up": second, "margin": float(logits[tok] - logits[second])})
        if tok in eog:
            break
        llm.eval([tok])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return out, prefill, ties


def main():
    path = sys.argv[1]
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    llm = Llama(model_path=path, n_ctx=2048, n_threads=2, n_batch=512, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm16 = Llama(model_path=path, n_ctx=2048, n_threads=2, n_batch=512, logits_all=True, verbose=False)
    # End-of-generation tokens as llama.cpp treats them for this vocabulary.
    eog = {llm.token_eos()} | {t for name in ("<|im_end|>", "<|endoftext|>") for t in llm.tokenize(name.encode(), add_bos=False, special=True)}
    out = {
        "generator": "scripts/llama-reference.py",
        "llama_cpp_python": llama_cpp.__version__,
        "kv_cache": "f32",
        "model_sha256": sha,
        "tokenize": [
            {"text": t, "special": s, "ids": llm.tokenize(t.encode(), add_bos=False, special=s)}
            for t, s in TOKENIZE
        ],
        "generations": [],
    }
    for p in PROMPTS:
        text = chat(p)
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        greedy_ids, prefill, ties = greedy(llm, ids, eog)
        greedy_f16, _, _ = greedy(llm16, ids, eog)
        out["generations"].append({
            "prompt": p,
            "prompt_ids": ids,
            "greedy_ids": greedy_ids,
            "greedy_steps": ties,
            "greedy_ids_default_f16_kv_cache": greedy_f16,
            "prefill_logits_f32le_b64": base64.b64encode(prefill.astype("<f4").tobytes()).decode(),
        })
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
