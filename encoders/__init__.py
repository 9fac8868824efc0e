"""Video encoders: temporal shift (TSM) on timm backbones, behind a registry.

create_encoder("tsm_resnet18", pretrained=False) -> nn.Module with forward(x: (B, L, F, 3, H, W)) -> (B, L, D)
list_encoders("tsm_*")
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from harness.registry import Registry

ENCODERS: Registry = Registry("encoder")
register_encoder = ENCODERS.register


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    return ENCODERS.get(name)(**kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.names(pattern)


from encoders import tsm as _tsm  # noqa: E402,F401  (registers the variants)
