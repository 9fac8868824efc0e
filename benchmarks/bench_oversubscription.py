"""What running more single-threaded jobs than CPUs at once costs (issue 18, item 3).

Runs the same set of job commands twice over, once with at most ``--wide`` of them at a time (what ``--cores 8``
did on a 2-CPU machine before the workflow lowered it) and once with at most ``--narrow`` (the CPU count, what it
does now), alternating the two settings ``--rounds`` times so that a neighbour's load falls on both. Each
setting's wall time and CPU time (user + system of the jobs, ``os.wait4``) are printed, and their ratios.

The jobs are the workflow's own head runs on finished stages (``lofi run``, tracking off, a fresh output folder
per run): they train and read nothing a concurrent job writes, so running them in any order gives the same files.

    python benchmarks/bench_oversubscription.py --stages results/synthetic/tsm_resnet_tiny \\
        --config results/config.resolved.yaml --modes acp lofi-T lofi-S --seeds 0 1 --wide 6 --narrow 2
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench_oversubscription")


def head_commands(stages: Path, config: Path, modes: list[str], seeds: list[int], out: Path) -> list[list[str]]:
    """One `lofi run` per (mode, seed) on finished stages, each into its own folder under ``out``."""
    return [
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            "--mode",
            mode,
            "--seed",
            str(seed),
            "--head",
            "gtad",
            "--config",
            str(config),
            "--stages",
            str(stages),
            "--out",
            str(out / f"{mode}-seed{seed}"),
            "--set",
            "runtime.threads=1",
            "--set",
            "tracking.enabled=false",
        ]
        for mode in modes
        for seed in seeds
    ]


def run_batch(commands: list[list[str]], parallel: int, logs: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system of the jobs) of running ``commands``, ``parallel`` at a time.
    Each job's output goes to a file in ``logs`` (a pipe nobody reads while waiting would stall a chatty job)."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, cpu = list(enumerate(commands)), {}, 0.0
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < parallel:
            i, cmd = pending.pop(0)
            log_path = logs / f"job{i}.log"
            with log_path.open("wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            running[proc.pid] = (cmd, log_path)
        pid, status, usage = os.wait4(-1, 0)
        cmd, log_path = running.pop(pid)
        cpu += usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise SystemExit(f"a job failed: {' '.join(cmd)}: {lines[-1] if lines else 'no message'}")
    return time.perf_counter() - t0, cpu


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--stages", type=Path, required=True, help="a sweep's finished stages (<results>/<dataset>/<encoder>)"
    )
    ap.add_argument("--config", type=Path, required=True, help="that sweep's config (results/config.resolved.yaml)")
    ap.add_argument("--modes", nargs="+", default=["acp", "lofi-T", "lofi-S"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--wide", type=int, default=6, help="jobs at a time, oversubscribed")
    ap.add_argument("--narrow", type=int, default=os.cpu_count() or 1, help="jobs at a time, one per CPU")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not 1 <= args.narrow < args.wide or args.rounds < 1:
        ap.error(
            f"--narrow {args.narrow}, --wide {args.wide}, --rounds {args.rounds}: use 1 <= narrow < wide, rounds >= 1"
        )
    missing = [
        f"{m}/seed{s}"
        for m in args.modes
        for s in args.seeds
        if not (args.stages / "features" / m / f"seed{s}" / "done.json").is_file()
    ]
    if missing:  # `lofi run` would train them first, and the timings would measure that
        ap.error(
            f"{args.stages}: no finished features for {', '.join(missing)}; point --stages at a finished sweep's stages"
        )
    if not args.config.is_file():
        ap.error(f"{args.config}: no such config; use the sweep's results/config.resolved.yaml")
    totals: dict[int, list[float]] = {args.wide: [0.0, 0.0], args.narrow: [0.0, 0.0]}
    with tempfile.TemporaryDirectory(prefix="oversub-") as tmp:
        for r in range(args.rounds):
            # alternate which setting goes first, so that a drift in the machine's load falls on both
            for parallel in (args.wide, args.narrow) if r % 2 == 0 else (args.narrow, args.wide):
                out = Path(tmp) / f"r{r}-p{parallel}"
                wall, cpu = run_batch(
                    head_commands(args.stages, args.config, args.modes, args.seeds, out), parallel, out / "logs"
                )
                shutil.rmtree(out, ignore_errors=True)
                totals[parallel][0] += wall
                totals[parallel][1] += cpu
                log.info("round %d, %d at a time: wall %.1f s, CPU %.1f s", r + 1, parallel, wall, cpu)
    (ww, wc), (nw, nc) = totals[args.wide], totals[args.narrow]
    log.info(
        "%d jobs x %d rounds: %d at a time wall %.1f s / CPU %.1f s; %d at a time wall %.1f s / CPU %.1f s; "
        "wide/narrow: wall %.3f, CPU %.3f",
        len(args.modes) * len(args.seeds),
        args.rounds,
        args.wide,
        ww,
        wc,
        args.narrow,
        nw,
        nc,
        ww / nw,
        wc / nc,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
