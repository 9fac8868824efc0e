"""The names of the files stages and runs write, spelled once (folders: ``harness/pipeline/plan.py``)."""

from __future__ import annotations

import re
from pathlib import Path

ENCODER = "encoder.pt"  # pretrain and lofi stages: {"encoder": state_dict, ...} (+ the classifier for acp/acp+)
CHECKPOINT = "checkpoint.pt"  # lofi stage: the last finished epoch, to resume from
DONE = "done.json"  # every stage, written last: its key and the files it produced
SCORES = "class_scores.json"  # classifier stage: video-level class scores
METRICS = "metrics.json"  # head stage and run folder
ROW = "row.json"  # run folder: the tidy results row every table is built from
MEMORY_CACHE = ".activation_memory"  # stages root: one JSON per counted shape (the row's activation memory)


def results_file(kind: str, split: str) -> str:
    """The head's official-layout results: ``predictions_<split>.json`` or ``proposals_<split>.json``."""
    return f"{kind}_{split}.json"


def plot_files(out: Path, dataset: str, encoder: str, head: str) -> tuple[Path, Path]:
    """The plots ``lofi report tables`` draws for one dataset/encoder/head group: mAP vs tIoU, average mAP vs
    activation memory (the workflow declares them as outputs of the ablation table's job)."""
    slug = "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", str(p)) for p in (dataset, encoder, head))
    return out / f"plot_map_vs_tiou_{slug}.png", out / f"plot_map_vs_memory_{slug}.png"
