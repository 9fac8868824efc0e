"""ActivityNet detection mAP, with the semantics of the official ``Evaluation/eval_detection.py``, vectorised.

Protocol (the official ActivityNet evaluator's, which the LoFi paper uses):

- Ground truth: the instances of the chosen subset. The classes evaluated are the labels that occur in that
  subset's ground truth (sorted by name; the order does not change any number). THUMOS 'Ambiguous' spans are not
  ground truth: a :class:`~harness.data.model.TALDataset` keeps them in ``Video.ambiguous`` and they are ignored
  (files in THUMOS layouts are read by ``harness.data.annotations.read_annotations``, which puts them there).
  Files are read by the data layer's reader, ``harness.data.annotations.read_ground_truth``: official-layout
  JSON with its segments exactly as written, like the official evaluator (the data layer's default would clip
  the 215 ActivityNet-1.3 segments that overshoot their video's duration).
- Predictions (read by ``harness.evaluation.predictions``): ``{"version", "results": {video_id: [{"label", "score",
  "segment": [s, e]}]}, "external_data"}``.
  A prediction whose video is not in the subset (``pred_video == -1``) or whose video has no ground truth of its
  class is a false positive. A label that is not an evaluated class is an error (the official code crashes with a
  ``KeyError`` there), as are a malformed file, missing keys, a non-finite score or segment, and start > end.
- Matching, per tIoU threshold (``TIOU_THRESHOLDS = 0.50:0.05:0.95``): per class, the predictions of all videos
  are pooled and sorted by score, descending. Each takes the not-yet-matched ground-truth instance of its video
  and class with the highest tIoU among those with tIoU >= threshold (true positive); if there is none it is a
  false positive.
- AP: interpolated (VOC 2011): precision made monotone from the right, summed over the recall steps; recall is
  relative to the number of ground-truth instances of the class. mAP = mean over the classes; average mAP = mean
  of the mAPs over thresholds.

Tie rules (the official code uses NumPy's unstable ``argsort()[::-1]``, which leaves them unspecified):

- predictions with equal scores keep their input order (file order: videos as listed under ``results``, then
  each video's list) — a stable sort by descending score;
- ground-truth instances with equal tIoU to a prediction are tried in their input order.

Degenerate pairs: the tIoU of two zero-length segments is 0/0; we define it as 0 (never a match). The official
code computes NaN there, and since ``NaN < threshold`` is false it would count a zero-length prediction as a true
positive of *any* unmatched zero-length instance of its video and class (12 such instances in ActivityNet-1.3's
file) — a defect we do not reproduce.

Speed: no Python loop per prediction. The (prediction, ground truth) pairs of the same video and class are built
with ``searchsorted``/``repeat``, pairs below the lowest threshold are dropped, and the greedy matching runs as a
loop over the *rank of a prediction within its (video, class) group*: step ``r`` handles the r-th prediction of
every group at once (groups never interact), for all thresholds together.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from harness.data.model import TALDataset
from harness.errors import AnnotationError, PredictionError
from harness.evaluation.predictions import DetectionPredictions, load_predictions

log = logging.getLogger(__name__)

TIOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
TIOU_THRESHOLDS.flags.writeable = False  # a shared constant: nobody may change it in place


# ----------------------------------------------------------------------------------------------------------------
# Data classes


@dataclass(frozen=True)
class DetectionGroundTruth:
    """The ground truth of one subset, as flat arrays.

    ``video_ids`` lists every video of the subset, including videos without any instance (their predictions are
    false positives; a bootstrap draws them like any other video). ``gt_*`` arrays have one row per instance.
    """

    source: str
    subset: str
    video_ids: tuple[str, ...]
    classes: tuple[str, ...]
    gt_video: np.ndarray  # (G,) int64 index into video_ids
    gt_class: np.ndarray  # (G,) int64 index into classes
    gt_segments: np.ndarray  # (G, 2) float64 [start, end] seconds
    video_index: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    class_index: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.video_index:
            object.__setattr__(self, "video_index", MappingProxyType({v: i for i, v in enumerate(self.video_ids)}))
        if not self.class_index:
            object.__setattr__(self, "class_index", MappingProxyType({c: i for i, c in enumerate(self.classes)}))

    @property
    def num_instances(self) -> int:
        return int(self.gt_video.shape[0])


@dataclass(frozen=True)
class DetectionMatches:
    """The outcome of matching, enough to compute AP for any re-weighting of the ground-truth videos."""

    classes: np.ndarray  # (C,) str
    video_ids: np.ndarray  # (V,) str
    tiou_thresholds: np.ndarray  # (T,)
    pred_class: np.ndarray  # (P,) int64
    pred_video: np.ndarray  # (P,) int64, -1 = video not in the ground truth
    pred_score: np.ndarray  # (P,) float64
    tp: np.ndarray  # (T, P) bool
    gt_class: np.ndarray  # (G,) int64
    gt_video: np.ndarray  # (G,) int64


@dataclass(frozen=True)
class DetectionResult:
    tiou_thresholds: np.ndarray  # (T,)
    ap: np.ndarray  # (T, C)
    mAP: np.ndarray  # (T,)
    average_mAP: float
    classes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "mAP": [float(m) for m in self.mAP],
            "average_mAP": float(self.average_mAP),
        }


# ----------------------------------------------------------------------------------------------------------------
# Ground truth


def load_ground_truth(
    path_or_dataset: str | os.PathLike[str] | TALDataset,
    subset: str = "validation",
    *,
    exclude: Collection[str] = (),
) -> DetectionGroundTruth:
    """The ground truth of ``subset`` from an official-layout JSON file or a :class:`TALDataset`; ``exclude``:
    videos left out of it (a run's test videos without a file under ``data.missing: skip``, as the run evaluated)."""
    if isinstance(path_or_dataset, TALDataset):
        dataset, source = path_or_dataset, path_or_dataset.source or path_or_dataset.name
    else:
        from harness.data.annotations import read_ground_truth

        path = Path(path_or_dataset)
        dataset, source = read_ground_truth(path), str(path)
    videos = [v for v in dataset.subset(subset) if v.id not in exclude] if exclude else dataset.subset(subset)
    if not videos:
        counts = dataset.subset_counts()
        raise AnnotationError(f"{source}: no video in subset {subset!r} (subsets: {counts}); pick another --subset")
    video_ids = tuple(v.id for v in videos)
    rows = [(i, s) for i, v in enumerate(videos) for s in v.segments]
    classes = tuple(sorted({s.label for _, s in rows}))
    if not classes:
        raise AnnotationError(f"{source}: subset {subset!r} has no annotated instance; nothing to evaluate")
    cidx = {c: k for k, c in enumerate(classes)}
    gt_video = np.array([i for i, _ in rows], dtype=np.int64)
    gt_class = np.array([cidx[s.label] for _, s in rows], dtype=np.int64)
    gt_segments = np.array([[s.start, s.end] for _, s in rows], dtype=np.float64).reshape(-1, 2)
    bad = np.flatnonzero(~np.isfinite(gt_segments).all(axis=1) | (gt_segments[:, 0] > gt_segments[:, 1]))
    if bad.size:
        g = int(bad[0])
        raise AnnotationError(
            f"{source}: video {video_ids[gt_video[g]]}: ground-truth segment {gt_segments[g].tolist()} is not a "
            "finite [start, end] with start <= end; fix the annotation"
        )
    return DetectionGroundTruth(
        source=source,
        subset=subset,
        video_ids=video_ids,
        classes=classes,
        gt_video=gt_video,
        gt_class=gt_class,
        gt_segments=gt_segments,
    )


# ----------------------------------------------------------------------------------------------------------------
# Matching


def segment_tiou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise tIoU of (N, 2) segments ``a`` and ``b`` (official formula; 0/0 -> 0)."""
    inter = np.clip(np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]), 0.0, None)
    union = (b[:, 1] - b[:, 0]) + (a[:, 1] - a[:, 0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        tiou = inter / union
    return np.nan_to_num(tiou, nan=0.0)


def group_pairs(left_keys: np.ndarray, right_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with ``left_keys[i] == right_keys[j]`` (negative left keys match nothing), without a loop.

    Returns index arrays ordered by i, then by j ascending.
    """
    order = np.argsort(right_keys, kind="stable")
    sorted_keys = right_keys[order]
    lo = np.searchsorted(sorted_keys, left_keys, side="left")
    hi = np.searchsorted(sorted_keys, left_keys, side="right")
    n = np.where(left_keys >= 0, hi - lo, 0)
    left = np.repeat(np.arange(left_keys.shape[0]), n)
    offset = np.arange(left.shape[0]) - np.repeat(np.cumsum(n) - n, n)
    right = order[np.repeat(lo, n) + offset]
    return left, right


def _coerce(
    gt: DetectionGroundTruth | str | os.PathLike[str] | TALDataset,
    preds: DetectionPredictions | str | os.PathLike[str] | Mapping[str, Any],
    require_label: bool = True,
) -> tuple[DetectionGroundTruth, DetectionPredictions]:
    if not isinstance(gt, DetectionGroundTruth):
        gt = load_ground_truth(gt)
    if not isinstance(preds, DetectionPredictions):
        preds = load_predictions(preds, gt, require_label=require_label)
    return gt, preds


def match_detections(
    gt: DetectionGroundTruth,
    preds: DetectionPredictions,
    tiou_thresholds: Sequence[float] | np.ndarray = TIOU_THRESHOLDS,
) -> DetectionMatches:
    """Greedy official matching of every prediction, for every threshold (see the module docstring)."""
    gt, preds = _coerce(gt, preds)
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    num_t, num_p, num_c = thresholds.shape[0], len(preds), len(gt.classes)
    if np.any(preds.label < 0):
        raise PredictionError(f"{preds.source}: predictions were read without labels; cannot evaluate detection")
    tp = np.zeros((num_t, num_p), dtype=bool)

    pred_key = np.where(preds.video >= 0, preds.video * num_c + preds.label, -1)
    gt_key = gt.gt_video * num_c + gt.gt_class
    pair_p, pair_g = group_pairs(pred_key, gt_key)
    tiou = segment_tiou(preds.segments[pair_p], gt.gt_segments[pair_g])
    if num_t and pair_p.size:
        keep = tiou >= thresholds.min()  # a pair below every threshold can never match
        pair_p, pair_g, tiou = pair_p[keep], pair_g[keep], tiou[keep]
    if num_t == 0 or pair_p.size == 0:
        return _matches(gt, preds, thresholds, tp)

    # Rank of each (useful) prediction inside its (video, class) group: by score descending, ties in input order.
    cand = pair_p[np.r_[True, pair_p[1:] != pair_p[:-1]]]  # np.unique: pair_p is sorted (group_pairs)
    order = np.lexsort((cand, -preds.score[cand], pred_key[cand]))
    cand = cand[order]
    keys = pred_key[cand]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    rank_sorted = np.arange(cand.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, cand.shape[0]]))
    rank = np.empty(num_p, dtype=np.int64)
    rank[cand] = rank_sorted

    # Pairs ordered by (rank, prediction, tIoU descending, gt index): one contiguous block per prediction.
    pair_rank = rank[pair_p]
    porder = np.lexsort((pair_g, -tiou, pair_p, pair_rank))
    pair_p, pair_g, tiou, pair_rank = pair_p[porder], pair_g[porder], tiou[porder], pair_rank[porder]
    bounds = np.searchsorted(pair_rank, np.arange(int(pair_rank[-1]) + 2))
    locked = np.zeros((num_t, gt.num_instances), dtype=bool)
    above = tiou[None, :] >= thresholds[:, None]  # (T, pairs)
    for r in range(bounds.shape[0] - 1):
        a, b = int(bounds[r]), int(bounds[r + 1])
        sp, sg = pair_p[a:b], pair_g[a:b]
        valid = above[:, a:b] & ~locked[:, sg]
        block_start = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        lengths = np.diff(np.r_[block_start, sp.shape[0]])
        csum = np.cumsum(valid, axis=1)
        before = np.concatenate([np.zeros((num_t, 1), dtype=csum.dtype), csum], axis=1)[:, block_start]
        first = valid & (csum - np.repeat(before, lengths, axis=1) == 1)
        t_idx, j = np.nonzero(first)
        locked[t_idx, sg[j]] = True
        tp[t_idx, sp[j]] = True
    return _matches(gt, preds, thresholds, tp)


