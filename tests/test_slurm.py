"""The workflow through a real SLURM (issue 20): a one-node cluster from the distribution's packages
(scripts/slurm_one_node.py: slurmctld, slurmd, munge, no accounting database), the smoke benchmark cut to one
table (the data job, the frames job, one seed's stages, `table_pretrain`), submitted through `profiles/slurm` as a
user types it, and compared with the same target through `profiles/local`.

On top of the profile the command says what a one-node cluster without accounting needs: `--cores` (the node's
CPUs), `--slurm-status-command squeue`, and, for the test's speed, the first status check after 1 s and every
job's SLURM log kept (they show which jobs went through sbatch). Skipped, with the reason, where a cluster cannot
start (not root, the packages unreachable, a SLURM of the machine's own).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET = "results/table_pretrain.md"
# the smoke config cut to one table of one head, mode and seed, at the fewest epochs, tracking off
TINY = {
    # one seed's five stage jobs as one group job (sweep.cluster_group; a group of five fits the job-script name)
    "sweep": {
        "results": "results",
        "heads": ["gtad"],
        "seeds": [0],
        "pretrain_modes": ["acp"],
        "n_boot": 10,
        "cluster_group": True,
        "join_stages": False,  # as the real-data configs run on a cluster: one job per stage
    },
    "head": {"optim": {"epochs": 1}, "classifier_optim": {"epochs": 1}},
    "tracking": {"enabled": False},
}


def _cluster_module():
    spec = importlib.util.spec_from_file_location("slurm_one_node", ROOT / "scripts/slurm_one_node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _merge(base: dict, update: dict) -> dict:
    for k, v in update.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def _tiny_config(folder: Path) -> Path:
    data = _merge(yaml.safe_load((ROOT / "config/smoke.yaml").read_text()), TINY)
    data["data"]["root"] = "data"
    folder.mkdir(parents=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _snakemake(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`snakemake TARGET ARGS --configfile tiny.yaml` in ``folder``, started (stdout and stderr to files there)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), TARGET, *args]
    cmd += ["--configfile", str(folder / "tiny.yaml")]
    with (folder / "out.log").open("w") as out, (folder / "err.log").open("w") as err:
        return subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=err, text=True)


def _finish(proc: subprocess.Popen, folder: Path) -> str:
    """Wait for a started snakemake; its stderr (Snakemake's log), which must end well."""
    proc.wait(timeout=900)
    log = (folder / "err.log").read_text()
    assert proc.returncode == 0, f"{folder.name}: snakemake exited {proc.returncode}:\n{log[-3000:]}"
    return log


def _outputs(folder: Path) -> dict[str, bytes]:
    """What must not depend on where the jobs ran: the table's CSV and every run's predictions."""
    files = [folder / "results/table_pretrain.csv", *sorted((folder / "results").rglob("predictions_*.json"))]
    return {str(f.relative_to(folder)): f.read_bytes() for f in files}


@pytest.mark.slow
@pytest.mark.slurm
def test_a_table_through_sbatch_equals_the_local_profiles(tmp_path: Path) -> None:
    cluster = _cluster_module()
    problem = cluster.why_not()
    if problem:
        pytest.skip(f"no one-node SLURM here: {problem}")
    t0 = time.monotonic()
    local, remote = tmp_path / "local", tmp_path / "slurm"
    _tiny_config(local)
    _tiny_config(remote)
    cores = str(os.cpu_count() or 1)  # the node's CPUs (the SLURM profile says 128)
    # the local profile's run goes on while the cluster starts and runs the same target (both chains are mostly
    # one job at a time: side by side they take about as long as one)
    by_local = _snakemake(local, "--profile", str(ROOT / "profiles/local"), "--cores", cores)
    with cluster.one_node_cluster(tmp_path / "cluster") as env:
        by_slurm = _snakemake(
            remote,
            "--profile",
            str(ROOT / "profiles/slurm"),
            "--cores",
            cores,
            "--slurm-status-command",
            "squeue",  # no accounting database
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--slurm-keep-successful-logs",
            env=env,
        )
        log = _finish(by_slurm, remote)
        states = subprocess.run(
            ["squeue", "--states=all", "--noheader", "--format=%i|%T"], env=env, capture_output=True, text=True
        ).stdout
    _finish(by_local, local)

    # every job that is not a local rule went through sbatch, and finished as COMPLETED
    ids = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    state = dict(line.split("|") for line in states.split())
    assert ids and {state[i] for i in ids} == {"COMPLETED"}, (ids, states)
    submitted = sorted(p.name for p in (remote / ".snakemake/slurm_logs").iterdir())
    assert len(submitted) == len(ids)
    # the data and frames jobs on their own; the seed's five stages (pretrain acp, acp+, features, classifier, the
    # run's head) in one group job (sweep.cluster_group); the table and tracking set-up local
    assert {s for s in submitted if s.startswith("rule_")} == {"rule_data", "rule_frames"}, submitted
    groups = [s for s in submitted if s.startswith("group_stages")]
    assert len(groups) == 1 and groups[0].count("seed0") == 5, groups
    assert re.search(r"^localrule table_pretrain:", log, re.M)

    assert _outputs(remote) == _outputs(local)
    print(f"local and SLURM side by side: {time.monotonic() - t0:.0f} s")
