"""`lofi report power` (harness.report.power) on CONSTRUCTED cases with known variance components: per-video per-seed
scores Δ[v, s] = μ + a[v] + b[s] with chosen sd(a) and sd(b). Every expected number below is worked out by hand
(in the comments) from those components, not by the code under test."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.report.power import (
    Decomposition,
    cheapest_design,
    continuous_optimum,
    decompose,
    target_se,
    video_weights,
    videos_needed,
)
from harness.report.weighted_ap import StatsError

N_VIDEOS, N_SEEDS, N_BOOT = 2000, 4, 4000
SD_VIDEO, SD_SEED, MU = 10.0, 2.0, 3.0


def _constructed() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, base, other): per-seed mean scores (points) of two configurations on the original videos and on
    every video resample; the metric of a run is the (weighted) mean of its per-video scores."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=N_VIDEOS)
    a = (a - a.mean()) / a.std() * SD_VIDEO  # population sd exactly SD_VIDEO, mean exactly 0
    t = SD_SEED * math.sqrt(3) / 2  # b = t·(−1, −1, 1, 1): mean 0, sd (ddof=1) = √(4t²/3) = SD_SEED
    b = t * np.array([-1.0, -1.0, 1.0, 1.0])
    base_scores = rng.normal(40.0, 15.0, size=(N_VIDEOS, N_SEEDS))  # anything: it cancels in Δ
    other_scores = base_scores + MU + a[:, None] + b[None, :]
    w = video_weights(N_VIDEOS, N_BOOT, np.random.default_rng(1))
    return w, w @ base_scores / N_VIDEOS, w @ other_scores / N_VIDEOS


def test_decomposition_recovers_the_known_video_and_seed_parts() -> None:
    w, base, other = _constructed()
    assert np.allclose(w.sum(axis=1), N_VIDEOS)  # every resample draws V videos
    d = decompose(base, other, n_videos=N_VIDEOS, paired=True, label="x")
    # Δ = μ exactly (a and b have mean 0); per-seed Δ = μ + b[s]
    assert d.delta == pytest.approx(MU, abs=1e-9)
    t = SD_SEED * math.sqrt(3) / 2
    assert d.per_seed == pytest.approx((MU - t, MU - t, MU + t, MU + t), abs=1e-9)
    # seed part: sd(b) / √4 = 2 / 2 = 1.0 exactly
    assert d.seed_se == pytest.approx(1.0, abs=1e-9)
    # video part: bootstrap SE of a mean of V values with population sd 10 is 10 / √2000 = 0.22361; with 4,000
    # resamples the estimated sd is within ~1.1 % (1/√(2·4000)) of it; 5 % is > 4 Monte Carlo sds
    assert d.video_se == pytest.approx(0.22361, rel=0.05)
    assert d.seed_half == pytest.approx(1.95996, abs=1e-4)  # 1.96 × 1.0
    # σ_v² = SE_v² · V ≈ 100, σ_s² = SE_s² · S = 4
    assert d.video_var == pytest.approx(100.0, rel=0.10)
    assert d.seed_var == pytest.approx(4.0, abs=1e-9)


def test_unpaired_seed_part_adds_both_arms_variances() -> None:
    # base seed means 10, 12 (var 2), other 20, 21, 22 (var 1): SE_s = √(2/2 + 1/3) = √(4/3) = 1.1547
    base = np.array([[10.0, 12.0]] * 3)
    other = np.array([[20.0, 21.0, 22.0]] * 3)
    d = decompose(base, other, n_videos=5, paired=False)
    assert d.delta == pytest.approx(10.0)
    assert d.seed_se == pytest.approx(1.1547, abs=1e-4)
    assert d.per_seed == () and not d.paired


# a decomposition with exact components: σ_v² = 100 per video (SE_v = 10/√400 = 0.5 at 400 videos),
# σ_s² = 4 per seed (SE_s = 2/√4 = 1 at 4 seeds)
EXACT = Decomposition("x", 3.0, (), 400, 4, video_se=0.5, seed_se=1.0)


def test_target_se_from_halfwidth_and_effect() -> None:
    assert target_se(halfwidth=1.96) == pytest.approx(1.0, abs=1e-3)  # 1.96 / 1.959964
    assert target_se(effect=2.801585) == pytest.approx(1.0, abs=1e-5)  # z_0.975 + z_0.80 = 1.959964 + 0.841621
    with pytest.raises(StatsError):
        target_se(halfwidth=1.0, effect=1.0)


def test_videos_needed_at_fixed_seeds_against_hand_worked_values() -> None:
    # target SE 0.5 (h² = 0.25): V = σ_v² / (h² − σ_s²/S)
    assert videos_needed(EXACT, 0.5, 10) is None  # 4/10 = 0.4 > 0.25: the seed part alone is too wide
    assert videos_needed(EXACT, 0.5, 16) is None  # 4/16 = 0.25: nothing left for the videos
    assert videos_needed(EXACT, 0.5, 50) == 589  # 100 / (0.25 − 0.08) = 588.2
    assert videos_needed(EXACT, 0.5, 100) == 477  # 100 / 0.21 = 476.2
    assert videos_needed(EXACT, 0.5, 26) == 1040  # 100 / (0.25 − 2/13) = 100 / (5/52) = 1040 exactly


def test_cheapest_design_against_hand_worked_values() -> None:
    # cost = S · (1000 + 2 V). Continuous optimum: A = σ_v²/h² = 400, V* = 400 + √(400² + 400 · 500) = 1000,
    # S* = 4 / (0.25 − 100/1000) = 26.67, cost 26.67 · 3000 = 80,000.
    v, s = continuous_optimum(100.0, 4.0, 0.5, seed_cost=1000.0, video_cost=2.0)
    assert (v, s) == pytest.approx((1000.0, 26.6667), rel=1e-4)
    # integers: S=26 → V=1040, cost 80,080; S=27 → V=⌈981.8⌉=982, cost 27·2964 = 80,028;
    # S=28 → V=⌈933.3⌉=934, cost 28·2868 = 80,304; S=25 → V=⌈1111.1⌉=1112, cost 80,600
    best = cheapest_design(EXACT, 0.5, seed_cost=1000.0, video_cost=2.0)
    assert best is not None
    assert (best.n_videos, best.n_seeds, best.cost) == (982, 27, 80_028)
    assert best.se <= 0.5


def test_required_size_from_the_measured_decomposition_is_near_the_analytic_one() -> None:
    w, base, other = _constructed()
    d = decompose(base, other, n_videos=N_VIDEOS, paired=True)
    # with the true σ_v² = 100, σ_s² = 4: 1040 videos at 26 seeds (above); the estimate of σ_v² is within ~3 %
    assert videos_needed(d, 0.5, 26) == pytest.approx(1040, rel=0.10)


def test_decompose_rejects_a_single_seed() -> None:
    with pytest.raises(StatsError, match="at least 2 seeds"):
        decompose(np.ones((3, 1)), np.ones((3, 1)), n_videos=4, paired=True)


def test_the_command_prints_every_delta_with_its_parts_and_the_size_for_a_target(tmp_path: Path, capsys) -> None:
    from test_controls import CONTROL_SEEDS, _write_annotations, _write_class_scores, _write_run

    gt = tmp_path / "annotations.json"
    db = _write_annotations(gt)
    scores = _write_class_scores(tmp_path / "class_scores.json", db)
    root = tmp_path / "results" / "synthetic" / "tsm_resnet_tiny" / "gtad"
    rows = {}
    for mode in ("acp", "e2e-full", "blind"):
        for seed in (0, 1, 2):
            rows[mode, seed] = json.loads((_write_run(root, mode, seed, db, gt, scores) / "row.json").read_text())
    for seed in CONTROL_SEEDS:
        _write_run(root, "acp", seed, db, gt, scores)
    for row_dir in root.glob("*/seed*"):  # predictions relative to the run folder: make them absolute
        row = json.loads((row_dir / "row.json").read_text())
        row["predictions"] = str(row_dir / row["predictions"])
        (row_dir / "row.json").write_text(json.dumps(row))
    assert main(["report", "power", str(tmp_path / "results"), "--halfwidth", "1.0", "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| End-to-end"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # the per-seed Δ are the rows' own average mAPs, differenced by seed (in points)
    expected = [100 * (rows["e2e-full", s]["average_mAP"] - rows["acp", s]["average_mAP"]) for s in (0, 1, 2)]
    assert [float(x) for x in cells[2].split(" / ")] == pytest.approx(expected, abs=0.006)
    seed_half = 1.959964 * np.std(expected, ddof=1) / math.sqrt(3)
    assert float(cells[4].lstrip("±")) == pytest.approx(seed_half, abs=0.006)
    assert re.search(r"\| ACP, seeds 10, 11 \(negative control\)", out)
    assert "Blind" in out and "Target: ±1 (95%)" in out
