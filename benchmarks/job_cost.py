"""Measure the CPU cost per kind of job of a finished sweep and store it for the workflow's start-up estimate.

Reads Snakemake's ``benchmark:`` files of a results folder (``cpu_time`` per job), averages them per kind
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
from collections import defaultdict
from pathlib import Path

from harness.bench.cost import COST_FILE, KINDS

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


def per_kind(bench: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    for tsv in sorted(bench.rglob("*.tsv")):
        kind = job_kind(tsv.relative_to(bench))
        if kind is None:
            continue
        with tsv.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:
            found[kind].append(float(rows[-1]["cpu_time"]))
    return found


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="the sweep's results folder (holds benchmarks/)")
    ap.add_argument("--profile", required=True, help="the synthetic profile the sweep ran (smoke, default)")
    ap.add_argument("--command-cpu", type=float, required=True, help="user + system CPU-s of the whole command")
    ap.add_argument("--measured", required=True, help="machine, date, commit and command, in words")
    ap.add_argument("--out", type=Path, default=COST_FILE)
    args = ap.parse_args()
    kinds = per_kind(args.results / "benchmarks")
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
