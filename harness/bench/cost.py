"""What a sweep will cost before it runs: its jobs by kind × the CPU time measured per kind (``data/job_cost.json``).

``benchmarks/job_cost.py`` measures the table from a finished sweep (Snakemake's ``benchmark:`` files and the
whole command's CPU time) and writes it; the workflow prints the estimate once, when it starts. Only synthetic
profiles that were measured have an estimate: a real dataset's cost depends on its videos and the machine.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COST_FILE = Path(__file__).parents[1] / "data" / "job_cost.json"
KINDS = (
    "data",
    "frames",
    "track_init",
    "pretrain",
    "lofi",
    "lofi_full",
    "features",
    "classifier",
    "run",
    "table",
    "optuna",
)


@dataclass(frozen=True)
class JobCost:
    """CPU seconds per job of each kind, for one synthetic profile, and where they were measured."""

    profile: str
    per_job: dict[str, float]
    outside_per_job: float  # the Snakemake process and everything else outside the jobs, per job
    measured: str  # machine, date, commit, command

    def estimate(self, jobs: Counter[str]) -> float:
        """CPU seconds of ``jobs`` (counts by kind); a kind without a measurement counts as a head run."""
        fallback = self.per_job.get("run", 0.0)
        inside = sum(n * self.per_job.get(kind, fallback) for kind, n in jobs.items())
        return inside + self.outside_per_job * sum(jobs.values())


def load_costs(path: Path = COST_FILE) -> dict[str, JobCost]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return {
        name: JobCost(
            profile=name,
            per_job={k: float(v) for k, v in entry["cpu_s_per_job"].items()},
            outside_per_job=float(entry["outside_cpu_s_per_job"]),
            measured=str(entry["measured"]),
        )
        for name, entry in data["profiles"].items()
    }


def rule_kind(rule: str) -> str | None:
    """The cost kind of a workflow job, from its rule's name (``workflow/rules/*.smk``); None: an aggregate
    rule (``all``, ``tables``) that runs nothing. The full-fidelity LoFi stage costs 2-3 times another cycle's."""
    if rule in ("all", "tables"):
        return None
    if rule in ("data", "frames", "track_init"):
        return rule
    if rule.startswith(("table_", "readme")):
        return "table"
    if rule.startswith("optuna"):
        return "optuna"
    if rule.startswith("lofi_"):
        return "lofi_full" if "_lofi_full_" in rule else "lofi"
    for kind in ("pretrain", "features", "classifier", "run"):
        if rule.startswith(kind + "_"):
            return kind
    return "run"


def estimate_message(profile: str | None, jobs: Counter[str], cores: int, path: Path = COST_FILE) -> str:
    """One line for the user: jobs to run, their estimated CPU time and the wall time on ``cores`` busy cores."""
    n = sum(jobs.values())
    if not n:
        return "every job is finished"
    costs = load_costs(path) if path.is_file() else {}
    cost = costs.get(profile or "")
    if cost is None:
        return f"{n} job(s) to run; no measured cost for this dataset (benchmarks/job_cost.py measures one)"
    cpu = cost.estimate(jobs)
    unmeasured = sorted(k for k in jobs if k not in cost.per_job)
    note = f"; not measured, counted as a head run: {', '.join(unmeasured)}" if unmeasured else ""
    return (
        f"{n} job(s) to run: about {cpu / 60:.0f} CPU-minutes, i.e. {cpu / 60 / max(cores, 1):.0f} minutes on "
        f"{cores} busy core(s) (per-job cost of the {profile!r} profile measured on {cost.measured}{note})"
    )
