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
* the weighted number of predictions ranked at or above each true positive is ``counts @ weights.T`` with a small
  (true-positive positions x groups) count matrix, one row per prediction that is a true positive at any
  threshold: one BLAS product per batch instead of cumulative sums over all predictions;
* the running sums and maxima along each threshold's true positives run over all thresholds at once, a row of
  (thresholds x resamples) per step (``SortedDetections.ap``), with the very operations of a scan along each.

``method="reference"`` recomputes every resample with ``ap_from_matches`` itself (slow; used by the tests to
check that both give the same numbers). mAP of a resample is the mean AP over the classes that have at least
one ground-truth instance in that resample, as the evaluator does for the classes of the evaluated subset;
per-video APs are never averaged.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from harness.errors import LofiError

if TYPE_CHECKING:  # the evaluator is only needed at run time by method="reference"
    from harness.evaluation.detection import DetectionMatches

Method = Literal["fast", "reference"]
_PASS_ELEMENTS = 1_000_000  # ranks x thresholds x resamples per pass of ``ap``: 8 MB arrays, faster than larger
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
        # Class ascending, score descending, ties in input order (lexsort is stable).
        order = np.lexsort((-np.asarray(pred_score, dtype=np.float64), pred_class))
        cls = np.asarray(pred_class, dtype=np.int64)[order]
        grp = np.asarray(pred_group, dtype=np.int64)[order]
        tps = np.asarray(tp, dtype=bool)[:, order]
        # The thresholds' true positives mostly sit on the same predictions: count each position once.
        positions = np.flatnonzero(tps.any(axis=0))
        # float32 is exact here: counts and their weighted sums are integers far below 2**24.
        self.counts = rank_counts(cls, grp, positions, n_groups).astype(np.float32)  # (positions, groups)

        # Layout of ``ap``: a (rank, threshold) table of the true positives, the thresholds side by side; a
        # threshold with fewer true positives is padded at the end with a group of weight 0 (``n_groups``), the
        # spare row of ``totals`` (``len(positions)``), and lift 0 (below every true positive's lifted precision).
        per_t = [np.flatnonzero(tps[t]) for t in range(self.n_thresholds)]
        self.n_tp = sum(p.size for p in per_t)  # true positives over all thresholds: sizes the batches
        self.n_ranks = max((p.size for p in per_t), default=0)
        shape = (self.n_ranks, self.n_thresholds)
        self.group = np.full(shape, n_groups, dtype=np.int64)
        self.row = np.full(shape, positions.size, dtype=np.int64)
        # The running sums start at row 0 (= 0): a true positive's class starts at row ``class_row``; a padding
        # rank k gets k + 1, its own row, so its share is 0.
        self.class_row = np.broadcast_to(np.arange(1, self.n_ranks + 1)[:, None], shape).copy()
        # Running max from the right, restarted at every class: lift each class by an offset that grows as the
        # reversed scan moves to lower classes, so an earlier (lower) class never sees a later one's max.
        self.lift = np.zeros(shape)
        self.runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for t, pos in enumerate(per_t):
            c = cls[pos]
            n_t = pos.size
            self.group[:n_t, t] = grp[pos]
            self.row[:n_t, t] = np.searchsorted(positions, pos)
            self.class_row[:n_t, t] = np.searchsorted(c, c, side="left")
            self.lift[:n_t, t] = 2.0 * (n_classes - c)
            # Runs of equal class among the true positives: [start, end) and the class of each run.
            starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if n_t else np.zeros(0, dtype=np.int64)
            self.runs.append((starts, np.r_[starts[1:], n_t].astype(np.int64), c[starts]))

    def totals(self, weights: np.ndarray) -> np.ndarray:
        """(positions, B): weighted number of predictions ranked at or above each true-positive position, in its
        class, for group weights (B, groups): one BLAS product (exact: integer weights, see ``counts``)."""
        return (self.counts @ np.asarray(weights, dtype=np.float32).T).astype(np.float64)

    def ap(self, weights: np.ndarray, npos: np.ndarray, totals: np.ndarray | None = None) -> np.ndarray:
        """(B, T, C) AP for group weights (B, groups; integers >= 0: multiplicities, selections) and ground-truth
        counts npos (B, C); NaN where npos is 0. ``totals``: ``self.totals(weights)`` when the caller has a
        cheaper way to the same (exact) numbers.

        Arrays are (rank, threshold, resample): the running sums and maxima over the ranks are loops over rows
        of T x B values, each a vector operation, instead of numpy's scans along an axis (one element at a time:
        2-3 times slower here). Every value comes from the same operations in the same order as in a scan along
        each threshold's true positives, so the AP is the same to the last bit. Resamples are taken a few
        hundred at a time (``_PASS_ELEMENTS``): smaller arrays stay in cache."""
        weights = np.asarray(weights, dtype=np.float64)
        b = weights.shape[0]
        sums = np.zeros((b, self.n_thresholds, self.n_classes))
        if self.n_ranks:
            totals = self.totals(weights) if totals is None else totals
            step = max(1, _PASS_ELEMENTS // (self.n_ranks * self.n_thresholds))
            for lo in range(0, b, step):
                part = slice(lo, min(b, lo + step))
                sums[part] = self._sums(weights[part], totals[:, part])
        npos = np.asarray(npos, dtype=np.float64)[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(npos > 0, sums / np.where(npos > 0, npos, 1.0), np.nan)

    def _sums(self, weights: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """(B, T, C) sums of interpolated precision over each class's true positives, for group weights
        (B, groups) and their ``totals`` (positions, B)."""
        b = weights.shape[0]
        w = np.concatenate([weights.T, np.zeros((1, b))])[self.group]  # (ranks, T, B); padding: weight 0
        # A true positive whose total is 0 weighs 0 itself: divided by 1 its precision is 0, as it must be.
        safe = np.concatenate([np.where(totals > 0, totals, 1.0), np.ones((1, b))])  # padding: 1
        interp = _running_sum(w)  # integers: exact in any order
        interp = np.subtract(interp[1:], interp[self.class_row, np.arange(self.n_thresholds)], out=interp[1:])
        interp /= safe[self.row]  # precision at each true positive
        interp += self.lift[:, :, None]
        for k in range(self.n_ranks - 2, -1, -1):
            np.maximum(interp[k], interp[k + 1], out=interp[k])
        interp -= self.lift[:, :, None]
        interp *= w
        csum = _running_sum(interp)
        sums = np.zeros((w.shape[2], self.n_thresholds, self.n_classes))
        for t, (starts, ends, run_class) in enumerate(self.runs):
            sums[:, t, run_class] = (csum[ends, t] - csum[starts, t]).T
        return sums


def _running_sum(x: np.ndarray) -> np.ndarray:
    """``concatenate([0, cumsum(x, axis=0)])`` with the same additions in the same order (row 1 is x[0] itself,
    then one row added at a time), as a loop over rows: each step adds whole rows at once."""
    out = np.empty((x.shape[0] + 1, *x.shape[1:]))
    out[0] = 0.0
    out[1] = x[0]
    for k in range(1, x.shape[0]):
        np.add(out[k], x[k], out=out[k + 1])
    return out


def rank_counts(cls: np.ndarray, grp: np.ndarray, positions: np.ndarray, n_groups: int) -> np.ndarray:
    """(len(positions), n_groups) int64: for each of the ascending ``positions`` in the (class, score)-sorted
    predictions (``cls`` ascending), how many predictions of each group are ranked at or above it in its class.

    One pass: every prediction is counted at the first listed position at or after it in its class, and a
    cumulative sum over the positions of each class adds up the ranks above (no search per group)."""
    n_pos = positions.size
    if n_pos == 0:
        return np.zeros((0, n_groups), dtype=np.int64)
    at = np.searchsorted(positions, np.arange(cls.size), side="left")
    keep = at < n_pos
    # a prediction ranked below the last listed position of its class is counted nowhere
    keep[keep] = cls[positions[at[keep]]] == cls[keep]
    first = np.bincount(at[keep] * n_groups + grp[keep], minlength=n_pos * n_groups).reshape(n_pos, n_groups)
    cum = np.cumsum(first, axis=0)
    pos_class = cls[positions]
    class_start = np.searchsorted(pos_class, pos_class, side="left")
    before = np.where((class_start > 0)[:, None], cum[np.maximum(class_start - 1, 0)], 0)
    return cum - before


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


def _build_bootstrap_engine(m: Any) -> SortedDetections:
    """Groups = the V ground-truth videos + one group for predictions on unknown videos (always weight 1)."""
    n_videos = len(m.video_ids)
    video = np.asarray(m.pred_video, dtype=np.int64)
    group = np.where(video < 0, n_videos, video)
    return SortedDetections(group, m.pred_class, m.pred_score, m.tp, n_videos + 1, len(m.classes))


# id(matches) -> (weak reference to those matches, their engine); an entry leaves with its matches.
_ENGINES: dict[int, tuple[weakref.ref[Any], SortedDetections]] = {}


def _bootstrap_engine(m: Any) -> SortedDetections:
    """The engine of one run's matches, built once per matches object: a report resamples the same run in every
    comparison it enters (each table's tests, the gain shares, every stratum), and building it costs as much as
    evaluating a thousand resamples. Keyed by identity (matches are never changed in place); an object that
    cannot be weakly referenced is not cached."""
    key = id(m)
    hit = _ENGINES.get(key)
    if hit is not None and hit[0]() is m:
        return hit[1]
    engine = _build_bootstrap_engine(m)
    try:
        ref = weakref.ref(m, lambda _, key=key: _ENGINES.pop(key, None))
    except TypeError:
        return engine
    _ENGINES[key] = (ref, engine)
    return engine


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
    for sl in resample_batches(weights.shape[0], engine.n_tp + engine.n_groups):
        w = weights[sl]
        gw = np.concatenate([w, np.ones((w.shape[0], 1))], axis=1)
        out[sl] = metric_from_ap(engine.ap(gw, npos[sl]), npos[sl] > 0, thresholds, metric)
    return out
