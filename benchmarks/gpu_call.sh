#!/usr/bin/env bash
# The whole GPU check in one device call (docs/jetson.md: The papers' accuracy, reproduced):
# the CUDA smoke tests, then the paper-scale reproduction, results and logs into $OUT.
#
# Prepare here, once (the device has no network; `.device/` is git-ignored):
#   mkdir -p .device/wheels && cp ../shared/data/cifar10-jpeg.zip .device/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .device/wheels captum==0.9.0
#   # pycuda has no wheels: its source and pure-Python dependencies, built on the device
#   mkdir -p .device/pycuda && python3 -m pip download --no-deps --no-binary=pycuda \
#       -d .device/pycuda pycuda && python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 -d .device/pycuda pytools platformdirs mako markupsafe siphash24
# then: run(command="bash benchmarks/gpu_call.sh", carry=[".device"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/edgekd-gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .device/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .device/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
# pycuda, for the CUDA half of the TensorRT path (tests/test_gpu_trt_cuda.py): built here
# against the device's CUDA; when it cannot build, those tests skip and say so.
if ls .device/pycuda/pycuda-*.tar.gz >/dev/null 2>&1; then
    timeout 240 python3 -m pip install -q --no-index --find-links .device/pycuda --target /tmp/site \
        pycuda >"$OUT/pycuda_install.log" 2>&1 || echo "pycuda did not build: see pycuda_install.log"
    export PYTHONPATH=/tmp/site
fi
# 1. CUDA smoke tests (about a minute); their failure does not stop the reproduction.
timeout 150 python3 -m pytest -q -rs -m gpu tests/test_gpu.py tests/test_gpu_trt_cuda.py 2>&1 \
    | tee "$OUT/gpu_tests.log"
# 1b. Training speed of the workstation path on CUDA (digits, the default run).
timeout 240 python3 benchmarks/train_speed.py --device cuda --out "$OUT/train_speed_cuda.json" \
    >"$OUT/train_speed.log" 2>&1 || tail -5 "$OUT/train_speed.log"
# 2. The reproduction, cut short cleanly before its budget; the table is rewritten per method.
BUDGET="${BUDGET_S:-400}"
timeout $((BUDGET + 60)) python3 benchmarks/paper_reproduction.py --zip .device/cifar10-jpeg.zip \
    --work /tmp/edgekd-repro --results "$OUT" --budget-s "$BUDGET" 2>&1 | tee "$OUT/reproduction.log"
ls -la "$OUT"
