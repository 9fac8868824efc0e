"""Run-time plumbing shared by the stages: device choice, threads, stage markers, checkpoints, lr schedule."""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import LofiError
from harness.experiment import OptimConfig, RuntimeConfig
from harness.integrity import IntegrityError, load_torch_sealed, save_torch_sealed
from harness.io import remove_orphans, write_json_atomic
from harness.pipeline.files import DONE

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


def _fingerprint(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_done(out: Path, key: str) -> dict[str, Any] | None:
    """The stage's ``done.json`` when ``out`` holds a finished stage made with ``key``, else None.

    A finished stage is never reused for another key, and never when a file it produced is gone or was rewritten
    since (size and mtime recorded at the end of the stage): both stop with a one-line error, so old results are
    not reported under a new config and nothing finished is overwritten silently."""
    p = out / DONE
    if not p.is_file():
        return None
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LofiError(f"{p}: unreadable stage marker; delete the folder {out} to recompute the stage") from None
    if not isinstance(info, dict) or not isinstance(info.get("outputs", {}), dict):
        raise LofiError(f"{p}: not a stage marker written by lofi; delete the folder {out} to recompute the stage")
    if info.get("key") != key:
        raise LofiError(
            f"{out}: finished by another configuration (stage key {info.get('key')}, "
            f"wanted {key}); use another --out or delete {out} to recompute it"
        )
    for rel, fp in (info.get("outputs") or {}).items():
        f = out / rel
        if not f.resolve().is_relative_to(out.resolve()):
            raise LofiError(f"{p}: lists {rel!r}, outside the stage folder; delete {out} to recompute the stage")
        if not f.is_file() or _fingerprint(f) != fp:
            raise LofiError(f"{f}: output of a finished stage is missing or changed; delete {out} to recompute it")
    return info


def mark_done(out: Path, info: dict[str, Any], *, key: str, outputs: Iterable[Path] = ()) -> None:
    """Write ``done.json`` last: the stage's key, the files it produced (relative, with size and mtime) and ``info``."""
    files = {str(Path(f).relative_to(out)): _fingerprint(Path(f)) for f in outputs}
    write_json_atomic(
        out / DONE, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "key": key, **info, "outputs": files}
    )


def start_stage(out: Path) -> None:
    """The first step of a stage that will run: its folder exists, and temporary files that a killed run left in it
    (``kill -9`` skips the atomic writers' cleanup) are removed; a concurrent writer's live ones are kept."""
    out.mkdir(parents=True, exist_ok=True)
    remove_orphans(out)


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
