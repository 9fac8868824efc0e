"""How many test videos and seeds a comparison needs: the video and seed parts of a Δ's interval, and the size of
a run that narrows it to a target half-width or detects a given Δ with 80 % power (`lofi report power`).

The tables' Δ interval (``harness.report.stats.joint_bootstrap``) resamples test videos and seeds together. Here it is
split in two (values in mAP points):

* **video part**: the sd of the seed-mean Δ over resamples of the test videos with the seeds fixed (the same video
  weights for every seed and both configurations, as in the tables), ``SE_v``;
* **seed part**: ``sd(per-seed Δ) / √seeds`` with the videos fixed (paired seeds), or
  ``√(sd_A² / seeds_A + sd_B² / seeds_B)`` when the two configurations ran different seeds, ``SE_s``.

The half-widths are 1.96 × each part; they add in quadrature. To project to another size (V videos, S seeds), the
parts are taken to scale as 1/√V and 1/√S::

    SE(V, S)² = σ_v² / V + σ_s² / S,   σ_v² = V₀ · SE_v²,   σ_s² = S₀ · SE_s²   (measured at V₀ videos, S₀ seeds)

The video × seed interaction (a video that one seed gets right and another wrong) is in both measured parts, so
the projection counts it twice and scales it by 1/V and 1/S instead of 1/(V·S): beyond the measured size it
overstates SE, so the sizes it asks for are on the safe side.

**Which (V, S).** A target SE ``h`` (half-width H: h = H / 1.96; a Δ = D detected with 80 % power at two-sided
α = 0.05: h = D / (z₀.₉₇₅ + z₀.₈₀) = D / 2.80) is met by many pairs. ``cheapest_design`` picks the one of least
cost under the cost model ``cost = S · (seed_cost + video_cost · V)``: every seed trains its encoders once
(``seed_cost``, independent of the test videos) and extracts and evaluates every test video (``video_cost`` per
video and seed). For a continuous (V, S) the optimum is ``V* = A + √(A² + A · seed_cost / video_cost)``,
``A = σ_v² / h²`` (``continuous_optimum``); the integer answer searches every S. ``videos_needed`` gives the
videos for a fixed number of seeds (the grid the command prints).

Everything here is pure (arrays in, numbers out) except ``sweep_decompositions``, which reads a sweep's runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import norm

from harness.report.stats import bootstrap_se, mde_multiplier
from harness.report.weighted_ap import StatsError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

Z_HALF = float(norm.ppf(0.975))  # 1.96: the half-width of a 95 % interval in standard errors
_CEIL_SLACK = 1e-9  # ceil(x) of a value that is an integer up to rounding (1040.0000000001 -> 1040)


@dataclass(frozen=True)
class Decomposition:
    """One Δ (configuration − baseline, seed means, in points) with its video and seed standard errors."""

    label: str
    delta: float
    per_seed: tuple[float, ...]  # per-seed Δ (paired seeds); () when the seeds differ
    n_videos: int
    n_seeds: int
    video_se: float
    seed_se: float
    paired: bool = True

    @property
    def video_half(self) -> float:
        return Z_HALF * self.video_se

    @property
    def seed_half(self) -> float:
        return Z_HALF * self.seed_se

    @property
    def se(self) -> float:
        """Both parts in quadrature."""
        return math.hypot(self.video_se, self.seed_se)

    @property
    def half(self) -> float:
        return Z_HALF * self.se

    @property
    def mde(self) -> float:
        """The smallest Δ detected with 80 % power at two-sided α = 0.05 at the measured size."""
        return mde_multiplier() * self.se

    @property
    def video_var(self) -> float:
        """σ_v²: the video part's variance for one video (SE_v² · V₀)."""
        return self.video_se**2 * self.n_videos

    @property
    def seed_var(self) -> float:
        """σ_s²: the seed part's variance for one seed (SE_s² · S₀)."""
        return self.seed_se**2 * self.n_seeds

    def se_at(self, n_videos: int, n_seeds: int) -> float:
        """The projected SE of Δ at ``n_videos`` test videos and ``n_seeds`` seeds."""
        return math.sqrt(self.video_var / n_videos + self.seed_var / n_seeds)


@dataclass(frozen=True)
class Design:
    """A run size that meets a target: test videos, seeds, its projected SE and its cost."""

    n_videos: int
    n_seeds: int
    se: float
    cost: float


def target_se(*, halfwidth: float | None = None, effect: float | None = None) -> float:
    """The SE a run must reach: ``halfwidth / 1.96`` for a 95 % half-width, or ``effect / 2.80`` to detect a Δ of
    ``effect`` with 80 % power at two-sided α = 0.05 (exactly one of the two)."""
    if (halfwidth is None) == (effect is None):
        raise StatsError("give exactly one of a target half-width and an effect to detect")
    value = halfwidth if halfwidth is not None else effect
    assert value is not None
    if not value > 0:
        raise StatsError(f"the target must be positive, got {value}")
    return value / Z_HALF if halfwidth is not None else value / mde_multiplier()


