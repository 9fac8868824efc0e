"""`lofi.bn_recalibrate` / mode lofi-S+bn: BatchNorm statistics re-estimated at full fidelity after the LoFi stage
(harness.pipeline.features.recalibrate_batchnorm) and where the plan puts it (harness.pipeline.plan)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encoders import create_encoder
from harness.experiment import load_experiment
from harness.pipeline.features import recalibrate_batchnorm
from harness.pipeline.plan import Planner, features_mode, plan_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "smoke.yaml"
BN = torch.nn.modules.batchnorm._BatchNorm


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    enc = create_encoder("tsm_resnet_tiny")
    with torch.no_grad():  # running statistics as a low-resolution LoFi stage might have left them
        for m in enc.modules():
            if isinstance(m, BN):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return enc.eval()


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(2, 2, 2, 3, 48, 48, generator=g) for _ in range(3)]  # (B, L, F, 3, H, W), equal sizes


def _independent_stats(probe: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per BatchNorm layer of ``probe`` (a copy of the encoder): the mean over batches of the per-channel mean and
    unbiased variance of the layer's input in a train-mode forward (what a cumulative average of the batches'
    statistics must give), computed in float64 from forward hooks."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    hooks = []
    for name, m in probe.named_modules():
        if isinstance(m, BN):

            def hook(mod, inputs, _out, name=name):
                x = inputs[0].double().transpose(0, 1).reshape(inputs[0].shape[1], -1)  # (C, N·H·W)
                seen.setdefault(name, []).append((x.mean(dim=1), x.var(dim=1, unbiased=True)))

            hooks.append(m.register_forward_hook(hook))
    probe.train()
    with torch.no_grad():
        for x in batches:
            probe(x)
    for h in hooks:
        h.remove()
    return {
        name: (torch.stack([s[0] for s in v]).mean(0), torch.stack([s[1] for s in v]).mean(0))
        for name, v in seen.items()
    }


def test_recalibration_gives_the_full_fidelity_statistics_and_keeps_the_weights() -> None:
    enc, batches = _encoder(), _batches()
    expected = _independent_stats(_encoder(), batches)  # a copy with the same weights, the same inputs
    weights = {k: v.clone() for k, v in enc.named_parameters()}
    momenta = [m.momentum for m in enc.modules() if isinstance(m, BN)]
    assert recalibrate_batchnorm(enc, batches) == len(batches)
    assert not enc.training  # the mode it came in with
    layers = dict((n, m) for n, m in enc.named_modules() if isinstance(m, BN))
    assert layers.keys() == expected.keys() and len(layers) > 10
    for name, m in layers.items():
        mean, var = expected[name]
        assert torch.allclose(m.running_mean.double(), mean, atol=1e-5, rtol=1e-4), name
        assert torch.allclose(m.running_var.double(), var, atol=1e-5, rtol=1e-4), name
        assert int(m.num_batches_tracked) == len(batches)
    assert [m.momentum for m in layers.values()] == momenta
    for k, v in enc.named_parameters():
        assert torch.equal(v, weights[k]), k


def test_recalibration_is_deterministic_and_independent_of_the_old_statistics() -> None:
    a, b = _encoder(), _encoder()
    with torch.no_grad():
        for m in b.modules():
            if isinstance(m, BN):
                m.running_mean.fill_(5.0)  # other stale statistics: reset before re-estimating
    recalibrate_batchnorm(a, _batches())
    recalibrate_batchnorm(b, _batches())
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_no_batches_change_nothing() -> None:
    enc = _encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    assert recalibrate_batchnorm(enc, []) == 0
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())


def _stages(mode: str, *overrides: str) -> dict[str, object]:
    cfg = load_experiment(SMOKE, list(overrides))
    return {s.kind: s for s in plan_run(cfg, mode=mode, seed=0, run_dir=Path("/r"), stages_root=Path("/st")).stages}


def test_the_bn_row_shares_the_lofi_stage_and_has_its_own_features() -> None:
    plain, bn = _stages("lofi-S"), _stages("lofi-S+bn")
    assert plain["lofi"].key == bn["lofi"].key  # one LoFi training for both rows
    assert plain["features"].key != bn["features"].key
    assert plain["features"].folder != bn["features"].folder
    assert bn["features"].folder == Path("/st/features/lofi-Splusbn/seed0")
    assert features_mode(bn["features"]) == "lofi-S+bn" and features_mode(plain["features"]) == "lofi-S"


@pytest.mark.parametrize("mode", ["lofi-S", "lofi-long", "acp", "e2e-full"])
def test_the_option_changes_only_the_features_of_lofi_encoders(mode: str) -> None:
    off, on = _stages(mode), _stages(mode, "lofi.bn_recalibrate=true")
    changed = {k for k in off if off[k].key != on[k].key}  # type: ignore[attr-defined]
    lofi_encoder = mode != "acp"
    assert changed == ({"features", "head"} if lofi_encoder else set())
    if mode == "lofi-S":  # the option on lofi-S plans exactly the lofi-S+bn features
        assert on["features"].key == _stages("lofi-S+bn")["features"].key  # type: ignore[attr-defined]


def test_the_option_off_leaves_the_feature_keys_of_the_plain_modes_alone() -> None:
    # bn_recalibrate is not among what a features stage reads unless it is on
    cfg = load_experiment(SMOKE)
    stage = Planner(cfg, Path("/st")).features("lofi-S", 0)
    assert stage.variant == "lofi-S"
