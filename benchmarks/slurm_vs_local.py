"""Wall time of one sweep through the local profile and through a one-node SLURM (scripts/slurm_one_node.py).

    python benchmarks/slurm_vs_local.py [--target results/smoke/table_ablation.md] [--configfile config/smoke.yaml]
        [--variants local,slurm-jobs,slurm-grouped] [--out benchmarks/results/slurm_vs_local.json]

Each variant runs the target from scratch in a folder of its own (the checkout's Snakefile, the config's results
and data under that folder), one after the other, on this machine: `local` = `--profile profiles/local`;
`slurm-jobs` = `--profile profiles/slurm` with `sweep.cluster_group: false` (one SLURM job per stage);
`slurm-grouped` = the same with `sweep.cluster_group: true` (a seed's stages in one job); `slurm-before` = as
`slurm-jobs` with the plugin's default first status check (40 s), i.e. profiles/slurm before issue 20. The SLURM variants add
`--cores N` (this machine's CPUs: the one node's size) and `--slurm-status-command squeue` (no accounting
database); everything else comes from the profiles. The JSON holds each variant's wall seconds, its SLURM job count
and its ratio to `local`; the ratios are the figures to quote (machine load moves all variants).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger("slurm_vs_local")
ROOT = Path(__file__).resolve().parents[1]


def _cluster_module():
    spec = importlib.util.spec_from_file_location("slurm_one_node", ROOT / "scripts/slurm_one_node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config_copy(src: Path, folder: Path, grouped: bool) -> Path:
    data = yaml.safe_load(src.read_text())
    data["data"]["root"] = "data"  # relative: under the variant's folder
    data["sweep"]["cluster_group"] = grouped
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_variant(name: str, target: str, configfile: Path, folder: Path, env: dict[str, str] | None) -> dict:
    folder.mkdir(parents=True)
    config = _config_copy(configfile, folder, grouped=name == "slurm-grouped")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), target]
    if name == "local":
        cmd += ["--profile", str(ROOT / "profiles/local"), "--configfile", str(config)]
    else:
        cmd += ["--profile", str(ROOT / "profiles/slurm"), "--configfile", str(config)]
        cmd += ["--cores", str(os.cpu_count() or 1), "--slurm-status-command", "squeue"]
        if name == "slurm-before":
            cmd += ["--slurm-init-seconds-before-status-checks", "40"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    (folder / "snakemake.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"{name}: snakemake exited {out.returncode}; see {folder / 'snakemake.log'}")
    submitted = len(re.findall(r"has been submitted with SLURM jobid", out.stderr))
    log.info("%s: %.1f s, %d SLURM job(s)", name, wall, submitted)
    return {"wall_s": round(wall, 1), "slurm_jobs": submitted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="results/smoke/table_ablation.md")
    parser.add_argument("--configfile", type=Path, default=ROOT / "config/smoke.yaml")
    parser.add_argument("--variants", default="local,slurm-jobs,slurm-grouped")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/slurm_vs_local.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = args.variants.split(",")
    cluster = _cluster_module()
    problem = cluster.why_not() if any(v != "local" for v in variants) else None
    if problem:
        log.error("no one-node SLURM here: %s", problem)
        return 2
    work = Path(tempfile.mkdtemp(prefix="slurm-vs-local-"))
    results: dict[str, dict] = {}
    for name in variants:
        if name == "local":
            results[name] = run_variant(name, args.target, args.configfile.resolve(), work / name, None)
        else:
            with cluster.one_node_cluster(work / f"{name}-cluster") as env:
                results[name] = run_variant(name, args.target, args.configfile.resolve(), work / name, env)
    if "local" in results:
        for r in results.values():
            r["ratio_to_local"] = round(r["wall_s"] / results["local"]["wall_s"], 2)
    load = os.getloadavg()
    report = {
        "target": args.target,
        "configfile": str(args.configfile),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in load],
        "variants": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s", json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
