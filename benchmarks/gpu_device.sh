#!/usr/bin/env bash
# Every GPU figure of the GPU levers (benchmarks/README.md) in one run on a machine with one GPU, for a budget of
# minutes rather than hours. About 8 minutes; each step has its own timeout, and the logs and
# JSON land under $OUT as they are made, so a cut-off run still returns what it measured.
#
#  1. benchmarks/gpu.py, BASE, bf16, the real Trainer + PretrainTask + DataLoader path, 150 s per device:
#     a. as today (cropped batches: every batch a new shape, cudnn.benchmark off);
#     b. the levers: padded batches on a 1 s shape grid (data.shape_seconds=1) with cudnn.benchmark;
#     c. b + torch.compile of the CNN and transformer layers (compile=true);
#     d. device_seconds=auto for a 1200 s batch (the largest micro-batch that fits, found by trial);
#  2. benchmarks/precision_numerics.py: small, 500 steps, bf16 against fp32, two seeds (loss within the seeds'
#     spread, no divergence, masks the same for a seed);
#  3. benchmarks/pretrain_throughput.py: earful against transformers at BASE on one padded batch (the 4x goal).
#  4. as time allows: e. c with CUDA graphs (compile_mode=reduce-overhead), last because it may not run at all.
#
# Where the GPU machine has python3 3.12 with torch, transformers, numpy, safetensors, PyYAML, tqdm and
# matplotlib but not soundfile or soxr, and cannot reach the network, prepare once, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl soundfile cffi pycparser soxr
# Then copy the working tree (with .whl) to the GPU machine and run "bash benchmarks/gpu_device.sh" there under a
# limit of about 9.5 minutes (OUT=folder for the results). The steps' own timeouts add up to 12.7 minutes, for
# the case where something hangs: then the last row (e) is the one cut. benchmarks/README.md says what each row
# answers.
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
CORPUS=/tmp/earful-gpu-corpus
GPU="python3 benchmarks/gpu.py --corpus $CORPUS --device-seconds 150 --steps 30"
timeout 100 $GPU --json "$OUT/a_today.json" 2>&1 | tee "$OUT/a_today.log"
timeout 100 $GPU --cudnn-benchmark --override data.padding=true data.shape_seconds=1 --json "$OUT/b_shapes.json" \
    2>&1 | tee "$OUT/b_shapes.log"
timeout 170 $GPU --cudnn-benchmark --override data.padding=true data.shape_seconds=1 compile=true \
    --json "$OUT/c_compile.json" 2>&1 | tee "$OUT/c_compile.log"
timeout 60 python3 benchmarks/gpu.py --corpus $CORPUS --device-seconds 1200 --steps 5 --warmup 2 \
    --override device_seconds=auto data.padding=true data.shape_seconds=1 --json "$OUT/d_auto.json" 2>&1 \
    | tee "$OUT/d_auto.log"
timeout 150 python3 benchmarks/precision_numerics.py --device cuda --steps 500 2>&1 | tee "$OUT/numerics.log"
timeout 60 python3 benchmarks/pretrain_throughput.py --preset base --device cuda --precision bf16 \
    --seconds 15.6 15.6 15.6 15.6 15.6 12.0 --reps 10 --warmup 3 --json "$OUT/vs_transformers.json" 2>&1 \
    | tee "$OUT/vs_transformers.log"
timeout 120 $GPU --cudnn-benchmark --override data.padding=true data.shape_seconds=1 compile=true \
    compile_mode=reduce-overhead --json "$OUT/e_cuda_graphs.json" 2>&1 | tee "$OUT/e_cuda_graphs.log"
