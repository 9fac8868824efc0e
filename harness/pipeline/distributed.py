"""torchrun support: this process's place in the process group, and the few collective steps the stages need.

``torchrun --nproc_per_node N -m harness.cli run|stage ...`` starts N copies of the command; torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. The CLI calls :func:`init_from_env` once; every other function reads
the process group torch keeps (it is process-wide state already), so a single process needs nothing and behaves
exactly as before.

How the work is split (see ``harness/pipeline/fit.py``): the global batch of an optimiser step (``batch_size`` in
the config, the same number whatever the world size) is cut into ``WORLD_SIZE`` contiguous shards of the same
global order; rank r trains on shard r and DistributedDataParallel averages the gradients. Rank r's shard is
exactly the r-th micro-batch of a single process run with ``accumulate = WORLD_SIZE``, so the two follow the same
parameter trajectory (up to the order of float additions). Only rank 0 writes stage files, logs to MLflow and
shows progress; the others wait at :func:`barrier` before reading what it wrote.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from harness.errors import LofiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's rank, the number of processes, and its rank on this node (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def current() -> World:
    """The world of the initialised process group, else a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_env(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment (nothing without ``WORLD_SIZE`` > 1).

    NCCL when the stages will run on CUDA, gloo on CPU. Each rank uses GPU ``LOCAL_RANK``."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise LofiError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise LofiError("runtime.device=cuda but no CUDA device is visible; use runtime.device=cpu under torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    world = current()
    if not world.main:  # one voice: the other ranks report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)
    log.info("torch.distributed: %d processes (%s)", world.size, dist.get_backend())
    return world


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """The GPU of this rank when ``device`` is CUDA under torchrun; ``device`` otherwise."""
    world = current()
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def shard_bounds(n: int, world: World, per_rank: int | None = None) -> tuple[int, int]:
    """This rank's contiguous part ``[start, stop)`` of ``n`` items: ``per_rank`` items each in rank order (default
    ``ceil(n / size)``), so the parts cover ``range(n)`` in order and the last ranks may get fewer or none.

    ``fit`` passes ``per_rank = ceil(batch_size / size)`` for every step, the last (shorter) batch included: the
    parts are then exactly the micro-batches of one process with ``accumulate = size``."""
    per = -(-n // world.size) if per_rank is None else per_rank
    return min(n, world.rank * per), min(n, (world.rank + 1) * per)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if current().distributed:
        dist.barrier()


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks (float64), e.g. the loss sums behind an epoch's mean."""
    if not current().distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the metrics only rank 0 computed)."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module: nn.Module, *, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``module`` under torchrun (``module`` itself otherwise).

    ``sync_bn``: BatchNorm statistics over the global batch instead of each rank's shard (CUDA only: torch's
    SyncBatchNorm has no CPU kernel)."""
    world = current()
    if not world.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    if sync_bn:
        if device.type != "cuda":
            raise LofiError("runtime.sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); set it to false")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (what checkpoints store)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


@contextlib.contextmanager
def no_sync(modules: Sequence[nn.Module], active: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce (a micro-batch that is not the step's last): it runs once per step."""
    with contextlib.ExitStack() as stack:
        if active:
            for m in modules:
                if isinstance(m, nn.parallel.DistributedDataParallel):
                    stack.enter_context(m.no_sync())
        yield
