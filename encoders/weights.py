"""Backbone weights: timm ImageNet weights by model name, or a local checkpoint in any of the common layouts.

Accepted checkpoint layouts (``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``, or ``.safetensors``):

- a plain / timm state dict: ``layer1.0.conv1.weight``;
- a training checkpoint: ``{"state_dict": {...}}``, ``{"model": {...}}`` or our stages' ``{"encoder": {...}}``;
- the TSM authors' Kinetics-400 checkpoints: ``module.base_model.layer1.0.conv1.net.weight`` (DataParallel
  ``module.``, TSN wrapper ``base_model.``, the shift module wrapping conv1 as ``.net``), plus a ``new_fc``;
- an encoder of this package saved whole: ``backbone.layer1.0.conv1.net.weight``.

Keys are normalised to plain timm ResNet names; classifier weights (``fc``, ``new_fc``) are dropped because the
encoder has no classifier; the rest must match the backbone exactly (strict), or a one-line ``LofiError`` lists
the mismatches.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.errors import LofiError

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "base_model.", "backbone.")
_CLASSIFIER = re.compile(r"^(new_fc|fc)\.")
_MAX_LISTED = 10


class WeightsError(LofiError):
    """Weights could not be downloaded, read or matched to the backbone."""


def create_timm_backbone(model_name: str, *, pretrained: bool, **model_kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, pretrained=..., num_classes=0, **model_kwargs)`` with a one-line error."""
    # imported here, not at module level: timm (and the torchvision it imports) costs seconds at start-up, and
    # commands that only check encoder names or train a head on features never build a backbone
    import timm

    try:
        return timm.create_model(model_name, pretrained=pretrained, num_classes=0, **model_kwargs)
    except Exception as exc:  # timm/hf-hub raise many types (OSError, LocalEntryNotFoundError, RuntimeError)
        if not pretrained:
            raise
        reason = " ".join(str(exc).split())[:160]
        raise WeightsError(
            f"could not download timm weights for {model_name} ({type(exc).__name__}: {reason}); "
            "pass checkpoint=PATH to a local .pth/.safetensors file"
        ) from exc


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its tensor state dict (unwrapping ``state_dict``/``model``/``encoder``)."""
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"{file}: checkpoint file not found; pass checkpoint= an existing .pth/.safetensors file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(file), device="cpu")
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:160]
        raise WeightsError(f"{file}: cannot read checkpoint ({type(exc).__name__}: {reason})") from exc
    for key in ("state_dict", "model", "encoder"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{file}: not a state dict (expected name -> tensor, optionally under 'state_dict', 'model' or 'encoder')"
        )
    return dict(obj)


def canonical_key(key: str) -> str:
    """Map a key of any accepted layout to the plain timm ResNet name (``layer1.0.conv1.weight``)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    # TSM wraps each block's conv1 in a shift module that holds the convolution as ``net``.
    return key.replace(".net.", ".")


def load_backbone_checkpoint(backbone: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load ``path`` into ``backbone`` strictly after normalising key layouts (see the module docstring).

    ``backbone`` may be a plain timm ResNet or one whose conv1s are already wrapped by shift modules: its own keys
    are normalised the same way, so either matches.
    """
    source = {canonical_key(k): v for k, v in read_state_dict(path).items()}
    source = {k: v for k, v in source.items() if not _CLASSIFIER.match(k)}
    target_names = {canonical_key(k): k for k in backbone.state_dict()}
    target = backbone.state_dict()

    # Checkpoints from older PyTorch lack BatchNorm's step counter; it does not affect the forward pass.
    missing = sorted(k for k in set(target_names) - set(source) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(source) - set(target_names))
    wrong_shape = sorted(
        f"{k} {tuple(source[k].shape)}!={tuple(target[target_names[k]].shape)}"
        for k in set(source) & set(target_names)
        if source[k].shape != target[target_names[k]].shape
    )
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:_MAX_LISTED])}{more}")
        raise WeightsError(
            f"{path}: checkpoint does not match the backbone; {'; '.join(parts)}; "
            "check that the checkpoint is for the same architecture"
        )
    # strict=False only tolerates the num_batches_tracked counters excused above; everything else was checked.
    backbone.load_state_dict({target_names[k]: v for k, v in source.items()}, strict=False)
    log.info("loaded %d backbone tensors from %s", len(source), path)
