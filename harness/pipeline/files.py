"""The names of the files stages and runs write, spelled once (folders: ``harness/pipeline/plan.py``)."""

from __future__ import annotations

ENCODER = "encoder.pt"  # pretrain and lofi stages: {"encoder": state_dict, ...} (+ the classifier for acp/acp+)
CHECKPOINT = "checkpoint.pt"  # lofi stage: the last finished epoch, to resume from
DONE = "done.json"  # every stage, written last: its key and the files it produced
SCORES = "class_scores.json"  # classifier stage: video-level class scores
METRICS = "metrics.json"  # head stage and run folder
ROW = "row.json"  # run folder: the tidy results row every table is built from


def results_file(kind: str, split: str) -> str:
    """The head's official-layout results: ``predictions_<split>.json`` or ``proposals_<split>.json``."""
    return f"{kind}_{split}.json"
