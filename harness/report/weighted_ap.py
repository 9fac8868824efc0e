"""The evaluator's mAP with videos re-weighted, for a whole batch of resamples at once: the engine under both
significance tests (``harness.report.stats``) and the strata breakdown.

A resample (bootstrap: how often each video is drawn; permutation: which configuration each video's predictions
come from) only changes *weights*, because greedy matching never depends on other videos (docs/contracts.md,
"Evaluation"). The AP is recomputed from the weighted cumulative counts exactly as
``harness.evaluation.detection.ap_from_matches`` does (interpolated AP of the official ActivityNet evaluator):

* the predictions are sorted once per class by score (sorting does not depend on the weights);
* the interpolated precision is a running maximum over positions to the right, and its maxima sit on true
  positives (a false positive only lowers precision), so only the true-positive positions of each tIoU threshold
  are needed (at most one per ground-truth instance);
* the weighted number of predictions ranked at or above each true positive is ``weights @ counts`` with a small
  (groups x true positives) count matrix: one BLAS product per batch instead of cumulative sums over all
  predictions.

``method="reference"`` recomputes every resample with ``ap_from_matches`` itself (slow; used by the tests to
check that both give the same numbers). mAP of a resample is the mean AP over the classes that have at least
one ground-truth instance in that resample, as the evaluator does for the classes of the evaluated subset;
per-video APs are never averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from harness.errors import LofiError

if TYPE_CHECKING:  # the evaluator is only needed at run time by method="reference"
    from harness.evaluation.detection import DetectionMatches

Method = Literal["fast", "reference"]
_BATCH_ELEMENTS = 4_000_000  # resamples x true positives per batch: bounds memory to a few tens of MB per array


class StatsError(LofiError):
    """Inputs of a significance test do not fit together (different ground truth, no runs, unknown metric)."""


class SortedDetections:
    """Predictions sorted by (class, score desc.) with, per tIoU threshold, their true positives' count matrix.

    Every prediction belongs to a *group*; a resample gives every group a weight (how often a video is drawn, or
    whether a video's predictions of one configuration are selected). ``ap(weights, npos)`` returns the weighted
    interpolated AP for a batch of weight vectors.
    """

    def __init__(
        self,
        pred_group: np.ndarray,
        pred_class: np.ndarray,
        pred_score: np.ndarray,
        tp: np.ndarray,
        n_groups: int,
        n_classes: int,
    ) -> None:
        self.n_groups = n_groups
        self.n_classes = n_classes
        self.n_thresholds = tp.shape[0]
        n = pred_class.size
        # Class ascending, score descending, ties in input order (lexsort is stable).
        order = np.lexsort((-np.asarray(pred_score, dtype=np.float64), pred_class))
        cls = np.asarray(pred_class, dtype=np.int64)[order]
        grp = np.asarray(pred_group, dtype=np.int64)[order]
        tps = np.asarray(tp, dtype=bool)[:, order]
        positions = np.arange(n)
        # First sorted position of each prediction's class.
        first_of_class = np.searchsorted(cls, cls, side="left")
        # Keys sorted by (group, position) to count a group's predictions in any position range.
        keys = np.sort(grp * n + positions)

        self.tp_group: list[np.ndarray] = []
        self.tp_class: list[np.ndarray] = []
        self.run_start: list[np.ndarray] = []  # index (within the threshold's true positives) of its class's first
        self.offsets = [0]
        self.runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        count_blocks = []
        for t in range(self.n_thresholds):
            pos = np.flatnonzero(tps[t])
            c = cls[pos]
            self.tp_group.append(grp[pos])
            self.tp_class.append(c)
            self.run_start.append(np.searchsorted(c, c, side="left"))
            g = np.arange(n_groups, dtype=np.int64)[:, None] * n
            hi = np.searchsorted(keys, g + pos[None, :], side="right")
            lo = np.searchsorted(keys, g + first_of_class[pos][None, :], side="left")
            # float32 is exact here: counts and their weighted sums are integers far below 2**24.
            count_blocks.append((hi - lo).astype(np.float32))  # (groups, n_t): ranked at or above, same class
            self.offsets.append(self.offsets[-1] + pos.size)
            # Runs of equal class among the true positives: [start, end) and the class of each run.
            starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if c.size else np.zeros(0, dtype=np.int64)
            self.runs.append((starts, np.r_[starts[1:], c.size].astype(np.int64), c[starts]))
        self.counts = np.concatenate(count_blocks, axis=1) if count_blocks else np.zeros((n_groups, 0), np.float32)

    def ap(self, weights: np.ndarray, npos: np.ndarray) -> np.ndarray:
        """(B, T, C) AP for group weights (B, groups) and ground-truth counts npos (B, C); NaN where npos is 0."""
        weights = np.asarray(weights, dtype=np.float64)
        b = weights.shape[0]
        c_n = self.n_classes
        sums = np.zeros((b, self.n_thresholds, c_n))
        # (B, sum n_t): weighted number of predictions ranked at or above each true positive, in its class.
        totals = (weights.astype(np.float32) @ self.counts).astype(np.float64)
        zero = np.zeros((b, 1))
        for t in range(self.n_thresholds):
            cls = self.tp_class[t]
            if cls.size == 0:
                continue
            starts, ends, run_class = self.runs[t]
            w = weights[:, self.tp_group[t]]  # (B, n_t)
            cs = np.concatenate([zero, np.cumsum(w, axis=1)], axis=1)
            tp_cum = cs[:, 1:] - cs[:, self.run_start[t]]
            total = totals[:, self.offsets[t] : self.offsets[t + 1]]
            prec = np.divide(tp_cum, total, out=np.zeros_like(tp_cum), where=total > 0)
            # Running max from the right, restarted at every class: lift each class by an offset that grows as
            # the reversed scan moves to lower classes, so an earlier (lower) class never sees a later one's max.
            lift = 2.0 * (c_n - cls)
            prec += lift
            interp = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
            interp -= lift
            interp *= w
            csum = np.concatenate([zero, np.cumsum(interp, axis=1)], axis=1)
            sums[:, t, run_class] = csum[:, ends] - csum[:, starts]
        npos = np.asarray(npos, dtype=np.float64)[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(npos > 0, sums / np.where(npos > 0, npos, 1.0), np.nan)


def metric_from_ap(ap: np.ndarray, present: np.ndarray, thresholds: np.ndarray, metric: str) -> np.ndarray:
    """(B,) metric from AP (B, T, C); ``present`` (B, C) marks classes with ground truth in each resample."""
    present3 = np.broadcast_to(present[:, None, :], ap.shape)
    n_present = present.sum(axis=1)
    with np.errstate(invalid="ignore"):
        m_ap = np.where(present3, np.nan_to_num(ap), 0.0).sum(axis=2) / np.where(n_present > 0, n_present, 1)[:, None]
    m_ap[n_present == 0] = np.nan
    if metric == "average_mAP":
        return m_ap.mean(axis=1)
    return m_ap[:, _threshold_index(thresholds, metric)]


def _threshold_index(thresholds: np.ndarray, metric: str) -> int:
    """Column of ``metric`` ("mAP_0.50", "mAP@0.5", ...) in the tIoU thresholds."""
    name = metric.replace("@", "_")
    if name.startswith("mAP_"):
        try:
            value = float(name[4:])
        except ValueError:
            value = float("nan")
        hits = np.flatnonzero(np.isclose(thresholds, value))
        if hits.size:
            return int(hits[0])
    known = ", ".join(["average_mAP"] + [f"mAP_{t:.2f}" for t in thresholds])
    raise StatsError(f"metric {metric!r} is unknown; use one of {known}")


def check_same_ground_truth(runs: Sequence[Any]) -> None:
    """All runs must share classes, videos, thresholds and ground truth (they are paired over videos)."""
    if not runs:
        raise StatsError("a significance test needs at least one run per configuration; got none")
    ref = runs[0]
    for i, m in enumerate(runs[1:], start=1):
        for field in ("classes", "video_ids", "tiou_thresholds", "gt_class", "gt_video"):
            a, b = np.asarray(getattr(ref, field)), np.asarray(getattr(m, field))
            if a.shape != b.shape or not np.array_equal(a, b):
                raise StatsError(
                    f"run {i} has a different '{field}' than run 0; compare runs evaluated on the same ground truth"
                )


def video_class_counts(m: Any) -> np.ndarray:
    """(V, C) ground-truth instances per video and class."""
    n_videos, n_classes = len(m.video_ids), len(m.classes)
    counts = np.zeros((n_videos, n_classes))
    np.add.at(counts, (np.asarray(m.gt_video, dtype=np.int64), np.asarray(m.gt_class, dtype=np.int64)), 1.0)
    return counts


def _bootstrap_engine(m: Any) -> SortedDetections:
    """Groups = the V ground-truth videos + one group for predictions on unknown videos (always weight 1)."""
    n_videos = len(m.video_ids)
    video = np.asarray(m.pred_video, dtype=np.int64)
    group = np.where(video < 0, n_videos, video)
    return SortedDetections(group, m.pred_class, m.pred_score, m.tp, n_videos + 1, len(m.classes))


def resample_batches(n: int, per_item: int) -> list[slice]:
    size = max(1, _BATCH_ELEMENTS // max(1, per_item))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def weighted_metric(
    matches: DetectionMatches, video_weights: np.ndarray, *, metric: str = "average_mAP", method: Method = "fast"
) -> np.ndarray:
    """Metric (fraction) for each row of ``video_weights`` (B, V): the evaluator's mAP with videos re-weighted."""
    weights = np.atleast_2d(np.asarray(video_weights, dtype=np.float64))
    thresholds = np.asarray(matches.tiou_thresholds, dtype=np.float64)
    gt_counts = video_class_counts(matches)
    npos = weights @ gt_counts
    if method == "reference":
        from harness.evaluation.detection import ap_from_matches

        ap = np.stack([np.asarray(ap_from_matches(matches, w), dtype=np.float64) for w in weights])
        return metric_from_ap(ap, npos > 0, thresholds, metric)
    engine = _bootstrap_engine(matches)
    out = np.empty(weights.shape[0])
    for sl in resample_batches(weights.shape[0], engine.counts.shape[1] + engine.n_groups):
        w = weights[sl]
        gw = np.concatenate([w, np.ones((w.shape[0], 1))], axis=1)
        out[sl] = metric_from_ap(engine.ap(gw, npos[sl]), npos[sl] > 0, thresholds, metric)
    return out
