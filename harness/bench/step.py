"""`lofi bench step`: the cost of one LoFi training step per fidelity and precision, alone and fed by the loader.

For each fidelity (full, S, T, ST: ``harness.bench.memory.fidelity_shapes``) and precision (fp32, bf16 autocast):

1. **step**: ``warmup`` + ``repeats`` training steps (encoder + head + TAL loss + backward + SGD step) on one
   batch already on the device; median seconds, videos/s and frames/s (B·L·F / step), peak device memory
   (``torch.cuda.max_memory_allocated``, CUDA only).
2. **with the loader**: ``steps`` steps fed by ``harness.data.loader.ClipLoader`` (``workers`` processes,
   prefetch, pinned memory on CUDA) from the prepared store of generated ActivityNet-like videos, uint8 frames
   resized on the device. ``load_s``: a worker's seconds to build one batch; ``wait_s``: seconds per step the
   training loop waited for the loader; ``busy``: the device's share of the wall time, Σ(step compute) / wall,
   step compute timed with CUDA events on CUDA (from the batch's copy to the end of the optimiser step) and the
   clock on CPU.

Weights are random (speed and memory do not depend on them). An out-of-memory at a setting is reported as such.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


@dataclass(frozen=True)
class StepRow:
    fidelity: str
    precision: str
    batch: int
    snippets: int
    size: int
    frames: int
    step_s: float | None = None
    videos_per_s: float | None = None
    frames_per_s: float | None = None
    peak_bytes: int | None = None
    load_s: float | None = None  # worker seconds per batch
    wait_s: float | None = None  # training-loop seconds per step spent waiting for a batch
    loader_step_s: float | None = None  # wall seconds per step with the loader
    busy: float | None = None
    error: str = ""


def _prepare_one(args: tuple[Path, Path, Any]) -> tuple[Path, Any]:
    from harness.data.store import prepare_video

    source, store, settings = args
    return prepare_video(source, store, settings)


def _generate_one(args: tuple[Path, float, int]) -> Path:
    from harness.data.testvideo import activitynet_like

    path, seconds, seed = args
    if path.is_file():
        return path
    return activitynet_like(path, seconds, seed=seed)


def generated_store(
    folder: Path, *, videos: int, seconds: float, max_side: int, processes: int
) -> list[tuple[Path, Any]]:
    """``videos`` ActivityNet-like videos in ``folder/videos`` and their prepared store in ``folder/store``
    (reused when present); returns (entry, StoreInfo) per video."""
    from harness.data.store import StoreSettings

    (folder / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(folder / "videos" / f"v{i:04d}-{seconds:g}s.mp4", seconds, i) for i in range(videos)]
    settings = StoreSettings(max_side=max_side)
    with ProcessPoolExecutor(max(1, processes)) as pool:
        sources = list(pool.map(_generate_one, jobs))
        return list(pool.map(_prepare_one, [(s, folder / "store", settings) for s in sources]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Step:
    """One training step of encoder + head + TAL loss + SGD on a given device batch."""

    def __init__(self, encoder, head, *, length: int, amp: bool, device: torch.device, batch: int) -> None:
        from heads.labels import make_targets_batch

        self.encoder, self.head, self.amp, self.device = encoder, head, amp, device
        params = [*encoder.parameters(), *head.parameters()]
        self.opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        segments = [np.array([[0.2 + 0.05 * (i % 4), 0.6]]) for i in range(batch)]
        self.targets = {k: v.to(device) for k, v in make_targets_batch(segments, length).items()}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from heads.losses import tal_loss

        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            outputs = self.head(self.encoder(x).transpose(1, 2))
        targets = {k: v[: x.shape[0]] for k, v in self.targets.items()}
        loss, _ = tal_loss({k: v.float() for k, v in outputs.items()}, targets)
        loss.backward()
        self.opt.step()
        return loss.detach()


def bench_step(
    encoder_name: str,
    head_name: str,
    *,
    store: Sequence[tuple[Path, Any]],
    batch: int,
    snippets: int,
    frames: int,
    stride: int,
    size: int,
    device: str = "cpu",
    precisions: Sequence[str] = PRECISIONS,
    fidelities: Sequence[str] = ("full", "S", "T", "ST"),
    full_batch: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    steps: int = 20,
    workers: int = 0,
    prefetch: int = 2,
    encoder_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    compile: bool = False,
) -> list[StepRow]:
    """The table's rows (see the module docstring). ``full_batch``: the batch at full fidelity (default
    ``batch``; the paper's batch 16 does not fit one GPU at full fidelity)."""
    from encoders import create_encoder
    from harness.bench.memory import fidelity_shapes
    from harness.data.loader import ClipDataset, ClipLoader, training_plan
    from harness.data.store import read_frames
    from harness.experiment import OptimConfig
    from heads import create_head

    dev = torch.device(device)
    shapes = fidelity_shapes(snippets=snippets, size=size)
    dataset = ClipDataset(
        lambda i, idx: read_frames(store[i][0], store[i][1], idx),
        lambda i: store[i][1].num_frames,
        frames=frames,
        stride=stride,
    )
    rows = []
    for name in fidelities:
        length, side = shapes[name]
        b = full_batch if name == "full" and full_batch else batch
        for precision in precisions:
            row = dict(fidelity=name, precision=precision, batch=b, snippets=length, size=side, frames=frames)
            torch.manual_seed(0)
            encoder = create_encoder(encoder_name, **(encoder_kwargs or {})).to(dev).train()
            head = create_head(
                head_name, in_features=encoder.num_features, temporal_length=length, **(head_kwargs or {})
            )
            head = head.to(dev).train()
            run_encoder = torch.compile(encoder) if compile else encoder
            step = _Step(run_encoder, head, length=length, amp=precision == "bf16", device=dev, batch=b)
            try:
                row.update(_time_fixed(step, b, length, frames, side, dev, warmup, repeats))
                optim = OptimConfig(batch_size=b, epochs=1)
                plan = training_plan(
                    len(store), optim, seed=0, stream=("bench",), shape=lambda e, s, shp=(length, side): shp
                )
                loader = ClipLoader(dataset, plan, workers=workers, prefetch=prefetch, pin_memory=dev.type == "cuda")
                row.update(_time_loader(step, loader, dev, steps, warmup=1))
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            except RuntimeError as exc:  # e.g. a missing kernel: report, go on with the next setting
                row["error"] = str(exc).splitlines()[0][:200]
            finally:
                del step, encoder, head, run_encoder
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(StepRow(**row))
            log.debug("%s", rows[-1])
    return rows


