"""Are two sweeps' numbers identical? Every table, every row.json metric, every prediction and feature file.

Runs the smoke sweep (or any target) from two commits, each in a clean ``git archive`` of its own folder with its
own data, frame store and MLflow store, then compares the results folders; or compares two results folders that
already exist. A change that is meant to speed things up must leave everything below unchanged, bit for bit:

- the tables (``table_*.md|csv|tex``, ``optuna_rt_rs.md``), byte for byte, except columns of measured time
  (a header containing "(s)" or "time"), which are blanked in both before comparing;
- every run's ``row.json``: every key, exactly (floats as written), except the run's identity and timing (``commit``,
  ``mlflow_run_id``, ``time_*``) and absolute paths, which are compared relative to the results folder;
- every ``metrics.json`` (the same exceptions and throughputs ``*_per_s``, at any depth); every ``predictions_*.json`` and
  ``proposals_*.json``, and every feature file (``.npy``) of the stages, byte for byte.

It also prints each sweep's CPU time (user + system of the whole Snakemake command and its jobs, ``os.wait4``)
and their ratio: on a shared machine the two sweeps run back to back, so read the ratio, not the seconds.

    python benchmarks/check_identical.py --baseline 578f7a7                     # smoke sweep, baseline vs HEAD
    python benchmarks/check_identical.py --baseline A --candidate B --target tables --cores 2
    python benchmarks/check_identical.py --compare /tmp/a/results/smoke /tmp/b/results/smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("check_identical")
IDENTITY_KEYS = ("commit", "mlflow_run_id")
PATH_KEYS = ("proposals", "class_scores", "predictions", "ground_truth", "config")
BYTE_GLOBS = ("predictions_*.json", "proposals_*.json", "*.npy")
TABLE_GLOBS = ("table_*.md", "table_*.csv", "table_*.tex", "optuna_rt_rs.md")
TIME_HEADER = re.compile(r"\(s\)|\btime\b|time_", re.IGNORECASE)  # "head (s)", "time_head_s"; not "H$\times$W"
PROVENANCE = re.compile(r"(commit\(s\): |MLflow run id\(s\): |rows written |table generated )[^;\n]*")


# ------------------------------------------------------------------------------------------------ running sweeps
def checkout(rev: str, dest: Path) -> Path:
    """A clean copy of ``rev``'s tracked files in ``dest`` (no results, no data, no caches)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest.with_suffix(".tar")
    subprocess.run(["git", "archive", "-o", str(archive), rev], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def lofi_shim(tree: Path) -> Path:
    """A folder holding a `lofi` for the jobs that runs ``tree``'s own entry point: the installed console script
    names this checkout's (``harness.cli:entry`` since the fast exit), which an older tree may not have."""
    bin_dir = tree / ".bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "lofi"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom harness import cli\nsys.exit(getattr(cli, 'entry', cli.main)())\n"
    )
    script.chmod(0o755)
    return bin_dir


def run_sweep(tree: Path, target: str, configfile: str, cores: int) -> dict[str, float]:
    """``snakemake --cores N TARGET --configfile F`` in ``tree`` with ``tree`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PATH": f"{lofi_shim(tree)}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["snakemake", "--cores", str(cores), target, "--configfile", configfile]
    log.info("%s: %s", tree, " ".join(cmd))
    with open(tree / "snakemake.log", "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{tree}: snakemake exited {code}; see {tree / 'snakemake.log'}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def results_folder(tree: Path, configfile: str) -> Path:
    import yaml

    cfg = yaml.safe_load((tree / configfile).read_text())
    return tree / cfg.get("sweep", {}).get("results", "results")


# ------------------------------------------------------------------------------------------------ comparing
def files(root: Path, patterns: tuple[str, ...], recursive: bool) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pattern in patterns:
        for p in root.rglob(pattern) if recursive else root.glob(pattern):
            rel = p.relative_to(root)
            if p.is_file() and not any(part in ("logs", "benchmarks", "optuna") for part in rel.parts[:-1]):
                found[str(rel)] = p
    return found


def masked_table(text: str, suffix: str) -> str:
    """The table with what differs between two runs of the same numbers blanked: the cells of measured-time
    columns (markdown, CSV and LaTeX rows split on | , &) and the provenance's commits, MLflow run ids and dates."""
    text = PROVENANCE.sub(lambda m: m.group(1) + "<masked>", text)
    sep = {".md": "|", ".csv": ",", ".tex": "&"}.get(suffix)
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if sep and sep in line and TIME_HEADER.search(line)), None)
    if sep is None or header is None:
        return text
    cols = [i for i, cell in enumerate(lines[header].split(sep)) if TIME_HEADER.search(cell)]
    width = len(lines[header].split(sep))
    for i, line in enumerate(lines):
        cells = line.split(sep)
        if i != header and len(cells) == width:
            lines[i] = sep.join("<time>" if k in cols else c for k, c in enumerate(cells))
    return "\n".join(lines)


