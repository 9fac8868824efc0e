"""Run-time plumbing shared by the stages: device choice, threads, autocast, checkpoints, the environment record
(stage markers: ``harness/pipeline/stage.py``; optimiser, lr and the NaN check: ``harness/pipeline/fit.py``)."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import LofiError
from harness.experiment import RuntimeConfig
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


@dataclass(frozen=True)
class Env:
    """Versions and host recorded with every run."""

    python: str
    torch: str
    host: str

    @staticmethod
    def capture() -> Env:
        return Env(platform.python_version(), torch.__version__, platform.node())
