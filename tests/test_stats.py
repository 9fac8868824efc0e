"""harness.report.stats against hand-worked values and the real evaluator (harness.evaluation.detection).

All ground truth and predictions below are TEST FIXTURES made up in code; none is a measured result.
"""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest
from scipy.stats import norm

from harness.data.model import Segment, TALDataset, Video
from harness.evaluation.detection import (
    DetectionMatches,
    ap_from_matches,
    evaluate_detection,
    load_ground_truth,
    match_detections,
)
from harness.evaluation.predictions import load_predictions
from harness.report import weighted_ap
from harness.report.stats import (
    BootstrapResult,
    _permutation_pairs,
    holm,
    joint_bootstrap,
    mean_sd,
    merge_swapped,
    minimum_detectable_effect,
    pair_engine,
    paired_bootstrap,
    paired_permutation_test,
    share_of_gain,
    swapped_totals,
)
from harness.report.weighted_ap import SortedDetections, StatsError, rank_counts, weighted_metric

CLASSES = ("jump", "run", "swim")


# ---------------------------------------------------------------------------------------------------------------
# Fixtures (made-up data)


def _fixture_dataset(n_videos: int, rng: np.random.Generator, copies: dict[int, int] | None = None) -> TALDataset:
    """Validation videos with 1-2 instances each. ``copies`` duplicates video i under new names (0 drops it)."""
    videos = {}
    for i in range(n_videos):
        segs = []
        for _ in range(1 + i % 2):
            start = float(rng.uniform(0, 60))
            segs.append(Segment(start, start + float(rng.uniform(5, 30)), CLASSES[int(rng.integers(3))]))
        for k in range((copies or {}).get(i, 1)):
            vid = f"vid{i:03d}" + (f"_copy{k}" if k else "")
            videos[vid] = Video(id=vid, subset="validation", duration=100.0, segments=tuple(segs))
    return TALDataset(name="fixture", videos=videos, classes=CLASSES)


def _fixture_predictions(ds: TALDataset, rng: np.random.Generator, noise: float, n_false: int = 3) -> dict:
    """Jittered copies of the instances (scores random) plus a few random false detections per video."""
    results: dict[str, list] = {}
    salt = int(rng.integers(2**31))
    for vid, video in ds.videos.items():
        base = vid.split("_copy")[0]
        local = np.random.default_rng([int(base[3:]), salt])  # a video's copies get identical predictions
        entries = []
        for s in video.segments:
            for _ in range(2):
                a = s.start + local.normal(0, noise)
                b = s.end + local.normal(0, noise)
                entries.append(
                    {
                        "label": s.label,
                        "score": float(local.uniform(0.3, 1.0)),
                        "segment": [float(min(a, b)), float(max(a, b) + 0.1)],
                    }
                )
        for _ in range(n_false):
            a = float(local.uniform(0, 90))
            entries.append(
                {
                    "label": CLASSES[int(local.integers(3))],
                    "score": float(local.uniform(0, 0.6)),
                    "segment": [a, a + float(local.uniform(1, 10))],
                }
            )
        results[vid] = entries
    return {"version": "fixture", "results": results, "external_data": {}}


def _matches(ds: TALDataset, preds: dict) -> DetectionMatches:
    gt = load_ground_truth(ds, subset="validation")
    return match_detections(gt, load_predictions(preds, gt))


@pytest.fixture(scope="module")
def runs() -> tuple[TALDataset, list[DetectionMatches], list[DetectionMatches]]:
    rng = np.random.default_rng(7)
    ds = _fixture_dataset(24, rng)
    a = [_matches(ds, _fixture_predictions(ds, np.random.default_rng(s), noise=4.0)) for s in range(3)]
    b = [_matches(ds, _fixture_predictions(ds, np.random.default_rng(s), noise=2.0)) for s in range(3)]
    return ds, a, b


