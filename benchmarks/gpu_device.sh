#!/usr/bin/env bash
# Every GPU figure of the GPU levers (benchmarks/README.md) in one run on a machine with one GPU, for a budget of
# minutes rather than hours. Each step has its own timeout; everything a step prints goes to $OUT/run.log (and
# to the terminal), and its JSON into $OUT/results.tar, re-packed after every step: a run cut off at any point
# leaves what it measured in two files, each whole (the tar is replaced, never half written), quick to copy back.
#
# In this order, the goals' figures first (issue: GPU speed):
#  a. benchmarks/gpu.py, BASE, bf16, the real Trainer + PretrainTask + DataLoader path, 150 s per device, as
#     today (cropped batches: every batch a new shape, cudnn.benchmark off);
#  b. the levers: padded batches on a 1 s shape grid (data.shape_seconds=1) with cudnn.benchmark;
#  v. benchmarks/pretrain_throughput.py: earful against transformers at BASE on one padded batch (the 4x goal),
#     both eager with cudnn.benchmark;
#  c. b + torch.compile of the CNN and transformer layers (compile=true), recompiles logged, and a 3-step profile
#     (host against device time, kernel launches: the headroom);
#  d. device_seconds=auto for a 4000 s batch: the largest micro-batch that fits, found by trial (the stretch goal),
#     and its throughput over 2 steps (after 1 of warm-up) on a corpus of its own, large enough for them;
#  n. benchmarks/precision_numerics.py: tiny, 500 steps, bf16 against a strict fp32 (no TF32), two seeds (loss
#     within the seeds' spread, no divergence, masks the same for a seed: printed first);
#  w. v with earful compiled;
#  e. c with CUDA graphs (compile_mode=reduce-overhead), last because it may not run at all.
# Rows a, b, c and e warm up for 10 steps: on the 20-minute corpus the grid's 8 batch shapes first appear by
# step 10, and each new one costs a cuDNN search (or a compilation) that would otherwise land in the timed steps.
#
# Where the GPU machine has python3 with a CUDA torch, transformers, numpy, safetensors, PyYAML, tqdm and
# matplotlib but not soundfile or soxr, and cannot reach the network, prepare once, in the repository root
# (about 2 MB of wheels):
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl soundfile cffi pycparser soxr
# (in a git worktree .git is a file: there use "$(git rev-parse --git-path info/exclude)"). Then copy the working
# tree to the GPU machine with the wheels beside it (.whl is git-ignored: a clone or `git archive` leaves it out,
# so copy the folder itself, e.g. with rsync; through this workplace's device tool, from the checkout the session
# started in: `run` with carry [".whl"] and timeout_s 600 -- without the carry the install below fails and the
# script stops before any step), and run there
# "OUT=folder-for-the-results bash benchmarks/gpu_device.sh" (it installs the wheels into /tmp/site first, without
# the network). It is made for a session of about 10 minutes: the steps' own
# timeouts add up to 12.7 minutes, for the case where something hangs, and a deadline (DEADLINE, 550 s after the
# start) shortens or skips the last steps (w, e), so that every step's JSON is packed within about 9.5 minutes;
# with more time, raise DEADLINE. benchmarks/README.md says what each row answers.
# SMOKE=1 runs every step in its CPU smoke form (tiny model, a few steps; PYTHON=the interpreter; 3x the limits): a
# check of this script itself, which tests/model/test_benchmark_scripts.py runs.
set -uo pipefail
OUT=${OUT:-/tmp/earful-gpu}
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-}
RES=${RES:-/tmp/earful-gpu-results}
DEADLINE=${DEADLINE:-550}  # seconds: a step that would end later is shortened (or skipped), so that the last
rm -rf "$RES"              # pack runs before a 10-minute session (about 570 s of it for this script) ends
mkdir -p "$OUT" "$RES"
LOG="$OUT/run.log"
export TQDM_MININTERVAL=10  # progress bars: a line every 10 s, not a log full of them
pack() {  # every result so far, as one file that appears whole
    tar -C "$RES" -cf "$OUT/results.tar.tmp" . && mv "$OUT/results.tar.tmp" "$OUT/results.tar"
}
# the smoke steps' limits x3: on a loaded CPU (a CI machine's 2 cores shared with other tests) their time, mostly
# imports, grows with the load (measured: v 24 s of its 60, w 28 s of 80); a GPU run keeps its limits, sized to its
# 10-minute session
LIMIT_SCALE=1
[ -n "$SMOKE" ] && LIMIT_SCALE=3
step() {  # step NAME LIMIT COMMAND...: the command's output in the log, its exit status and time after it
    local name=$1 limit=$(($2 * LIMIT_SCALE)) t0=$SECONDS left=$((DEADLINE - SECONDS))
    shift 2
    if [ "$left" -lt 15 ]; then
        echo "=== $name: skipped, $left s left before the deadline" | tee -a "$LOG"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "=== $name (limit $limit s) at $(date +%T)" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$LOG"
    pack
}
# the wheels only where the interpreter lacks the packages: an image that has them needs no .whl (a missing one
# would otherwise end the session here, with nothing measured)
if [ -z "$SMOKE" ] && ! $PY -c 'import soundfile, soxr' >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tee -a "$LOG" || { echo "no wheels in .whl: see the top of this script" | tee -a "$LOG"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    echo "cores $(nproc)"
    df -h /dev/shm /tmp
} 2>&1 | tee -a "$LOG"
CORPUS=${CORPUS:-/tmp/earful-gpu-corpus}
GPU="$PY benchmarks/gpu.py --corpus $CORPUS --device-seconds 150 --steps 30 --warmup 10 ${SMOKE:+--smoke}"
GRID="data.padding=true data.shape_seconds=1 ${SMOKE:+compile_backend=aot_eager}"
VS="$PY benchmarks/pretrain_throughput.py --preset base --device cuda --precision bf16 --cudnn-benchmark
    --seconds 15.6 15.6 15.6 15.6 15.6 12.0 --reps 10 --warmup 3"
