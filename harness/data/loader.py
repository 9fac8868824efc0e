"""The input pipeline: a ``torch.utils.data`` loader of clips whose order is a pure function of (seed, epoch, step).

    plan = training_plan(n_items, optim, seed=seed, stream=("lofi-order",), shape=lambda epoch, step: (L, size))
    loader = ClipLoader(ClipDataset(fetch, num_frames, frames=F, stride=s), plan, workers=4)
    for batch in loader.epoch(epoch):           # ClipBatch: uint8 frames, (epoch, step, micro, items)
        x = batch.to_device(device)             # float (B, L, F, 3, size, size) in [0, 1], resized there

The main process owns the order: a *plan* maps an epoch to its micro-batches of ``Request`` s (item, epoch, step,
micro, snippets L, size), and ``PlanSampler`` hands them to the workers. A worker only decodes: given a request it
fetches the video's distinct snippet frames as uint8 (no randomness, no state that depends on earlier requests),
so any worker count yields the same batches in the same order (torch's DataLoader returns batches in sampler
order). Resizing and the float conversion happen on the training device (``ClipBatch.to_device``), where they are
cheap, and uint8 frames are 4× smaller to move (and to pin) than float ones.

Sharding for data parallelism (torchrun): ``training_plan(..., rank=r, world_size=w)`` is rank r's part of the
one global order, cut by ``step_batches`` exactly as ``harness.pipeline.fit`` cuts it: every step's batch into w
contiguous shares, each share into micro-batches. The shares of a step partition the single-process batch, and
rank r's share is the single process's r-th micro-batch when it runs with ``accumulate = w``.

Memory: each worker holds ``prefetch`` batches of uint8 frames (and, with ``data.store = decoded``, its own
in-memory frame cache of ``runtime.cache_bytes``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.data.video import resize_frames, select_snippet_frames, snippet_frame_indices
from harness.experiment import OptimConfig
from harness.seeding import numpy_rng

log = logging.getLogger(__name__)

#: (epoch, step) -> (snippets L, frame side S) of that step's clips
ShapeFn = Callable[[int, int], tuple[int, int]]
#: (item, frame indices) -> uint8 (len(indices), H, W, 3)
FetchFn = Callable[[int, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Request:
    """One clip of one micro-batch."""

    item: int
    epoch: int
    step: int
    micro: int
    snippets: int
    size: int


Plan = Callable[[int], list[list[Request]]]  # epoch -> its micro-batches, in training order


def epoch_order(n_items: int, *, seed: int, stream: tuple[str, ...], epoch: int) -> np.ndarray:
    """The order of the items in ``epoch``: ``numpy_rng(seed, *stream, epoch).permutation(n_items)``."""
    return numpy_rng(seed, *stream, epoch).permutation(n_items)


@dataclass(frozen=True)
class MicroBatch:
    """Items one process runs forward and backward together, within one optimiser step."""

    position: int  # of its first item in the step's global batch (names the micro-batch's random streams)
    items: np.ndarray
    weight: float  # 0: a filler a rank runs only to join the step's gradient all-reduce (adds nothing)


def step_batches(
    order: np.ndarray, batch_size: int, accumulate: int, *, rank: int = 0, world_size: int = 1
) -> list[list[MicroBatch]]:
    """Per optimiser step, this rank's micro-batches of the global ``order``.

    Each step's batch (``batch_size`` items, the last one shorter) is cut into ``world_size`` contiguous shares of
    ``ceil(batch_size / world_size)`` items, in rank order, and a share into micro-batches of
    ``max(1, share // accumulate)``. One process (the default) gets the whole batch in ``accumulate`` parts. A
    rank whose share of a short last batch is empty gets the batch's first item with weight 0: under
    DistributedDataParallel every rank must take part in every step."""
    per_rank = -(-batch_size // world_size)
    micro_size = max(1, per_rank // max(1, accumulate))
    steps = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        lo, hi = min(len(batch), rank * per_rank), min(len(batch), (rank + 1) * per_rank)
        if lo == hi:
            steps.append([MicroBatch(0, batch[:1], 0.0)])
            continue
        steps.append([MicroBatch(m, batch[m : min(hi, m + micro_size)], 1.0) for m in range(lo, hi, micro_size)])
    return steps


def training_plan(
    n_items: int,
    optim: OptimConfig,
    *,
    seed: int,
    stream: tuple[str, ...],
    shape: ShapeFn,
    rank: int = 0,
    world_size: int = 1,
) -> Plan:
    """The micro-batches of a training epoch (this rank's, under torchrun), in the order ``fit`` runs them."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"training_plan: rank={rank}, world_size={world_size}; need 0 <= rank < world_size")

    def plan(epoch: int) -> list[list[Request]]:
        order = epoch_order(n_items, seed=seed, stream=stream, epoch=epoch)
        out = []
        steps = step_batches(order, optim.batch_size, optim.accumulate, rank=rank, world_size=world_size)
        for step, micros in enumerate(steps):
            length, size = shape(epoch, step)
            out += [[Request(int(i), epoch, step, mb.position, length, size) for i in mb.items] for mb in micros]
        return out

    return plan


def fixed_plan(n_items: int, batch_size: int, *, snippets: int, size: int) -> Plan:
    """Items 0..n-1 in order, ``batch_size`` at a time, every epoch the same (feature extraction, scoring)."""

    def plan(epoch: int) -> list[list[Request]]:
        return [
            [Request(i, epoch, s, 0, snippets, size) for i in range(start, min(start + batch_size, n_items))]
            for s, start in enumerate(range(0, n_items, batch_size))
        ]

    return plan


class PlanSampler(Sampler[list[Request]]):
    """Yields the plan's micro-batches of the current epoch (``set_epoch``)."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.epoch = plan, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[Request]]:
        yield from self.plan(self.epoch)

    def __len__(self) -> int:
        return len(self.plan(self.epoch))


@dataclass(frozen=True)
class Clip:
    """One video's distinct snippet frames (uint8, (U, H, W, 3)) and each snippet frame's position among them."""

    item: int
    frames: torch.Tensor
    inverse: torch.Tensor
    load_s: float


@dataclass(frozen=True)
class ClipBatch:
    """One micro-batch as the loader delivers it: uint8 frames still at their stored size."""

    epoch: int
    step: int
    micro: int
    items: torch.Tensor  # (B,) int64, positions in the stage's item list
    snippets: int
    frames_per_snippet: int
    size: int
    clips: tuple[Clip, ...]
    load_s: float  # seconds a worker spent fetching the frames (summed over the clips)

    def pin_memory(self) -> ClipBatch:  # called by the DataLoader's pin-memory thread
        pinned = tuple(replace(c, frames=c.frames.pin_memory()) for c in self.clips)
        return replace(self, clips=pinned)

    def to_device(self, device: torch.device | str) -> torch.Tensor:
        """float32 (B, L, F, 3, size, size) in [0, 1] on ``device``: frames copied as uint8, then resized there."""
        out = []
        for c in self.clips:
            frames = c.frames.to(device, non_blocking=True)
            inverse = c.inverse.to(device, non_blocking=True)
            out.append(resize_frames(frames, inverse, (self.snippets, self.frames_per_snippet), self.size))
        return torch.stack(out)


class ClipDataset(Dataset):
    """Maps a ``Request`` to a ``Clip``: the distinct frames of ``snippet_frame_indices(T, L, F, stride)``."""

    def __init__(self, fetch: FetchFn, num_frames: Callable[[int], int], *, frames: int, stride: int) -> None:
        self.fetch, self.num_frames, self.frames, self.stride = fetch, num_frames, frames, stride

    def __getitem__(self, req: Request) -> Clip:
        t0 = time.perf_counter()
        indices = snippet_frame_indices(self.num_frames(req.item), req.snippets, self.frames, self.stride)
        unique, inverse = select_snippet_frames(indices)
        frames = torch.from_numpy(np.ascontiguousarray(self.fetch(req.item, unique)))
        return Clip(req.item, frames, torch.from_numpy(inverse), time.perf_counter() - t0)

    def __len__(self) -> int:  # requests are not indices; the sampler defines the epoch
        raise TypeError("ClipDataset is indexed by Request objects through PlanSampler")


class ClipLoader:
    """A DataLoader over a plan: ``epoch(e)`` yields the ``ClipBatch`` es of epoch ``e`` in plan order.

    ``workers`` = 0 loads in the calling process; otherwise worker processes (kept for the loader's lifetime)
    prepare ``prefetch`` batches each ahead, and ``pin_memory`` page-locks them for asynchronous device copies.
    """

    def __init__(
        self,
        dataset: ClipDataset,
        plan: Plan,
        *,
        workers: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.sampler = PlanSampler(plan)
        self.loader = DataLoader(
            _RequestDataset(dataset),
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=_collate_batch,
            pin_memory=pin_memory,
            prefetch_factor=prefetch if workers > 0 else None,
            persistent_workers=workers > 0,
        )
        self.frames_per_snippet = dataset.frames

    def epoch(self, epoch: int) -> Iterator[ClipBatch]:
        self.sampler.set_epoch(epoch)
        yield from self.loader


class _RequestDataset(Dataset):
    """Wraps ClipDataset so the collated batch carries the request's (epoch, step, micro, shape)."""

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, req: Request) -> tuple[Request, Clip, int]:
        return req, self.dataset[req], self.dataset.frames

    def __len__(self) -> int:
        raise TypeError("indexed by Request objects through PlanSampler")


def _collate_batch(parts: Sequence[tuple[Request, Clip, int]]) -> ClipBatch:
    if not parts:
        raise ValueError("empty micro-batch: a plan's micro-batch holds no request")
    first = parts[0][0]
    return ClipBatch(
        epoch=first.epoch,
        step=first.step,
        micro=first.micro,
        items=torch.tensor([r.item for r, _, _ in parts], dtype=torch.long),
        snippets=first.snippets,
        frames_per_snippet=parts[0][2],
        size=first.size,
        clips=tuple(c for _, c, _ in parts),
        load_s=sum(c.load_s for _, c, _ in parts),
    )
