#!/usr/bin/env bash
# The CuPy backend's whole check on a GPU machine, in one command (under 8 minutes on an H200,
# no network needed):
#     bash tools/gpu_check.sh [OUT_DIR]
# 1. puts this checkout on the path (a copy of qwen_np/ with backends/ as qwen_np/backends, as
#    pyproject.toml maps them; nothing is installed or downloaded),
# 2. runs the conformance suite and the CPU-emulation tests over the cupy backend (every op on
#    awkward shapes, then the tiny fixture models' logits and greedy tokens),
# 3. writes a Qwen-7B-shaped GPTQ int4 checkpoint with random codes (tools/make_qwen7b_int4.py),
# 4. prints the GEMV's bandwidth against a streaming-read ceiling (7B and 0.5B shapes), decode
#    and prefill tokens/s and peak device memory at a 2048-token context (tools/gpu_bench.py).
# Without a GPU each GPU step says why it skipped, and the script still runs to its end.
set -u
HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-${OUT:-$(mktemp -d /tmp/qwen-np-gpu-check.XXXXXX)}}"
mkdir -p "$OUT"
SITE="$(mktemp -d /tmp/qwen-np-site.XXXXXX)"
cp -r "$HERE/qwen_np" "$SITE/qwen_np"
cp -r "$HERE/backends" "$SITE/qwen_np/backends"
export PYTHONPATH="$SITE"
PY="${PYTHON:-python3}"
status=0
step() { echo; echo "== $(date +%H:%M:%S) $*"; }

step "environment"
"$PY" -c "import numpy, sys; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
"$PY" - <<'PYEOF'
try:
    import cupy
    print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as e:
    print("cupy: not usable here:", str(e).splitlines()[0] if str(e) else type(e).__name__)
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

step "conformance suite and CUDA kernel tests over the cupy backend"
(cd "$HERE/tests" && "$PY" -m pytest -q -o addopts=--import-mode=importlib -p no:cacheprovider \
    test_backend_conformance.py test_cuda_kernels_cpu.py test_cupy_backend.py -k "cupy or cuda_kernels" \
    2>&1 | tail -4) | tee "$OUT/conformance.txt"
grep -qE "[0-9]+ (failed|error)" "$OUT/conformance.txt" && status=1

step "a Qwen-7B-shaped int4 checkpoint (random codes)"
"$PY" "$HERE/tools/make_qwen7b_int4.py" --out "$OUT/qwen7b-int4" --no-tokenizer \
    2>&1 | tail -5 || status=1

step "GEMV bandwidth, decode, prefill and memory on the GPU"
"$PY" "$HERE/tools/gpu_bench.py" --model "$OUT/qwen7b-int4" --json "$OUT/gpu_bench.json" \
    2>&1 | tee "$OUT/gpu_bench.txt" || status=1

rm -rf "$OUT/qwen7b-int4" "$SITE"
step "done (exit $status); figures in $OUT"
exit $status
