#!/bin/sh
# Runs the CUDA check on a GPU machine: benchmarks/gpu_check.sh BUNDLE [RESULTS.json]
# BUNDLE comes from `python -m honer.benchmarks.gpu_check build` (see gpu_check.py). Needs the
# machine's python3 with torch (CUDA build), numpy and transformers; installs the rest (TVM's
# runtime and tvm-ffi) from the bundle into a temporary directory, nothing system-wide.
set -eu
bundle=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-$repo/benchmarks/results/gpu_check.json}
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$bundle"/runtime/*.whl
tar -xzf "$bundle/runtime/tvm-runtime.tar.gz" -C "$site"
# the repository root is the package `honer`: expose it under that name
mkdir -p "$site/.pkg" && ln -sfn "$repo" "$site/.pkg/honer"
export PYTHONPATH="$site:$site/.pkg${PYTHONPATH:+:$PYTHONPATH}" TVM_USE_RUNTIME_LIB=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [ -n "${GPU_CHECK_SANITIZE:-}" ]; then  # a case id: one run under compute-sanitizer first
  timeout 240 compute-sanitizer --tool memcheck --print-limit 4 \
    python3 -m honer.benchmarks.gpu_check once --bundle "$bundle" --id "$GPU_CHECK_SANITIZE" \
    2>&1 | grep -v "^=========     Host Frame" | head -60 || true
fi
python3 -m honer.benchmarks.gpu_check run --bundle "$bundle" --out "$out" ${GPU_CHECK_ARGS:-}
