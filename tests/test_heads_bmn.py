"""BMN head: shapes at any L, the boundary-matching sampling weights against BMN's construction, training signal."""

from __future__ import annotations

import math

import pytest
import torch

from heads import create_head, list_heads
from heads.bmn import BMN, get_bm_sampler
from heads.labels import make_targets_batch
from heads.losses import tal_loss

SMALL = dict(hidden=16, num_sample=4, num_sample_perbin=3, hidden_2d=8, hidden_3d=12)


def _bmn_reference_mask(L: int, D: int, num_sample: int, per_bin: int, ratio: float) -> torch.Tensor:
    """BMN's `_get_interp1d_mask`, written as plain loops: dense (T, N, D, S) float64."""
    mask = torch.zeros(L, num_sample, D, L, dtype=torch.float64)
    for s in range(L):
        for d in range(D):
            if s + d >= L:
                continue
            center_len = d + 1.0
            lo = s - center_len * ratio
            hi = s + d + center_len * ratio
            step = (hi - lo) / (num_sample * per_bin - 1.0)
            points = [lo + step * i for i in range(num_sample * per_bin)]
            for n in range(num_sample):
                for x in points[n * per_bin : (n + 1) * per_bin]:
                    frac, down = math.modf(x)
                    up = math.ceil(x)
                    if 0 <= int(down) <= L - 1:
                        mask[int(down), n, d, s] += (1 - frac) / per_bin
                    if 0 <= int(up) <= L - 1:
                        mask[int(up), n, d, s] += frac / per_bin
    return mask


@pytest.mark.parametrize(("L", "D", "N", "k"), [(7, 7, 5, 3), (9, 4, 3, 2), (5, 5, 32, 3)])
def test_compact_mask_equals_bmn_dense_construction(L: int, D: int, N: int, k: int) -> None:
    sampler = get_bm_sampler(L, D, num_sample=N, num_sample_perbin=k, prop_boundary_ratio=0.5)
    dense = sampler.to_dense().double()
    assert dense.shape == (L, N, D, L)
    torch.testing.assert_close(dense, _bmn_reference_mask(L, D, N, k, 0.5), atol=1e-6, rtol=0)
    assert sampler.nbytes < L * N * D * L * 4  # stored smaller than BMN's dense float32 mask


def test_sampling_weights_hand_case() -> None:
    # L = 4, N = 2 samples, k = 2 points per bin, ratio 0.5 → 4 points per proposal.
    w = get_bm_sampler(4, 4, num_sample=2, num_sample_perbin=2, prop_boundary_ratio=0.5).to_dense()  # (T,N,D,S)
    # (s=1, d=0): span [0.5, 1.5], points 0.5, 5/6, 7/6, 1.5.
    # bin 0 = mean(interp(0.5), interp(5/6)) → t0: (1/2 + 1/6)/2 = 1/3, t1: (1/2 + 5/6)/2 = 2/3
    # bin 1 = mean(interp(7/6), interp(1.5)) → t1: (5/6 + 1/2)/2 = 2/3, t2: (1/6 + 1/2)/2 = 1/3
    torch.testing.assert_close(w[:, 0, 0, 1], torch.tensor([1 / 3, 2 / 3, 0, 0]))
    torch.testing.assert_close(w[:, 1, 0, 1], torch.tensor([0, 2 / 3, 1 / 3, 0]))
    assert w[:, :, 0, 1].sum(0).tolist() == pytest.approx([1.0, 1.0])  # inside the video: sums to 1
    # (s=0, d=1): span [-1, 2], points -1, 0, 1, 2: -1 falls outside (weight lost), 0 → t0
    torch.testing.assert_close(w[:, 0, 1, 0], torch.tensor([0.5, 0, 0, 0]))
    torch.testing.assert_close(w[:, 1, 1, 0], torch.tensor([0, 0.5, 0.5, 0]))
    # (s=0, d=0): span [-0.5, 0.5]; BMN's modf truncates towards zero, so -0.5 and -1/6 weigh 1 on t0
    torch.testing.assert_close(w[:, 0, 0, 0], torch.tensor([1.0, 0, 0, 0]))
    torch.testing.assert_close(w[:, 1, 0, 0], torch.tensor([2 / 3, 1 / 3, 0, 0]))
    # (s=3, d=0): span [2.5, 3.5]; the right edge fades out: bin 1 keeps (5/6 + 1/2)/2 on t3
    torch.testing.assert_close(w[:, 1, 0, 3], torch.tensor([0, 0, 0, 2 / 3]))
    # invalid cell (s=2, d=2) ends past the video: no weights
    assert w[:, :, 2, 2].abs().sum().item() == 0


def test_sampler_is_cached() -> None:
    a = get_bm_sampler(11, 6, num_sample=4, num_sample_perbin=3)
    assert get_bm_sampler(11, 6, num_sample=4, num_sample_perbin=3) is a
    assert get_bm_sampler(11, 5, num_sample=4, num_sample_perbin=3) is not a
    model = BMN(in_features=8, temporal_length=11, max_duration=6, **SMALL)
    assert model.sampler(11, "cpu") is a


@pytest.mark.parametrize(("L", "max_duration", "D"), [(8, None, 8), (16, None, 16), (25, 10, 10), (8, 10, 8)])
def test_output_shapes_and_ranges(L: int, max_duration: int | None, D: int) -> None:
    torch.manual_seed(0)
    model = BMN(in_features=20, temporal_length=16, max_duration=max_duration, **SMALL)  # L may differ
    out = model(torch.randn(3, 20, L))
    assert out["start"].shape == (3, L) and out["end"].shape == (3, L)
    assert out["iou_map"].shape == (3, 2, D, L)
    assert model.map_duration(L) == D
    for value in out.values():
        assert not torch.isnan(value).any()
        assert value.min().item() >= 0.0 and value.max().item() <= 1.0


def test_default_sizes_and_registry() -> None:
    assert "bmn" in list_heads()
    torch.manual_seed(0)
    model = create_head("bmn", in_features=30, temporal_length=12)  # 30 % 4 != 0 → first conv ungrouped
    assert isinstance(model, BMN)
    assert model.pem_3d.weight.shape == (512, 256, 32, 1, 1)  # BMN's x_3d_p
    out = model(torch.randn(1, 30, 12))
    assert out["iou_map"].shape == (1, 2, 12, 12)


def test_fused_sampling_equals_explicit_bm_layer_and_conv3d() -> None:
    torch.manual_seed(0)
    model = BMN(in_features=12, temporal_length=9, max_duration=6, **SMALL).double()
    feats = torch.randn(2, 16, 9, dtype=torch.float64)
    explicit = torch.relu(model.pem_3d(model.boundary_matching(feats)).squeeze(2))  # BMN's order of operations
    fused = model._proposal_features(feats)
    assert fused.shape == (2, 12, 6, 9)
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-6)


def test_same_seed_same_output() -> None:
    x = torch.randn(2, 16, 10)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(BMN(in_features=16, temporal_length=10, **SMALL)(x))
    for key in ("start", "end", "iou_map"):
        assert torch.equal(outs[0][key], outs[1][key])


def test_every_parameter_gets_a_gradient_from_tal_loss() -> None:
    torch.manual_seed(0)
    L = 12
    model = BMN(in_features=16, temporal_length=L, max_duration=8, **SMALL)
    out = model(torch.randn(2, 16, L))
    targets = make_targets_batch([[[0.2, 0.5]], [[0.1, 0.3], [0.6, 0.9]]], L, model.map_duration(L))
    total, _ = tal_loss(out, targets, generator=torch.Generator().manual_seed(0))
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum().item() > 0, name
