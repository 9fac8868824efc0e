"""G-TAD head: Align1D by hand, k-NN graph against brute force, output contract, gradients, determinism."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from heads.graph import GCNeXt, gather_neighbours, knn_indices
from heads.gtad import GTAD, SGAlign, align1d, gtad_anchor_regions


def _model(in_features: int = 32, temporal_length: int = 16, seed: int = 0, **kwargs: object) -> GTAD:
    torch.manual_seed(seed)
    # Narrow widths keep the tests fast; the structure is the published one.
    return GTAD(in_features, temporal_length, hidden=64, groups=8, hidden_3d=32, hidden_2d=16, **kwargs)


# --- Align1D ------------------------------------------------------------------------------------------------------

# x[i] = 10 + i on L = 8, so a sample at t in [0, 7] reads 10 + t; t in [-1, 0] reads 10 (clamped); t in [7, 8]
# reads 17; t outside [-1, 8] reads 0 but still counts in its bin's average.
ALIGN_CASES = [
    # region, resolution, sampling_ratio, expected bins (worked out by hand)
    ((1.0, 3.0), 2, 0, [11.5, 12.5]),  # span 2, bin 1, grid 1: t = 1.5, 2.5
    ((1.0, 4.0), 4, 0, [11.375, 12.125, 12.875, 13.625]),  # bin 0.75, grid 1: t = 1.375 + 0.75 p
    ((-0.5, 0.5), 4, 0, [10.0, 10.0, 10.125, 10.375]),  # t = -0.375, -0.125 clamp to 0
    ((-3.0, 1.0), 2, 2, [0.0, 10.25]),  # bin 0: t = -2.5, -1.5 (both out); bin 1: t = -0.5 (→10), 0.5 (10.5)
    ((6.0, 9.0), 3, 2, [16.5, 17.0, 0.0]),  # 6.25, 6.75 | 7.25, 7.75 → 17 | 8.25, 8.75 > L → 0
    ((0.0, 6.0), 2, 0, [11.5, 14.5]),  # adaptive grid ceil(6 / 2) = 3: 0.5, 1.5, 2.5 | 3.5, 4.5, 5.5
    ((2.0, 2.0), 2, 0, [12.25, 12.75]),  # empty region forced to length 1: [2, 3]
]


@pytest.mark.parametrize(("region", "resolution", "ratio", "expected"), ALIGN_CASES)
def test_align1d_matches_hand_worked_values(
    region: tuple[float, float], resolution: int, ratio: int, expected: list[float]
) -> None:
    x = (10.0 + torch.arange(8, dtype=torch.float64)).view(1, 1, 8)
    out = align1d(x, torch.tensor([region], dtype=torch.float64), resolution=resolution, sampling_ratio=ratio)
    assert out.shape == (1, 1, 1, resolution)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(expected, dtype=torch.float64))


def test_align1d_interpolates_linearly_between_snippets() -> None:
    # x[i] = i^2 is not linear, so this checks the interpolation weights, not just the sample positions:
    # region [1, 4], 4 bins, t = 1.375: 1 + 0.375 * (4 - 1) = 2.125; t = 2.125: 4 + 0.125 * 5 = 4.625;
    # t = 2.875: 4 + 0.875 * 5 = 8.375; t = 3.625: 9 + 0.625 * 7 = 13.375.
    x = (torch.arange(8, dtype=torch.float64) ** 2).view(1, 1, 8)
    out = align1d(x, torch.tensor([[1.0, 4.0]], dtype=torch.float64), resolution=4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([2.125, 4.625, 8.375, 13.375], dtype=torch.float64))


def test_anchor_regions_expand_by_half_the_proposal_length() -> None:
    regions = gtad_anchor_regions(8, 8, 0.5).view(8, 8, 2)  # (d, s)
    # s = 2, d = 1: snippets 2..3, n = 2 -> [2 - 1, 3 + 1]
    torch.testing.assert_close(regions[1, 2], torch.tensor([1.0, 4.0], dtype=torch.float64))
    # s = 0, d = 0: [-0.5, 0.5]; s = 5, d = 4 ends past L = 8 -> dummy [0, 0]
    torch.testing.assert_close(regions[0, 0], torch.tensor([-0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(regions[4, 5], torch.tensor([0.0, 0.0], dtype=torch.float64))


def test_sgalign_places_one_anchor_by_hand() -> None:
    # Two channels, inner stream x[c, i] = 100 c + i, context stream 1000 + 100 c + i; L = 8, 32 + 4 bins.
    length = 8
    idx = torch.arange(length, dtype=torch.float64)
    inner = torch.stack((idx, 100.0 + idx)).unsqueeze(0)
    context = inner + 1000.0
    out = SGAlign(max_duration=None)(inner, context)
    assert out.shape == (1, 2 * 36, length, length)
    cell = out[0, :, 1, 2].view(2, 36)  # proposal starting at snippet 2 lasting 2 snippets, channel c·36 + p
    # Region [1, 4]: 32 inner bins of width 3/32, one point each at 1 + (p + 0.5) · 3/32.
    inner_expected = 1.0 + (torch.arange(32, dtype=torch.float64) + 0.5) * 3.0 / 32.0
    context_expected = torch.tensor([1.375, 2.125, 2.875, 3.625], dtype=torch.float64) + 1000.0
    for c in range(2):
        torch.testing.assert_close(cell[c, :32], inner_expected + 100.0 * c)
        torch.testing.assert_close(cell[c, 32:], context_expected + 100.0 * c)


def test_sgalign_clips_duration_to_the_input_length() -> None:
    align = SGAlign(max_duration=10)
    assert align(torch.zeros(1, 3, 25), torch.zeros(1, 3, 25)).shape == (1, 3 * 36, 10, 25)
    assert align(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8)).shape == (1, 3 * 36, 8, 8)


# --- k-NN graph ---------------------------------------------------------------------------------------------------


def test_knn_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 12, generator=gen, dtype=torch.float64)
    k = 4
    idx = knn_indices(x, k)
    assert idx.shape == (2, 12, k)
    for b, i in itertools.product(range(2), range(12)):
        dists = [float(((x[b, :, i] - x[b, :, j]) ** 2).sum()) for j in range(12)]
        reference = sorted(range(12), key=lambda j: dists[j])[:k]
        assert idx[b, i].tolist() == reference, (b, i)
        assert idx[b, i, 0].item() == i  # nearest is itself


def test_knn_clips_k_to_length() -> None:
    assert knn_indices(torch.randn(1, 4, 2), 3).shape == (1, 2, 2)


def test_gather_neighbours_by_hand() -> None:
    x = torch.tensor([[[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]])  # (1, 2, 3)
    idx = torch.tensor([[[2, 0], [1, 1], [0, 2]]])
    out = gather_neighbours(x, idx)
    expected = torch.tensor([[[[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]], [[30.0, 10.0], [20.0, 20.0], [10.0, 30.0]]]])
    torch.testing.assert_close(out, expected)


def test_gcnext_semantic_branch_sees_feature_space_neighbours() -> None:
    # Snippets 0 and 3 are identical and far from 1, 2: with k = 2 each one's semantic neighbours are {itself, the
    # other}, so swapping the time order of 1 and 2 cannot change the semantic output at 0 and 3. Zeroing the
    # temporal branch's last conv isolates the semantic branch.
    torch.manual_seed(0)
    block = GCNeXt(4, k=2, groups=2, width_per_group=2)
    with torch.no_grad():
        block.temporal[-1].weight.zero_()
        block.temporal[-1].bias.zero_()
    a, b, c = torch.tensor([5.0, 5, 5, 5]), torch.tensor([0.0, 1, 0, 0]), torch.tensor([0.0, 0, 1, 0])
    x1 = torch.stack((a, b, c, a), dim=1).unsqueeze(0)
    x2 = torch.stack((a, c, b, a), dim=1).unsqueeze(0)
    y1, y2 = block(x1), block(x2)
    torch.testing.assert_close(y1[..., [0, 3]], y2[..., [0, 3]])
    torch.testing.assert_close(y1[..., 0], y1[..., 3])


# --- the head -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [8, 16, 25])
def test_forward_contract(length: int) -> None:
    model = _model(temporal_length=length)
    out = model(torch.randn(2, 32, length))
    assert out["start"].shape == (2, length) and out["end"].shape == (2, length)
    assert out["iou_map"].shape == (2, 2, length, length)
    for value in out.values():
        assert torch.isfinite(value).all()
        assert value.min() >= 0.0 and value.max() <= 1.0


def test_max_duration_and_changing_length_on_one_module() -> None:
    model = _model(temporal_length=25, max_duration=12)
    for length in (25, 8, 16, 25):
        out = model(torch.randn(2, 32, length))
        assert out["iou_map"].shape == (2, 2, min(12, length), length)
        assert out["start"].shape == (2, length)
    # The second pass at L = 25 reuses the cached alignment and gives the same numbers as a fresh module.
    x = torch.randn(2, 32, 25)
    fresh = _model(temporal_length=25, max_duration=12)
    torch.testing.assert_close(model(x)["iou_map"], fresh(x)["iou_map"])


def test_every_parameter_gets_a_gradient() -> None:
    model = _model(temporal_length=8)
    out = model(torch.randn(2, 32, 8))
    sum(v.sum() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_same_seed_same_outputs() -> None:
    x = torch.randn(2, 32, 16)
    a, b = _model(seed=7)(x), _model(seed=7)(x)
    c = _model(seed=8)(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.allclose(a["iou_map"], c["iou_map"])


def test_fused_projection_equals_materialised_alignment() -> None:
    model = _model(temporal_length=16, max_duration=10).double()
    x = torch.randn(2, 32, 16, dtype=torch.float64)
    plain = model(x)
    model.fused_projection = True
    fused = model(x)
    torch.testing.assert_close(fused["iou_map"], plain["iou_map"])
    fused["iou_map"].sum().backward()  # gradients flow through the fused path too
    assert model.backbone2.temporal[0].weight.grad is not None


def test_tiny_length_below_k() -> None:
    out = _model(temporal_length=2)(torch.randn(1, 32, 2))
    assert out["iou_map"].shape == (1, 2, 2, 2)


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        GTAD(30, 8)
    with pytest.raises(ValueError, match=r"\(B, 32, L\)"):
        _model()(torch.randn(2, 16, 8))


def _published_count(*, kern_2d: int, samples: int = 36, feat_dim: int = 400) -> int:
    """G-TAD's parameters counted from the layer shapes of the published ``gtad_lib/models.py`` (branch ``anet``):
    feat_dim 400, h_dim_1d 256, h_dim_2d 128, h_dim_3d 512, GCNeXt bottleneck 32 groups × 4 = 128, goi_style 1
    (h_dim_goi = 256 × (32 + 4)), localisation convs ``kernel_size=kern_2d``."""
    conv_in = feat_dim // 4 * 3 * 256 + 256
    temporal = (256 * 128 + 128) + (4 * 3 * 128 + 128) + (128 * 256 + 256)
    semantic = (512 * 128 + 128) + (4 * 128 + 128) + (128 * 256 + 256)
    heads = 2 * (256 + 1)
    localisation = (
        (256 * samples * 512 + 512) + (512 * 128 + 128) + 2 * (128 * 128 * kern_2d * kern_2d + 128) + (128 * 2 + 2)
    )
    return conv_in + 4 * (temporal + semantic) + heads + localisation


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_of_the_published_activitynet_network() -> None:
    # The official ActivityNet (and HACS) settings: kern_2d = 1, pad_2d = 0 (opts.py of branches anet and hacs).
    assert _published_count(kern_2d=1) == 5_563_268
    assert _count(GTAD(400, 100)) == 5_563_268  # the class's and the registry's default
    from heads import create_head

    assert _count(create_head("gtad", in_features=400, temporal_length=100)) == 5_563_268
    # THUMOS-14's settings (branch master: kern_2d = 3, pad_2d = 1) and this project's synthetic default
    assert _count(GTAD(400, 100, kernel_2d=3)) == _published_count(kern_2d=3) == 5_825_412
    # The 9,495,428 in the master branch's summary comment: 3×3 localisation and 64 samples per anchor.
    wide = GTAD(400, 100, inner_samples=32, context_samples=32, kernel_2d=3)
    assert _count(wide) == _published_count(kern_2d=3, samples=64) == 9_495_428


@pytest.mark.parametrize(("config", "kernel"), [("activitynet", 1), ("hacs", 1), ("thumos14", 3), ("default", 3)])
def test_config_sets_the_published_localisation_kernel(config: str, kernel: int) -> None:
    from harness.experiment import load_experiment
    from harness.pipeline.models import build_head

    cfg = load_experiment(Path(__file__).resolve().parents[1] / "config" / f"{config}.yaml")
    assert cfg.head.kernel_2d == kernel
    head = build_head(cfg, "gtad", in_features=16, temporal_length=8)
    convs = [m for m in head.proposal if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (1, 1), (kernel, kernel), (kernel, kernel), (1, 1)]
    assert [c.padding for c in convs[2:4]] == [((kernel - 1) // 2,) * 2] * 2
    if config in ("activitynet", "hacs"):  # the published network at the published input width
        assert _count(build_head(cfg, "gtad", in_features=400, temporal_length=100)) == 5_563_268


def test_even_localisation_kernel_is_refused() -> None:
    from harness.config import ConfigError, from_dict
    from harness.experiment import ExperimentConfig

    with pytest.raises(ValueError, match="must be odd"):
        GTAD(16, 8, kernel_2d=2)
    with pytest.raises(ConfigError, match=r"head\.kernel_2d = 2: even .*use an odd kernel"):
        from_dict(ExperimentConfig, {"head": {"kernel_2d": 2}})


def test_registered() -> None:
    from heads import create_head, list_heads

    assert "gtad" in list_heads()
    kw = dict(temporal_length=8, hidden=32, groups=8, hidden_3d=16, hidden_2d=8)
    torch.manual_seed(0)
    model = create_head("gtad", in_features=16, **kw)
    torch.manual_seed(0)
    direct = GTAD(16, **kw)
    # the registered builder binds the same defaults as the class: same parameters, same outputs
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in direct.named_parameters()]
    x = torch.randn(1, 16, 8)
    got, want = model(x), direct(x)
    assert got["iou_map"].shape == (1, 2, 8, 8)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_sparse_and_dense_alignment_maps_agree(monkeypatch):
    """Small maps are stored dense for speed; the sparse path (used at L = 100) must give the same outputs."""
    import heads.gtad as gtad_module

    torch.manual_seed(0)
    x = torch.randn(2, 32, 12, dtype=torch.float64)
    outs = []
    for dense_max in (0, gtad_module._DENSE_MAX):
        monkeypatch.setattr(gtad_module, "_DENSE_MAX", dense_max)
        for fused in (False, True):
            torch.manual_seed(1)
            model = gtad_module.GTAD(32, 12, hidden=32, inner_samples=8, fused_projection=fused).double()
            outs.append(model(x))
    for other in outs[1:]:
        for k in ("start", "end", "iou_map"):
            torch.testing.assert_close(outs[0][k], other[k], rtol=1e-9, atol=1e-12)
