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
from harness.report.cells import relative_memory
from harness.report.rows import THRESHOLD_COLUMNS, TableError, mode_label, order_modes

log = logging.getLogger(__name__)


# Modes drawn as horizontal lines whatever their memory: the floor (ACP) and the ceiling (e2e-full) of LoFi.
REFERENCE_LINES: dict[str, dict[str, str]] = {
    "acp": {"color": "tab:gray", "ls": "--"},
    "e2e-full": {"color": "black", "ls": "-."},
}


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
    """Average mAP (%) against LoFi-stage activation memory relative to full fidelity, one point per LoFi mode.

    ACP (the frozen encoder, the floor LoFi must beat) and e2e-full (full-fidelity end-to-end training, the
    ceiling) are horizontal reference lines with their ± sd band, as is any other mode that trains no encoder end
    to end (no relative memory)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = 0
    for mode in order_modes(rows["mode"], modes):
        runs = rows[rows["mode"] == mode]
        values = runs["average_mAP"].astype("float64") * 100.0
        mean, sd = values.mean(), (values.std() if len(values) > 1 else 0.0)
        rel = relative_memory(runs)
        label = mode_label(mode)
        if mode in REFERENCE_LINES or np.isnan(rel):  # a reference level, not a point
            style = REFERENCE_LINES.get(mode, {"color": "gray", "ls": "--"})
            note = f"{label} (rel. memory {rel:.2f})" if not np.isnan(rel) else f"{label} (frozen)"
            ax.axhline(mean, lw=1, **style)
            if sd > 0:
                ax.axhspan(mean - sd, mean + sd, alpha=0.12, color=style["color"], lw=0)
            ax.annotate(
                note, (0.01, mean), xycoords=("axes fraction", "data"), fontsize=7, va="bottom", color=style["color"]
            )
            continue
        ax.errorbar([rel], [mean], yerr=[sd], marker="o", capsize=2, label=label)
        plotted += 1
    ax.set_xlim(0.0, 1.05)  # 1 = full fidelity (e2e-full), where the ceiling line stands
    ax.set_xlabel("activation memory relative to full fidelity")
    ax.set_ylabel("average mAP (%)")
    ax.set_title(title or "average mAP vs activation memory (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(fontsize=7)
    return _save(fig, Path(path))
