#!/usr/bin/env bash
# Inference benchmark: chrysalis-enclave (candle) against llama.cpp (llama-cpp-python built here)
# in one run, same GGUF, same prompt, same thread count; then scheduler throughput with 8 and 32
# concurrent streams, and peak memory. Needs `make model llama-ref`.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-128}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
PROMPT=${PROMPT:-"Write a short story about a lighthouse keeper who finds a message in a bottle."}
cargo build --release -q -p chrysalis-enclave
BIN=target/release/chrysalis-enclave
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads $THREADS, $TOKENS tokens"
for precision in auto native; do
  for run in 1 2; do
    out=$($BIN generate --model $MODEL --prompt "$PROMPT" --max-tokens $TOKENS --threads $THREADS --precision $precision --json)
    echo "chrysalis precision=$precision run=$run: $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("decode %.1f tok/s, ttft %.1f ms, prompt %d tok, generated %d, peak rss %.0f MiB" % (d["decode_tokens_per_s"], d["ttft_ms"], d["prompt_tokens"], d["completion_tokens"], d["peak_rss_mib"]))')"
  done
done
# The same model as a Hugging Face directory (BF16 safetensors, `make hf-model`): the native
# engine quantizes it to Q8_0 at load, candle runs it in f32. Wall time includes loading.
HF=models/SmolLM2-135M-Instruct-hf
if [[ -d $HF ]]; then
  for precision in auto native; do
    start=$(date +%s.%N)
    out=$($BIN generate --model $HF --prompt "$PROMPT" --max-tokens $TOKENS --threads $THREADS --precision $precision --json)
    end=$(date +%s.%N)
    echo "chrysalis safetensors precision=$precision: $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("decode %.1f tok/s, ttft %.1f ms, generated %d, peak rss %.0f MiB" % (d["decode_tokens_per_s"], d["ttft_ms"], d["completion_tokens"], d["peak_rss_mib"]))'), whole command $(python3 -c "print(f'{$end - $start:.2f}')") s"
  done
fi
target/llama-venv/bin/python - "$MODEL" "$PROMPT" "$TOKENS" "$THREADS" <<'PY'
import sys, time
import numpy as np
from llama_cpp import Llama
path, prompt, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
sys_msg = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
text = f"<|im_start|>system\n{sys_msg}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
ids = llm.tokenize(text.encode(), add_bos=False, special=True)
for run in (1, 2):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t1 = time.perf_counter()
    gen = 1
    while gen < n:
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        gen += 1
    t2 = time.perf_counter()
    print(f"llama.cpp run={run}: decode {(gen - 1) / (t2 - t1):.1f} tok/s, ttft {(t1 - t0) * 1e3:.1f} ms, prompt {len(ids)} tok, generated {gen} (EOS ignored)")
PY
for n in 8 32; do
  echo "chrysalis scheduler, $n streams: $($BIN generate --model $MODEL --prompt "$PROMPT" --max-tokens 64 --threads $THREADS --temperature 0.7 --streams $n)"
done
