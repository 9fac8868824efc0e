"""Run-time plumbing shared by the stages: device choice, threads, checkpoints, lr schedule (stage markers:
``harness/pipeline/stage.py``)."""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import LofiError
from harness.experiment import OptimConfig, RuntimeConfig
from harness.integrity import IntegrityError, load_torch_sealed, save_torch_sealed

log = logging.getLogger(__name__)


def select_device(cfg: RuntimeConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise LofiError("runtime.device=cuda but no CUDA device is visible; use runtime.device=auto or cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def prepare(cfg: RuntimeConfig, seed: int) -> torch.device:
    """Seed everything, set torch's thread count, and pick the device (this rank's GPU under torchrun): the first
    lines of every stage."""
    from harness.pipeline.distributed import current, device_for
    from harness.seeding import seed_everything

    seed_everything(seed, cfg.deterministic)
    if cfg.threads > 0:  # the job's threads, shared by its torchrun processes
        torch.set_num_threads(max(1, cfg.threads // current().size))
    return device_for(select_device(cfg))


def autocast(device: torch.device, enabled: bool):  # -> context manager
    """bf16 autocast on CUDA; a no-op elsewhere (CPU bf16 is slower than fp32 on most CPUs)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def save_torch(path: Path, obj: Any) -> None:
    """Serialise in memory, then write a sealed file (``harness.integrity``: a CRC-32 trailer checked on load) with
    Python's file API: a full disk is an ``OSError`` naming the file and ENOSPC (torch's own writer reports it as
    an opaque "unexpected pos" RuntimeError)."""
    save_torch_sealed(path, obj)


def load_torch(path: Path) -> Any:
    """A checkpoint a stage of ours wrote, verified against its checksum first: a damaged file (a flipped byte
    loads silently in ``torch.load``) stops with one line naming it."""
    if not path.is_file():
        raise LofiError(f"{path}: checkpoint not found; run the stage that writes it first")
    try:
        return load_torch_sealed(path)
    except IntegrityError as exc:
        raise LofiError(
            f"{path}: not a readable checkpoint ({exc.problem}); delete {path.parent} to recompute the stage"
        ) from None
    except OSError:
        raise
    except Exception as exc:
        raise LofiError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}); delete it and re-run the stage"
        ) from None


def make_optimizer(
    params: Iterable[dict[str, Any]] | Iterable[torch.nn.Parameter], cfg: OptimConfig
) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def step_lr(base_lr: float, epoch: int, step_size: int, gamma: float) -> float:
    """Step decay as a pure function of the epoch (so resuming needs no scheduler state)."""
    return base_lr * gamma ** (epoch // max(1, step_size))


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, cfg: OptimConfig) -> float:
    for group in optimizer.param_groups:
        group["lr"] = step_lr(group.setdefault("base_lr", group["lr"]), epoch, cfg.step_size, cfg.gamma)
    return optimizer.param_groups[0]["lr"]


def check_finite(loss: torch.Tensor, *, stage: str, epoch: int, step: int) -> None:
    if not math.isfinite(float(loss.detach())):
        raise LofiError(
            f"{stage}: loss is {float(loss.detach())} at epoch {epoch} step {step}; lower the learning rate "
            "or check the inputs (the last finished epoch's checkpoint is kept)"
        )


@dataclass(frozen=True)
class Env:
    """Versions and host recorded with every run."""

    python: str
    torch: str
    host: str

    @staticmethod
    def capture() -> Env:
        return Env(platform.python_version(), torch.__version__, platform.node())
