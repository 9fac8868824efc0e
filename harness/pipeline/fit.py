"""The one training loop every stage uses (pre-training, LoFi, the head, the video-level classifier).

It reads top to bottom in the order it runs, as nanoGPT's loop does: per epoch set the lr and draw the order of
the items; per optimiser step zero the gradients, run the step's micro-batches (forward and loss in ``step_fn``,
NaN check, backward scaled to the step's batch), step; per epoch record a row (mean loss, the stage's other
means, lr, throughput, ``validate``'s metrics), log it, call ``on_epoch_end``. What a stage trains and on what
is all in ``step_fn``; there is no trainer object.

The lr is ``set_lr``, a step decay computed from the epoch alone, not ``timm.scheduler.StepLRScheduler``:
timm computes the same ``lr · gamma ** (epoch // step_size)`` but keeps its base values in the optimiser's param
groups and follows an ``step(epoch + 1)``-at-epoch-end convention, whereas a pure function of the epoch needs
nothing restored on resume and is tested without an optimiser.

Every random choice is a function of (seed, stream, epoch, step): the order is ``harness.data.loader.epoch_order``,
``numpy_rng(seed, *order_stream, epoch).permutation(n_items)``, so a run resumed at ``start_epoch`` (with the
model and optimiser state of the end of the previous epoch) ends with the same numbers as an uninterrupted one.

Under torchrun (``harness/pipeline/distributed.py``) the same global order is used on every rank; each rank
trains on its contiguous shard of the step's batch (``harness.data.loader.step_batches``, which the loader's plan
also uses: the micro-batch a single process with ``accumulate`` =
world size would run), with ``modules`` wrapped in DistributedDataParallel by the stage; the epoch's means are
summed over ranks, so every rank records the same history.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from harness.data.loader import epoch_order, step_batches
from harness.errors import LofiError
from harness.experiment import OptimConfig
from harness.pipeline.distributed import all_sum, current, no_sync

log = logging.getLogger(__name__)

#: ``step_fn(epoch, step, micro, idx) -> (loss, sums)``: forward + loss of the items ``idx`` (a LongTensor of
#: positions in ``range(n_items)``); ``micro`` is the position of this micro-batch's first item in the optimiser
#: step's global batch (0 without accumulation on one process). ``loss`` is the micro-batch's mean loss (a scalar tensor with a graph);
#: ``sums`` holds sums over its items of anything else the epoch row reports as a mean (e.g. ``{"accuracy":
#: number correct}``), ``{}`` for nothing.
StepFn = Callable[[int, int, int, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
#: With a ``loader``: ``step_fn(epoch, step, micro, idx, batch)``, ``batch`` the loader's ``ClipBatch`` of ``idx``.
LoaderStepFn = Callable[[int, int, int, torch.Tensor, Any], tuple[torch.Tensor, dict[str, float]]]


def fit(
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn | LoaderStepFn,
    *,
    n_items: int,
    optim: OptimConfig,
    seed: int,
    order_stream: tuple[str, ...],
    stage: str,
    modules: Sequence[nn.Module] = (),
    start_epoch: int = 0,
    stop_epoch: int | None = None,
    history: Sequence[dict[str, float]] = (),
    validate: Callable[[int], dict[str, float]] | None = None,
    on_epoch_end: Callable[[int, list[dict[str, float]]], None] | None = None,
    tracker: Any = None,
    metric_prefix: str = "",
    progress: bool = False,
    loader: Any = None,
) -> list[dict[str, float]]:
    """Train for epochs ``start_epoch`` … ``min(optim.epochs, stop_epoch) - 1``; returns ``history`` plus one row
    per epoch run: ``{"loss", <sums' means>, "lr", "items_per_s", <validate's metrics>}``.

    - ``optimizer``: built by the stage (``make_optimizer(params, optim)``; restored on resume).
    - ``optim``: lr schedule (``lr``, ``step_size``, ``gamma``), ``epochs``, ``batch_size`` (items per optimiser
      step) and ``accumulate`` (micro-batches per step, each of ``max(1, batch_size // accumulate)`` items).
    - ``order_stream``: names the order's random stream, e.g. ``("lofi-order",)``; keep a stage's name stable.
    - ``stage``: names the stage in the NaN error (``check_finite``), the progress bar and the log.
    - ``modules``: put in train mode at the start of every epoch (``validate`` may switch them to eval).
    - ``stop_epoch``: end after that epoch count although the schedule counts to ``optim.epochs`` (a kill).
    - ``validate(epoch)``: metrics measured after the epoch's training, added to its row before it is logged.
    - ``on_epoch_end(epoch, history)``: after the row is recorded and logged, e.g. save a checkpoint or let
      Optuna prune (it may raise).
    - ``tracker``: ``log_metrics(dict, step=epoch)`` with names ``{metric_prefix}_{key}``; None logs nothing.
    - ``loader``: a ``harness.data.loader.ClipLoader`` built on ``training_plan`` with the same ``seed``,
      ``order_stream`` and ``optim``: its batches arrive (from worker processes, prefetched) in the order this loop
      runs, each checked against the loop's own ``(step, micro, idx)``, and go to ``step_fn`` as a fifth argument.
      Under torchrun the plan must be this rank's (``training_plan(..., rank=, world_size=)``).
    """
    history = list(history)
    end = optim.epochs if stop_epoch is None else min(optim.epochs, stop_epoch)
    epoch_loop = _EpochLoop(optimizer, step_fn, n_items, optim, seed, order_stream, stage, modules, progress, loader)
    for epoch in range(start_epoch, end):
        for m in modules:
            m.train()
        lr = set_lr(optimizer, epoch, optim)
        row = _epoch_row(epoch_loop.train(epoch), lr, stage=stage, epoch=epoch, timed_loader=loader is not None)
        if validate is not None:
            row.update(validate(epoch))
        history.append(row)
        if tracker is not None:
            tracker.log_metrics({f"{metric_prefix}_{k}": v for k, v in row.items()}, step=epoch)
        log.info(
            "%s epoch %d/%d: %s", stage, epoch + 1, optim.epochs, ", ".join(f"{k} {v:.4g}" for k, v in row.items())
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history


@dataclass
class _EpochSums:
    """One epoch's running sums on this rank: loss × items, items, the step function's other sums, time."""

    t0: float
    total: float = 0.0
    seen: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    waited: float = 0.0  # seconds spent waiting for the loader

    def add(self, weight: float, loss: float, n: int, extra: dict[str, float]) -> None:
        self.total += weight * loss * n
        self.seen += weight * n
        for name, v in extra.items():
            self.sums[name] = self.sums.get(name, 0.0) + weight * v


@dataclass(frozen=True)
class _EpochLoop:
    """The optimiser steps of one epoch (``train``): what ``fit`` was given, minus the per-epoch bookkeeping."""

    optimizer: torch.optim.Optimizer
    step_fn: StepFn | LoaderStepFn
    n_items: int
    optim: OptimConfig
    seed: int
    order_stream: tuple[str, ...]
    stage: str
    modules: Sequence[nn.Module]
    progress: bool
    loader: Any

    def train(self, epoch: int) -> _EpochSums:
        bs, world, optim = self.optim.batch_size, current(), self.optim
        n_steps = (self.n_items + bs - 1) // bs
        order = epoch_order(self.n_items, seed=self.seed, stream=self.order_stream, epoch=epoch)
        # this rank's micro-batches of every step (one process: the whole batch in `accumulate` parts)
        steps = step_batches(order, bs, optim.accumulate, rank=world.rank, world_size=world.size)
        batches = iter(self.loader.epoch(epoch)) if self.loader is not None else None
        acc = _EpochSums(t0=time.perf_counter())
        bar = tqdm(
            range(n_steps),
            desc=f"{self.stage} epoch {epoch + 1}/{optim.epochs}",
            disable=not self.progress or not world.main,
            leave=False,
        )
        for step in bar:
            global_n = min(bs, self.n_items - step * bs)  # the step's batch, summed over ranks
            micros = steps[step]
            self.optimizer.zero_grad(set_to_none=True)
            for k, mb in enumerate(micros):
                idx = torch.from_numpy(mb.items)
                with no_sync(self.modules, k < len(micros) - 1):  # DDP all-reduces once, after the step's last one
                    if batches is None:
                        loss, extra = self.step_fn(epoch, step, mb.position, idx)
                    else:
                        data = self._next_batch(batches, acc, epoch, step, mb.position, idx)
                        loss, extra = self.step_fn(epoch, step, mb.position, idx, data)
                    check_finite(loss, stage=self.stage, epoch=epoch, step=step)
                    # the step's gradient is that of the batch's mean loss, whatever the split into micro-batches
                    # and ranks (DDP averages over ranks, hence × world size); unscaled when the micro-batch is
                    # the batch: (1/n)·n is not exactly 1 in float32 for every n
                    if len(idx) == global_n and not world.distributed:
                        loss.backward()
                    else:
                        (loss * (mb.weight * len(idx) * world.size / global_n)).backward()
                acc.add(mb.weight, loss.item(), len(idx), extra)
            self.optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        return acc

    def _next_batch(
        self, batches: Iterator[Any], acc: _EpochSums, epoch: int, step: int, micro: int, idx: torch.Tensor
    ) -> Any:
        """The loader's next batch, checked against the loop's own (epoch, step, micro, items)."""
        t_wait = time.perf_counter()
        data = next(batches)
        acc.waited += time.perf_counter() - t_wait
        if (data.epoch, data.step, data.micro) != (epoch, step, micro) or not torch.equal(data.items, idx):
            raise RuntimeError(f"{self.stage}: the loader's plan differs from the loop's order at step {step}")
        return data


def _epoch_row(acc: _EpochSums, lr: float, *, stage: str, epoch: int, timed_loader: bool) -> dict[str, float]:
    """The epoch's history row: means over every rank's items, the lr and the throughput."""
    total, seen, sums = acc.total, acc.seen, acc.sums
    if current().distributed:  # every rank records the global means
        names = sorted(sums)
        total, seen, *rest = all_sum([total, seen, *(sums[k] for k in names)])
        sums = dict(zip(names, rest))
    if timed_loader:
        log.debug("%s epoch %d: %.2f s waiting for the loader", stage, epoch + 1, acc.waited)
    return {
        "loss": total / max(seen, 1),
        **{k: v / max(seen, 1) for k, v in sums.items()},
        "lr": lr,
        "items_per_s": seen / (time.perf_counter() - acc.t0),
    }


# ------------------------------------------------------------------------------ optimiser, learning rate, NaN check
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
