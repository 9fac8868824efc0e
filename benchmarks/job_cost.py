"""Measure the CPU cost per kind of job of a finished sweep and store it for the workflow's start-up estimate.

Reads each job of a results folder (Snakemake's ``benchmark:`` files name them) and its CPU time: the `cpu` line its
own `lofi` processes log at exit (``harness.cli.CPU_LINE``: the kernel's accounting), else Snakemake's sampled
``cpu_time``, which loses what a job spends after its last sample; averages them per kind
(``harness.bench.cost.KINDS``), and spreads the rest of the whole command's CPU time (user + system, e.g. from
``/usr/bin/time``; Snakemake itself and what its sampling misses) evenly over the jobs, so that the estimate of the
same sweep equals the command's measured CPU time. Writes the entry of one synthetic profile into
``harness/data/job_cost.json``.

    /usr/bin/time -f "%U %S" snakemake --cores 2 tables --configfile config/smoke.yaml
    python benchmarks/job_cost.py results/smoke --profile smoke --command-cpu 471.2 --measured "2-core box, ..."
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from harness.bench.cost import COST_FILE, KINDS
from harness.cli import CPU_LINE

log = logging.getLogger("job_cost")


def job_kind(rel: Path) -> str | None:
    """The cost kind of a benchmark file, from its path under ``benchmarks/`` (None: not a sweep job we count)."""
    parts = rel.with_suffix("").parts
    if len(parts) == 1:
        name = parts[0]
        return "table" if name.startswith("table_") else name if name in KINDS else None
    if len(parts) >= 4 and parts[2] in ("pretrain", "lofi", "features", "classifier"):
        return "lofi_full" if parts[2] == "lofi" and parts[3] == "full" else parts[2]
    return "run" if len(parts) == 5 else None  # <dataset>/<encoder>/<head>/<mode>/seed<N>


# the number in harness.cli.CPU_LINE, after the logger's name
CPU_RE = re.compile(r"harness\.cli: " + re.escape(CPU_LINE.split("%")[0]) + r"([0-9.]+)")


def logged_cpu(log: Path) -> float | None:
    """The CPU-s the job's own `lofi` processes reported in its log (``harness.cli.CPU_LINE``, summed over the
    processes that ran in it), or None where the log has none (a job run before the line existed)."""
    if not log.is_file():
        return None
    found = [float(m.group(1)) for m in CPU_RE.finditer(log.read_text(errors="replace"))]
    return sum(found) if found else None


def per_kind(results: Path) -> tuple[dict[str, list[float]], int]:
    """CPU-s per job by kind, and how many jobs fell back to Snakemake's ``cpu_time``. A job's own report (its log
    beside the benchmark file: ``logs/<same path>.log``) is preferred: Snakemake samples a job every 0.5 s for its
    first ~15 s and then every 30 s, and loses what the job spends after its last sample."""
    bench, logs = results / "benchmarks", results / "logs"
    found: dict[str, list[float]] = defaultdict(list)
    sampled = 0
    for tsv in sorted(bench.rglob("*.tsv")):
        rel = tsv.relative_to(bench)
        kind = job_kind(rel)
        if kind is None:
            continue
        cpu = logged_cpu((logs / rel).with_suffix(".log"))
        if cpu is None:
            with tsv.open() as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
            if not rows:
                continue
            cpu, sampled = float(rows[-1]["cpu_time"]), sampled + 1
        found[kind].append(cpu)
    return found, sampled


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="the sweep's results folder (holds benchmarks/)")
    ap.add_argument("--profile", required=True, help="the synthetic profile the sweep ran (smoke, default)")
    ap.add_argument("--command-cpu", type=float, required=True, help="user + system CPU-s of the whole command")
    ap.add_argument("--measured", required=True, help="machine, date, commit and command, in words")
    ap.add_argument("--out", type=Path, default=COST_FILE)
    args = ap.parse_args()
    kinds, sampled = per_kind(args.results)
    if sampled:
        log.warning("%d job(s) without a `cpu` line in their log: Snakemake's sampled cpu_time used", sampled)
    n_jobs = sum(len(v) for v in kinds.values())
    inside = sum(sum(v) for v in kinds.values())
    entry = {
        "measured": args.measured,
        "cpu_s_per_job": {k: round(sum(v) / len(v), 2) for k, v in sorted(kinds.items())},
        "jobs": {k: len(v) for k, v in sorted(kinds.items())},
        "outside_cpu_s_per_job": round(max(args.command_cpu - inside, 0.0) / max(n_jobs, 1), 2),
        "command_cpu_s": args.command_cpu,
    }
    data = json.loads(args.out.read_text()) if args.out.is_file() else {"profiles": {}}
    data["profiles"][args.profile] = entry
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    log.info(
        "%s: %d jobs, %.0f CPU-s inside them, %.0f CPU-s in all; written to %s",
        args.profile,
        n_jobs,
        inside,
        args.command_cpu,
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
