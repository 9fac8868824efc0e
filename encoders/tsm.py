"""TSM-ResNet video encoders: a timm ResNet with a temporal shift in the residual branch of every block.

    encoder = create_encoder("tsm_resnet18", pretrained=False, shift_over="snippet")
    feats = encoder(x)       # x (B, L, F, 3, H, W) float in [0, 1]  ->  (B, L, encoder.num_features)

The L·F frames are flattened to (B·L·F, 3, H, W) for the 2D backbone. Before conv1 of every residual block
(TSM's "residual shift") 1/shift_div of the channels move one step back in time (frame t reads frame t+1) and
another 1/shift_div one step forward (frame t reads t-1); the ends are zero-padded. ``shift_over`` sets which
frames form one time axis:

- ``"snippet"`` (default): the F frames of each snippet, as TSM itself runs on one clip. Snippets stay
  independent, so a snippet's feature does not depend on its neighbours (what the frozen-encoder feature
  extraction of the paper assumes). With F = 1 there is no neighbour and the shifted channels are zeros.
- ``"video"``: all L·F frames of a video, giving the encoder context across snippet boundaries.

The group length is known only from the input shape, so the forward pass writes it into a small context object
shared by the shift modules, and only while a stage runs: gradient checkpointing re-runs a stage in the backward
pass through the same function and therefore sees the same group length.

The snippet feature is the mean over its F frames of the globally average-pooled frame features. Input is
normalised with the ImageNet mean/std inside the encoder. Without weights, timm zero-initialises each block's last
BatchNorm, so the residual branches (and with them the shifts) start silent and frames do not interact until
training moves those scales.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from encoders import declare_num_features, register_encoder
from encoders.weights import WeightsError, create_timm_backbone, load_backbone_checkpoint
from harness.errors import ConfigError

PathLike = str | os.PathLike[str]
ShiftOver = Literal["snippet", "video"]
SHIFT_OVER: tuple[str, ...] = ("snippet", "video")


def temporal_shift(x: torch.Tensor, *, n_segment: int, shift_div: int = 8) -> torch.Tensor:
    """Shift channels along time within consecutive groups of ``n_segment`` frames of ``x`` (N, C, H, W).

    Channels ``[0, C//shift_div)`` of frame t take frame t+1's values, channels ``[C//shift_div, 2·C//shift_div)``
    take frame t-1's; the missing neighbour at a group's end is zero. The rest are unchanged.
    """
    n, c, h, w = x.shape
    if n % n_segment:
        raise ValueError(f"temporal_shift: {n} frames do not split into groups of {n_segment}")
    fold = c // shift_div
    # One concatenation of the two zero-padded shifted folds and the rest: a single write of the output, where a
    # zero-filled tensor and three slice copies wrote it twice (forward + backward of the shift 1.7x faster on CPU,
    # benchmarks/bench_encoder.py; identical values, tests/test_encoders.py). Channels-last input is shifted in
    # its own (N, H, W, C) layout so the output stays channels-last (no layout conversion before the next conv).
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        grouped = x.permute(0, 2, 3, 1).view(n // n_segment, n_segment, h, w, c)
        back = F.pad(grouped[:, 1:, :, :, :fold], (0, 0, 0, 0, 0, 0, 0, 1))
        ahead = F.pad(grouped[:, :-1, :, :, fold : 2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))
        out = torch.cat((back, ahead, grouped[..., 2 * fold :]), dim=-1)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    grouped = x.view(n // n_segment, n_segment, c, h, w)
    back = F.pad(grouped[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))  # frame t <- t+1, zeros at the group's end
    ahead = F.pad(grouped[:, :-1, fold : 2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))  # t <- t-1, zeros at its start
    return torch.cat((back, ahead, grouped[:, :, 2 * fold :]), dim=2).view(n, c, h, w)


class _SegmentContext:
    """The time-group length, shared by one encoder's shift modules; set only while a backbone stage runs."""

    __slots__ = ("n_segment",)

    def __init__(self) -> None:
        self.n_segment: int | None = None


class TemporalShift(nn.Module):
    """Wraps a block's conv1 (as ``net``, the TSM authors' layout) and shifts its input in time first."""

    def __init__(self, net: nn.Module, *, context: _SegmentContext, shift_div: int) -> None:
        super().__init__()
        self.net = net
        self.shift_div = shift_div
        self._context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_segment = self._context.n_segment
        if n_segment is None:
            raise RuntimeError("TemporalShift runs only inside TSMEncoder.forward, which sets the group length")
        return self.net(temporal_shift(x, n_segment=n_segment, shift_div=self.shift_div))

    def extra_repr(self) -> str:
        return f"shift_div={self.shift_div}"


class TSMEncoder(nn.Module):
    """(B, L, F, 3, H, W) in [0, 1] -> (B, L, D) snippet features from a timm ResNet with temporal shifts."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        shift_div: int = 8,
        shift_over: ShiftOver = "snippet",
        grad_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if shift_over not in SHIFT_OVER:
            raise ConfigError(f"shift_over={shift_over!r} is not one of {', '.join(SHIFT_OVER)}")
        if shift_div < 2:
            raise ConfigError(f"shift_div={shift_div} must be >= 2 (two folds of C/shift_div channels move)")
        self.backbone = backbone
        self.shift_div = shift_div
        self.shift_over = shift_over
        self.grad_checkpointing = grad_checkpointing
        self.channels_last = channels_last
        self.num_features: int = int(backbone.num_features)
        self._context = _SegmentContext()
        for stage in self._stages():
            for block in stage:
                block.conv1 = TemporalShift(block.conv1, context=self._context, shift_div=shift_div)
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm is imported when a model is built

        # Not persistent: the state dict stays the backbone's, so checkpoints are interchangeable with TSM/timm.
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _stages(self) -> tuple[nn.Module, ...]:
        b = self.backbone
        return (b.layer1, b.layer2, b.layer3, b.layer4)

    def _run_stage(self, stage: nn.Module, x: torch.Tensor, n_segment: int) -> torch.Tensor:
        self._context.n_segment = n_segment
        try:
            return stage(x)
        finally:
            self._context.n_segment = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 6 or x.shape[3] != 3:
            raise ValueError(f"TSMEncoder expects (B, L, F, 3, H, W), got {tuple(x.shape)}")
        b, l, f = x.shape[:3]
        frames = (x.reshape(b * l * f, *x.shape[3:]) - self.mean) / self.std
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        n_segment = f if self.shift_over == "snippet" else l * f
        bb = self.backbone
        h = _max_pool(bb.maxpool, bb.act1(bb.bn1(bb.conv1(frames))))
        for stage in self._stages():
            if self.grad_checkpointing and torch.is_grad_enabled():
                # Per stage, so only stage inputs are kept; BatchNorm statistics update again on recompute.
                h = checkpoint_fn(self._run_stage, stage, h, n_segment, use_reentrant=False)
            else:
                h = self._run_stage(stage, h, n_segment)
        pooled = bb.global_pool(h)  # (B·L·F, D)
        return pooled.view(b, l, f, -1).mean(dim=2)


def _max_pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)``. Without autograd (feature extraction), a 2-D max pool of a contiguous CPU tensor runs in the
    channels-last layout, where torch's kernel is vectorised over channels (~1.5× faster on the stem's output),
    and comes back contiguous: a max pool picks one input value per window, first of equals in the same window
    order in both kernels, so the result is the same bit for bit (tests/test_encoders.py). With autograd the
    pool is left alone (its gradient's layout would reach the convolutions' backward)."""
    if (
        isinstance(pool, nn.MaxPool2d)
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous()
    ):
        return pool(x.contiguous(memory_format=torch.channels_last)).contiguous()
    return pool(x)


# The reduced variants use timm's deep (3×3) stem because ``stem_width`` only narrows that stem: the plain 7×7 stem
# is fixed at 64 channels at H/2, which would dominate a tiny model's activation memory.
def _create_tsm_resnet(
    model_name: str,
    *,
    variant: str,
    arch: Mapping[str, Any] | None = None,
    pretrained: bool = False,
    checkpoint: PathLike | None = None,
    shift_div: int = 8,
    shift_over: ShiftOver = "snippet",
    grad_checkpointing: bool = False,
    channels_last: bool = False,
    drop_path_rate: float = 0.0,
) -> TSMEncoder:
    """Build timm's ``model_name`` (with ``arch`` overrides), load weights, then insert the temporal shifts."""
    if pretrained and checkpoint is not None:
        raise ConfigError(f"{variant}: pass either pretrained=True or checkpoint=PATH, not both")
    if pretrained and arch:
        raise WeightsError(f"no ImageNet weights exist for {variant} (a reduced {model_name}); pass checkpoint=PATH")
    backbone = create_timm_backbone(model_name, pretrained=pretrained, drop_path_rate=drop_path_rate, **(arch or {}))
    if checkpoint is not None:
        load_backbone_checkpoint(backbone, checkpoint)
    return TSMEncoder(
        backbone,
        shift_div=shift_div,
        shift_over=shift_over,
        grad_checkpointing=grad_checkpointing,
        channels_last=channels_last,
    )


@register_encoder
@declare_num_features(512)
def tsm_resnet18(pretrained: bool = False, checkpoint: PathLike | None = None, **kwargs: Any) -> TSMEncoder:
    """TSM-ResNet18, the paper's main encoder (D = 512)."""
    return _create_tsm_resnet(
        "resnet18", variant="tsm_resnet18", pretrained=pretrained, checkpoint=checkpoint, **kwargs
    )


@register_encoder
@declare_num_features(512)
def tsm_resnet34(pretrained: bool = False, checkpoint: PathLike | None = None, **kwargs: Any) -> TSMEncoder:
    """TSM-ResNet34 (D = 512)."""
    return _create_tsm_resnet(
        "resnet34", variant="tsm_resnet34", pretrained=pretrained, checkpoint=checkpoint, **kwargs
    )


@register_encoder
@declare_num_features(2048)
def tsm_resnet50(pretrained: bool = False, checkpoint: PathLike | None = None, **kwargs: Any) -> TSMEncoder:
    """TSM-ResNet50, Bottleneck blocks (D = 2048)."""
    return _create_tsm_resnet(
        "resnet50", variant="tsm_resnet50", pretrained=pretrained, checkpoint=checkpoint, **kwargs
    )


@register_encoder
@declare_num_features(256)
def tsm_resnet_mini(pretrained: bool = False, checkpoint: PathLike | None = None, **kwargs: Any) -> TSMEncoder:
    """ResNet18 blocks, one per stage, half width (D = 256): CPU experiments on the synthetic benchmark."""
    arch = dict(layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_type="deep", stem_width=16)
    return _create_tsm_resnet(
        "resnet18", variant="tsm_resnet_mini", arch=arch, pretrained=pretrained, checkpoint=checkpoint, **kwargs
    )


@register_encoder
@declare_num_features(128)
def tsm_resnet_tiny(pretrained: bool = False, checkpoint: PathLike | None = None, **kwargs: Any) -> TSMEncoder:
    """ResNet18 blocks, one per stage, quarter width (D = 128, ~0.3M params): tests and CPU smoke runs."""
    arch = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_type="deep", stem_width=8)
    return _create_tsm_resnet(
        "resnet18", variant="tsm_resnet_tiny", arch=arch, pretrained=pretrained, checkpoint=checkpoint, **kwargs
    )
