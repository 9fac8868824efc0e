"""The activation-memory meter: exact counts on known networks, no double counting, scaling, the bench command."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import heads
from encoders import create_encoder
from harness.bench.memory import measure_fidelities, measure_step_memory, track_saved_tensors
from harness.cli import main


class DummyHead(nn.Module):
    """A Conv1d producing the heads contract: start/end (B, L) and iou_map (B, 2, D, L)."""

    def __init__(self, in_features: int, temporal_length: int) -> None:
        super().__init__()
        self.temporal_length = temporal_length
        self.conv = nn.Conv1d(in_features, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = torch.sigmoid(self.conv(x))  # (B, 4, L)
        b, _, length = y.shape
        iou_map = y[:, 2:, None, :].expand(b, 2, length, length)
        return {"start": y[:, 0], "end": y[:, 1], "iou_map": iou_map}


def _dummy_create_head(name: str, *, in_features: int, temporal_length: int) -> DummyHead:
    return DummyHead(in_features, temporal_length)


def test_linear_saves_exactly_its_input() -> None:
    n, k = 7, 5
    layer = nn.Linear(k, 3)
    x = torch.rand(n, k, requires_grad=True)  # so the weight is saved too (for x's gradient), and excluded
    with track_saved_tensors(layer) as meter:
        loss = layer(x).sum()
    loss.backward()
    # addmm saves its input for the weight gradient and the weight for the input gradient; the weight is a
    # parameter, so only the input counts.
    assert meter.total_bytes() == n * k * 4
    assert len(meter.storages) == 1


def test_parameters_count_when_not_excluded() -> None:
    layer = nn.Linear(5, 3)
    with track_saved_tensors() as meter:  # no modules given: the weight is just another saved tensor
        layer(torch.rand(7, 5, requires_grad=True)).sum()
    assert meter.total_bytes() == 7 * 5 * 4 + 3 * 5 * 4


def test_views_of_one_storage_count_once() -> None:
    base = torch.rand(10, 4, requires_grad=True)
    with track_saved_tensors() as meter:
        h = base * 2  # a new 160-byte storage; mul by a constant saves nothing
        parts = [torch.sin(h[:5]), torch.sin(h[5:]), torch.sin(h.t()), torch.sin(h)]  # sin saves its input
        loss = sum(p.sum() for p in parts)
    loss.backward()
    assert meter.total_bytes() == 10 * 4 * 4
    assert len(meter.storages) == 1


def test_distinct_storages_add_up() -> None:
    a = torch.rand(6, requires_grad=True)
    with track_saved_tensors() as meter:
        b = torch.exp(a)  # saves its result b (24 bytes)
        c = torch.sin(b)  # saves b again: no new bytes
        d = torch.cos(c.double())  # saves the float64 copy of c (48 bytes)
    assert meter.total_bytes() == 6 * 4 + 6 * 8
    d.sum().backward()


def _step(batch: int, device: str = "cpu", snippets: int = 3, frames: int = 2, size: int = 32):
    torch.manual_seed(0)
    encoder = create_encoder("tsm_resnet_tiny")
    head = DummyHead(encoder.num_features, snippets)
    report = measure_step_memory(encoder, head, batch=batch, snippets=snippets, frames=frames, size=size, device=device)
    return report, encoder, head


def test_activation_bytes_are_linear_in_batch() -> None:
    one, _, _ = _step(batch=1)
    two, _, _ = _step(batch=2)
    assert one.activation_bytes > 0
    assert two.activation_bytes == pytest.approx(2 * one.activation_bytes, rel=0.01)
    assert one.peak_bytes is None  # peak is CUDA only
    assert one.param_bytes == 4 * sum(
        p.numel() for p in [*create_encoder("tsm_resnet_tiny").parameters(), *DummyHead(128, 3).parameters()]
    )


def test_grad_checkpointing_keeps_fewer_activations() -> None:
    plain, _, _ = _step(batch=1)
    torch.manual_seed(0)
    encoder = create_encoder("tsm_resnet_tiny", grad_checkpointing=True)
    ckpt = measure_step_memory(encoder, DummyHead(encoder.num_features, 3), batch=1, snippets=3, frames=2, size=32)
    # Only the stem (not checkpointed) and the four stage inputs stay; the stem dominates this tiny model.
    assert 0 < ckpt.activation_bytes < 0.8 * plain.activation_bytes
    assert ckpt.saved_storages < plain.saved_storages / 2
    assert ckpt.head_activation_bytes == plain.head_activation_bytes


def test_meta_device_counts_the_same_bytes_without_computing() -> None:
    cpu, _, _ = _step(batch=1, device="cpu")
    meta, _, _ = _step(batch=1, device="meta")
    assert meta.activation_bytes == cpu.activation_bytes
    assert meta.head_activation_bytes == cpu.head_activation_bytes
    assert meta.device == "meta"


def test_measuring_leaves_no_trace() -> None:
    torch.manual_seed(0)
    encoder = create_encoder("tsm_resnet_tiny")
    head = DummyHead(encoder.num_features, 3)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    measure_step_memory(encoder, head, batch=1, snippets=3, frames=2, size=32)
    after = encoder.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed == []  # BatchNorm running statistics restored, weights untouched
    assert all(p.grad is None for p in [*encoder.parameters(), *head.parameters()])


def test_fidelities_use_the_paper_ratios_and_encoder_memory_drops_4x(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads, "create_head", _dummy_create_head)
    reports = measure_fidelities("tsm_resnet_tiny", "dummy", batch=1, snippets=8, frames=2, size=32, device="meta")
    assert {k: (r.snippets, r.size) for k, r in reports.items()} == {
        "full": (8, 32),
        "S": (8, 16),
        "T": (2, 32),
        "ST": (4, 23),  # 32 / sqrt(2) = 22.6 -> 23
    }
    encoder_bytes = {k: r.activation_bytes - r.head_activation_bytes for k, r in reports.items()}
    # Encoder activations are per frame, so quartering the frames (T) quarters them, up to BatchNorm's per-channel
    # saved statistics, a fixed cost.
    assert encoder_bytes["T"] * 4 == pytest.approx(encoder_bytes["full"], rel=0.02)
    assert encoder_bytes["T"] * 4 > encoder_bytes["full"]
    assert encoder_bytes["S"] < encoder_bytes["full"] / 3


def test_bench_memory_cli_json_and_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(heads, "create_head", _dummy_create_head)
    common = ["bench", "memory", "--encoder", "tsm_resnet_tiny", "--head", "dummy", "--snippets", "8", "--size", "32"]
    assert main([*common, "--frames", "2", "--device", "meta", "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert list(numbers) == ["full", "S", "T", "ST"]
    assert all(isinstance(v, int) and 0 < v <= numbers["full"] for v in numbers.values())

    assert main([*common, "--frames", "2", "--device", "meta"]) == 0
    table = capsys.readouterr().out
    assert "activation MiB" in table and "ST" in table and "1.000" in table


def test_bench_memory_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "memory", "--encoder", "tsm_resnet_tiny", "--head", "gtad", "--snippets", "0", "--size", "32"]
    assert main([*args, "--frames", "1"]) == 2
    assert "--snippets must be >= 1" in capsys.readouterr().err


def test_row_memory_cache_gives_the_same_counts_without_building_the_encoder(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's activation memory (``run._memory``) from its per-shape cache equals the count itself, for every
    mode; a warm cache builds no encoder; a changed input (here the LoFi head) or a foreign file counts again."""
    import harness.pipeline.models as models
    from harness.experiment import load_experiment
    from harness.pipeline.plan import MODE_PLAN
    from harness.pipeline.run import _memory

    cfg = load_experiment("config/smoke.yaml")
    modes = [m for m in MODE_PLAN if m != "lofi-custom"]
    direct = {m: _memory(cfg, m) for m in modes}
    cache = tmp_path / "cache"
    assert {m: _memory(cfg, m, cache=cache) for m in modes} == direct  # cold: counted, then written
    assert len(list(cache.glob("*.json"))) == 4  # full, S, T, ST

    def no_encoder(*_a, **_k):
        raise AssertionError("a warm cache must not build the encoder")

    monkeypatch.setattr(models, "build_encoder", no_encoder)
    assert {m: _memory(cfg, m, cache=cache) for m in modes} == direct  # warm
    bmn = cfg.model_copy(update={"lofi": cfg.lofi.model_copy(update={"head": "bmn"})})
    with pytest.raises(AssertionError, match="warm cache"):
        _memory(bmn, "lofi-S", cache=cache)
    monkeypatch.undo()
    for f in cache.glob("*.json"):
        f.write_text('{"activation_bytes": 1}')  # not ours: ignored, counted again, rewritten
    assert _memory(cfg, "lofi-long", cache=cache) == direct["lofi-long"]
