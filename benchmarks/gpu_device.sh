#!/usr/bin/env bash
# The GPU figures in one prepared run on a lent GPU machine (the workplace's `device` tool: 15 minutes of
# device time a session, start-up included). Runs benchmarks/gpu.py (BASE, 87.5 s and 150 s per device, bf16,
# the real Pretrainer + DataLoader path) and benchmarks/pretrain_throughput.py on the GPU (earful vs
# transformers, BASE, bf16, one 90 s batch, padded and not), and attention_kernels.py (SDPA with a key mask
# against without), leaving the logs and JSON under $OUT. About 6 minutes.
#
# Prepare here, once, in the repository root. The GPU machine has python3 3.12 with torch, transformers,
# numpy, safetensors, PyYAML, tqdm and matplotlib, but not soundfile or soxr, and it cannot reach the network:
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl soundfile cffi pycparser soxr
# Then call the device tool's `run` with command "bash benchmarks/gpu_device.sh", carry [".whl"] and
# timeout_s 540, and give the machine back afterwards.
set -uo pipefail
OUT=${OUT:-/tmp/earful-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "no wheels in .whl: see the top of this script"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    nproc
} 2>&1 | tee "$OUT/env.txt"
timeout 240 python3 benchmarks/gpu.py 2>&1 | tee "$OUT/gpu.log"
timeout 120 python3 benchmarks/pretrain_throughput.py --preset base --device cuda --precision bf16 \
    --seconds 15.6 15.6 15.6 15.6 15.6 12.0 --reps 10 --warmup 3 --json "$OUT/vs_transformers.json" 2>&1 \
    | tee "$OUT/vs_transformers.log"
timeout 60 python3 benchmarks/attention_kernels.py --device cuda --precision bf16 2>&1 | tee "$OUT/attention.log"
# no padding: earful passes lengths=None (no key mask, FlashAttention), transformers an all-ones attention mask
timeout 100 python3 benchmarks/pretrain_throughput.py --preset base --device cuda --precision bf16 \
    --seconds 15.6 15.6 15.6 15.6 15.6 15.6 --reps 10 --warmup 3 --json "$OUT/vs_transformers_unpadded.json" 2>&1 \
    | tee "$OUT/vs_transformers_unpadded.log"
