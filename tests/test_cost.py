"""The start-up estimate of a sweep's CPU time (harness/bench/cost.py) and its stored per-kind costs."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from harness.bench.cost import COST_FILE, KINDS, estimate_message, load_costs, rule_kind


@pytest.mark.parametrize(
    "rule,kind",
    [
        ("data", "data"),
        ("frames", "frames"),
        ("track_init", "track_init"),
        ("pretrain_tsm_resnet_tiny_pretrain_acpplus_seed0", "pretrain"),
        ("lofi_tsm_resnet_tiny_lofi_full_seed1", "lofi_full"),
        ("lofi_tsm_resnet_tiny_lofi_long_seed1", "lofi"),
        ("features_tsm_resnet_tiny_features_lofi_full_seed0", "features"),
        ("classifier_tsm_resnet_tiny_classifier_seed10", "classifier"),
        ("run_tsm_resnet_tiny_bmn_lofi_long_seed0", "run"),
        ("table_ablation", "table"),
        ("optuna_worker0", "optuna"),
        ("all", None),
        ("tables", None),
    ],
)
def test_rule_kind(rule: str, kind: str | None) -> None:
    assert rule_kind(rule) == kind


def test_shipped_costs_name_known_kinds_and_reproduce_their_command() -> None:
    costs = load_costs()
    assert "default" in costs
    for cost in costs.values():
        assert set(cost.per_job) <= set(KINDS) and all(v > 0 for v in cost.per_job.values())
    default = costs["default"]
    # the jobs of the measured command, as counted by benchmarks/job_cost.py, give back its whole CPU time
    entry = json.loads(COST_FILE.read_text())["profiles"]["default"]
    jobs = Counter(entry["jobs"])
    assert jobs["run"] > 0 and jobs["lofi"] > 0
    assert default.estimate(jobs) == pytest.approx(entry["command_cpu_s"], rel=0.01)


def test_shipped_costs_were_measured_on_the_main_jobs_current_jobs(tmp_path: Path) -> None:
    """The default profile's entry counts the jobs the README's main job runs today (a dry run of it, by kind): a
    change to the workflow's jobs (e.g. sweep.join_stages) needs benchmarks/job_cost.py run again."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "config/default.yaml").read_text())
    data["sweep"]["results"], data["data"]["root"] = str(tmp_path / "results"), str(tmp_path / "data")
    config = tmp_path / "default.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    target = str(tmp_path / "results/table_ablation.md")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--nolock", "-n", target]
    out = subprocess.run([*cmd, "--configfile", str(config)], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    planned: Counter[str] = Counter()
    for line in out.stdout.split("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        kind = rule_kind(parts[0])
        if kind is not None:
            planned[kind] += int(parts[1])
    entry = json.loads(COST_FILE.read_text())["profiles"]["default"]
    assert planned == Counter(entry["jobs"]), "re-measure: benchmarks/job_cost.py on a run of the main job"


def test_estimate_message(tmp_path: Path) -> None:
    path = tmp_path / "cost.json"
    entry = {"measured": "box X", "cpu_s_per_job": {"run": 60.0, "data": 120.0}, "outside_cpu_s_per_job": 0.0}
    path.write_text(json.dumps({"profiles": {"p": entry}}))
    msg = estimate_message("p", Counter(run=2, data=1, optuna=1), cores=2, path=path)
    assert "4 job(s)" in msg and "about 5 CPU-minutes" in msg and "2 minutes on 2" in msg and "box X" in msg
    assert "not measured, counted as a head run: optuna" in msg
    assert "no measured cost" in estimate_message(None, Counter(run=1), cores=2, path=path)
    assert estimate_message("p", Counter(), cores=2, path=path) == "every job is finished"


def test_a_successful_command_logs_its_own_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """Each `lofi` process logs the kernel's CPU account at exit (what job_cost.py reads from a job's log); a failed
    command's one-line error stays the only output."""
    from harness.cli import main

    caplog.set_level(logging.INFO, logger="harness.cli")
    assert main(["schedule", "--cycle", "long", "--epochs", "2"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cpu ")]
    assert len(lines) == 1 and "user" in lines[0] and float(lines[0].split()[1]) > 0
    caplog.clear()
    assert main(["schedule", "--cycle", "long", "--epochs", "0"]) == 2
    assert not [r for r in caplog.records if r.getMessage().startswith("cpu ")]


def test_job_cost_prefers_the_jobs_own_cpu_line(tmp_path: Path) -> None:
    """A job whose log holds `cpu` lines counts their sum (two lofi processes in one job); a job without one falls
    back to Snakemake's sampled cpu_time, and is counted as such."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("job_cost", Path(__file__).parents[1] / "benchmarks/job_cost.py")
    job_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job_cost)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for seed, log in ((0, "12:00:00 INFO harness.cli: cpu 40.50 s (user 39.00, system 1.50; x)\n"), (1, None)):
        tsv = tmp_path / f"benchmarks/d/e/features/acp/seed{seed}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text(header + "42.0\t0:00:42\t1\t1\t1\t1\t0\t0\t90\t15.0\n")
        if log:
            path = tmp_path / f"logs/d/e/features/acp/seed{seed}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "check\n" + log + "more\n12:00:09 INFO harness.cli: cpu 1.25 s (user 1.0, system 0.25; x)\n"
            )
    kinds, sampled = job_cost.per_kind(tmp_path)
    assert sorted(kinds["features"]) == [15.0, 41.75] and sampled == 1