def video_weights(n_videos: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(1 + n_boot, V) video multiplicities: row 0 the original data (all ones), then bootstrap resamples."""
    if n_videos < 1 or n_boot < 2:
        raise StatsError(f"need at least 1 video and 2 resamples, got {n_videos} and {n_boot}")
    boot = rng.multinomial(n_videos, np.full(n_videos, 1.0 / n_videos), size=n_boot).astype(np.float64)
    return np.concatenate([np.ones((1, n_videos)), boot])


def decompose(base: np.ndarray, other: np.ndarray, *, n_videos: int, paired: bool, label: str = "") -> Decomposition:
    """Split Δ = mean_seeds(other) − mean_seeds(base) into its video and seed parts.

    ``base`` (1 + n_boot, S_A) and ``other`` (1 + n_boot, S_B): each seed's metric (points) on the original videos
    (row 0) and on every video resample (the same rows for both; ``video_weights``). ``paired``: column j of both
    is the same seed (then S_A = S_B); otherwise the seed sets are independent and the projection assumes both
    arms run ``n_seeds`` = S_B seeds."""
    base, other = np.atleast_2d(np.asarray(base, float)), np.atleast_2d(np.asarray(other, float))
    if base.shape[0] != other.shape[0] or base.shape[0] < 3:
        raise StatsError(f"base and other need the same ≥ 2 resamples, got {base.shape} and {other.shape}")
    if base.shape[1] < 2 or other.shape[1] < 2:
        raise StatsError(f"a seed part needs at least 2 seeds per configuration, got {base.shape[1]}, {other.shape[1]}")
    delta = float(other[0].mean() - base[0].mean())
    video_se = bootstrap_se(other[1:].mean(axis=1) - base[1:].mean(axis=1))
    if paired:
        if base.shape[1] != other.shape[1]:
            raise StatsError(f"paired seeds need as many runs on both sides, got {base.shape[1]} and {other.shape[1]}")
        per_seed = other[0] - base[0]
        seed_se = float(np.std(per_seed, ddof=1) / math.sqrt(per_seed.size))
        seeds: tuple[float, ...] = tuple(float(x) for x in per_seed)
    else:
        seed_se = math.sqrt(np.var(base[0], ddof=1) / base.shape[1] + np.var(other[0], ddof=1) / other.shape[1])
        seeds = ()
    return Decomposition(label, delta, seeds, n_videos, other.shape[1], video_se, seed_se, paired)


def videos_needed(dec: Decomposition, target: float, n_seeds: int) -> int | None:
    """Test videos for SE ≤ ``target`` at ``n_seeds`` seeds; None when the seed part alone reaches the target."""
    room = target**2 - dec.seed_var / n_seeds
    if room <= 0:
        return None
    return max(1, math.ceil(dec.video_var / room - _CEIL_SLACK))


def cheapest_design(
    dec: Decomposition, target: float, *, seed_cost: float, video_cost: float, max_seeds: int = 100_000
) -> Design | None:
    """The (V, S ≥ 2) of least ``S · (seed_cost + video_cost · V)`` with SE ≤ ``target`` (ties: fewer seeds);
    None when no S up to ``max_seeds`` reaches it."""
    if seed_cost < 0 or video_cost <= 0:
        raise StatsError(f"costs must be seed_cost >= 0 and video_cost > 0, got {seed_cost}, {video_cost}")
    best: Design | None = None
    for s in range(2, max_seeds + 1):
        if best is not None and s * (seed_cost + video_cost) >= best.cost:
            break  # every larger S costs more even with one video
        v = videos_needed(dec, target, s)
        if v is None:
            continue
        cost = s * (seed_cost + video_cost * v)
        if best is None or cost < best.cost:
            best = Design(v, s, dec.se_at(v, s), cost)
    return best


def continuous_optimum(
    video_var: float, seed_var: float, target: float, *, seed_cost: float, video_cost: float
) -> tuple[float, float]:
    """(V*, S*) minimising ``S · (seed_cost + video_cost · V)`` subject to ``video_var / V + seed_var / S =
    target²`` over real V, S > 0 (setting the derivative of the cost along the constraint to 0)."""
    a = video_var / target**2
    v = a + math.sqrt(a * a + a * seed_cost / video_cost)
    return v, seed_var / (target**2 - video_var / v)


# ------------------------------------------------------------------------------------------- a sweep's runs
def sweep_decompositions(
    rows: pd.DataFrame,
    *,
    modes: Sequence[str] | None = None,
    control_seeds: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ground_truth: str | None = None,
) -> dict[tuple[str, str, str], list[Decomposition]]:
    """Every mode of ``modes`` (default: every mode present) against ACP, and the negative control (ACP on
    ``control_seeds``), per (dataset, encoder, head): each run's saved predictions are re-evaluated on the same
    video resamples (``harness.report.weighted_ap.weighted_metric``, as the tables do)."""
    from harness.report.build import _Matcher, infer_control_seeds
    from harness.report.controls import split_control_seeds
    from harness.report.rows import BASELINE, NEGATIVE, mode_label, order_modes
    from harness.seeding import numpy_rng

    match = _Matcher(ground_truth)
    seeds_neg = tuple(control_seeds) if control_seeds is not None else infer_control_seeds(rows)
    out: dict[tuple[str, str, str], list[Decomposition]] = {}
    for (dataset, encoder, head), group in rows.groupby(["dataset", "encoder", "head"], sort=True):
        main, negative = split_control_seeds(group, seeds_neg)
        present = order_modes(main["mode"], modes)
        if BASELINE not in present:
            log.warning("%s/%s/%s: no ACP runs; nothing to compare", dataset, encoder, head)
            continue
        arms: dict[str, pd.DataFrame] = {m: main[main["mode"] == m] for m in present}
        if not negative.empty:
            arms[NEGATIVE] = negative
        first = match(arms[BASELINE].iloc[0])
        weights = video_weights(len(first.video_ids), n_boot, numpy_rng(seed, "power", dataset, encoder, head))

        base_seeds, base = _seed_values(arms[BASELINE], match, weights)
        found = []
        for key, sub in arms.items():
            if key == BASELINE:
                continue
            seeds_m, vals = _seed_values(sub, match, weights)
            paired = sorted(seeds_m) == sorted(base_seeds)
            if len(seeds_m) < 2 or len(base_seeds) < 2:
                log.warning("%s: fewer than 2 seeds; no seed part", key)
                continue
            label = (
                f"ACP, seeds {', '.join(map(str, seeds_m))} (negative control)" if key == NEGATIVE else mode_label(key)
            )
            found.append(decompose(base, vals, n_videos=weights.shape[1], paired=paired, label=label))
        out[(str(dataset), str(encoder), str(head))] = found
    return out


def _seed_values(
    runs: pd.DataFrame, match: Callable[[pd.Series], Any], weights: np.ndarray
) -> tuple[list[int], np.ndarray]:
    """(seeds, (1 + n_boot, seeds) average mAP in points on the original videos and every resample)."""
    from harness.report.weighted_ap import weighted_metric

    runs = runs.sort_values("seed")
    values = [weighted_metric(match(r), weights) * 100 for _, r in runs.iterrows()]
    return [int(s) for s in runs["seed"]], np.stack(values, axis=1)


def format_power(
    groups: Mapping[tuple[str, str, str], Sequence[Decomposition]],
    *,
    target: float | None = None,
    target_text: str = "",
    seed_cost: float = 1000.0,
    video_cost: float = 0.32,
    grid: Sequence[int] = (3, 5, 10, 20, 50),
) -> str:
    """Markdown: per group a table of Δ, its parts and MDE; with ``target`` the cheapest design and the grid."""
    from tabulate import tabulate

    lines: list[str] = []
    for (dataset, encoder, head), decs in groups.items():
        if not decs:
            continue
        lines.append(f"### {dataset}, {encoder}, {head}: {decs[0].n_videos} test videos")
        headers = ["Δ vs ACP", "Δ", "per seed", "± videos", "± seeds", "± both", "MDE"]
        if target is not None:
            headers += ["cheapest: videos × seeds", *(f"videos @ {s} seeds" for s in grid)]
        table = []
        for d in decs:
            row = [
                d.label,
                f"{d.delta:+.2f}",
                " / ".join(f"{x:+.2f}" for x in d.per_seed) or "(other seeds)",
                f"±{d.video_half:.2f}",
                f"±{d.seed_half:.2f}",
                f"±{d.half:.2f}",
                f"{d.mde:.2f}",
            ]
            if target is not None:
                best = cheapest_design(d, target, seed_cost=seed_cost, video_cost=video_cost)
                row.append(f"{best.n_videos:,} × {best.n_seeds}" if best else "–")
                row += [_count(videos_needed(d, target, s)) for s in grid]
            table.append(row)
        lines += [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    lines.append(
        "± videos: 1.96 × sd of the seed-mean Δ over resamples of the test videos, seeds fixed; ± seeds: 1.96 × "
        "sd(per-seed Δ) / √seeds (independent seed sets: both arms' seed-mean variances added); ± both: the two in "
        "quadrature; MDE = 2.80 × SE (80 % power, two-sided α = 0.05). Points of average mAP."
    )
    if target is not None:
        lines.append(
            f"Target: {target_text} (SE ≤ {target:.3f}). Projection SE² = σ_v²/V + σ_s²/S from the measured parts "
            "(conservative beyond the measured size). Cheapest: least S × (seed_cost + video_cost × V) with "
            f"seed_cost = {seed_cost:g}, video_cost = {video_cost:g} (CPU-s per seed; per test video and seed); "
            "videos @ S seeds: the test videos needed at that many seeds (∞: the seed part alone exceeds the target)."
        )
    return "\n".join(lines)


def _count(n: int | None) -> str:
    return "∞" if n is None else f"{n:,}"
