"""Shared BMN-layout labels, losses and decoding, checked against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from heads.common import valid_map_mask
from heads.decode import boundary_candidates, decode_proposals
from heads.labels import make_targets, make_targets_batch
from heads.losses import pem_cls_loss, pem_reg_loss, pem_sample_mask, tal_loss, tem_loss

L8 = 8


# ----------------------------------------------------------------------------------------------------- labels


def test_one_segment_hand_case() -> None:
    # GT covers snippets 2..4 of L = 8: [2/8, 5/8]. Start region [0.5, 3.5]/8 holds anchors 1, 2, 3 entirely
    # (anchor i = [(i - 0.5), (i + 0.5)]/8); end region [3.5, 6.5]/8 holds anchors 4, 5, 6.
    t = make_targets([[2 / 8, 5 / 8]], L8, L8)
    assert t["start"].dtype == torch.float32 and t["iou_map"].shape == (8, 8)
    torch.testing.assert_close(t["start"], torch.tensor([0, 1, 1, 1, 0, 0, 0, 0.0]))
    torch.testing.assert_close(t["end"], torch.tensor([0, 0, 0, 0, 1, 1, 1, 0.0]))
    m = t["iou_map"]
    assert m[2, 2].item() == pytest.approx(1.0)  # [2, 5]/8 is the GT
    assert m[3, 2].item() == pytest.approx(3 / 4)  # [2, 6] vs [2, 5]
    assert m[0, 3].item() == pytest.approx(1 / 3)  # [3, 4] vs [2, 5]
    assert m[4, 1].item() == pytest.approx(3 / 5)  # [1, 6] vs [2, 5]
    assert m[1, 0].item() == 0.0  # [0, 2] does not overlap
    assert m[7, 1].item() == 0.0  # [1, 9] ends past the video: invalid, 0
    assert m[~valid_map_mask(8, 8)].abs().sum().item() == 0.0


def test_fractional_boundary_gives_partial_ioa() -> None:
    # Start at 2.25/8: region [0.75, 3.75]/8 → anchor 1 [0.5, 1.5] overlaps 0.75, anchor 4 [3.5, 4.5] 0.25.
    t = make_targets(np.array([[2.25 / 8, 5 / 8]]), L8, L8)
    torch.testing.assert_close(t["start"], torch.tensor([0, 0.75, 1, 1, 0.25, 0, 0, 0]))
    # IoU of [2, 5]/8 with [2.25, 5]/8 = 2.75 / 3
    assert t["iou_map"][2, 2].item() == pytest.approx(2.75 / 3, rel=1e-6)


def test_two_segments_take_the_max_and_video_edges() -> None:
    t = make_targets(torch.tensor([[0.0, 2 / 8], [4 / 8, 1.0]]), L8, L8)
    torch.testing.assert_close(t["start"], torch.tensor([1, 1, 0, 1, 1, 1, 0, 0.0]))
    torch.testing.assert_close(t["end"], torch.tensor([0, 1, 1, 1, 0, 0, 0, 1.0]))  # end anchor 7 for end = 1
    assert t["iou_map"][1, 0].item() == pytest.approx(1.0)
    assert t["iou_map"][3, 4].item() == pytest.approx(1.0)
    assert t["iou_map"][7, 0].item() == pytest.approx(0.5)  # whole video vs the better of the two (4/8)


def test_iou_map_matches_loop_reference() -> None:
    rng = np.random.default_rng(3)
    seg = np.sort(rng.uniform(0, 1, size=(3, 2)), axis=1)
    L, D = 10, 6
    got = make_targets(seg, L, D)["iou_map"].double()
    ref = torch.zeros(D, L, dtype=torch.float64)
    for d in range(D):
        for s in range(L):
            if s + d + 1 > L:
                continue
            lo, hi = s / L, (s + d + 1) / L
            best = 0.0
            for a, b in seg:
                inter = max(0.0, min(hi, b) - max(lo, a))
                best = max(best, inter / ((hi - lo) + (b - a) - inter))
            ref[d, s] = best
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_no_segments_and_batch() -> None:
    empty = make_targets(np.zeros((0, 2)), 5, 3)
    assert empty["iou_map"].shape == (3, 5) and empty["start"].shape == (5,)
    assert all(v.abs().sum().item() == 0 for v in empty.values())
    batch = make_targets_batch([[[0.2, 0.6]], []], 5, 3)
    assert batch["start"].shape == (2, 5) and batch["iou_map"].shape == (2, 3, 5)
    torch.testing.assert_close(batch["iou_map"][0], make_targets([[0.2, 0.6]], 5, 3)["iou_map"])
    assert batch["iou_map"][1].abs().sum().item() == 0
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        make_targets([[0.1, 0.2, 0.3]], 5, 3)


# ----------------------------------------------------------------------------------------------------- losses


def _perfect_outputs(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "start": t["start"].clone(),
        "end": t["end"].clone(),
        "iou_map": torch.stack([t["iou_map"], t["iou_map"]], dim=1),
    }


def test_tem_loss_hand_value() -> None:
    pred = torch.tensor([[0.8, 0.4, 0.1]])
    gt = torch.tensor([[1.0, 0.0, 0.3]])  # positives: gt > 0.5 → only the first
    expected = -(0.5 * math.log(0.8 + 1e-6) + 0.5 * (math.log(0.6 + 1e-6) + math.log(0.9 + 1e-6)) / 2)
    assert tem_loss(pred, gt).item() == pytest.approx(expected, rel=1e-5)


def test_pem_losses_hand_values() -> None:
    # D = L = 2: valid cells (0,0), (0,1), (1,0); (1,1) is invalid and must be ignored.
    valid = valid_map_mask(2, 2)
    gt = torch.tensor([[[0.95, 0.5], [0.0, 0.0]]])  # high, medium / low (IoU 0 counts as low), invalid
    pred = torch.tensor([[[0.75, 0.5], [0.2, 0.9]]])
    # one cell per group → every ratio is 1 → all three valid cells used: 0.5 · (0.2² + 0 + 0.2²) / 3
    assert pem_reg_loss(pred, gt, valid).item() == pytest.approx(0.5 * 0.08 / 3, rel=1e-5)
    # cls: positive (0,0) (IoU > 0.9), negatives (0,1), (1,0)
    expected = -(0.5 * math.log(0.75 + 1e-6) + 0.5 * (math.log(0.5 + 1e-6) + math.log(0.8 + 1e-6)) / 2)
    assert pem_cls_loss(pred, gt, valid).item() == pytest.approx(expected, rel=1e-5)
    # changing the invalid cell's prediction changes nothing
    pred2 = pred.clone()
    pred2[0, 1, 1] = 0.1
    assert pem_reg_loss(pred2, gt, valid).item() == pem_reg_loss(pred, gt, valid).item()
    assert pem_cls_loss(pred2, gt, valid).item() == pem_cls_loss(pred, gt, valid).item()


def test_pem_sampling_balances_groups() -> None:
    L = 40
    valid = valid_map_mask(L, L)
    gt = make_targets([[0.3, 0.6]], L, L)["iou_map"].unsqueeze(0)
    high = ((gt > 0.7) & valid).sum().item()
    medium = ((gt > 0.3) & (gt <= 0.7) & valid).sum().item()
    low = ((gt <= 0.3) & valid).sum().item()
    assert 0 < high < medium < low
    g = torch.Generator().manual_seed(0)
    draws = [pem_sample_mask(gt, valid, generator=g) for _ in range(200)]
    for mask in draws:
        assert (mask & (gt > 0.7)).sum().item() == high  # every high cell, every time
        assert not (mask & ~valid).any()
    mean_m = np.mean([(m & (gt > 0.3) & (gt <= 0.7)).sum().item() for m in draws])
    mean_l = np.mean([(m & (gt <= 0.3)).sum().item() for m in draws])
    # expected count = high for both groups; 200 draws → standard error < 0.3
    assert abs(mean_m - high) < 1.5 and abs(mean_l - high) < 1.5


def _published_pem_reg(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, u_m: torch.Tensor, u_l: torch.Tensor, *, low_zero: bool
) -> float:
    """The PEM regression as BMN's and G-TAD's ``pem_reg_loss_func`` computes it, written from its formula: groups
    on the masked map, a medium (low) cell kept when its uniform draw v > 1 - #high / #medium (#low), here with
    v = 1 - u so that the draws are the ones ``pem_sample_mask`` takes from the same generator."""
    gt = gt * valid
    high = gt > 0.7
    medium = (gt <= 0.7) & (gt > 0.3)
    low = (gt <= 0.3) & ((gt >= 0) if low_zero else (gt > 0)) & valid
    r_m = high.sum() / medium.sum()
    r_l = high.sum() / low.sum()
    assert r_m < 1 and r_l < 1  # the regime where the published rule samples (r >= 1 selects outside the group)
    weights = high.double() + ((medium * (1 - u_m)) > 1 - r_m).double() + ((low * (1 - u_l)) > 1 - r_l).double()
    loss = torch.nn.functional.mse_loss(pred * weights, gt * weights)
    return (0.5 * torch.sum(loss * torch.ones(*weights.shape, dtype=weights.dtype)) / torch.sum(weights)).item()


@pytest.mark.parametrize("low_zero", [True, False])
def test_pem_regression_against_the_published_rule(low_zero: bool) -> None:
    L = 40
    valid = valid_map_mask(L, L)
    gt = make_targets_batch([[[0.3, 0.6]], [[0.05, 0.2], [0.7, 0.8]]], L, L)["iou_map"].double()
    pred = torch.rand(gt.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    u_m, u_l = torch.rand(gt.shape, generator=g), torch.rand(gt.shape, generator=g)
    want = _published_pem_reg(pred, gt, valid, u_m, u_l, low_zero=low_zero)
    got = pem_reg_loss(pred, gt, valid, generator=torch.Generator().manual_seed(0), low_zero=low_zero)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # the default is this project's synthetic rule (IoU = 0 cells are "low"): what every existing number used
    default = pem_reg_loss(pred, gt, valid, generator=torch.Generator().manual_seed(0))
    assert (default.item() == got.item()) is low_zero


def test_pem_low_zero_hand_case() -> None:
    valid = valid_map_mask(2, 2)
    gt = torch.tensor([[[0.95, 0.5], [0.0, 0.0]]])  # high, medium / IoU-0 valid cell, invalid
    pred = torch.tensor([[[0.75, 0.5], [0.2, 0.9]]])
    with_zero = pem_reg_loss(pred, gt, valid, low_zero=True).item()
    without = pem_reg_loss(pred, gt, valid, low_zero=False).item()
    assert with_zero == pytest.approx(0.5 * (0.2**2 + 0.2**2) / 3, rel=1e-5)
    assert without == pytest.approx(0.5 * 0.2**2 / 2, rel=1e-5)  # the IoU-0 cell is in no group
    outputs = {"start": torch.full((1, 2), 0.5), "end": torch.full((1, 2), 0.5), "iou_map": pred.expand(2, 2, 2)[None]}
    targets = {"start": torch.tensor([1.0, 0.0]), "end": torch.tensor([0.0, 1.0]), "iou_map": gt[0]}
    _, parts = tal_loss(outputs, targets, pem_low_zero=False)
    assert parts["pem_reg"].item() == pytest.approx(without, rel=1e-6)


@pytest.mark.parametrize(
    ("config", "low_zero"), [("default", True), ("smoke", True), ("activitynet", False), ("hacs", False)]
)
def test_configs_choose_the_pem_low_group(config: str, low_zero: bool) -> None:
    from pathlib import Path

    from harness.experiment import load_experiment

    cfg = load_experiment(Path(__file__).resolve().parents[1] / "config" / f"{config}.yaml")
    assert cfg.head.pem_low_zero is low_zero


def test_perfect_predictions_beat_random_and_reproducible() -> None:
    t = make_targets_batch([[[2 / 8, 5 / 8]], [[0.1, 0.9], [0.0, 0.2]]], L8, L8)
    gen = torch.Generator().manual_seed(1)
    rand = {
        "start": torch.rand(2, L8, generator=gen),
        "end": torch.rand(2, L8, generator=gen),
        "iou_map": torch.rand(2, 2, L8, L8, generator=gen),
    }
    perfect, parts_p = tal_loss(_perfect_outputs(t), t, generator=torch.Generator().manual_seed(0))
    noisy, parts_r = tal_loss(rand, t, generator=torch.Generator().manual_seed(0))
    assert perfect.item() < noisy.item()
    assert parts_p["pem_reg"].item() == pytest.approx(0.0, abs=1e-9)  # regression to the exact IoU
    for key in ("tem", "pem_reg", "pem_cls"):
        assert parts_p[key].item() <= parts_r[key].item()
    again, _ = tal_loss(rand, t, generator=torch.Generator().manual_seed(0))
    assert again.item() == noisy.item()
    total = parts_r["tem"] + 10 * parts_r["pem_reg"] + parts_r["pem_cls"]
    assert noisy.item() == pytest.approx(total.item(), rel=1e-6)


def test_tal_loss_ignores_invalid_cells() -> None:
    t = make_targets_batch([[[0.25, 0.75]]], 6, 6)
    gen = torch.Generator().manual_seed(2)
    out = {
        "start": torch.rand(1, 6, generator=gen),
        "end": torch.rand(1, 6, generator=gen),
        "iou_map": torch.rand(1, 2, 6, 6, generator=gen),
    }
    changed = {k: v.clone() for k, v in out.items()}
    changed["iou_map"][:, :, ~valid_map_mask(6, 6)] = 0.99  # cells ending past the video
    a, parts_a = tal_loss(out, t, generator=torch.Generator().manual_seed(0))
    b, parts_b = tal_loss(changed, t, generator=torch.Generator().manual_seed(0))
    assert a.item() == b.item()
    assert parts_a["pem_cls"].item() == parts_b["pem_cls"].item()


def test_no_positive_targets_are_finite() -> None:
    t = make_targets_batch([[], []], 6, 6)  # no ground truth at all
    outputs = {
        "start": torch.full((2, 6), 0.3, requires_grad=True),
        "end": torch.full((2, 6), 0.3, requires_grad=True),
        "iou_map": torch.full((2, 2, 6, 6), 0.3, requires_grad=True),
    }
    total, parts = tal_loss(outputs, t)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert parts["tem"].item() == pytest.approx(-2 * 0.5 * math.log(0.7 + 1e-6), rel=1e-5)
    assert parts["pem_reg"].item() == 0.0  # no high cell → nothing sampled
    total.backward()
    assert all(torch.isfinite(o.grad).all() for o in outputs.values())
    # every anchor positive (no negatives) is finite as well
    assert torch.isfinite(tem_loss(torch.full((1, 4), 0.9), torch.ones(1, 4)))


def test_loss_rejects_mismatched_map() -> None:
    t = make_targets_batch([[[0.2, 0.5]]], 8, 4)
    with pytest.raises(ValueError, match="iou_map shapes differ"):
        tal_loss({"start": torch.rand(1, 8), "end": torch.rand(1, 8), "iou_map": torch.rand(1, 2, 8, 8)}, t)


# ----------------------------------------------------------------------------------------------------- decode


def _hand_outputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    start = np.array([0.1, 0.2, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1])  # candidates: 0 (forced), 2 (peak)
    end = np.array([0.1, 0.1, 0.1, 0.1, 0.2, 0.8, 0.2, 0.1])  # candidates: 5 (peak), 7 (forced) → e ∈ {5, 7, 8}
    iou_map = np.full((2, 8, 8), 0.5)
    iou_map[:, 2, 2] = 1.0  # cell (d=2, s=2) = [2, 5]/8
    return start, end, iou_map


def test_boundary_candidates_rule() -> None:
    start, end, _ = _hand_outputs()
    assert np.flatnonzero(boundary_candidates(start, always=0)).tolist() == [0, 2]
    assert np.flatnonzero(boundary_candidates(end, always=7)).tolist() == [5, 7]
    # > 0.5 · max makes a non-peak a candidate; edges only through that rule
    assert np.flatnonzero(boundary_candidates(np.array([0.9, 0.6, 0.7, 0.2]), always=0)).tolist() == [0, 1, 2]


def test_decode_hand_case() -> None:
    start, end, iou_map = _hand_outputs()
    props = decode_proposals(start, end, iou_map, 16.0)  # 2 s per snippet
    # (s, e) ∈ {0, 2} × {5, 7, 8}; score = start[s] · end[min(e, 7)] · reg · cls
    expected = {
        (4.0, 10.0): 0.9 * 0.8 * 1.0,
        (0.0, 10.0): 0.1 * 0.8 * 0.25,
        (4.0, 14.0): 0.9 * 0.1 * 0.25,
        (4.0, 16.0): 0.9 * 0.1 * 0.25,
        (0.0, 14.0): 0.1 * 0.1 * 0.25,
        (0.0, 16.0): 0.1 * 0.1 * 0.25,
    }
    assert props.shape == (6, 3)
    got = {(round(a, 9), round(b, 9)): c for a, b, c in props}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)
    assert props[0].tolist() == pytest.approx([4.0, 10.0, 0.72])
    assert np.all(np.diff(props[:, 2]) <= 0)  # sorted by score

    assert len(decode_proposals(start, end, iou_map, 16.0, include_video_end=False)) == 4  # BMN drops e = 8
    short = decode_proposals(start, end, iou_map[:, :3], 16.0)  # D = 3: only e - s <= 3
    assert short.shape == (1, 3) and short[0].tolist() == pytest.approx([4.0, 10.0, 0.72])
    assert decode_proposals(start, end, iou_map, 16.0, score="map")[0].tolist() == pytest.approx([4.0, 10.0, 1.0])


@pytest.mark.parametrize(
    ("segments", "L", "duration"),
    [([[2 / 8, 5 / 8]], 8, 80.0), ([[5 / 8, 1.0]], 8, 80.0), ([[0.125, 0.375], [0.5, 0.9375]], 16, 32.0)],
)
def test_round_trip_labels_to_proposals(segments: list[list[float]], L: int, duration: float) -> None:
    t = make_targets(segments, L, L)
    props = decode_proposals(t["start"], t["end"], torch.stack([t["iou_map"], t["iou_map"]]), duration)
    top = props[: len(segments)]
    expected = sorted((a * duration, b * duration) for a, b in segments)
    assert sorted((round(a, 6), round(b, 6)) for a, b, _ in top) == pytest.approx(expected)
    assert top[:, 2] == pytest.approx(1.0)
    assert np.all(props[len(segments) :, 2] < 1.0 - 1e-6)