[ -n "$SMOKE" ] && VS="$PY benchmarks/pretrain_throughput.py --preset tiny --reps 1 --warmup 1 --no-memory
    --compile-backend aot_eager"
step a_today 90 $GPU --json "$RES/a_today.json"
step b_shapes 90 $GPU --cudnn-benchmark --override $GRID --json "$RES/b_shapes.json"
step v_vs_transformers 60 $VS --json "$RES/v_vs_transformers.json"
step c_compile 150 env TORCH_LOGS=recompiles $GPU --cudnn-benchmark --profile --override $GRID compile=true \
    --json "$RES/c_compile.json"
# its own 210-minute corpus (3 batches of 4000 s) in one bucket (none part-filled but the epoch's last), 4 loader
# workers (each holds up to 4 micro-batches of up to 256 MB in shared memory); no cudnn.benchmark (each trial and
# micro-batch shape would pay a search within a few steps): compare with row a
step d_auto 100 $PY benchmarks/gpu.py --corpus "$CORPUS-210" --minutes 210 --device-seconds 4000 \
    --steps 2 --warmup 1 --num-workers 4 ${SMOKE:+--smoke} \
    --override device_seconds=auto $GRID data.bucket_size=100000 --json "$RES/d_auto.json"
step n_numerics 90 $PY benchmarks/precision_numerics.py --device cuda --preset tiny --steps 500 \
    --corpus $CORPUS --out "$RES/numerics" ${SMOKE:+--smoke}
step w_vs_transformers_compiled 80 $VS --compile --json "$RES/w_vs_transformers_compiled.json"
# (its smoke form: the cudagraphs backend, which records no graphs on a CPU; aot_eager would ignore the mode)
GRAPHS=compile_mode=reduce-overhead
[ -n "$SMOKE" ] && GRAPHS=compile_backend=cudagraphs
step e_cuda_graphs 100 env TORCH_LOGS=recompiles $GPU --cudnn-benchmark --override $GRID compile=true $GRAPHS \
    --json "$RES/e_cuda_graphs.json"
