"""Figures beside the tables (matplotlib, Agg backend, PNG written atomically): from the tidy rows only."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.io import atomic_path
from harness.tables import THRESHOLD_COLUMNS, TableError, _relative_memory, mode_label, order_modes

log = logging.getLogger(__name__)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def plot_map_vs_tiou(
    rows: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "", modes: Sequence[str] | None = None
) -> Path:
    """mAP (%) against the tIoU threshold, one line per mode (``modes``, in order; None: every mode in the rows):
    mean over seeds, error bars = sd."""
    cols = [c for c in THRESHOLD_COLUMNS if c in rows]
    if not cols:
        raise TableError("rows hold no mAP_<tIoU> columns; cannot plot mAP vs tIoU")
    tious = [float(c.split("_")[1]) for c in cols]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in order_modes(rows["mode"], modes):
        values = rows.loc[rows["mode"] == mode, cols].astype("float64") * 100.0
        sd = values.std() if len(values) > 1 else None  # ddof=1
        ax.errorbar(
            tious, values.mean(), yerr=sd, marker="o", ms=3, capsize=2, label=f"{mode_label(mode)} (n={len(values)})"
        )
    ax.set_xlabel("tIoU threshold")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title or "mAP vs tIoU (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_map_vs_memory(
    rows: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "", modes: Sequence[str] | None = None
) -> Path:
    """Average mAP (%) against LoFi-stage activation memory relative to full fidelity; frozen modes as lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = 0
    for mode in order_modes(rows["mode"], modes):
        runs = rows[rows["mode"] == mode]
        values = runs["average_mAP"].astype("float64") * 100.0
        mean, sd = values.mean(), (values.std() if len(values) > 1 else 0.0)
        rel = _relative_memory(runs)
        label = mode_label(mode)
        if np.isnan(rel):  # no end-to-end stage: a reference level, not a point
            ax.axhline(mean, ls="--", lw=1, color="gray")
            ax.annotate(
                f"{label} (frozen)",
                (0.0, mean),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                va="bottom",
                color="gray",
            )
            continue
        ax.errorbar([rel], [mean], yerr=[sd], marker="o", capsize=2, label=label)
        plotted += 1
    ax.set_xlabel("activation memory relative to full fidelity")
    ax.set_ylabel("average mAP (%)")
    ax.set_title(title or "average mAP vs activation memory (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(fontsize=7)
    return _save(fig, Path(path))
