"""`lofi report tables`: paper-style tables (Markdown, CSV, LaTeX) and plots from finished runs, with significance."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from harness.errors import LofiError
from harness.seeding import numpy_rng
from harness.stats import Comparison, compare_to_baseline, holm, weighted_metric
from harness.tables import (
    ABLATION_MODES, BASELINE, PRETRAIN_MODES, Table, ablation_table, load_rows, memory_table,
    models_table, pretrain_table, write_tables,
)

log = logging.getLogger(__name__)
KINDS = ("ablation", "pretrain", "models", "memory")
LOFI_MODE = "lofi-long"

EPILOG = """\
what it computes:
  mean ± sd over seeds of mAP@0.5/0.75/0.95 and average mAP (in %), from each run's row.json;
  Δ to ACP with a 95% paired bootstrap interval: videos of the test subset AND seeds resampled (--n-boot);
  p: two-sided paired permutation test over videos (--n-perm), Holm-corrected within each table.
  The tests re-evaluate every run's predictions (row.json "predictions") on the ground truth, so the runs'
  prediction files must still exist (or pass --no-stats for tables without Δ and p).

outputs (under --out):
  table_<kind>.md / .csv / .tex      one section per dataset/encoder/head; provenance under every table
  plot_map_vs_tiou_<group>.png       mAP vs tIoU, mean ± sd over seeds, per configuration
  plot_map_vs_memory_<group>.png     average mAP vs activation memory relative to full fidelity

examples:
  lofi report tables --runs-glob 'results/synthetic/**/row.json' --out results/
  lofi report tables --runs runs/acp-s0 runs/lofi-long-s0 --ground-truth data/smoke/annotations.json \\
      --out results/ --n-boot 1000 --seed 0 --which ablation,memory
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots from finished runs (with significance tests)",
                       description="Build reports from the tidy result rows (row.json) of finished runs.")
    rsub = p.add_subparsers(dest="report_command", metavar="REPORT")
    rsub.required = True
    t = rsub.add_parser(
        "tables",
        help="paper-style tables (Markdown, CSV, LaTeX) + plots, with seeds and paired tests over videos",
        description="Build the ablation (paper Table 2), pre-training (Table 1), encoders × heads (Table 6) and "
        "memory tables from runs' row.json files. Published numbers are shown beside measured ones only for "
        "ActivityNet/HACS rows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", nargs="+", metavar="DIR", help="run folders (each holding row.json) or row.json files")
    src.add_argument("--runs-glob", metavar="PATTERN",
                     help="recursive glob of row.json files, e.g. 'results/synthetic/**/row.json' (quote it)")
    t.add_argument("--ground-truth", metavar="GT", default=None,
                   help="annotations JSON for the tests (default: each row's ground_truth)")
    t.add_argument("--out", required=True, metavar="DIR", help="folder for tables and plots (e.g. results/)")
    t.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    t.add_argument("--n-perm", type=int, default=None, help="permutations (default: same as --n-boot)")
    t.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    t.add_argument("--which", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)} (default all)")
    t.add_argument("--no-stats", action="store_true", help="skip the tests (no predictions needed)")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    t.set_defaults(func=_run_tables)


