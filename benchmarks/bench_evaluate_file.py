"""`lofi evaluate detection` on a 200 MB ActivityNet-validation predictions file: this tree vs a baseline commit.

Makes (once, cached) a predictions file for the 4,728 validation videos of the real ``activity_net_v1-3_gt.json``
with 550 entries each (2.6 M entries, ~220 MB: full-precision scores, segments rounded to 0.01 s), then runs the
command alternately from a ``git archive`` of ``--baseline`` and from this tree, ``--repeat`` times each, and
reports each one's best wall time, user + system CPU and peak RSS (``os.wait4`` of that process alone) with the
ratios, and whether the two printed the same numbers to the last digit. In this process it also reads the file
with the fast reader and with the strict one and compares the arrays bit for bit.

    python benchmarks/bench_evaluate_file.py                       # baseline: the commit before issue 18
    python benchmarks/bench_evaluate_file.py --baseline HEAD~3 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_GT = ROOT.parents[1] / "shared" / "data" / "activitynet" / "activity_net_v1-3_gt.json"
DEFAULT_BASELINE = "578f7a7"  # main before issue 18 (stdlib json with a duplicate-key hook)
log = logging.getLogger("bench_evaluate_file")


def make_file(gt_path: Path, out: Path, per_video: int, seed: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_evaluation import make_predictions

    database = json.loads(gt_path.read_text())["database"]
    db = {v: info for v, info in database.items() if info["subset"] == "validation"}
    results = make_predictions(db, np.random.default_rng(seed), per_video)
    for entries in results.values():
        for e in entries:
            e["segment"] = [round(e["segment"][0], 2), round(e["segment"][1], 2)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"version": "VERSION 1.3", "results": results, "external_data": {}}))


def run_cli(pythonpath: Path, gt: Path, pred: Path) -> dict[str, Any]:
    """One `python -m harness.cli evaluate detection --json` with ``pythonpath`` first: wall, CPU, peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    cmd = [sys.executable, "-m", "harness.cli", "evaluate", "detection"]
    cmd += ["--ground-truth", str(gt), "--predictions", str(pred), "--json"]
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=pythonpath, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (PYTHONPATH={pythonpath}) exited {proc.returncode}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "output": text.strip().splitlines()[-1],
    }


def compare_readers(gt_path: Path, pred: Path) -> tuple[bool, float, float]:
    """Fast and strict readers on the same bytes, in this process: identical arrays, and each one's CPU time."""
    from harness.evaluation.detection import load_ground_truth
    from harness.evaluation.fastread import read_flat
    from harness.evaluation.predictions import _flatten, _read_predictions_json

    gt = load_ground_truth(gt_path)
    raw = pred.read_bytes()
    t0 = time.process_time()
    fast = read_flat(raw, gt.class_index)
    t_fast = time.process_time() - t0
    t0 = time.process_time()
    strict = _flatten(_read_predictions_json(str(pred), raw), str(pred), gt.class_index, gt.subset, from_file=True)
    t_strict = time.process_time() - t0
    if fast is None:
        return False, t_fast, t_strict
    same = fast.names == strict.names and all(
        a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in (
            (fast.counts, strict.counts),
            (fast.score, strict.score),
            (fast.segments, strict.segments),
            (fast.label, strict.label),
        )
    )
    return same, t_fast, t_strict


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare with")
    ap.add_argument("--ground-truth", type=Path, default=REAL_GT)
    ap.add_argument("--predictions", type=Path, default=Path(tempfile.gettempdir()) / "lofi-bench-eval" / "pred.json")
    ap.add_argument("--per-video", type=int, default=550)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if not args.predictions.exists():
        log.info("writing %s (%d entries per validation video)", args.predictions, args.per_video)
        make_file(args.ground_truth, args.predictions, args.per_video, seed=0)
    size_mb = args.predictions.stat().st_size / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "baseline.tar"
        subprocess.run(["git", "archive", "-o", str(archive), args.baseline], cwd=ROOT, check=True)
        base = Path(tmp) / "baseline"
        with tarfile.open(archive) as tar:
            tar.extractall(base, filter="data")
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this tree": []}
        for _ in range(args.repeat):  # alternate, so that a noisy neighbour hits both
            runs["baseline"].append(run_cli(base, args.ground_truth, args.predictions))
            runs["this tree"].append(run_cli(ROOT, args.ground_truth, args.predictions))

    # after the commands: a forked child's peak RSS counts the parent's pages until it execs
    same_arrays, t_fast, t_strict = compare_readers(args.ground_truth, args.predictions)
    log.info(
        "readers in this process: fast %.2f CPU-s, strict %.2f CPU-s (%.1fx); arrays bit-identical: %s",
        t_fast,
        t_strict,
        t_strict / t_fast,
        same_arrays,
    )

    best = {k: {m: min(r[m] for r in v) for m in ("wall", "cpu", "rss_mb")} for k, v in runs.items()}
    outputs = {r["output"] for v in runs.values() for r in v}
    log.info("`lofi evaluate detection --json` on %s (%.0f MB), best of %d:", args.predictions, size_mb, args.repeat)
    for name, b in best.items():
        rev = args.baseline if name == "baseline" else "working tree"
        log.info(
            "  %-9s (%s): wall %6.2f s, CPU %6.2f s, peak RSS %5.0f MB", name, rev, b["wall"], b["cpu"], b["rss_mb"]
        )
    old, new = best["baseline"], best["this tree"]
    log.info(
        "  ratio this tree / baseline: wall %.2f, CPU %.2f, peak RSS %.2f",
        new["wall"] / old["wall"],
        new["cpu"] / old["cpu"],
        new["rss_mb"] / old["rss_mb"],
    )
    log.info("  same output to the last digit: %s", len(outputs) == 1)
    return 0 if len(outputs) == 1 and same_arrays else 1


if __name__ == "__main__":
    raise SystemExit(main())
