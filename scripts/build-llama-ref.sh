#!/usr/bin/env bash
# Build the llama.cpp reference (llama-cpp-python from PyPI, compiled here) into target/llama-venv.
# This CPU advertises AMX but AMX instructions fault in this VM: native detection and AMX are off,
# AVX-512/AVX2/FMA/F16C on. Used to regenerate inference fixtures and by `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
V=target/llama-venv
if [[ -x $V/bin/python ]] && $V/bin/python -c 'import llama_cpp' 2>/dev/null; then exit 0; fi
python3 -m venv $V
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
$V/bin/pip install --disable-pip-version-check --quiet --no-binary llama-cpp-python llama-cpp-python==0.3.36 numpy
