"""The cells of a table: numbers as shown (mean ± sd in %, signed Δ, p), a mode's (L, H×W) and relative memory,
and a comparison's Δ / p cells and CSV numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.fidelity import PAPER_RATIOS, fidelity_shape
from harness.report.stats import ALPHA, Comparison
from harness.schedule import CYCLE_ORDER

DAGGER = "†"  # after a Δ whose p (Holm) < ALPHA


def fmt_num(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_pm(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return fmt_num(mean) if math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def metric_stats(runs: pd.DataFrame, column: str) -> tuple[float, float]:
    """Mean and sample sd (ddof=1; NaN for one seed) over seeds, in %."""
    values = runs[column].dropna() * 100.0 if column in runs else pd.Series(dtype="float64")
    return float(values.mean()), float(values.std())


def relative_memory(runs: pd.DataFrame) -> float:
    """Activation memory of the end-to-end stage relative to full fidelity: the rows' ``activation_rel``, else
    ``activation_bytes / activation_bytes_full`` (NaN for frozen-encoder modes, whose rows hold 0)."""
    rel = pd.Series(np.nan, index=runs.index)
    if "activation_rel" in runs:
        rel = pd.to_numeric(runs["activation_rel"], errors="coerce")
    if "activation_bytes" in runs and "activation_bytes_full" in runs:
        used = pd.to_numeric(runs["activation_bytes"], errors="coerce")
        full = pd.to_numeric(runs["activation_bytes_full"], errors="coerce")
        rel = rel.fillna(used / full.where(full > 0))
    rel = rel.where(rel > 0)
    return float(rel.mean()) if rel.notna().any() else float("nan")


def shape_cells(runs: pd.DataFrame) -> tuple[str, str]:
    """(L, H×W) the mode's encoder was trained at: one fidelity as the paper writes it, a cycle as the range of its
    fidelities (``8–32``, ``32²–64²``), a frozen-encoder mode as full fidelity (what its features are taken at)."""
    L = runs["L"].dropna().unique() if "L" in runs else []
    size = runs["size"].dropna().unique() if "size" in runs else []
    if len(L) == 1 and len(size) == 1:
        return str(int(L[0])), f"{int(size[0])}²"
    full_L = runs["full_L"].dropna() if "full_L" in runs else pd.Series(dtype=float)
    full_size = runs["full_size"].dropna() if "full_size" in runs else pd.Series(dtype=float)
    if full_L.empty or full_size.empty:
        return "–", "–"
    fids = str(runs["fidelities"].iloc[0]) if "fidelities" in runs and runs["fidelities"].notna().any() else ""
    cycle = str(runs["cycle"].iloc[0]) if "cycle" in runs and runs["cycle"].notna().any() else ""
    names = [n for n in fids.split(",") if n in PAPER_RATIOS] or (
        list(CYCLE_ORDER) if cycle in ("long", "short") else []
    )
    if not names:  # a frozen encoder: the head reads full-fidelity features
        return str(int(full_L.iloc[0])), f"{int(full_size.iloc[0])}²"
    shapes = [fidelity_shape(int(full_L.iloc[0]), int(full_size.iloc[0]), *PAPER_RATIOS[n]) for n in names]
    ls, sizes = sorted({a for a, _ in shapes}), sorted({b for _, b in shapes})
    return (
        f"{ls[0]}–{ls[-1]}" if len(ls) > 1 else str(ls[0]),
        f"{sizes[0]}²–{sizes[-1]}²" if len(sizes) > 1 else f"{sizes[0]}²",
    )


def comparison_cells(c: Comparison | None) -> dict[str, object]:
    if c is None:
        return {"Δ Avg [95% CI]": "–", "p (Holm)": "–", "": ""}
    return {
        "Δ Avg [95% CI]": f"{100 * c.diff:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]",
        "p (Holm)": fmt_p(c.p_adjusted),
        "": DAGGER if c.p_adjusted < ALPHA else "",
    }


def comparison_numbers(c: Comparison | None) -> dict[str, float]:
    nan = float("nan")
    if c is None:
        return {
            "delta_avg": nan,
            "delta_ci_low": nan,
            "delta_ci_high": nan,
            "p_value": nan,
            "p_holm": nan,
            "delta_se": nan,
            "mde": nan,
        }
    return {
        "delta_avg": 100 * c.diff,
        "delta_ci_low": 100 * c.ci_low,
        "delta_ci_high": 100 * c.ci_high,
        "p_value": c.p_value,
        "p_holm": c.p_adjusted,
        "delta_se": 100 * c.se,
        "mde": 100 * c.mde,
    }


def fmt_range(values: Sequence[float]) -> str:
    """'a' or 'a–b' (2 decimals) over the finite values; '–' if none."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "–"
    lo, hi = min(finite), max(finite)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"
