"""Significance of differences between configurations: paired bootstrap and permutation over videos and seeds.

Seeds alone (3-5 per configuration) cannot give small p-values, so comparisons resample the *videos* of the
evaluation subset (all runs are evaluated on the same ground truth) together with the seeds. Both tests need mAP
for thousands of re-weighted versions of the same matched detections: ``harness.report.weighted_ap`` computes it
for a batch of resamples at once, exactly as the evaluator would (``method="reference"``: with the evaluator).

Beyond two configurations, ``joint_bootstrap`` resamples any number of run sets with the SAME indices (video
multiplicities, and seed draws paired by seed value with the first set), so statistics of three or more
configurations (``share_of_gain``: (LoFi - ACP) / (e2e-full - ACP)) keep every pairing. ``minimum_detectable_effect``
turns a bootstrap standard error into the smallest difference the tests detect with 80% power at alpha = 0.05.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import norm

from harness.report.weighted_ap import (
    Method,
    SortedDetections,
    StatsError,
    check_same_ground_truth,
    metric_from_ap,
    resample_batches,
    video_class_counts,
    weighted_metric,
)

if TYPE_CHECKING:
    from harness.evaluation.detection import DetectionMatches

log = logging.getLogger(__name__)

ALPHA = 0.05  # two-sided level of every test
POWER = 0.80  # the power a minimum detectable effect is stated at


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
    check_same_ground_truth([m for r in sets for m in r])
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
    npos_one = video_class_counts(a).sum(axis=0)
    n_swaps = swaps.shape[0]
    present = np.broadcast_to(npos_one > 0, (n_swaps, npos_one.size))
    if method == "reference":
        from harness.evaluation.detection import ap_from_matches

        ap_a = np.stack([ap_from_matches(merge_swapped(a, b, s)) for s in swaps]).astype(np.float64)
        ap_b = np.stack([ap_from_matches(merge_swapped(b, a, s)) for s in swaps]).astype(np.float64)
        return (metric_from_ap(ap_a, present, thresholds, metric), metric_from_ap(ap_b, present, thresholds, metric))
    engine = pair_engine(a, b)
    out_a, out_b = np.empty(n_swaps), np.empty(n_swaps)
    for sl in resample_batches(n_swaps, engine.n_tp + engine.n_groups):
        s = swaps[sl].astype(np.float64)
        ones, zeros = np.ones((s.shape[0], 1)), np.zeros((s.shape[0], 1))
        sel_a = np.concatenate([1.0 - s, s, ones, zeros], axis=1)
        sel_b = np.concatenate([s, 1.0 - s, zeros, ones], axis=1)
        npos = np.broadcast_to(npos_one, (s.shape[0], npos_one.size))
        totals_a, totals_b = swapped_totals(engine.counts, n_videos, s)
        out_a[sl] = metric_from_ap(engine.ap(sel_a, npos, totals_a), present[sl], thresholds, metric)
        out_b[sl] = metric_from_ap(engine.ap(sel_b, npos, totals_b), present[sl], thresholds, metric)
    return out_a, out_b


def pair_engine(a: Any, b: Any) -> SortedDetections:
    """A's and B's predictions in one engine. Groups: A's predictions of video v (v), B's (V + v), A's on unknown
    videos (2V), B's on unknown videos (2V + 1)."""
    n_videos = len(a.video_ids)
    va, vb = np.asarray(a.pred_video, dtype=np.int64), np.asarray(b.pred_video, dtype=np.int64)
    group = np.concatenate([np.where(va < 0, 2 * n_videos, va), np.where(vb < 0, 2 * n_videos + 1, n_videos + vb)])
    return SortedDetections(
        group,
        np.concatenate([np.asarray(a.pred_class), np.asarray(b.pred_class)]),
        np.concatenate([np.asarray(a.pred_score), np.asarray(b.pred_score)]),
        np.concatenate([np.asarray(a.tp), np.asarray(b.tp)], axis=1),
        2 * n_videos + 2,
        len(a.classes),
    )


def swapped_totals(counts: np.ndarray, n_videos: int, swaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SortedDetections.totals`` of A' and B' for swap patterns (B, V), from one product with V columns instead
    of two with 2V + 2: A' counts A's predictions plus, on swapped videos, B's minus A's; B' the reverse. Same
    numbers: all of them are integers below 2**24, which float32 holds exactly. ``counts``: (positions, 2V + 2)
    in ``_pair_metrics``' group order."""
    own_a, own_b = counts[:, :n_videos], counts[:, n_videos : 2 * n_videos]
    base_a = own_a.sum(axis=1, dtype=np.float64) + counts[:, 2 * n_videos]
    base_b = own_b.sum(axis=1, dtype=np.float64) + counts[:, 2 * n_videos + 1]
    moved = ((own_b - own_a) @ np.asarray(swaps, dtype=np.float32).T).astype(np.float64)  # (positions, B)
    return base_a[:, None] + moved, base_b[:, None] - moved


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
    check_same_ground_truth(runs_a + runs_b)
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
