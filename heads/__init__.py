"""Temporal action localization heads (G-TAD, BMN) behind a registry.

create_head("gtad", in_features=400, temporal_length=100) -> nn.Module
forward(x: (B, D_in, L)) -> {"start": (B, L), "end": (B, L), "iou_map": (B, 2, D, L)}
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from harness.registry import Registry

HEADS: Registry = Registry("head")
register_head = HEADS.register


def create_head(name: str, **kwargs: Any) -> nn.Module:
    return HEADS.get(name)(**kwargs)


def list_heads(pattern: str = "*") -> list[str]:
    return HEADS.names(pattern)


# Each module registers its head when imported; a missing module is a packaging bug, so no try/except.
from heads import bmn as _bmn  # noqa: E402,F401
from heads import gtad as _gtad  # noqa: E402,F401
