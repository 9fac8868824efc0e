"""Divergence is a result: a run whose training went wrong without a NaN is flagged, not reported as a normal row.

A NaN or infinite loss stops a stage at once (``fit.check_finite``). A finite loss that climbs, or a head
whose validation mAP falls apart, used to give an ordinary-looking row (``lofi.optim.lr=1000``: the LoFi loss rose
15.67 → 22.27 and the row showed mAP 0.109 against 0.150, without a word). The rules, on a stage's per-epoch
history (``harness.pipeline.fit``), thresholds below:

- **loss rise**: the last epoch's mean training loss is at least ``LOSS_RISE`` × the first epoch's (the first
  epoch's mean includes the untrained start, so a healthy run ends well below it; one epoch: never flagged);
- **validation collapse** (the head's curve, ``head.validate_every``, and its final validation mAP): the best
  validation average mAP is at least ``VAL_FLOOR`` (below it, the numbers are noise) and the final one is below
  ``VAL_COLLAPSE`` × that best.

``runtime.on_divergence`` decides what a flagged run does: ``warn`` (default) writes its row with ``diverged`` =
the reasons (shown in every table it appears in) and logs one warning line; ``fail`` stops with one line instead.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import LofiError

log = logging.getLogger(__name__)

LOSS_RISE = 1.25  # last epoch's mean loss / first epoch's at or above this: diverged
VAL_COLLAPSE = 0.5  # final validation average mAP below this fraction of the best: collapsed
VAL_FLOOR = 0.02  # ... counted only when the best validation average mAP reached at least this


def loss_rise(history: Sequence[Mapping[str, Any]], stage: str) -> str:
    """The reason ``stage``'s loss diverged, or ""."""
    losses = [float(row["loss"]) for row in history if isinstance(row, Mapping) and "loss" in row]
    if len(losses) < 2 or not all(math.isfinite(x) for x in losses) or losses[0] <= 0:
        return ""
    ratio = losses[-1] / losses[0]
    if ratio < LOSS_RISE:
        return ""
    return f"{stage} loss rose {losses[0]:.4g} -> {losses[-1]:.4g} (x{ratio:.2f} >= {LOSS_RISE})"


def val_collapse(history: Sequence[Mapping[str, Any]], final: float | None, stage: str = "head") -> str:
    """The reason the validation average mAP collapsed (its best, then ``final``, the last), or ""."""
    curve = [float(row["val_average_mAP"]) for row in history if "val_average_mAP" in row]
    if final is not None:
        curve.append(float(final))
    if len(curve) < 2:
        return ""
    best, last = max(curve), curve[-1]
    if best < VAL_FLOOR or last >= VAL_COLLAPSE * best:
        return ""
    return f"{stage} validation mAP collapsed {best:.4g} -> {last:.4g} (< {VAL_COLLAPSE} x best)"


def stage_history(folder: Path, done_file: str = "done.json") -> list[Mapping[str, Any]]:
    """The per-epoch history a finished training stage recorded in its ``done.json`` ([] when it has none)."""
    try:
        info = json.loads((folder / done_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    history = info.get("history") if isinstance(info, dict) else None
    return [row for row in history if isinstance(row, Mapping)] if isinstance(history, list) else []


def run_divergence(stage_histories: Mapping[str, Sequence[Mapping[str, Any]]], head_metrics: Mapping[str, Any]) -> str:
    """Every reason a run diverged ("; "-joined), from its training stages' histories (by stage name) and the head
    stage's metrics (``history`` and the final ``validation``), or ""."""
    reasons = [loss_rise(h, name) for name, h in stage_histories.items()]
    head_history = head_metrics.get("history") or []
    validation = head_metrics.get("validation")
    final = validation.get("average_mAP") if isinstance(validation, Mapping) else None
    reasons += [loss_rise(head_history, "head"), val_collapse(head_history, final)]
    return "; ".join(r for r in reasons if r)


def act_on_divergence(reason: str, *, policy: str, run: str) -> None:
    """``fail``: one-line error; ``warn``: one warning line (the row carries the reason)."""
    if not reason:
        return
    if policy == "fail":
        raise LofiError(
            f"{run}: training diverged ({reason}); lower the learning rate, or set runtime.on_divergence=warn to "
            "keep the run flagged in its row"
        )
    log.warning("%s: training diverged (%s); its row is flagged (column 'diverged')", run, reason)