def _matches(
    gt: DetectionGroundTruth, preds: DetectionPredictions, thresholds: np.ndarray, tp: np.ndarray
) -> DetectionMatches:
    return DetectionMatches(
        classes=np.asarray(gt.classes, dtype=object),
        video_ids=np.asarray(gt.video_ids, dtype=object),
        tiou_thresholds=thresholds,
        pred_class=preds.label.copy(),
        pred_video=preds.video.copy(),
        pred_score=preds.score.copy(),
        tp=tp,
        gt_class=gt.gt_class.copy(),
        gt_video=gt.gt_video.copy(),
    )


# ----------------------------------------------------------------------------------------------------------------
# Average precision


def interpolated_ap(tp_weight: np.ndarray, fp_weight: np.ndarray, num_positives: float) -> np.ndarray:
    """VOC-2011 interpolated AP for ranked detections; ``tp_weight``/``fp_weight`` are (T, N) in rank order.

    Equals the official ``interpolated_prec_rec``: precision made monotone from the right, summed over the recall
    steps (a zero recall step adds nothing, so summing every step is the same as summing where recall changes).
    A column of zero weight (a video drawn 0 times) repeats the previous precision, or 0 before any weight: it
    changes neither the envelope where it matters nor the sum, exactly as if it were removed.
    """
    if tp_weight.shape[1] == 0:
        return np.zeros(tp_weight.shape[0])
    tp_c = np.cumsum(tp_weight, axis=1)
    fp_c = np.cumsum(fp_weight, axis=1)
    recall = tp_c / num_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tp_c / (tp_c + fp_c), nan=0.0)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    steps = np.diff(recall, axis=1, prepend=0.0)
    return np.sum(steps * envelope, axis=1)