def _hand_matches() -> DetectionMatches:
    """2 videos, 1 class, one threshold; ranked: p0 (video 0, TP), p1 (video 1, FP), p2 (video 1, TP)."""
    return DetectionMatches(
        classes=np.array(["a"], dtype=object),
        video_ids=np.array(["v0", "v1"], dtype=object),
        tiou_thresholds=np.array([0.5]),
        pred_class=np.array([0, 0, 0]),
        pred_video=np.array([0, 1, 1]),
        pred_score=np.array([0.9, 0.8, 0.7]),
        tp=np.array([[True, False, True]]),
        gt_class=np.array([0, 0]),
        gt_video=np.array([0, 1]),
    )


# ---------------------------------------------------------------------------------------------------------------
# Weighted AP


def test_weighted_metric_hand_case() -> None:
    # Worked by hand (interpolated AP = sum over TPs of weight x monotone precision / weighted positives):
    # w=(1,1): (1*1 + 1*2/3)/2 = 5/6;  w=(2,1): (2*1 + 1*3/4)/3 = 11/12;  w=(0,1): 1*(1/2)/1;  w=(1,0): 1*1/1.
    weights = np.array([[1, 1], [2, 1], [0, 1], [1, 0]], dtype=float)
    expected = np.array([5 / 6, 11 / 12, 0.5, 1.0])
    m = _hand_matches()
    np.testing.assert_allclose(weighted_metric(m, weights), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose([ap_from_matches(m, w)[0, 0] for w in weights], expected, atol=1e-12)


def test_unit_weights_equal_evaluate_detection(runs) -> None:
    ds, a, _ = runs
    preds = _fixture_predictions(ds, np.random.default_rng(0), noise=4.0)
    result = evaluate_detection(load_ground_truth(ds, subset="validation"), preds)
    ones = np.ones((1, len(ds.videos)))
    assert weighted_metric(a[0], ones)[0] == pytest.approx(result.average_mAP, abs=1e-12)
    assert np.nanmean(ap_from_matches(a[0], ones[0]), axis=1).mean() == pytest.approx(result.average_mAP, abs=1e-12)
    assert weighted_metric(a[0], ones, metric="mAP_0.50")[0] == pytest.approx(result.mAP[0], abs=1e-12)


def test_fast_path_equals_ap_from_matches_for_random_weights(runs) -> None:
    _, a, _ = runs
    weights = np.random.default_rng(1).multinomial(24, np.full(24, 1 / 24), size=30).astype(float)
    for metric in ("average_mAP", "mAP_0.75", "mAP@0.95"):
        fast = weighted_metric(a[1], weights, metric=metric)
        ref = weighted_metric(a[1], weights, metric=metric, method="reference")
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)


def test_weighting_equals_duplicating_videos() -> None:
    # Weight w for a video == the video present w times under new names (w = 0: removed), evaluated from scratch.
    weights = {0: 2, 1: 0, 2: 3, 5: 0, 7: 2}
    ds = _fixture_dataset(10, np.random.default_rng(3))
    dup = _fixture_dataset(10, np.random.default_rng(3), copies=weights)
    m = _matches(ds, _fixture_predictions(ds, np.random.default_rng(0), noise=3.0))
    w = np.array([weights.get(i, 1) for i in range(10)], dtype=float)
    expected = evaluate_detection(
        load_ground_truth(dup, subset="validation"), _fixture_predictions(dup, np.random.default_rng(0), noise=3.0)
    )
    # Classes absent from the duplicated set are not evaluated there; the weighted mAP skips them likewise.
    assert weighted_metric(m, w[None, :])[0] == pytest.approx(expected.average_mAP, abs=1e-12)