def _time_fixed(step: _Step, b: int, length: int, frames: int, side: int, dev, warmup: int, repeats: int) -> dict:
    x = torch.rand(b, length, frames, 3, side, side, device=dev)
    for _ in range(warmup):
        step(x)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(x)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "step_s": median,
        "videos_per_s": b / median,
        "frames_per_s": b * length * frames / median,
        "peak_bytes": int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None,
    }


def _batches(loader, n: int):
    """``n`` batches from as many epochs of the loader as it takes."""
    epoch = 0
    while True:
        for batch in loader.epoch(epoch):
            yield batch
            n -= 1
            if n == 0:
                return
        epoch += 1


def _time_loader(step: _Step, loader, dev: torch.device, steps: int, *, warmup: int) -> dict:
    """``steps`` steps fed by the loader after ``warmup`` (workers started, kernels chosen)."""
    it = _batches(loader, warmup + steps)
    for _ in range(warmup):
        step(next(it).to_device(dev))
    _sync(dev)
    cuda = dev.type == "cuda"
    events, busy_cpu, waits, loads = [], 0.0, [], []
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        waits.append(time.perf_counter() - t0)
        loads.append(batch.load_s)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(batch.to_device(dev))
            end.record()
            events.append((start, end))
        else:
            t1 = time.perf_counter()
            step(batch.to_device(dev))
            busy_cpu += time.perf_counter() - t1
    _sync(dev)
    wall = time.perf_counter() - t_start
    busy = sum(s.elapsed_time(e) for s, e in events) / 1000 if cuda else busy_cpu
    with contextlib.suppress(StopIteration):
        next(it)  # let the generator finish its epoch bookkeeping
    return {
        "load_s": statistics.mean(loads),
        "wait_s": statistics.mean(waits),
        "loader_step_s": wall / steps,
        "busy": busy / wall,
    }


def rows_table(rows: Sequence[StepRow]) -> str:
    from tabulate import tabulate

    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    body = [
        [
            r.fidelity,
            r.precision,
            r.batch,
            r.snippets,
            r.size,
            num(r.step_s, ".3f"),
            num(r.videos_per_s, ".1f"),
            num(r.frames_per_s, ".0f"),
            "–" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.1f}",
            num(r.load_s, ".3f"),
            num(r.wait_s, ".3f"),
            num(r.loader_step_s, ".3f"),
            "–" if r.busy is None else f"{100 * r.busy:.0f}%",
            r.error,
        ]
        for r in rows
    ]
    headers = [
        "fidelity",
        "precision",
        "B",
        "L",
        "size",
        "step s",
        "videos/s",
        "frames/s",
        "peak GiB",
        "load s/batch",
        "wait s/step",
        "loader step s",
        "busy",
        "error",
    ]
    return tabulate(body, headers=headers, disable_numparse=True)


def rows_json(rows: Sequence[StepRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
