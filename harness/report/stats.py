"""Significance of differences between configurations: paired bootstrap and permutation over videos and seeds.

Seeds alone (3-5 per configuration) cannot give small p-values, so comparisons resample the *videos* of the
evaluation subset (all runs are evaluated on the same ground truth) together with the seeds.

Both tests need mAP for thousands of re-weighted versions of the same matched detections. Greedy matching never
depends on other videos (docs/contracts.md, "Evaluation"), so a resample only changes *weights*: how often each
video is drawn (bootstrap) or which configuration each video's predictions come from (permutation). The AP is then
recomputed from the weighted cumulative counts exactly as ``harness.evaluation.detection.ap_from_matches`` does
(interpolated AP of the official ActivityNet evaluator), but for a whole batch of resamples at once:

* the predictions are sorted once per class by score (sorting does not depend on the weights);
* the interpolated precision is a running maximum over positions to the right, and its maxima sit on true
  positives (a false positive only lowers precision), so only the true-positive positions of each tIoU threshold
  are needed (at most one per ground-truth instance);
* the weighted number of predictions ranked at or above each true positive is ``weights @ counts`` with a small
  (groups x true positives) count matrix: one BLAS product per batch instead of cumulative sums over all
  predictions.

Beyond two configurations, ``joint_bootstrap`` resamples any number of run sets with the SAME indices (video
multiplicities, and seed draws paired by seed value with the first set), so statistics of three or more
configurations (``share_of_gain``: (LoFi - ACP) / (e2e-full - ACP)) keep every pairing. ``minimum_detectable_effect``
turns a bootstrap standard error into the smallest difference the tests detect with 80% power at alpha = 0.05.

``method="reference"`` recomputes every resample with ``ap_from_matches`` itself (slow; used by the tests to
check that both give the same numbers). mAP of a resample is the mean AP over the classes that have at least
one ground-truth instance in that resample, as the evaluator does for the classes of the evaluated subset;
per-video APs are never averaged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy.stats import norm

from harness.errors import LofiError

if TYPE_CHECKING:  # the evaluator is only needed at run time by method="reference"
    from harness.evaluation.detection import DetectionMatches

log = logging.getLogger(__name__)

Method = Literal["fast", "reference"]
_BATCH_ELEMENTS = 4_000_000  # resamples x true positives per batch: bounds memory to a few tens of MB per array
ALPHA = 0.05  # two-sided level of every test
POWER = 0.80  # the power a minimum detectable effect is stated at


class StatsError(LofiError):
    """Inputs of a significance test do not fit together (different ground truth, no runs, unknown metric)."""


@dataclass(frozen=True)
class BootstrapResult:
    """Difference B - A of the metric (fractions, like the evaluator) with its 95% percentile interval."""

    diff: float
    ci_low: float
    ci_high: float
    samples: np.ndarray  # (n_boot,) the statistic in every resample

    @property
    def se(self) -> float:
        """Bootstrap standard error of the difference: sample sd (ddof=1) of the resampled statistic."""
        return bootstrap_se(self.samples)


@dataclass(frozen=True)
class JointBootstrap:
    """The seed-mean metric of k run sets on the original data and in every resample (same resample indices)."""

    original: np.ndarray  # (k,)
    samples: np.ndarray  # (n_boot, k)


@dataclass(frozen=True)
class RatioResult:
    """A ratio of two differences on the original data with its 95% percentile interval (NaN where undefined)."""

    estimate: float
    ci_low: float
    ci_high: float
    samples: np.ndarray  # (n_boot,) NaN where the denominator is 0 in a resample


@dataclass(frozen=True)
class Comparison:
    """One configuration against the baseline: bootstrap interval, permutation p-value and its Holm adjustment."""

    config: str
    baseline: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    n_videos: int
    n_seeds: int
    n_seeds_baseline: int
    n_boot: int
    n_perm: int
    metric: str
    se: float = float("nan")  # bootstrap standard error of diff
    mde: float = float("nan")  # minimum detectable effect: (z_{1-alpha/2} + z_{power}) x se
    paired_seeds: bool = True  # False: the seeds differ (resampled independently; paired by video only)


# ----------------------------------------------------------------------------------------------------------------
# Small statistics
# ----------------------------------------------------------------------------------------------------------------


def mean_sd(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return float("nan"), float("nan")
    sd = float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
    return float(np.mean(x)), sd


def bootstrap_se(samples: Sequence[float] | np.ndarray) -> float:
    """Sample sd (ddof=1) of the finite resampled values (NaN for fewer than two)."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def mde_multiplier(alpha: float = ALPHA, power: float = POWER) -> float:
    """``z_{1-alpha/2} + z_{power}`` (2.80 for alpha = 0.05, power = 0.80), from the normal quantiles."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise StatsError(f"alpha and power must lie in (0, 1), got {alpha}, {power}")
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def minimum_detectable_effect(se: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided level-``alpha`` test detects with probability ``power``, for an
    estimate with standard error ``se`` (normal approximation of the resampling distribution):
    ``(z_{1-alpha/2} + z_{power}) * se``."""
    return mde_multiplier(alpha, power) * float(se)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (same values as statsmodels ``multipletests(method="holm")``).

    scipy has no Holm correction, hence these lines: with the m p-values sorted ascending,
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` (1-based i, j), mapped back to the input order.
    NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Batched weighted AP
# ----------------------------------------------------------------------------------------------------------------


class _SortedDetections:
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


def _metric_from_ap(ap: np.ndarray, present: np.ndarray, thresholds: np.ndarray, metric: str) -> np.ndarray:
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


def _check_same_ground_truth(runs: Sequence[Any]) -> None:
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


def _gt_counts(m: Any) -> np.ndarray:
    """(V, C) ground-truth instances per video and class."""
    n_videos, n_classes = len(m.video_ids), len(m.classes)
    counts = np.zeros((n_videos, n_classes))
    np.add.at(counts, (np.asarray(m.gt_video, dtype=np.int64), np.asarray(m.gt_class, dtype=np.int64)), 1.0)
    return counts


def _bootstrap_engine(m: Any) -> _SortedDetections:
    """Groups = the V ground-truth videos + one group for predictions on unknown videos (always weight 1)."""
    n_videos = len(m.video_ids)
    video = np.asarray(m.pred_video, dtype=np.int64)
    group = np.where(video < 0, n_videos, video)
    return _SortedDetections(group, m.pred_class, m.pred_score, m.tp, n_videos + 1, len(m.classes))


def _batches(n: int, per_item: int) -> list[slice]:
    size = max(1, _BATCH_ELEMENTS // max(1, per_item))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def weighted_metric(
    matches: DetectionMatches, video_weights: np.ndarray, *, metric: str = "average_mAP", method: Method = "fast"
) -> np.ndarray:
    """Metric (fraction) for each row of ``video_weights`` (B, V): the evaluator's mAP with videos re-weighted."""
    weights = np.atleast_2d(np.asarray(video_weights, dtype=np.float64))
    thresholds = np.asarray(matches.tiou_thresholds, dtype=np.float64)
    gt_counts = _gt_counts(matches)
    npos = weights @ gt_counts
    if method == "reference":
        from harness.evaluation.detection import ap_from_matches

        ap = np.stack([np.asarray(ap_from_matches(matches, w), dtype=np.float64) for w in weights])
        return _metric_from_ap(ap, npos > 0, thresholds, metric)
    engine = _bootstrap_engine(matches)
    out = np.empty(weights.shape[0])
    for sl in _batches(weights.shape[0], engine.counts.shape[1] + engine.n_groups):
        w = weights[sl]
        gw = np.concatenate([w, np.ones((w.shape[0], 1))], axis=1)
        out[sl] = _metric_from_ap(engine.ap(gw, npos[sl]), npos[sl] > 0, thresholds, metric)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Paired bootstrap
# ----------------------------------------------------------------------------------------------------------------


def _seed_pairing(
    n_a: int, n_b: int, seeds_a: Sequence[int] | None, seeds_b: Sequence[int] | None
) -> np.ndarray | None:
    """Index of B's run for each of A's runs when the seeds are the same, else None (resampled independently)."""
    if seeds_a is None or seeds_b is None:
        return np.arange(n_a) if n_a == n_b else None
    seeds_a, seeds_b = list(seeds_a), list(seeds_b)
    if len(seeds_a) != n_a or len(seeds_b) != n_b:
        raise StatsError(f"got {n_a}/{n_b} runs but {len(seeds_a)}/{len(seeds_b)} seeds; give one seed per run")
    if sorted(seeds_a) != sorted(seeds_b) or len(set(seeds_a)) != n_a:
        return None
    where_b = {s: i for i, s in enumerate(seeds_b)}
    return np.array([where_b[s] for s in seeds_a])


def joint_bootstrap(
    run_sets: Sequence[Sequence[DetectionMatches]],
    *,
    n_boot: int = 1000,
    rng: np.random.Generator,
    metric: str = "average_mAP",
    seeds: Sequence[Sequence[int] | None] | None = None,
    method: Method = "fast",
) -> JointBootstrap:
    """Bootstrap over videos and seeds of the seed-mean metric of every run set, with the same resample indices.

    Every resample draws the V videos with replacement (multiplicity weights, the same for every set and seed)
    and the seeds of the first set with replacement; every other set reuses that draw where it ran the same
    seeds (paired by seed value; by index when no seeds are given and the counts match), and draws its own seeds
    otherwise. A run that appears in several sets is evaluated once. Values are fractions.
    """
    sets = [list(r) for r in run_sets]
    if not sets or any(not r for r in sets):
        raise StatsError("a bootstrap needs at least one run in every configuration")
    _check_same_ground_truth([m for r in sets for m in r])
    if n_boot < 1:
        raise StatsError(f"n_boot must be at least 1, got {n_boot}")
    set_seeds = list(seeds) if seeds is not None else [None] * len(sets)
    if len(set_seeds) != len(sets):
        raise StatsError(f"got {len(sets)} run sets but {len(set_seeds)} seed lists")
    n_videos = len(sets[0][0].video_ids)
    n0 = len(sets[0])
    pairings = [_seed_pairing(n0, len(r), set_seeds[0], s) for r, s in zip(sets, set_seeds)]

    # Draw everything up front so the numbers do not depend on batching.
    video_weights = rng.multinomial(n_videos, np.full(n_videos, 1.0 / n_videos), size=n_boot).astype(np.float64)
    draws = [rng.integers(0, n0, size=(n_boot, n0))]
    for r, pairing in zip(sets[1:], pairings[1:]):
        draws.append(pairing[draws[0]] if pairing is not None else rng.integers(0, len(r), size=(n_boot, len(r))))

    all_weights = np.concatenate([np.ones((1, n_videos)), video_weights])  # row 0: the original data
    cache: dict[int, np.ndarray] = {}

    def metric_of(m: DetectionMatches) -> np.ndarray:
        if id(m) not in cache:
            cache[id(m)] = weighted_metric(m, all_weights, metric=metric, method=method)
        return cache[id(m)]

    rows = np.arange(n_boot)[:, None]
    original = np.empty(len(sets))
    samples = np.empty((n_boot, len(sets)))
    for j, (r, draw) in enumerate(zip(sets, draws)):
        values = np.stack([metric_of(m) for m in r], axis=1)  # (n_boot + 1, runs)
        original[j] = values[0].mean()
        samples[:, j] = values[1:][rows, draw].mean(axis=1)
    return JointBootstrap(original=original, samples=samples)


def _percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def paired_bootstrap(
    matches_a: Sequence[DetectionMatches],
    matches_b: Sequence[DetectionMatches],
    *,
    n_boot: int = 1000,
    rng: np.random.Generator,
    metric: str = "average_mAP",
    seeds_a: Sequence[int] | None = None,
    seeds_b: Sequence[int] | None = None,
    method: Method = "fast",
) -> BootstrapResult:
    """Bootstrap over videos and seeds of ``mean_seeds(metric_B) - mean_seeds(metric_A)``, 95% percentile interval.

    ``joint_bootstrap`` of the two sets: every resample draws the V videos with replacement (the same weights
    for A and B and for all seeds) and the seeds with replacement: paired by seed when A and B ran the same seeds
    (by index when no seeds are given and both have as many runs), otherwise independently per configuration
    (then the pair is matched by video only). ``diff`` is the statistic on the original data. Values are
    fractions, as the evaluator returns them.
    """
    joint = joint_bootstrap(
        [matches_a, matches_b], n_boot=n_boot, rng=rng, metric=metric, seeds=[seeds_a, seeds_b], method=method
    )
    samples = joint.samples[:, 1] - joint.samples[:, 0]
    lo, hi = _percentile_interval(samples)
    return BootstrapResult(diff=float(joint.original[1] - joint.original[0]), ci_low=lo, ci_high=hi, samples=samples)


def share_of_gain(joint: JointBootstrap, *, base: int = 0, config: int = 1, reference: int = 2) -> RatioResult:
    """``(config - base) / (reference - base)`` of a joint bootstrap's sets (e.g. (LoFi - ACP) / (e2e-full - ACP):
    the share of the end-to-end gain a configuration recovers), on the original data and per resample, with its
    95% percentile interval over the resamples where the denominator is not 0. Every resample uses the same
    videos and seeds for the three sets, so the ratio keeps their pairing."""

    def ratio(values: np.ndarray) -> np.ndarray:
        num = values[..., config] - values[..., base]
        den = values[..., reference] - values[..., base]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)

    samples = ratio(joint.samples)
    lo, hi = _percentile_interval(samples)
    return RatioResult(estimate=float(ratio(joint.original)), ci_low=lo, ci_high=hi, samples=samples)


# ----------------------------------------------------------------------------------------------------------------
# Paired permutation test
# ----------------------------------------------------------------------------------------------------------------


def merge_swapped(a: DetectionMatches, b: DetectionMatches, swap: np.ndarray) -> DetectionMatches:
    """A's predictions on unswapped videos and B's on swapped ones (predictions on unknown videos stay A's).

    Valid because matching never depends on other videos: every prediction keeps its true-positive flags.
    Used by ``method="reference"`` and by the tests; the fast path never builds it.
    """
    swap = np.asarray(swap, dtype=bool)
    va, vb = np.asarray(a.pred_video, dtype=np.int64), np.asarray(b.pred_video, dtype=np.int64)
    keep_a = ~np.where(va >= 0, swap[np.maximum(va, 0)], False)
    keep_b = np.where(vb >= 0, swap[np.maximum(vb, 0)], False)
    return dataclasses.replace(
        a,
        pred_class=np.concatenate([np.asarray(a.pred_class)[keep_a], np.asarray(b.pred_class)[keep_b]]),
        pred_video=np.concatenate([va[keep_a], vb[keep_b]]),
        pred_score=np.concatenate([np.asarray(a.pred_score)[keep_a], np.asarray(b.pred_score)[keep_b]]),
        tp=np.concatenate([np.asarray(a.tp)[:, keep_a], np.asarray(b.tp)[:, keep_b]], axis=1),
    )


def _permutation_pairs(
    n_a: int, n_b: int, seeds_a: Sequence[int] | None, seeds_b: Sequence[int] | None
) -> list[tuple[int, int]]:
    """The (A run, B run) pairs whose per-video swaps make the statistic: by seed when A and B ran the same seeds,
    otherwise every cross pair (the average over all n_a x n_b pairs is exactly the difference of seed means, and
    no arbitrary pairing of unrelated seeds enters the test)."""
    pairing = _seed_pairing(n_a, n_b, seeds_a, seeds_b)
    if pairing is not None:
        return [(i, int(j)) for i, j in enumerate(pairing)]
    log.info("permutation test: configurations ran different seeds (%d vs %d runs); averaging all pairs", n_a, n_b)
    return [(i, j) for i in range(n_a) for j in range(n_b)]


def _pair_metrics(a: Any, b: Any, swaps: np.ndarray, metric: str, method: Method) -> tuple[np.ndarray, np.ndarray]:
    """Metric of A' and B' (A and B with the videos in ``swaps`` (B, V) exchanged) for every swap pattern."""
    n_videos = len(a.video_ids)
    thresholds = np.asarray(a.tiou_thresholds, dtype=np.float64)
    npos_one = _gt_counts(a).sum(axis=0)
    n_swaps = swaps.shape[0]
    present = np.broadcast_to(npos_one > 0, (n_swaps, npos_one.size))
    if method == "reference":
        from harness.evaluation.detection import ap_from_matches

        ap_a = np.stack([ap_from_matches(merge_swapped(a, b, s)) for s in swaps]).astype(np.float64)
        ap_b = np.stack([ap_from_matches(merge_swapped(b, a, s)) for s in swaps]).astype(np.float64)
        return (_metric_from_ap(ap_a, present, thresholds, metric), _metric_from_ap(ap_b, present, thresholds, metric))
    # Groups: A's predictions of video v (v), B's (V + v), A's on unknown videos (2V), B's on unknown videos (2V+1).
    va, vb = np.asarray(a.pred_video, dtype=np.int64), np.asarray(b.pred_video, dtype=np.int64)
    group = np.concatenate([np.where(va < 0, 2 * n_videos, va), np.where(vb < 0, 2 * n_videos + 1, n_videos + vb)])
    engine = _SortedDetections(
        group,
        np.concatenate([np.asarray(a.pred_class), np.asarray(b.pred_class)]),
        np.concatenate([np.asarray(a.pred_score), np.asarray(b.pred_score)]),
        np.concatenate([np.asarray(a.tp), np.asarray(b.tp)], axis=1),
        2 * n_videos + 2,
        len(a.classes),
    )
    out_a, out_b = np.empty(n_swaps), np.empty(n_swaps)
    for sl in _batches(n_swaps, engine.counts.shape[1] + engine.n_groups):
        s = swaps[sl].astype(np.float64)
        ones, zeros = np.ones((s.shape[0], 1)), np.zeros((s.shape[0], 1))
        sel_a = np.concatenate([1.0 - s, s, ones, zeros], axis=1)
        sel_b = np.concatenate([s, 1.0 - s, zeros, ones], axis=1)
        npos = np.broadcast_to(npos_one, (s.shape[0], npos_one.size))
        out_a[sl] = _metric_from_ap(engine.ap(sel_a, npos), present[sl], thresholds, metric)
        out_b[sl] = _metric_from_ap(engine.ap(sel_b, npos), present[sl], thresholds, metric)
    return out_a, out_b


def paired_permutation_test(
    matches_a: Sequence[DetectionMatches],
    matches_b: Sequence[DetectionMatches],
    *,
    n_perm: int = 1000,
    rng: np.random.Generator,
    metric: str = "average_mAP",
    seeds_a: Sequence[int] | None = None,
    seeds_b: Sequence[int] | None = None,
    method: Method = "fast",
) -> float:
    """Two-sided p-value of mean_seeds(metric_B) - mean_seeds(metric_A) under exchanging A and B per video.

    Every permutation swaps each video's predictions between A and B with probability 1/2, the same pattern for
    every seed pair (runs paired by seed; every cross pair of runs when the seeds differ). p = (1 + #{|stat_perm| >=
    |stat_obs|}) / (1 + n_perm), so p lies in [1/(n_perm + 1), 1].
    """
    runs_a, runs_b = list(matches_a), list(matches_b)
    _check_same_ground_truth(runs_a + runs_b)
    if n_perm < 1:
        raise StatsError(f"n_perm must be at least 1, got {n_perm}")
    n_videos = len(runs_a[0].video_ids)
    swaps = rng.random((n_perm, n_videos)) < 0.5
    patterns = np.concatenate([np.zeros((1, n_videos), dtype=bool), swaps])  # row 0: observed
    pairs = _permutation_pairs(len(runs_a), len(runs_b), seeds_a, seeds_b)
    stat = np.zeros(n_perm + 1)
    for i, j in pairs:
        m_a, m_b = _pair_metrics(runs_a[i], runs_b[j], patterns, metric, method)
        stat += (m_b - m_a) / len(pairs)
    observed, perm = stat[0], stat[1:]
    # A relative tolerance keeps permutations that reproduce the observed value up to rounding on the >= side.
    extreme = np.abs(perm) >= np.abs(observed) * (1 - 1e-9) - 1e-12
    return float((1 + np.count_nonzero(extreme)) / (1 + n_perm))


# ----------------------------------------------------------------------------------------------------------------
# All configurations against one baseline
# ----------------------------------------------------------------------------------------------------------------


def compare_to_baseline(
    runs: dict[str, Sequence[DetectionMatches]],
    seeds: dict[str, Sequence[int]],
    baseline: str,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    rng: np.random.Generator,
    metric: str = "average_mAP",
) -> dict[str, Comparison]:
    """Bootstrap interval and permutation p-value of every configuration against ``baseline``; Holm across them."""
    if baseline not in runs:
        raise StatsError(f"baseline {baseline!r} has no runs; available: {', '.join(sorted(runs)) or 'none'}")
    others = [c for c in runs if c != baseline]
    partial = []
    for config in others:
        boot = paired_bootstrap(
            runs[baseline],
            runs[config],
            n_boot=n_boot,
            rng=rng,
            metric=metric,
            seeds_a=seeds.get(baseline),
            seeds_b=seeds.get(config),
        )
        p = paired_permutation_test(
            runs[baseline],
            runs[config],
            n_perm=n_perm,
            rng=rng,
            metric=metric,
            seeds_a=seeds.get(baseline),
            seeds_b=seeds.get(config),
        )
        partial.append((config, boot, p))
    adjusted = holm([p for _, _, p in partial])
    n_videos = len(runs[baseline][0].video_ids)

    def paired(config: str) -> bool:
        sa, sb = seeds.get(baseline), seeds.get(config)
        return _seed_pairing(len(runs[baseline]), len(runs[config]), sa, sb) is not None

    return {
        config: Comparison(
            config=config,
            baseline=baseline,
            diff=boot.diff,
            ci_low=boot.ci_low,
            ci_high=boot.ci_high,
            p_value=p,
            p_adjusted=float(adj),
            n_videos=n_videos,
            n_seeds=len(runs[config]),
            n_seeds_baseline=len(runs[baseline]),
            n_boot=n_boot,
            n_perm=n_perm,
            metric=metric,
            se=boot.se,
            mde=minimum_detectable_effect(boot.se),
            paired_seeds=paired(config),
        )
        for (config, boot, p), adj in zip(partial, adjusted)
    }
