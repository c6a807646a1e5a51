"""The probes' noise floor and speed: one checkpoint probed with several probe seeds, against its random init and
log-mel filterbanks, on a corpus made by ``earful synth``.

Run by hand (docs/probes.md has the commands and the latest numbers)::

    python benchmarks/probe_noise.py --ckpt RUN/checkpoints/step-0000338 --init RUN/checkpoints/init \\
        --corpus runs/corpus-demo-1.5h --seeds 0 1 2 3 4 --out runs/probe-noise

Per task metric it prints the mean ± standard deviation over seeds of each upstream, the gap between the random
init and the checkpoint (positive: the checkpoint is better), and the ratio of the larger of the two standard
deviations to the gap, which must be at most 1/3 for the probe to rank the two. Timing: the feature extraction of
each upstream (once, into the cache), and each whole suite run with cached features, wall-clock and CPU time of the
process (other work on the machine stretches the first, not the second), as medians over seeds and ratios to the
3-minute budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from earful.atomic import atomic_write_json
from earful.probe.features import Upstream, features
from earful.probe.report import METRICS
from earful.probe.suite import SUITE_SPLITS, TASKS, run_suite

BUDGET_SECONDS = 180.0


def measure(args: argparse.Namespace) -> dict[str, dict]:
    cache = args.cache or args.out / "cache"
    upstreams = {"checkpoint": Upstream.parse(args.ckpt), "random init": Upstream.parse(args.init),
                 "fbank": Upstream.parse("fbank")}
    manifests = sorted({args.corpus / "manifests" / f"{m}.jsonl" for t in args.tasks for m in SUITE_SPLITS[t]})
    summary: dict[str, dict] = {}
    for name, up in upstreams.items():
        start = time.perf_counter()
        for m in manifests:
            features(up, m, cache, progress=False)
        extraction = time.perf_counter() - start
        runs, seconds, cpu = [], [], []
        for seed in args.seeds:
            start, start_cpu = time.perf_counter(), time.process_time()
            runs.append(run_suite(up, args.corpus, args.out / name.replace(" ", "-") / f"seed-{seed}", args.tasks,
                                  seed, cache_dir=cache, progress=False))
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            print(f"{name} seed {seed}: {json.dumps(runs[-1])} ({seconds[-1]:.0f} s, {cpu[-1]:.0f} s CPU)", flush=True)
        summary[name] = {"extraction_seconds": extraction, "suite_seconds": seconds, "suite_cpu_seconds": cpu,
                         "runs": runs}
    atomic_write_json(args.out / "noise.json", {"seeds": args.seeds, "threads": args.threads, "tasks": args.tasks,
                                                "summary": summary})
    return summary


def report(summary: dict[str, dict], tasks: list[str], seeds: list[int], threads: int) -> None:
    print(f"\n{len(seeds)} seeds, {threads} thread(s); mean ± sd, percent")
    print(f"{'task metric':16s} " + " ".join(f"{n:>14s}" for n in summary) + "   gap (init−ckpt)  sd/gap")
    for task in tasks:
        for metric, higher in METRICS[task].items():
            stats = {n: [100 * r[task][metric] for r in s["runs"]] for n, s in summary.items()}
            ms = {n: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for n, v in stats.items()}
            gap = (ms["checkpoint"][0] - ms["random init"][0]) * (1 if higher else -1)
            ratio = max(ms["checkpoint"][1], ms["random init"][1]) / abs(gap) if gap else float("inf")
            verdict = "TOO NOISY" if ratio > 1 / 3 else "ok" if gap > 0 else "ok, but the random init is better"
            print(f"{task + ' ' + metric:16s} " + " ".join(f"{m:7.1f} ± {s:4.2f}" for m, s in ms.values())
                  + f"   {gap:+8.1f}        {ratio:5.2f} {verdict}")
    print("\nseconds: extraction (once, into the cache) | whole suite with cached features, median over seeds, wall "
          f"and CPU (the process's; wall on an idle machine is close to it with one thread), as ratios to the "
          f"{BUDGET_SECONDS:.0f} s budget")
    for name, s in summary.items():
        wall, cpu = statistics.median(s["suite_seconds"]), statistics.median(s["suite_cpu_seconds"])
        print(f"  {name:12s} {s['extraction_seconds']:6.1f} | wall {wall:6.1f} ({wall / BUDGET_SECONDS:.2f}) "
              f"CPU {cpu:6.1f} ({cpu / BUDGET_SECONDS:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="the pre-trained checkpoint")
    p.add_argument("--init", help="its random init (a pre-training run's checkpoints/init)")
    p.add_argument("--corpus", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--cache", type=Path, default=None, help="feature cache (default: OUT/cache)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="print the table of OUT/noise.json again, measure nothing")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"--tasks: unknown {unknown} (the suite's: {' '.join(TASKS)})")
    if args.report:
        if not (args.out / "noise.json").is_file():
            p.error(f"--report: {args.out / 'noise.json'} is not there (measure first, with --ckpt, --init, --corpus)")
        saved = json.loads((args.out / "noise.json").read_text(encoding="utf-8"))
        report(saved["summary"], saved.get("tasks", list(TASKS)), saved["seeds"], saved["threads"])
        return
    if not (args.ckpt and args.init and args.corpus):
        p.error("--ckpt, --init and --corpus are needed to measure")
    torch.set_num_threads(args.threads)
    report(measure(args), args.tasks, args.seeds, args.threads)


if __name__ == "__main__":
    main()
