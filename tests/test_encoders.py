"""TSM encoders: shapes, gradients, determinism, the temporal shift itself, options, and weight loading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from encoders import create_encoder, encoder_num_features, list_encoders
from encoders.tsm import TemporalShift, TSMEncoder, temporal_shift
from encoders.weights import WeightsError, create_timm_backbone, load_backbone_checkpoint
from harness.errors import ConfigError, LofiError

EXPECTED_DIMS = {
    "tsm_resnet18": 512,
    "tsm_resnet34": 512,
    "tsm_resnet50": 2048,
    "tsm_resnet_mini": 256,
    "tsm_resnet_tiny": 128,
}


def _video(b: int, l: int, f: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, l, f, 3, h, w), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_every_variant() -> None:
    assert list_encoders() == sorted(EXPECTED_DIMS)
    assert list_encoders("tsm_resnet_*") == ["tsm_resnet_mini", "tsm_resnet_tiny"]


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_every_encoder_shapes_gradients_and_determinism(name: str) -> None:
    torch.manual_seed(0)
    encoder = create_encoder(name)
    assert encoder.num_features == EXPECTED_DIMS[name] == encoder_num_features(name)  # the declared width
    x = _video(1, 2, 2, 32, 32)
    out = encoder(x)
    assert out.shape == (1, 2, EXPECTED_DIMS[name])
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []

    torch.manual_seed(0)
    again = create_encoder(name)  # same seed -> same weights -> same training-mode output
    torch.testing.assert_close(again(x), out, rtol=0, atol=0)


@pytest.mark.parametrize(("b", "l", "f", "h", "w"), [(2, 1, 1, 32, 32), (1, 5, 3, 45, 45), (2, 3, 2, 40, 64)])
def test_tiny_encoder_any_length_and_frame_size(b: int, l: int, f: int, h: int, w: int) -> None:
    encoder = create_encoder("tsm_resnet_tiny")
    out = encoder(_video(b, l, f, h, w))
    assert out.shape == (b, l, encoder.num_features)
    assert torch.isfinite(out).all()


def test_rejects_wrong_input_rank() -> None:
    with pytest.raises(ValueError, match=r"\(B, L, F, 3, H, W\)"):
        create_encoder("tsm_resnet_tiny")(torch.rand(2, 3, 32, 32))


def test_temporal_shift_hand_worked() -> None:
    # 8 channels, shift_div 4 -> fold 2: channels 0-1 read frame t+1, channels 2-3 read frame t-1, 4-7 stay.
    t_frames, channels = 3, 8
    x = torch.zeros(t_frames, channels, 1, 1)
    for t in range(t_frames):
        for c in range(channels):
            x[t, c] = 10 * (t + 1) + c  # value encodes (frame, channel)
    out = temporal_shift(x, n_segment=3, shift_div=4)[:, :, 0, 0]
    expected = torch.tensor(
        [
            [20, 21, 0, 0, 14, 15, 16, 17],  # frame 0: ch 0-1 from frame 1, ch 2-3 have no past -> 0
            [30, 31, 12, 13, 24, 25, 26, 27],  # frame 1: ch 0-1 from frame 2, ch 2-3 from frame 0
            [0, 0, 22, 23, 34, 35, 36, 37],  # frame 2: no future -> 0, ch 2-3 from frame 1
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_temporal_shift_groups_do_not_leak() -> None:
    # Two groups of 2 frames: frame 1 must not read frame 2 (next group), frame 2 must not read frame 1.
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 8, 1, 1).contiguous() + 1
    out = temporal_shift(x, n_segment=2, shift_div=8)[:, :, 0, 0]
    assert out[:, 0].tolist() == [2, 0, 4, 0]  # channel 0 reads t+1 within the group
    assert out[:, 1].tolist() == [0, 1, 0, 3]  # channel 1 reads t-1 within the group
    assert out[:, 2:].eq(x[:, 2:, 0, 0]).all()


def _first_shift(encoder: TSMEncoder) -> TemporalShift:
    return encoder.backbone.layer1[0].conv1


def _captured_shift_inputs(encoder: TSMEncoder, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    seen: dict[str, object] = {}

    def hook(module: TemporalShift, args: tuple[torch.Tensor]) -> None:
        seen["n_segment"] = module._context.n_segment
        seen["input"] = args[0].detach().clone()

    handle = _first_shift(encoder).register_forward_pre_hook(hook)
    encoder(x)
    handle.remove()
    return seen["n_segment"], seen["input"]  # type: ignore[return-value]


@pytest.mark.parametrize(("shift_over", "group"), [("snippet", 3), ("video", 12)])
def test_shift_over_sets_the_group_length(shift_over: str, group: int) -> None:
    encoder = create_encoder("tsm_resnet_tiny", shift_over=shift_over).eval()
    n_segment, _ = _captured_shift_inputs(encoder, _video(2, 4, 3, 32, 32))
    assert n_segment == group
    assert _first_shift(encoder)._context.n_segment is None  # only set while a stage runs


def test_snippet_mode_keeps_snippets_independent_video_mode_does_not() -> None:
    x = _video(1, 3, 2, 32, 32)
    changed = x.clone()
    changed[:, 2] = torch.rand_like(changed[:, 2])  # alter only the last snippet
    for shift_over, first_two_equal in (("snippet", True), ("video", False)):
        torch.manual_seed(0)
        encoder = create_encoder("tsm_resnet_tiny", shift_over=shift_over).eval()
        # timm zero-initialises each block's last BatchNorm, which silences the residual branch (and with it the
        # shift) at initialisation; give the branches a non-zero scale as trained weights have.
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
        with torch.no_grad():
            a, b = encoder(x), encoder(changed)
        assert torch.equal(a[:, :2], b[:, :2]) is first_two_equal, shift_over
        assert not torch.allclose(a[:, 2], b[:, 2])


def test_invalid_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="shift_over"):
        create_encoder("tsm_resnet_tiny", shift_over="clip")
    with pytest.raises(ConfigError, match="shift_div"):
        create_encoder("tsm_resnet_tiny", shift_div=1)


@pytest.mark.parametrize("option", ["channels_last", "grad_checkpointing"])
def test_options_give_the_same_outputs_and_gradients(option: str) -> None:
    x = _video(1, 2, 3, 40, 40)
    results = []
    for enabled in (False, True):
        torch.manual_seed(0)
        encoder = create_encoder("tsm_resnet_tiny", **{option: enabled})
        out = encoder(x)
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters()}
        results.append((out.detach(), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_grad_checkpointing_recomputes_with_the_right_group_length() -> None:
    # Two forwards with different group lengths before the first backward: recompute must use its own length.
    torch.manual_seed(0)
    reference = create_encoder("tsm_resnet_tiny", shift_over="video")
    torch.manual_seed(0)
    checkpointed = create_encoder("tsm_resnet_tiny", shift_over="video", grad_checkpointing=True)
    x = _video(1, 3, 2, 32, 32)
    out_ref = reference(x)
    out_ref.sum().backward()
    out_ckpt = checkpointed(x)
    checkpointed(_video(1, 2, 1, 32, 32)).sum()  # another group length in between, never backpropagated
    out_ckpt.sum().backward()
    for (name, p_ref), p_ckpt in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p_ckpt.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_normalisation_is_imagenet_mean_std() -> None:
    encoder = create_encoder("tsm_resnet_tiny").eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 1, 3, 1, 1)
    _, shifted_input = _captured_shift_inputs(encoder, mean.expand(1, 1, 1, 3, 8, 8).clone())
    # An ImageNet-mean image is all zeros after normalisation; bias-free convs + BN keep the stem's output constant
    # per channel, so the first block sees a spatially constant map.
    assert torch.allclose(shifted_input, shifted_input[..., :1, :1].expand_as(shifted_input), atol=1e-5)
    assert "mean" not in encoder.state_dict()


# --- weights -------------------------------------------------------------------------------------------------


def _tiny_backbone(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_encoder("tsm_resnet_tiny").backbone


def _tsm_authors_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace(".net.", ".")  # start from plain names ...
        parts = key.split(".")
        if len(parts) == 4 and parts[0].startswith("layer") and parts[2] == "conv1":
            key = ".".join([*parts[:3], "net", parts[3]])  # ... then wrap block conv1s as TSM does
        out[f"module.base_model.{key}"] = value
    out["module.new_fc.weight"] = torch.zeros(400, 128)
    out["module.new_fc.bias"] = torch.zeros(400)
    return out


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "encoder", "tsm_authors", "safetensors"])
def test_checkpoint_layouts_load_exactly(layout: str, tmp_path: Path) -> None:
    source = _tiny_backbone(seed=1)
    plain = {k.replace(".net.", "."): v.clone() for k, v in source.state_dict().items()}
    plain["fc.weight"] = torch.zeros(10, 128)  # classifiers are dropped
    path = tmp_path / ("weights.safetensors" if layout == "safetensors" else "weights.pth")
    if layout == "plain":
        torch.save(plain, path)
    elif layout in ("state_dict", "model", "encoder"):
        torch.save({layout: plain, "epoch": 3}, path)
    elif layout == "tsm_authors":
        torch.save({"state_dict": _tsm_authors_layout(plain)}, path)
    else:
        save_file({k: v.contiguous() for k, v in plain.items()}, str(path))

    encoder = create_encoder("tsm_resnet_tiny", checkpoint=path)
    loaded = encoder.state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[f"backbone.{key}"], value, rtol=0, atol=0, msg=key)


def test_own_encoder_state_dict_loads_as_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = create_encoder("tsm_resnet_tiny")
    torch.save(trained.state_dict(), tmp_path / "encoder.pth")
    restored = create_encoder("tsm_resnet_tiny", checkpoint=tmp_path / "encoder.pth").eval()
    x = _video(1, 2, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), trained.eval()(x), rtol=0, atol=0)


def test_mismatched_checkpoint_lists_keys_in_one_line(tmp_path: Path) -> None:
    torch.save(create_timm_backbone("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pth")
    backbone = create_timm_backbone("resnet18", pretrained=False)
    with pytest.raises(WeightsError) as info:
        load_backbone_checkpoint(backbone, tmp_path / "r34.pth")
    message = str(info.value)
    assert "\n" not in message
    assert "r34.pth" in message
    assert re.search(r"\d+ unexpected: layer1\.2\.bn1\.bias, ", message)
    assert "+" in message and "more" in message  # long lists are cut at 10 keys


def test_wrong_shapes_and_missing_keys_are_reported(tmp_path: Path) -> None:
    state = create_timm_backbone("resnet18", pretrained=False).state_dict()
    del state["layer4.1.bn2.weight"]
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"1 missing: layer4\.1\.bn2\.weight; 1 wrong shape: conv1\.weight"):
        create_encoder("tsm_resnet18", checkpoint=tmp_path / "r18.pth")


def test_unreadable_and_absent_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(LofiError, match="not found"):
        create_encoder("tsm_resnet_tiny", checkpoint=tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LofiError, match="cannot read checkpoint"):
        create_encoder("tsm_resnet_tiny", checkpoint=tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(LofiError, match="not a state dict"):
        create_encoder("tsm_resnet_tiny", checkpoint=tmp_path / "list.pth")


def test_pretrained_without_hub_names_model_and_checkpoint_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-lofi-test-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", "/nonexistent-lofi-test-cache")
    with pytest.raises(WeightsError) as info:
        create_encoder("tsm_resnet18", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert "resnet18" in message and "checkpoint=PATH" in message


def test_pretrained_is_refused_for_reduced_variants_and_with_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no ImageNet weights exist for tsm_resnet_tiny"):
        create_encoder("tsm_resnet_tiny", pretrained=True)
    with pytest.raises(ConfigError, match="not both"):
        create_encoder("tsm_resnet18", pretrained=True, checkpoint=tmp_path / "w.pth")


def _shift_reference(x: torch.Tensor, n_segment: int, shift_div: int) -> torch.Tensor:
    """TSM's shift written the plain way (a zero tensor and three slice copies), to check the fused one against."""
    n, c, h, w = x.shape
    fold = c // shift_div
    g = x.reshape(n // n_segment, n_segment, c, h, w)
    out = torch.zeros_like(g)
    out[:, :-1, :fold] = g[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = g[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = g[:, :, 2 * fold :]
    return out.reshape(n, c, h, w)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("n", "c", "n_segment", "shift_div"), [(6, 16, 3, 8), (8, 13, 4, 4), (4, 3, 1, 2)])
def test_temporal_shift_matches_the_plain_version(channels_last, n, c, n_segment, shift_div) -> None:
    x = torch.randn(n, c, 5, 4, generator=torch.Generator().manual_seed(n * c))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, ref = temporal_shift(a, n_segment=n_segment, shift_div=shift_div), _shift_reference(b, n_segment, shift_div)
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * probe).sum().backward()
    (ref * probe).sum().backward()
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("name", ["tsm_resnet_tiny", "tsm_resnet18"])
def test_inference_max_pool_gives_the_same_bits(name: str) -> None:
    """Without autograd the stem's max pool runs channels-last (``encoders.tsm._max_pool``): the features are the
    same bit for bit as with autograd (the plain pool), ties of ReLU zeros and NaNs included."""
    from encoders.tsm import _max_pool

    torch.manual_seed(0)
    enc = create_encoder(name).eval()
    x = torch.rand(2, 3, 2, 3, 48, 48)
    with torch.no_grad():
        fast = enc(x)
    slow = enc(x).detach()
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))
    pool = torch.nn.MaxPool2d(3, 2, 1)
    h = torch.relu(torch.randn(4, 8, 17, 17))
    h[0, 0, 3, 3] = float("nan")
    h[1, :, :4] = -0.0
    with torch.no_grad():
        out = _max_pool(pool, h)
    assert out.is_contiguous()
    assert torch.equal(out.view(torch.int32), pool(h).view(torch.int32))