def checkout_of(results: Path) -> Path:
    """The checkout a results folder belongs to (the folder holding the Snakefile), for relative paths."""
    for folder in results.resolve().parents:
        if (folder / "Snakefile").is_file():
            return folder
    return results.resolve().parent


def row_view(row: dict[str, Any], results: Path) -> dict[str, Any]:
    base = checkout_of(results)
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in IDENTITY_KEYS or is_timing(key):
            continue
        if (
            key in PATH_KEYS
            and isinstance(value, str)
            and Path(value).is_absolute()
            and Path(value).is_relative_to(base)
        ):
            value = str(Path(value).relative_to(base))
        out[key] = value
    return out


def is_timing(key: str) -> bool:
    """A measured time or throughput (``time_head_s``, ``items_per_s``): differs between runs of the same numbers."""
    return (key.startswith("time_") and key.endswith("_s")) or key.endswith("_per_s")


def without_identity(obj: Any) -> Any:
    """A metrics.json without the run's identity and timing (``mlflow_run_id``, ``commit``, times), at any depth."""
    if isinstance(obj, dict):
        return {k: without_identity(v) for k, v in obj.items() if k not in IDENTITY_KEYS and not is_timing(k)}
    if isinstance(obj, list):
        return [without_identity(v) for v in obj]
    return obj


def compare(a: Path, b: Path) -> list[str]:
    """Every difference between results folders ``a`` and ``b`` (empty: identical)."""
    problems: list[str] = []

    def pairs(patterns: tuple[str, ...], recursive: bool) -> Iterator[tuple[str, Path, Path]]:
        fa, fb = files(a, patterns, recursive), files(b, patterns, recursive)
        for rel in sorted(set(fa) ^ set(fb)):
            problems.append(f"{rel}: only in {a if rel in fa else b}")
        for rel in sorted(set(fa) & set(fb)):
            yield rel, fa[rel], fb[rel]

    n_tables = n_rows = n_files = 0
    for rel, pa, pb in pairs(TABLE_GLOBS, recursive=False):
        n_tables += 1
        if masked_table(pa.read_text(), pa.suffix) != masked_table(pb.read_text(), pb.suffix):
            problems.append(f"{rel}: tables differ")
    for rel, pa, pb in pairs(("row.json",), recursive=True):
        n_rows += 1
        ra, rb = row_view(json.loads(pa.read_text()), a), row_view(json.loads(pb.read_text()), b)
        for key in sorted(set(ra) | set(rb)):
            if ra.get(key, "<absent>") != rb.get(key, "<absent>"):
                problems.append(f"{rel}: {key}: {ra.get(key, '<absent>')!r} != {rb.get(key, '<absent>')!r}")
    for rel, pa, pb in pairs(("metrics.json",), recursive=True):
        n_files += 1
        if without_identity(json.loads(pa.read_text())) != without_identity(json.loads(pb.read_text())):
            problems.append(f"{rel}: metrics differ")
    for rel, pa, pb in pairs(BYTE_GLOBS, recursive=True):
        n_files += 1
        if pa.read_bytes() != pb.read_bytes():
            problems.append(f"{rel}: bytes differ")
    log.info("compared %d tables, %d row.json files, %d metrics/prediction/feature files", n_tables, n_rows, n_files)
    if not n_rows:
        problems.append(f"{a}: no row.json: nothing was compared")
    return problems


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="only compare two results folders")
    ap.add_argument("--baseline", help="git revision of the old code")
    ap.add_argument("--candidate", default="HEAD", help="git revision of the new code (default: HEAD)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lofi-check-identical"))
    ap.add_argument("--target", default="tables", help="Snakemake target (default: tables, every table)")
    ap.add_argument("--configfile", default="config/smoke.yaml")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    if args.compare:
        problems = compare(*args.compare)
    else:
        if not args.baseline:
            ap.error("give --baseline REV (or --compare A B)")
        if args.workdir.exists():
            shutil.rmtree(args.workdir)
        cost = {}
        trees = {}
        for name, rev in (("baseline", args.baseline), ("candidate", args.candidate)):
            trees[name] = checkout(rev, args.workdir / name)
            cost[name] = run_sweep(trees[name], args.target, args.configfile, args.cores)
            log.info("%s (%s): %.0f s wall, %.0f CPU-s", name, rev, cost[name]["wall_s"], cost[name]["cpu_s"])
        log.info(
            "candidate / baseline: wall %.2f, CPU %.2f",
            cost["candidate"]["wall_s"] / cost["baseline"]["wall_s"],
            cost["candidate"]["cpu_s"] / cost["baseline"]["cpu_s"],
        )
        problems = compare(*(results_folder(trees[n], args.configfile) for n in ("baseline", "candidate")))
    for p in problems:
        log.error("DIFFERENT: %s", p)
    log.info("identical" if not problems else f"{len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
