#!/usr/bin/env bash
# The GPU study (studies/gpu.yaml: the paper's design on one GPU) in calls of at most 10 minutes each, for a GPU
# lent by the session: each call runs `earful study run` until DEADLINE seconds from its start, then stops it as
# a scheduler would (SIGTERM: the study stops at its jobs' next step, exit status 4, and the next call resumes it
# with the bits of an uninterrupted run), and packs into $OUT what a reader needs, each file whole:
#   study.tar.gz  the study folder without its weights (*.safetensors, *.pt): records, logs, report; a few MB,
#                 re-packed at every call;
#   status.md     `earful study status` (how far it came);  time.txt  the calls' wall seconds, one line each;
#   run.log       the study's output.
# The study folder stays on the machine: a second call on the same (still warm) machine continues it; a fresh
# machine starts it over. Its wall time is the sum of time.txt's lines until status.md says every run is done.
#
# Prepare as for benchmarks/gpu_device.sh (its header: the .whl folder, carried with the working tree), with
# three wheels more, which corpus synthesis, fine-tuning and probes import:
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl soundfile cffi pycparser soxr espeakng-loader jiwer rapidfuzz
# then, through the device tool: `run` "OUT=\$OUT bash benchmarks/gpu_study.sh" with carry [".whl"] and
# timeout_s 600, and again on the warm machine while status.md shows runs to do.
# STUDY (default gpu, the study preset studies/gpu.yaml; or a file's path), FOLDER (default runs/gpu) and DEADLINE
# (default 480 s: with the 30 s a stop may take, the pack and the install, a call ends well within 600 s) may be
# set; PYTHON is the interpreter.
set -uo pipefail
OUT=${OUT:-/tmp/earful-gpu-study}
PY=${PYTHON:-python3}
STUDY=${STUDY:-gpu}  # earful's study of that name, studies/gpu.yaml (by name: it needs no link in the copied tree)
FOLDER=${FOLDER:-runs/gpu}
DEADLINE=${DEADLINE:-480}
mkdir -p "$OUT"
LOG="$OUT/run.log"
export TQDM_MININTERVAL=10
if ! $PY -c 'import soundfile, soxr, espeakng_loader, jiwer' >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tee -a "$LOG" || { echo "no wheels in .whl: see the top of this script" | tee -a "$LOG"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$SECONDS
echo "=== study run $STUDY -> $FOLDER, until ${DEADLINE} s, at $(date +%T)" | tee -a "$LOG"
timeout --preserve-status -s TERM -k 30 "$DEADLINE" $PY -m earful.cli study run "$STUDY" --out "$FOLDER" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "=== study run: exit $rc after $((SECONDS - t0)) s (4: stopped at the deadline; call again to go on)" \
    | tee -a "$LOG"
echo "$((SECONDS - t0)) exit $rc" >> "$OUT/time.txt"
$PY -m earful.cli study status "$FOLDER" > "$OUT/status.md" 2>&1
tar -C "$(dirname "$FOLDER")" --exclude='*.safetensors' --exclude='*.pt' -czf "$OUT/study.tar.gz.tmp" \
    "$(basename "$FOLDER")" && mv "$OUT/study.tar.gz.tmp" "$OUT/study.tar.gz"
exit "$rc"
