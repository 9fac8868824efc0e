"""Video encoders: temporal shift (TSM) on timm backbones, behind a registry.

create_encoder("tsm_resnet18", pretrained=False) -> nn.Module with forward(x: (B, L, F, 3, H, W)) -> (B, L, D)
list_encoders("tsm_*")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn as nn

from harness.registry import Registry

ENCODERS: Registry = Registry("encoder")
register_encoder = ENCODERS.register
F = TypeVar("F", bound=Callable[..., Any])


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    return ENCODERS.get(name)(**kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.names(pattern)


def declare_num_features(num_features: int) -> Callable[[F], F]:
    """Declare a variant's feature width D on its registered function, so that a job that needs only the shape
    (the blind control's zero features) does not build the model (timm and torchvision cost ~2 CPU-s to import).
    ``tests/test_encoders.py`` checks every declaration against the built model."""

    def mark(fn: F) -> F:
        fn.num_features = num_features  # type: ignore[attr-defined]
        return fn

    return mark


def encoder_num_features(name: str) -> int | None:
    """The declared feature width of encoder ``name`` (None: not declared; build it and read ``num_features``)."""
    return getattr(ENCODERS.get(name), "num_features", None)


from encoders import tsm as _tsm  # noqa: E402,F401  (registers the variants)
