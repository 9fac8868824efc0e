"""What joining saves (``sweep.join_stages``): one encoder's stages run as the workflow's jobs do, one `lofi stage`
process each ("alone"), against one process that runs them all (`lofi stage … --then`, "joined"); the arms
alternate in the same command, each in a fresh stages folder, and their outputs are compared byte for byte.

The default is the ACP pre-training with its features; the main job joins 33 stages: 6 features stages to the 6
ACP jobs, 6 classifiers to the ACP+ jobs, 21 features stages to the 18 LoFi jobs (the blind control's zeros keep
jobs of their own: `docs/architecture.md` § The stage protocol).

    PYTHONPATH=. python benchmarks/bench_join.py --config results/config.resolved.yaml --repeats 2

The data and frame store must exist (a sweep's `data` and `frames` jobs made them). CPU is each arm's children's
user + system (``os.wait4``); writes nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(argv: list[str]) -> tuple[float, float]:
    """CPU-s (user + system, the process and its children) and wall-s of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.strip().splitlines()[-1:] or '(no output)'}")
    return usage.ru_utime + usage.ru_stime, wall


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "done.json"
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a sweep's resolved config")
    parser.add_argument("--kind", default="pretrain", help="the training stage (default %(default)s)")
    parser.add_argument("--value", default="acp", help="its option's value (default %(default)s)")
    parser.add_argument("--then", nargs="+", default=["features=acp"], help="the joined stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of both arms (default %(default)s)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: not found; pass a sweep's results/config.resolved.yaml")
    from harness.errors import LofiError
    from harness.pipeline.stages import parse_then, spec_of

    try:
        spec = spec_of(args.kind)
        joined = [parse_then(v) for v in args.then]  # the same checks as `lofi stage … --then`
    except LofiError as exc:
        parser.error(str(exc))
    if spec.option is None:
        parser.error(f"--kind {args.kind}: pick a training stage with an option (pretrain, lofi)")
    lofi = [sys.executable, "-m", "harness.cli", "stage"]
    common = ["--config", str(args.config), "--seed", str(args.seed), "--set", "tracking.enabled=false"]
    first = [args.kind, spec.option.flag, args.value]
    seconds = [[s.name, s.option.flag, v] if s.option is not None else [s.name] for s, v in joined]
    cpu: dict[str, list[float]] = {"alone": [], "joined": []}
    wall: dict[str, list[float]] = {"alone": [], "joined": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for arm in ("alone", "joined") if r % 2 == 0 else ("joined", "alone"):
                root = Path(tmp) / f"{arm}{r}"
                if arm == "joined":
                    then = [a for v in args.then for a in ("--then", v)]
                    c, w = _run([*lofi, *first, *common, "--stages", str(root), *then])
                else:
                    c = w = 0.0
                    for cmd in (first, *seconds):
                        ci, wi = _run([*lofi, *cmd, *common, "--stages", str(root)])
                        c, w = c + ci, w + wi
                cpu[arm].append(c)
                wall[arm].append(w)
                print(f"round {r} {arm:6s}: {c:6.2f} CPU-s, {w:6.2f} s wall", flush=True)
        same = all(_files(Path(tmp) / f"alone{r}") == _files(Path(tmp) / f"joined{r}") for r in range(args.repeats))
    a, j = statistics.median(cpu["alone"]), statistics.median(cpu["joined"])
    print(
        f"{args.kind} {args.value} + {', '.join(args.then)}: alone {a:.2f} CPU-s ({len(args.then) + 1} processes), "
        f"joined {j:.2f} CPU-s (1 process), saved {a - j:.2f} CPU-s per job ({j / a:.3f}x); medians of "
        f"{args.repeats}; outputs {'byte-identical' if same else 'DIFFERENT'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
