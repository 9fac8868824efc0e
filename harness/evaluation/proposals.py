"""ActivityNet proposal metrics (AR@AN and AUC) with the semantics of the official ``Evaluation/eval_proposal.py``.

Class-agnostic: labels in the predictions file are optional and ignored. Following the official
``average_recall_vs_avg_nr_proposals`` exactly, quirks included:

- the videos are those of the subset with at least one ground-truth instance (V of them);
- ``ratio = max_avg_proposals * V / P_all`` where P_all counts *every* proposal in the file, also those of videos
  outside the ground truth; each video keeps its ``min(int(n_v * ratio), n_v)`` best-scored proposals (ties in
  score: input order, as in the detection metric);
- on a grid of 100 points ``pcn_k = k/100 * max_avg * V / N_kept`` (k = 1..100) a video may use
  ``min(int(n_kept_v * pcn_k), n_kept_v)`` proposals (float truncation as in the official code);
- a ground-truth instance is recalled at threshold t if *any* of those proposals has tIoU >= t with it (no
  one-to-one matching); recall = recalled / all instances; AR = mean over the 10 thresholds;
- average number of proposals per video on the grid: ``pcn_k * N_kept / V`` (= k·max_avg/100 up to rounding);
- AUC = ``trapezoid(AR, AN) / AN[-1]`` — the curve starts at AN = max_avg/100, not 0; the official script prints
  100·AUC as a percentage, we return the fraction;
- AR@N is the AR at the grid point AN = N (linear interpolation between grid points if N is not on the grid;
  ``None`` when N is outside the grid, e.g. AR@100 with max_avg_proposals < 100).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.data.model import TALDataset
from harness.errors import PredictionError
from harness.evaluation.detection import (
    TIOU_THRESHOLDS,
    DetectionGroundTruth,
    group_pairs,
    load_ground_truth,
    segment_tiou,
)
from harness.evaluation.predictions import DetectionPredictions, load_predictions

log = logging.getLogger(__name__)

AR_AT = (1, 5, 10, 100)


def recall_curve(
    gt: DetectionGroundTruth,
    preds: DetectionPredictions,
    max_avg_proposals: float = 100,
    tiou_thresholds: np.ndarray = TIOU_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(recall (T, 100), average_recall (100,), proposals_per_video (100,))`` as the official function."""
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    videos = np.unique(gt.gt_video)  # subset videos with at least one instance
    num_v = videos.shape[0]
    local = np.full(len(gt.video_ids), -1, dtype=np.int64)
    local[videos] = np.arange(num_v)
    p_all = len(preds)
    if p_all == 0:
        raise PredictionError(f"{preds.source}: no proposal at all; nothing to evaluate")
    ratio = max_avg_proposals * float(num_v) / p_all

    pv = np.where(preds.video >= 0, local[np.maximum(preds.video, 0)], -1)
    known = np.flatnonzero(pv >= 0)
    n_v = np.bincount(pv[known], minlength=num_v)
    keep_v = np.minimum((n_v * ratio).astype(np.int64), n_v)
    total_kept = int(keep_v.sum())
    if total_kept == 0:
        raise PredictionError(f"{preds.source}: no proposal is kept at max_avg_proposals={max_avg_proposals}; raise it")
    # Rank within video, by score descending, ties in input order.
    order = known[np.lexsort((known, -preds.score[known], pv[known]))]
    vv = pv[order]
    first = np.searchsorted(vv, np.arange(num_v))
    rank_sorted = np.arange(order.shape[0]) - first[vv]
    rank = np.full(p_all, -1, dtype=np.int64)
    rank[order] = rank_sorted
    kept = np.flatnonzero((pv >= 0) & (rank < keep_v[np.maximum(pv, 0)]))

    gt_local = local[gt.gt_video]
    pair_p, pair_g = group_pairs(pv[kept], gt_local)
    pair_p = kept[pair_p]
    tiou = segment_tiou(preds.segments[pair_p], gt.gt_segments[pair_g])
    pair_rank = rank[pair_p]

    num_g = gt.num_instances
    big = np.iinfo(np.int64).max
    first_rank = np.full((thresholds.shape[0], num_g), big, dtype=np.int64)  # best rank reaching each threshold
    for t, thr in enumerate(thresholds):
        ok = tiou >= thr
        np.minimum.at(first_rank[t], pair_g[ok], pair_rank[ok])

    pcn = np.arange(1, 101) / 100.0 * (max_avg_proposals * float(num_v) / total_kept)
    # Official: a video without proposals holds a (n, 1) zero matrix, so its width is 1 (it recalls nothing).
    width = np.where(n_v > 0, keep_v, 1)
    allowed = np.minimum((width[:, None] * pcn[None, :]).astype(np.int64), width[:, None])  # (V, 100)
    recalled = first_rank[:, :, None] < allowed[gt_local][None, :, :]  # (T, G, 100)
    recall = recalled.sum(axis=1) / float(num_g)
    avg_recall = recall.mean(axis=0)
    proposals_per_video = pcn * (float(total_kept) / num_v)
    return recall, avg_recall, proposals_per_video


def _ar_at(n: float, avg_recall: np.ndarray, per_video: np.ndarray) -> float | None:
    close = np.flatnonzero(np.isclose(per_video, n, rtol=0, atol=1e-9))
    if close.size:
        return float(avg_recall[close[0]])
    if n < per_video[0] or n > per_video[-1]:
        return None
    return float(np.interp(n, per_video, avg_recall))


def evaluate_proposals(
    gt: DetectionGroundTruth | str | os.PathLike[str] | TALDataset,
    preds: DetectionPredictions | str | os.PathLike[str] | Mapping[str, Any],
    max_avg_proposals: float = 100,
) -> dict[str, float | None]:
    """``{"AR@1", "AR@5", "AR@10", "AR@100", "AUC"}`` as fractions (see the module docstring)."""
    if not isinstance(gt, DetectionGroundTruth):
        gt = load_ground_truth(gt)
    if not isinstance(preds, DetectionPredictions):
        preds = load_predictions(preds, gt, require_label=False)
    if not max_avg_proposals > 0:
        raise ValueError(f"max_avg_proposals must be > 0, got {max_avg_proposals}")
    _, avg_recall, per_video = recall_curve(gt, preds, max_avg_proposals)
    out: dict[str, float | None] = {f"AR@{n}": _ar_at(n, avg_recall, per_video) for n in AR_AT}
    out["AUC"] = float(np.trapezoid(avg_recall, per_video) / per_video[-1])
    log.info("%s: AR@100 %s, AUC %.4f", preds.source, out["AR@100"], out["AUC"])
    return out