def _scan_ap(group, cls, score, tp, weights, npos, n_classes) -> np.ndarray:
    """The engine's AP as scans along each threshold's true positives (numpy's cumsum and maximum.accumulate, the
    lifted running max), with the counts found by brute force: the numbers ``SortedDetections.ap`` must give
    to the last bit, whatever its layout."""
    order = np.lexsort((-score, cls))
    cls, group, tp = cls[order], group[order], tp[:, order]
    b = weights.shape[0]
    sums = np.zeros((b, tp.shape[0], n_classes))
    for t in range(tp.shape[0]):
        pos = np.flatnonzero(tp[t])
        if not pos.size:
            continue
        c = cls[pos]
        w = weights[:, group[pos]]
        total = np.stack([weights[:, group[(cls == cls[p]) & (np.arange(cls.size) <= p)]].sum(axis=1) for p in pos], 1)
        cs = np.concatenate([np.zeros((b, 1)), np.cumsum(w, axis=1)], axis=1)
        tp_cum = cs[:, 1:] - cs[:, np.searchsorted(c, c)]
        prec = np.divide(tp_cum, total, out=np.zeros_like(tp_cum), where=total > 0)
        lift = 2.0 * (n_classes - c)
        interp = np.maximum.accumulate((prec + lift)[:, ::-1], axis=1)[:, ::-1]
        interp -= lift
        interp *= w
        csum = np.concatenate([np.zeros((b, 1)), np.cumsum(interp, axis=1)], axis=1)
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        sums[:, t, c[starts]] = csum[:, np.r_[starts[1:], c.size]] - csum[:, starts]
    npos = npos[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(npos > 0, sums / np.where(npos > 0, npos, 1.0), np.nan)


def test_engine_ap_is_bitwise_the_per_threshold_scan(monkeypatch) -> None:
    # Random engines: ties in score, thresholds without true positives, several passes over the resamples.
    monkeypatch.setattr(weighted_ap, "_PASS_ELEMENTS", 50)
    for trial in range(60):
        r = np.random.default_rng(trial)
        n, groups, classes, thresholds = int(r.integers(0, 50)), int(r.integers(1, 7)), int(r.integers(1, 5)), 3
        group, cls, score = r.integers(0, groups, n), r.integers(0, classes, n), np.round(r.random(n), 1)
        tp = r.random((thresholds, n)) < r.random()
        tp[trial % thresholds] &= trial % 4 != 0
        weights = r.integers(0, 4, (int(r.integers(1, 40)), groups)).astype(float)
        npos = r.integers(0, 5, (weights.shape[0], classes)).astype(float)
        fast = SortedDetections(group, cls, score, tp, groups, classes).ap(weights, npos)
        expected = _scan_ap(group, cls, score, tp, weights, npos, classes)
        assert fast.tobytes() == expected.tobytes(), trial


def test_rank_counts_equal_counting_by_hand() -> None:
    r = np.random.default_rng(5)
    cls, grp = np.sort(r.integers(0, 4, 80)), r.integers(0, 6, 80)
    positions = np.flatnonzero(r.random(80) < 0.3)
    expected = [[np.sum((cls == cls[p]) & (np.arange(80) <= p) & (grp == g)) for g in range(6)] for p in positions]
    np.testing.assert_array_equal(rank_counts(cls, grp, positions, 6), np.array(expected).reshape(-1, 6))


def test_swapped_totals_equal_the_selections_totals(runs) -> None:
    _, a, b = runs
    engine = pair_engine(a[0], b[1])
    swaps = (np.random.default_rng(2).random((7, 24)) < 0.5).astype(float)
    ones, zeros = np.ones((7, 1)), np.zeros((7, 1))
    totals_a, totals_b = swapped_totals(engine.counts, 24, swaps)
    np.testing.assert_array_equal(totals_a, engine.totals(np.concatenate([1 - swaps, swaps, ones, zeros], axis=1)))
    np.testing.assert_array_equal(totals_b, engine.totals(np.concatenate([swaps, 1 - swaps, zeros, ones], axis=1)))


def test_engine_cache_holds_one_entry_per_run_object(runs) -> None:
    _, a, b = runs
    engine = weighted_ap._bootstrap_engine(a[0])
    assert weighted_ap._bootstrap_engine(a[0]) is engine
    assert weighted_ap._bootstrap_engine(b[0]) is not engine
    copy = dataclasses.replace(a[0])  # equal contents, another object: its own entry
    assert weighted_ap._bootstrap_engine(copy) is not engine
    key = id(copy)
    del copy
    gc.collect()
    assert key not in weighted_ap._ENGINES  # an entry leaves with its matches
    # runs made and dropped one after the other, alternately A's and B's (CPython gives each the id of the one
    # before): each gets its own numbers
    weights = np.random.default_rng(4).multinomial(24, np.full(24, 1 / 24), size=5).astype(float)
    expected = [weighted_metric(m, weights, method="reference") for m in (a[0], b[0])]
    assert not np.allclose(expected[0], expected[1])
    for k in range(4):
        m = dataclasses.replace((a[0], b[0])[k % 2])
        np.testing.assert_allclose(weighted_metric(m, weights), expected[k % 2], rtol=0, atol=1e-12)
        del m


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_identical_configs_gives_zero(runs) -> None:
    _, a, _ = runs
    res = paired_bootstrap(a, a, n_boot=200, rng=np.random.default_rng(0))
    assert res.diff == 0.0
    assert res.ci_low <= 0.0 <= res.ci_high
    np.testing.assert_array_equal(res.samples, np.zeros(200))  # paired seeds and videos: every resample is 0


def test_bootstrap_diff_is_difference_of_seed_means(runs) -> None:
    ds, a, b = runs
    gt = load_ground_truth(ds, subset="validation")
    means = []
    for noise in (4.0, 2.0):
        scores = [
            evaluate_detection(gt, _fixture_predictions(ds, np.random.default_rng(s), noise=noise)).average_mAP
            for s in range(3)
        ]
        means.append(np.mean(scores))
    res = paired_bootstrap(a, b, n_boot=50, rng=np.random.default_rng(0))
    assert res.diff == pytest.approx(means[1] - means[0], abs=1e-12)
    assert res.samples.shape == (50,)


def test_bootstrap_fast_equals_reference(runs) -> None:
    _, a, b = runs
    fast = paired_bootstrap(a, b[:2], n_boot=25, rng=np.random.default_rng(4))  # unpaired seeds (3 vs 2 runs)
    ref = paired_bootstrap(a, b[:2], n_boot=25, rng=np.random.default_rng(4), method="reference")
    np.testing.assert_allclose(fast.samples, ref.samples, rtol=0, atol=1e-12)
    assert (fast.ci_low, fast.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-12)


def test_bootstrap_pairs_seeds_by_value(runs) -> None:
    _, a, b = runs
    ordered = paired_bootstrap(a, b, n_boot=40, rng=np.random.default_rng(2), seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
    shuffled = paired_bootstrap(
        a, b[::-1], n_boot=40, rng=np.random.default_rng(2), seeds_a=[0, 1, 2], seeds_b=[2, 1, 0]
    )
    np.testing.assert_allclose(ordered.samples, shuffled.samples, atol=1e-12)


def test_dominating_config_is_significant() -> None:
    # B finds every instance exactly; A's detections are all shifted off the instances: B wins on every video.
    ds = _fixture_dataset(30, np.random.default_rng(5))
    exact = {
        "results": {
            v: [{"label": s.label, "score": 0.9, "segment": [s.start, s.end]} for s in video.segments]
            for v, video in ds.videos.items()
        }
    }
    shifted = {
        "results": {
            v: [{"label": s.label, "score": 0.9, "segment": [s.end + 1, s.end + 20]} for s in video.segments]
            for v, video in ds.videos.items()
        }
    }
    a = [_matches(ds, shifted)] * 2
    b = [_matches(ds, exact)] * 2
    boot = paired_bootstrap(a, b, n_boot=300, rng=np.random.default_rng(0))
    assert boot.diff == pytest.approx(1.0)  # mAP 1 vs 0
    assert boot.ci_low > 0.0
    p = paired_permutation_test(a, b, n_perm=199, rng=np.random.default_rng(0))
    assert p == pytest.approx(1 / 200)  # only the identity pattern reaches |1.0|; 2**-30 chance otherwise


# ---------------------------------------------------------------------------------------------------------------
# Permutation test


def test_permutation_p_in_range_and_reproducible(runs) -> None:
    _, a, b = runs
    p1 = paired_permutation_test(a, b, n_perm=99, rng=np.random.default_rng(11))
    p2 = paired_permutation_test(a, b, n_perm=99, rng=np.random.default_rng(11))
    assert p1 == p2
    assert 1 / 100 <= p1 <= 1.0
    assert round(p1 * 100) == pytest.approx(p1 * 100)  # (1 + count) / (1 + n_perm)


def test_permutation_identical_configs_gives_one(runs) -> None:
    _, a, _ = runs
    assert paired_permutation_test(a, a, n_perm=50, rng=np.random.default_rng(0)) == 1.0


def test_permutation_fast_equals_reference(runs) -> None:
    _, a, b = runs
    fast = paired_permutation_test(a[:2], b[:2], n_perm=30, rng=np.random.default_rng(9), metric="mAP_0.50")
    ref = paired_permutation_test(
        a[:2], b[:2], n_perm=30, rng=np.random.default_rng(9), metric="mAP_0.50", method="reference"
    )
    assert fast == ref


def test_merge_swapped_takes_each_video_from_one_config(runs) -> None:
    _, a, b = runs
    swap = np.zeros(24, dtype=bool)
    swap[::3] = True
    merged = merge_swapped(a[0], b[0], swap)
    from_b = swap[merged.pred_video]
    expected = np.count_nonzero(~swap[a[0].pred_video]) + np.count_nonzero(swap[b[0].pred_video])
    assert merged.pred_score.size == expected == merged.tp.shape[1]
    assert set(np.unique(merged.pred_video[from_b])) <= set(np.flatnonzero(swap))
    assert np.array_equal(merge_swapped(a[0], b[0], np.zeros(24, bool)).tp, a[0].tp)


def test_mismatched_ground_truth_is_an_error(runs) -> None:
    _, a, _ = runs
    other = _matches(
        _fixture_dataset(5, np.random.default_rng(1)),
        _fixture_predictions(_fixture_dataset(5, np.random.default_rng(1)), np.random.default_rng(0), 2.0),
    )
    with pytest.raises(StatsError, match="same ground truth"):
        paired_bootstrap(a, [other], n_boot=5, rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------------
# Small statistics


def test_holm_hand_case() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    # (statsmodels.stats.multitest.multipletests([...], method="holm") gives the same).
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    out = holm([0.02, np.nan, 0.01])  # NaN ignored: m = 2
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert np.isnan(out[1])


def test_mean_sd_uses_ddof_1() -> None:
    mean, sd = mean_sd([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0
    assert sd == pytest.approx(np.sqrt(14 / 3))  # squared deviations 4+1+0+9 = 14, over n-1 = 3
    assert np.isnan(mean_sd([5.0])[1])


def test_mde_is_2_80_times_the_bootstrap_sd() -> None:
    x = np.random.default_rng(0).normal(size=4000)
    samples = 0.02 * (x - x.mean()) / x.std(ddof=1)  # a bootstrap distribution with sd exactly 0.02
    result = BootstrapResult(diff=0.0, ci_low=-0.04, ci_high=0.04, samples=samples)
    assert result.se == pytest.approx(0.02, rel=1e-12)
    z = norm.ppf(0.975) + norm.ppf(0.80)  # 1.95996 + 0.84162
    assert round(z, 2) == 2.80
    assert minimum_detectable_effect(result.se) == pytest.approx(z * 0.02, rel=1e-12)
    assert minimum_detectable_effect(0.01, alpha=0.05, power=0.5) == pytest.approx(norm.ppf(0.975) * 0.01)


# ---------------------------------------------------------------------------------------------------------------
# Several configurations resampled together


def _graded(k_per_video: list[int]) -> dict:
    """Video v (class c<v>, one instance [0, 10]) gets one prediction true at exactly k_v of the 10 tIoU
    thresholds (tIoU 0.5 + 0.05 (k - 1) + 0.025; 0.3 for k = 0): its AP averaged over thresholds is k_v / 10."""
    results = {}
    for v, k in enumerate(k_per_video):
        iou = 0.3 if k == 0 else 0.5 + 0.05 * (k - 1) + 0.025
        results[f"vid{v:03d}"] = [{"label": f"c{v}", "score": 0.5, "segment": [0.0, 10.0 * iou]}]
    return {"results": results}


def test_share_of_gain_is_one_half_when_lofi_is_halfway_on_every_video() -> None:
    # One class per video: a resample's average mAP is the mean of k_v / 10 over the videos it draws, linear in
    # k. LoFi's k is halfway between ACP's and e2e-full's on every video and seed, so with the SAME resample of
    # videos and seeds for the three configurations every resample's share is exactly 0.5.
    n = 12
    videos = {
        f"vid{v:03d}": Video(
            id=f"vid{v:03d}", subset="validation", duration=100.0, segments=(Segment(0.0, 10.0, f"c{v}"),)
        )
        for v in range(n)
    }
    ds = TALDataset(name="graded", videos=videos, classes=tuple(f"c{v}" for v in range(n)))
    acp, lofi, e2e = [], [], []
    for seed in (0, 1, 2):
        k_acp = [(v + seed) % 3 for v in range(n)]
        gap = [2 * (1 + (v * seed + v) % 4) for v in range(n)]  # even: LoFi's k stays an integer
        acp.append(_matches(ds, _graded(k_acp)))
        lofi.append(_matches(ds, _graded([a + g // 2 for a, g in zip(k_acp, gap)])))
        e2e.append(_matches(ds, _graded([a + g for a, g in zip(k_acp, gap)])))
    joint = joint_bootstrap([acp, lofi, e2e], n_boot=300, rng=np.random.default_rng(0), seeds=[[0, 1, 2]] * 3)
    share = share_of_gain(joint, base=0, config=1, reference=2)
    assert share.estimate == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(share.samples, 0.5, rtol=0, atol=1e-9)
    assert share.ci_low == pytest.approx(0.5, abs=1e-9) and share.ci_high == pytest.approx(0.5, abs=1e-9)
    # the two-configuration bootstrap is the same machinery: its differences are those of the joint resamples
    two = paired_bootstrap(acp, e2e, n_boot=300, rng=np.random.default_rng(0), seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
    pair = joint_bootstrap([acp, e2e], n_boot=300, rng=np.random.default_rng(0), seeds=[[0, 1, 2]] * 2)
    np.testing.assert_allclose(two.samples, pair.samples[:, 1] - pair.samples[:, 0], atol=0)


def test_unpaired_seeds_average_every_cross_pair(runs) -> None:
    _, a, b = runs
    assert _permutation_pairs(3, 3, [0, 1, 2], [0, 1, 2]) == [(0, 0), (1, 1), (2, 2)]
    assert _permutation_pairs(2, 3, [0, 1], [10, 11, 12]) == [(i, j) for i in range(2) for j in range(3)]
    # a negative control: the same runs under other seed numbers. The bootstrap resamples the two seed sets
    # independently (so resamples differ from 0) and the permutation statistic over all cross pairs is exactly
    # the difference of seed means (here 0: the observed value every permutation reaches, p = 1).
    boot = paired_bootstrap(a, a, n_boot=200, rng=np.random.default_rng(0), seeds_a=[0, 1, 2], seeds_b=[10, 11, 12])
    assert boot.diff == pytest.approx(0.0, abs=1e-15) and np.any(boot.samples != 0)
    assert boot.ci_low < 0 < boot.ci_high
    p = paired_permutation_test(a, a, n_perm=50, rng=np.random.default_rng(0), seeds_a=[0, 1, 2], seeds_b=[10, 11, 12])
    assert p == 1.0