def _parse_which(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise LofiError(f"--which {text!r}: unknown table(s) {unknown}; use a comma-separated subset of {','.join(KINDS)}")
    return kinds


def _row_paths(args: argparse.Namespace) -> list[str]:
    if args.runs:
        return list(args.runs)
    paths = sorted(glob.glob(args.runs_glob, recursive=True))
    if not paths:
        raise LofiError(f"--runs-glob {args.runs_glob!r} matches no file; quote the pattern and check the folder")
    return paths


def _slug(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", str(p)) for p in parts)


class _Matcher:
    """Matches each run's predictions to the ground truth once (cached), for the significance tests."""

    def __init__(self, ground_truth: str | None) -> None:
        self.ground_truth = ground_truth
        self._gt: dict[tuple[str, str], Any] = {}
        self._matches: dict[str, Any] = {}

    def __call__(self, row: pd.Series) -> Any:
        from harness.evaluation.detection import load_ground_truth, load_predictions, match_detections

        key = str(row["row_path"])
        if key not in self._matches:
            gt_path = self.ground_truth or row.get("ground_truth")
            if not gt_path or (isinstance(gt_path, float) and pd.isna(gt_path)):
                raise LofiError(f"{key}: no ground_truth in the row; pass --ground-truth GT (or --no-stats)")
            subset = str(row.get("split") or "validation")
            gt_key = (str(gt_path), subset)
            if gt_key not in self._gt:
                self._gt[gt_key] = load_ground_truth(gt_path, subset=subset)
            pred = row.get("predictions")
            if not pred or not Path(pred).exists():
                raise LofiError(f"{key}: predictions file {pred!r} is missing; re-run the run or pass --no-stats")
            gt = self._gt[gt_key]
            matches = match_detections(gt, load_predictions(pred, gt))
            # The tests re-evaluate the saved predictions: they must reproduce the row's own number.
            recomputed = float(weighted_metric(matches, np.ones((1, len(matches.video_ids))))[0])
            if not np.isclose(recomputed, float(row["average_mAP"]), rtol=0, atol=1e-6):
                log.warning("%s: predictions give average mAP %.6f but the row says %.6f; Δ/p use the predictions",
                            key, recomputed, float(row["average_mAP"]))
            self._matches[key] = matches
        return self._matches[key]


def _comparisons(rows: pd.DataFrame, modes: Sequence[str], match: _Matcher, args: argparse.Namespace,
                 *purpose: str) -> dict[str, Comparison] | None:
    """Every mode in ``modes`` against ACP on these rows, Holm across them; None without a baseline or tests."""
    present = [m for m in modes if (rows["mode"] == m).any()]
    if args.no_stats or BASELINE not in present or len(present) < 2:
        return None
    runs, seeds = {}, {}
    for mode in present:
        sub = rows[rows["mode"] == mode].sort_values("seed")
        runs[mode] = [match(r) for _, r in sub.iterrows()]
        seeds[mode] = [int(s) for s in sub["seed"]]
    return compare_to_baseline(runs, seeds, BASELINE, n_boot=args.n_boot, n_perm=args.n_perm or args.n_boot,
                               rng=numpy_rng(args.seed, "report", *purpose))


def _model_comparisons(rows: pd.DataFrame, match: _Matcher, args: argparse.Namespace,
                       dataset: str) -> dict[str, Comparison] | None:
    if args.no_stats:
        return None
    out: dict[str, Comparison] = {}
    for (encoder, head), sub in rows.groupby(["encoder", "head"], sort=True):
        comp = _comparisons(sub, [BASELINE, LOFI_MODE], match, args, "models", dataset, encoder, head)
        if comp and LOFI_MODE in comp:
            out[f"{encoder}/{head}"] = comp[LOFI_MODE]
    if not out:
        return None
    adjusted = holm([c.p_value for c in out.values()])  # Holm across the encoder × head comparisons
    return {k: dataclasses.replace(c, p_adjusted=float(a)) for (k, c), a in zip(out.items(), adjusted)}


def build_report(rows: pd.DataFrame, args: argparse.Namespace, kinds: Sequence[str]) -> list[Path]:
    """Build and write the requested tables (and plots) for every dataset/encoder/head group in ``rows``."""
    from harness import plots

    out = Path(args.out)
    match = _Matcher(args.ground_truth)
    written: list[Path] = []
    groups = list(rows.groupby(["dataset", "encoder", "head"], sort=True))
    per_kind: dict[str, list[Table]] = {k: [] for k in kinds}
    builders: dict[str, tuple[Callable[..., Table], Sequence[tuple[str, str]]]] = {
        "ablation": (ablation_table, ABLATION_MODES), "pretrain": (pretrain_table, PRETRAIN_MODES),
    }
    for (dataset, encoder, head), sub in groups:
        for kind in kinds:
            if kind not in builders:
                continue
            build, modes = builders[kind]
            names = [m for m, _ in modes]
            if not sub["mode"].isin(names).any():
                continue
            stats = _comparisons(sub, names, match, args, kind, dataset, encoder, head)
            per_kind[kind].append(build(sub, stats))
        if not args.no_plots:
            slug = _slug(dataset, encoder, head)
            written.append(plots.plot_map_vs_tiou(sub, out / f"plot_map_vs_tiou_{slug}.png",
                                                  title=f"mAP vs tIoU — {dataset}, {encoder}, {head}"))
            written.append(plots.plot_map_vs_memory(sub, out / f"plot_map_vs_memory_{slug}.png",
                                                    title=f"avg mAP vs activation memory — {dataset}, {encoder}, {head}"))
    for dataset, sub in rows.groupby("dataset", sort=True):
        if "models" in kinds and sub["mode"].isin([BASELINE, LOFI_MODE]).any():
            per_kind["models"].append(models_table(sub, _model_comparisons(sub, match, args, str(dataset))))
        if "memory" in kinds:
            per_kind["memory"].append(memory_table(sub))
    for kind in kinds:
        if not per_kind[kind]:
            log.warning("no rows fit the %s table; skipped", kind)
            continue
        written += write_tables(per_kind[kind], out, f"table_{kind}")
    return written


def _run_tables(args: argparse.Namespace) -> int:
    kinds = _parse_which(args.which)
    if args.n_boot < 1 or (args.n_perm is not None and args.n_perm < 1):
        raise LofiError("--n-boot and --n-perm must be at least 1")
    rows = load_rows(_row_paths(args))
    written = build_report(rows, args, kinds)
    for path in written:
        print(path)
    return 0
