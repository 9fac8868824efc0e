"""The factories: the only place where encoder and head hyperparameters are read from the config."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from harness.errors import LofiError
from harness.experiment import ExperimentConfig
from harness.pipeline.runtime import load_torch


def build_encoder(cfg: ExperimentConfig, *, from_weights: bool, mode: str = "acp") -> nn.Module:
    """The configured encoder. ``from_weights`` starts it from published weights instead of training (real data):
    ICP from timm's ImageNet weights (``encoder.pretrained``), ACP from ``encoder.checkpoint`` (e.g. TSM K400)."""
    from encoders import create_encoder

    e = cfg.encoder
    if from_weights and mode == "icp" and not e.pretrained:
        raise LofiError("icp without data.icp_source needs encoder.pretrained=true (timm ImageNet weights)")
    if from_weights and mode == "acp" and not e.checkpoint:
        raise LofiError("acp without data.acp_source needs encoder.checkpoint=PATH (e.g. TSM Kinetics-400 weights)")
    return create_encoder(
        e.name,
        pretrained=from_weights and mode == "icp",
        checkpoint=e.checkpoint if from_weights and mode == "acp" else None,
        shift_over=e.shift_over,
        grad_checkpointing=e.grad_checkpointing,
        channels_last=e.channels_last,
    )


def load_encoder(cfg: ExperimentConfig, checkpoint: Path) -> nn.Module:
    """An encoder with the weights a stage of ours saved (``{"encoder": state_dict}``)."""
    enc = build_encoder(cfg, from_weights=False)
    enc.load_state_dict(load_torch(checkpoint)["encoder"])
    return enc


def head_kwargs(cfg: ExperimentConfig, name: str) -> dict[str, object]:
    """The head hyperparameters the config sets, as ``create_head`` keywords for head ``name``."""
    h = cfg.head
    kwargs: dict[str, object] = dict(
        max_duration=h.max_duration or None, hidden=h.hidden, hidden_2d=h.hidden_2d, hidden_3d=h.hidden_3d
    )
    samples = {"gtad": "inner_samples", "bmn": "num_sample"}.get(name)
    if samples is not None:
        kwargs[samples] = h.samples
    if name == "gtad":
        kwargs["fused_projection"] = h.fused_projection
        kwargs["kernel_2d"] = h.kernel_2d
    return kwargs


def build_head(cfg: ExperimentConfig, name: str, *, in_features: int, temporal_length: int) -> nn.Module:
    from heads import create_head

    return create_head(name, in_features=in_features, temporal_length=temporal_length, **head_kwargs(cfg, name))