def _ranked(matches: DetectionMatches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions ranked per class (class, score descending, input order) and the class bounds; cached on the
    matches object because a bootstrap calls :func:`ap_from_matches` many times with the same matches."""
    cached = matches.__dict__.get("_ranked")
    if cached is None:
        idx = np.arange(matches.pred_score.shape[0])
        order = np.lexsort((idx, -matches.pred_score, matches.pred_class))
        bounds = np.searchsorted(matches.pred_class[order], np.arange(matches.classes.shape[0] + 1))
        cached = (order, bounds, matches.tp[:, order])
        matches.__dict__["_ranked"] = cached  # frozen dataclass: a private cache, not a field
    return cached


def ap_from_matches(matches: DetectionMatches, video_weights: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """(T, C) AP from matches; ``video_weights`` (V,) re-weights ground-truth videos (bootstrap multiplicities).

    A weight w counts the video's instances and its predictions' TP/FP w times, as if the video were present w
    times under new names (tested); w = 0 drops it. Predictions of videos outside the ground truth keep weight 1.
    A class whose weighted instance count is 0 gets NaN (it would not be evaluated; use ``np.nanmean``).
    """
    num_t = matches.tiou_thresholds.shape[0]
    num_c = matches.classes.shape[0]
    order, bounds, tp_sorted = _ranked(matches)
    if video_weights is None:  # weights are made per class below: (T, P) float64 twice is 400 MB at 2.6 M
        npos = np.bincount(matches.gt_class, minlength=num_c).astype(np.float64)
        tpw = fpw = None
    else:
        w = np.asarray(video_weights, dtype=np.float64)
        if w.shape != (matches.video_ids.shape[0],):
            raise ValueError(f"video_weights has shape {w.shape}; expected ({matches.video_ids.shape[0]},)")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("video_weights must be finite and >= 0")
        pv = matches.pred_video[order]
        pred_w = np.where(pv >= 0, w[np.maximum(pv, 0)], 1.0)
        npos = np.bincount(matches.gt_class, weights=w[matches.gt_video], minlength=num_c)
        tpw = np.where(tp_sorted, pred_w, 0.0)
        fpw = pred_w - tpw
    ap = np.zeros((num_t, num_c))
    for c in range(num_c):
        if npos[c] <= 0:
            ap[:, c] = np.nan
            continue
        a, b = bounds[c], bounds[c + 1]
        if tpw is None or fpw is None:
            tp_c = tp_sorted[:, a:b].astype(np.float64)
            ap[:, c] = interpolated_ap(tp_c, 1.0 - tp_c, npos[c])
        else:
            ap[:, c] = interpolated_ap(tpw[:, a:b], fpw[:, a:b], npos[c])
    return ap


def evaluate_detection(
    gt: DetectionGroundTruth | str | os.PathLike[str] | TALDataset,
    preds: DetectionPredictions | str | os.PathLike[str] | Mapping[str, Any],
    tiou_thresholds: Sequence[float] | np.ndarray = TIOU_THRESHOLDS,
) -> DetectionResult:
    """Official ActivityNet detection metrics: AP (T, C), mAP (T,), average mAP."""
    gt, preds = _coerce(gt, preds)
    matches = match_detections(gt, preds, tiou_thresholds)
    ap = ap_from_matches(matches)
    mAP = ap.mean(axis=1)
    average = float(mAP.mean()) if mAP.size else math.nan
    log.info("%s: average mAP %.4f over %d classes, %d predictions", preds.source, average, len(gt.classes), len(preds))
    return DetectionResult(
        tiou_thresholds=matches.tiou_thresholds, ap=ap, mAP=mAP, average_mAP=average, classes=gt.classes
    )
