"""`earful prepare`'s peak memory on unlabelled Libri-light: its segments kept as columns (``Segments``, 16 bytes a
segment) against the peer, the same `earful prepare` with each split's segments held as one ``Utterance`` a
segment until the manifests are written (what it held before; the peer also holds, for a moment, the columns its
list is made from: 16 bytes a segment). Both run on one synthetic Libri-light tree made here: ``--files`` tiny
FLACs of digital silence (16 kHz), each with a ``FILE.json`` whose ``voice_activity`` lists ``--segments`` stretches
of 0.05 s, 0.05 s apart, cut with ``--max-seconds 0.05 --min-seconds 0.05 --max-pause 0`` into one segment each
(ids, paths and speakers of Libri-light's shape: ``SPEAKER/BOOK/chapter_NNNNN_64kb-NNNN``). Each run is a fresh
process: its peak resident memory (VmHWM) less its RSS before `prepare` started (after a `prepare` of one file:
what a run imports is not counted), over the segments, and its wall-clock; they alternate (earful first, then
the peer first, ...), and the manifests are checked byte-identical.

Each run's peak is given a segment and a file: many short files (``--files 20000 --segments 3``) measure what is
held a file (its paths, ids, the record of the files read), few long ones what is held a segment. ``--before REV``
adds a third run, the `earful prepare` of the git revision REV (its ``earful/`` exported into the temporary
folder), and checks its manifests and problems' list byte-identical too: the peer a change to what is held a file
is measured against.

Run by hand: ``python benchmarks/prepare_memory.py [--files 400] [--segments 2500] [--repeats 1] [--before REV]``
(1 M segments: 15 s a run on a busy 2-core box; 20,000 files of 3 segments: about 40 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEP_S, SEGMENT_S = 0.1, 0.05  # a 0.05 s stretch of voice every 0.1 s
LIMITS = ["--max-seconds", str(SEGMENT_S), "--min-seconds", str(SEGMENT_S), "--max-pause", "0"]


def make_tree(root: Path, files: int, segments: int) -> None:
    """``files`` copies of one silent FLAC, as ``SPEAKER/BOOK/FILE.flac`` (20 files a speaker, 5 a book), each with
    ``segments`` annotated stretches of voice."""
    import soundfile as sf

    root.mkdir(parents=True)
    template = root.parent / "template.flac"
    sf.write(template, np.zeros(round((segments * STEP_S + STEP_S) * 16000), dtype=np.float32), 16000)
    meta = json.dumps({"voice_activity": [[round(k * STEP_S, 3), round(k * STEP_S + SEGMENT_S, 3)]
                                          for k in range(segments)]})
    for k in range(files):
        flac = root / f"{k // 20}" / f"book_{k // 5}" / f"chapter_{k:05d}_64kb.flac"
        flac.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, flac)
        flac.with_suffix(".json").write_text(meta)


def _status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def run(way: str, tree: Path, out: Path) -> dict[str, float]:
    """`earful prepare TREE OUT` here, ``way`` "earful", "peer" (its splits made lists of ``Utterance``) or
    "before" (the earful of ``--before``, first on the path)."""
    import logging

    from earful.cli import main
    from earful.data import commands

    if way == "peer":
        discover = commands.discover

        def listed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            return {name: list(utts) for name, utts in discover(*args, **kwargs).items()}

        commands.discover = listed
    logging.disable(logging.INFO)  # the log and the bar, not measured
    if main(["prepare", str(tree.parent / "warm" / "small"), str(out.parent / f"warm-{way}"), *LIMITS]):
        raise SystemExit(f"{way}: earful prepare of one file exited non-zero")  # what a run imports, not measured
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to what is resident now (Linux)
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    rc = main(["prepare", str(tree), str(out), *LIMITS])
    seconds = time.perf_counter() - t
    if rc:
        raise SystemExit(f"{way}: earful prepare exited {rc}")
    return {"added_kb": _status_kb("VmHWM") - before, "before_kb": before, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--segments", type=int, default=2500, help="segments a file")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--before", metavar="REV", help="also run earful of this git revision (e.g. main)")
    p.add_argument("--way", choices=("earful", "peer", "before"), help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.files < 1 or args.segments < 1 or args.repeats < 1:
        p.error("--files, --segments and --repeats: expected at least 1")
    if args.way:
        print(json.dumps(run(args.way, args.dir / "small", args.dir / f"out-{args.way}")))
        return
    rows = args.files * args.segments
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(root / "small", args.files, args.segments)
        make_tree(root / "warm" / "small", 1, 1)
        got: dict[str, list[dict[str, float]]] = {"earful": [], "peer": []}
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if args.before:
            got["before"] = []
            export = subprocess.run(["git", "archive", args.before, "earful"], cwd=Path(__file__).parent.parent,
                                    capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=export, check=True)
        for k in range(args.repeats):
            for way in sorted(got, reverse=k % 2 == 1):  # earful first, then the peer first, ...
                path = {"PYTHONPATH": os.pathsep.join([tmp, env.get("PYTHONPATH", "")])} if way == "before" else {}
                r = subprocess.run([sys.executable, __file__, "--way", way, "--dir", str(root)], capture_output=True,
                                   text=True, env={**env, **path})
                if r.returncode:
                    raise SystemExit(f"{way} failed:\n{r.stderr[-3000:]}")
                got[way].append(json.loads(r.stdout.strip().splitlines()[-1]))
        for way in got.keys() - {"earful"}:
            theirs, ours = sorted((root / f"out-{way}").iterdir()), sorted((root / "out-earful").iterdir())
            if ([f.name for f in theirs] != [f.name for f in ours]
                    or any(a.read_bytes() != b.read_bytes() for a, b in zip(ours, theirs, strict=True))):
                raise SystemExit(f"the manifests of earful and {way} differ")
    for way, runs in got.items():
        added = statistics.median(r["added_kb"] for r in runs) * 1024
        print(f"{way:7s} {rows:,} segments of {args.files:,} files: peak RSS {added / 2**20:.1f} MiB over the "
              f"{statistics.median(r['before_kb'] for r in runs) / 1024:.0f} MiB before it ({added / rows:.0f} bytes a "
              f"segment, {added / args.files:.0f} a file), {statistics.median(r['seconds'] for r in runs):.1f} s "
              f"(median of {', '.join(format(r['seconds'], '.1f') for r in runs)})")
    ratio = statistics.median(r["added_kb"] for r in got["peer"]) / statistics.median(
        r["added_kb"] for r in got["earful"])
    print(f"earful's peak added: 1/{ratio:.1f} of the peer's (manifests identical)")
    if args.before:
        ratio = statistics.median(r["added_kb"] for r in got["before"]) / statistics.median(
            r["added_kb"] for r in got["earful"])
        print(f"earful's peak added: 1/{ratio:.1f} of {args.before}'s (manifests and problems identical)")


if __name__ == "__main__":
    main()
