"""The tidy rows every table is built from, and what all tables share: the rows' reader (``load_rows``), the
modes' labels and canonical order, the metric columns, and the built ``Table`` (``harness.report.writers`` writes it).

A row is one run's ``row.json`` (``harness.pipeline.row``); mAP is held as a fraction, tables show %.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import LofiError
from harness.pipeline.files import ROW

THRESHOLD_COLUMNS: tuple[str, ...] = tuple(f"mAP_{t:.2f}" for t in np.linspace(0.5, 0.95, 10))
SHOWN_METRICS: tuple[tuple[str, str], ...] = (
    ("mAP_0.50", "mAP@0.5"),
    ("mAP_0.75", "mAP@0.75"),
    ("mAP_0.95", "mAP@0.95"),
    ("average_mAP", "Avg"),
)
# The display name of every mode, in the canonical order tables and plots use when not told another (the modes
# are harness.modes.MODES; tests/test_tables.py checks both name the same set). WHICH modes a table shows is
# the caller's choice (the config's sweep.*_modes in `lofi report tables`), never a list here.
MODE_LABELS: dict[str, str] = {
    "blind": "Blind (zeroed features)",
    "icp": "ICP",
    "acp": "ACP",
    "acp+": "ACP+",
    "lofi-S": "S-LoFi",
    "lofi-S+bn": "S-LoFi + BN recal.",
    "lofi-T": "T-LoFi",
    "lofi-ST": "ST-LoFi",
    "lofi-short": "Short C-LoFi",
    "lofi-long": "Long C-LoFi",
    "lofi-custom": "Custom LoFi",
    "e2e-full": "End-to-end (full fidelity)",
}
PAPER_LOFI_LABEL: dict[str, str] = {"lofi-long": "LoFi"}  # the paper's Tables 1 and 6 call Long C-LoFi "LoFi"
BASELINE = "acp"
REFERENCE = "e2e-full"  # the upper reference of the share of the end-to-end gain
NEGATIVE = "acp@control-seeds"  # the controls table's key of ACP on the sweep's control seeds
REQUIRED_COLUMNS = ("dataset", "encoder", "head", "mode", "seed", "average_mAP")


class TableError(LofiError):
    """Rows cannot make the requested table (missing file, missing column, mixed datasets)."""


@dataclass(frozen=True)
class Table:
    """A built table: display strings for Markdown/LaTeX, numbers for CSV, notes and provenance lines."""

    name: str  # "ablation", "pretrain", "models", "memory", "controls"
    title: str
    display: pd.DataFrame
    numeric: pd.DataFrame
    notes: tuple[str, ...]
    provenance: tuple[str, ...]


def load_rows(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per run from ``row.json`` files (or run folders holding one), plus ``row_path`` and ``row_time``.

    ``predictions`` / ``ground_truth`` / ``proposals`` / ``class_scores`` paths that are relative are made absolute
    against the run folder.
    """
    records = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / ROW
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TableError(
                f"{path}: no row.json; pass run folders that finished (lofi run writes row.json last)"
            ) from None
        except json.JSONDecodeError as exc:
            raise TableError(f"{path}: not valid JSON ({exc}); re-run the run or remove the folder") from None
        if not isinstance(row, dict):
            raise TableError(f"{path}: expected a JSON object (the tidy results row)")
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise TableError(f"{path}: row lacks {', '.join(missing)}; it was not written by `lofi run`")
        for key in ("predictions", "ground_truth", "proposals", "class_scores"):
            value = row.get(key)
            if value and not Path(value).is_absolute():
                row[key] = str((path.parent / value).resolve())
        row["row_path"] = str(path.resolve())
        row["row_time"] = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.UTC).isoformat(timespec="seconds")
        records.append(row)
    if not records:
        raise TableError("no row.json found; check --runs / --runs-glob")
    frame = pd.DataFrame.from_records(records)
    dupes = frame.duplicated(["dataset", "encoder", "head", "mode", "seed"], keep=False)
    if dupes.any():
        first = frame[dupes].iloc[0]
        raise TableError(
            f"{first['row_path']}: {first['mode']} seed {first['seed']} appears more than once; pass each run once"
        )
    return frame


def check_scale(rows: pd.DataFrame) -> None:
    """Rows hold mAP as fractions (the evaluator's unit); tables show %. A percent in a row would be shown x100."""
    cols = [c for c in ("average_mAP", *THRESHOLD_COLUMNS) if c in rows]
    values = rows[cols].to_numpy(dtype=np.float64)
    if np.nanmax(np.abs(values), initial=0.0) > 1.0:
        bad = rows.loc[(rows[cols].abs() > 1.0).any(axis=1)].iloc[0]
        raise TableError(f"{bad['row_path']}: mAP values above 1; rows must hold fractions as the evaluator returns")


def single_value(rows: pd.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in rows[column].dropna()})
    if len(values) != 1:
        raise TableError(f"rows mix {column} values {values}; build one table per {column}")
    return values[0]


def order_modes(present: Iterable[str], modes: Sequence[str] | None = None) -> list[str]:
    """The modes of ``present`` a table shows, in order: those listed in ``modes`` in its order, or (``None``)
    all of them in the canonical order of ``MODE_LABELS`` (unknown modes last, by name)."""
    have = set(present)
    if modes is not None:
        return [m for m in dict.fromkeys(modes) if m in have]
    canonical = list(MODE_LABELS)
    return sorted(have, key=lambda m: (canonical.index(m) if m in canonical else len(canonical), m))


def mode_label(mode: str, overrides: Mapping[str, str] | None = None) -> str:
    return (overrides or {}).get(mode) or MODE_LABELS.get(mode, mode)
