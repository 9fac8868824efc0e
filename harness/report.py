"""The tables and plots of finished runs, with significance: what `lofi report tables` does, as a library.

``build_report(rows, kinds=..., out=..., modes=...)`` groups the tidy rows (``harness.tables.load_rows``) by
dataset, encoder and head, compares every mode with ACP on the runs' saved predictions (``harness.stats``: paired
bootstrap interval and permutation test over videos, Holm within each table) and writes
``table_<kind>.md/.csv/.tex`` plus the plots. Which modes each table shows comes from ``modes`` — in a sweep the
config's ``sweep.*_modes`` (``table_modes``) — or, without it, every mode the rows hold.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import LofiError
from harness.experiment import SweepConfig
from harness.seeding import numpy_rng
from harness.stats import Comparison, compare_to_baseline, holm, weighted_metric
from harness.tables import (
    BASELINE,
    Table,
    ablation_table,
    memory_table,
    models_table,
    order_modes,
    pretrain_table,
    write_tables,
)

log = logging.getLogger(__name__)
KINDS: tuple[str, ...] = ("ablation", "pretrain", "models", "memory")
_CONFIG_TABLES: dict[str, Callable[..., Table]] = {"ablation": ablation_table, "pretrain": pretrain_table}


def table_modes(sweep: SweepConfig) -> dict[str, tuple[str, ...]]:
    """The modes of each table, in order, from the config: the memory table shows the ablation's modes."""
    return {
        "ablation": sweep.ablation_modes,
        "pretrain": sweep.pretrain_modes,
        "models": sweep.model_modes,
        "memory": sweep.ablation_modes,
    }


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
            matches = match_detections(self._gt[gt_key], load_predictions(pred, self._gt[gt_key]))
            # The tests re-evaluate the saved predictions: they must reproduce the row's own number.
            recomputed = float(weighted_metric(matches, np.ones((1, len(matches.video_ids))))[0])
            if not np.isclose(recomputed, float(row["average_mAP"]), rtol=0, atol=1e-6):
                log.warning(
                    "%s: predictions give average mAP %.6f but the row says %.6f; Δ/p use the predictions",
                    key,
                    recomputed,
                    float(row["average_mAP"]),
                )
            self._matches[key] = matches
        return self._matches[key]


@dataclasses.dataclass(frozen=True)
class _Tests:
    """How the comparisons are computed (None of them when ``enabled`` is false)."""

    match: _Matcher
    n_boot: int
    n_perm: int
    seed: int
    enabled: bool

    def compare(self, rows: pd.DataFrame, modes: Sequence[str], *purpose: str) -> dict[str, Comparison]:
        """Every mode of ``modes`` in ``rows`` against ACP, Holm across them; {} without a baseline or tests."""
        present = order_modes(rows["mode"], modes)
        if not self.enabled or BASELINE not in present or len(present) < 2:
            return {}
        runs, seeds = {}, {}
        for mode in present:
            sub = rows[rows["mode"] == mode].sort_values("seed")
            runs[mode] = [self.match(r) for _, r in sub.iterrows()]
            seeds[mode] = [int(s) for s in sub["seed"]]
        return compare_to_baseline(
            runs, seeds, BASELINE, n_boot=self.n_boot, n_perm=self.n_perm, rng=numpy_rng(self.seed, "report", *purpose)
        )

    def compare_models(
        self, rows: pd.DataFrame, modes: Sequence[str], dataset: str
    ) -> dict[str, dict[str, Comparison]]:
        """Per "encoder/head": its modes against its ACP; Holm across every encoder × head × mode comparison."""
        out = {
            f"{e}/{h}": self.compare(sub, modes, "models", dataset, e, h)
            for (e, h), sub in rows.groupby(["encoder", "head"], sort=True)
        }
        flat = [(k, m, c) for k, comps in out.items() for m, c in comps.items()]
        adjusted = holm([c.p_value for _, _, c in flat])
        for (k, m, c), a in zip(flat, adjusted):
            out[k][m] = dataclasses.replace(c, p_adjusted=float(a))
        return out


def build_report(
    rows: pd.DataFrame,
    *,
    out: str | Path,
    kinds: Sequence[str] = KINDS,
    modes: Mapping[str, Sequence[str]] | None = None,
    n_boot: int = 1000,
    n_perm: int | None = None,
    seed: int = 0,
    ground_truth: str | None = None,
    stats: bool = True,
    plots: bool = True,
) -> list[Path]:
    """Build and write the ``kinds`` tables (and the plots) for every dataset/encoder/head group in ``rows``.

    ``modes`` maps a kind to the modes its table shows, in order (``table_modes(cfg.sweep)``); a kind it does
    not name shows every mode present. ``stats=False`` skips the tests (no predictions needed); ``n_perm``
    defaults to ``n_boot``; ``ground_truth`` overrides each row's. Returns the written paths."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise LofiError(f"unknown table(s) {unknown or '(none)'}; use a subset of {', '.join(KINDS)}")
    if n_boot < 1 or (n_perm is not None and n_perm < 1):
        raise LofiError("--n-boot and --n-perm must be at least 1")
    modes = dict(modes or {})
    out = Path(out)
    tests = _Tests(_Matcher(ground_truth), n_boot, n_perm or n_boot, seed, stats)
    per_kind: dict[str, list[Table]] = {k: [] for k in kinds}
    written: list[Path] = []

    def shown(kind: str, sub: pd.DataFrame) -> list[str]:
        return order_modes(sub["mode"], modes.get(kind))

    if plots:
        from harness import plots as figures  # matplotlib: imported only when drawing
    # the plots show every mode the requested tables show, in their order (None: every mode in the rows)
    plot_modes = list(dict.fromkeys(m for k in kinds for m in modes[k])) if all(k in modes for k in kinds) else None

    for (dataset, encoder, head), sub in rows.groupby(["dataset", "encoder", "head"], sort=True):
        for kind in (k for k in kinds if k in _CONFIG_TABLES):
            if shown(kind, sub):
                comps = tests.compare(sub, shown(kind, sub), kind, dataset, encoder, head)
                per_kind[kind].append(_CONFIG_TABLES[kind](sub, comps, modes=modes.get(kind)))
        if plots:
            slug = _slug(dataset, encoder, head)
            written.append(
                figures.plot_map_vs_tiou(
                    sub,
                    out / f"plot_map_vs_tiou_{slug}.png",
                    modes=plot_modes,
                    title=f"mAP vs tIoU — {dataset}, {encoder}, {head}",
                )
            )
            written.append(
                figures.plot_map_vs_memory(
                    sub,
                    out / f"plot_map_vs_memory_{slug}.png",
                    modes=plot_modes,
                    title=f"avg mAP vs activation memory — {dataset}, {encoder}, {head}",
                )
            )
    for dataset, sub in rows.groupby("dataset", sort=True):
        if "models" in kinds and shown("models", sub):
            comps = tests.compare_models(sub, shown("models", sub), str(dataset))
            per_kind["models"].append(models_table(sub, comps, modes=modes.get("models")))
        if "memory" in kinds and shown("memory", sub):
            per_kind["memory"].append(memory_table(sub, modes=modes.get("memory")))
    for kind in kinds:
        if not per_kind[kind]:
            log.warning("no rows fit the %s table; skipped", kind)
            continue
        written += write_tables(per_kind[kind], out, f"table_{kind}")
    return written
