"""The frame store and the loader at ActivityNet scale, on CPU.

    python benchmarks/bench_store.py [--work /tmp/lofi-store-bench] [--videos 200] [--seconds 120]

1. **Size**: one generated ActivityNet-like video (``harness.data.testvideo``: 640x360, 30 fps, H.264, --seconds
   long): its decoded frames at max_side 256 as FrameCache keeps them (.npy) against its prepared store entry.
2. **Read**: one clip's frames at T-LoFi (L = 25) and full fidelity (L = 100), 8 frames stride 8: decoding the
   source whole (what a cold FrameCache does) against ``read_frames`` from the store.
3. **Loader speed**: batches/s of a T-LoFi loader (batch 4) with 2 workers against 0, interleaved rounds in one
   process (the machine is shared: the ratio per round, and its spread, is the figure).
4. **Memory over an epoch**: peak PSS and RSS of the training process and its workers (summed, every 0.2 s)
   while one epoch of ``--videos`` store entries (copies of the one prepared video: decoding cost and memory
   do not depend on the content) is loaded at full fidelity (L = 100, batch 4, 2 workers) and fed to a tiny
   encoder's forward and backward.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders import create_encoder
from harness.data.loader import ClipDataset, ClipLoader, training_plan
from harness.data.store import StoreSettings, prepare_video, read_frames, sidecar
from harness.data.testvideo import activitynet_like
from harness.data.video import decode_video, snippet_frame_indices
from harness.experiment import OptimConfig


def memory_tree() -> tuple[int, int]:
    """(RSS, PSS) of this process and its children, summed. Summed RSS counts pages the workers share with the
    parent (fork) and the shared-memory batches in each process; PSS splits shared pages among their users."""
    rss = pss = 0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


class PeakMemory:
    def __init__(self) -> None:
        self.rss = self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = memory_tree()
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def dataset(store) -> ClipDataset:
    return ClipDataset(
        lambda i, idx: read_frames(store[i][0], store[i][1], idx), lambda i: store[i][1].num_frames, frames=8, stride=8
    )


def batches_per_s(store, workers: int, n_batches: int) -> float:
    optim = OptimConfig(batch_size=4, epochs=1)
    plan = training_plan(len(store), optim, seed=0, stream=("b",), shape=lambda e, s: (25, 56))
    loader = ClipLoader(dataset(store), plan, workers=workers, prefetch=2)
    it = iter(loader.epoch(0))
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    rate = n_batches / (time.perf_counter() - t0)
    del it, loader
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lofi-store-bench"))
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-epoch", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    src = args.work / f"anet-like-{args.seconds:g}s.mp4"
    t0 = time.perf_counter()
    if not src.is_file():
        activitynet_like(src, args.seconds)
    print(f"source: {src.stat().st_size / 1e6:.1f} MB ({time.perf_counter() - t0:.0f} s to generate)")

    t0 = time.perf_counter()
    whole = decode_video(src, max_side=256)
    t_decode = time.perf_counter() - t0
    print(f"decoded whole at max_side 256 (FrameCache .npy): {whole.nbytes / 1e6:.0f} MB, {t_decode:.1f} s")
    settings = StoreSettings(max_side=256)
    shutil.rmtree(args.work / "store", ignore_errors=True)
    t0 = time.perf_counter()
    entry, info = prepare_video(src, args.work / "store", settings)
    print(
        f"prepared store (H.264 crf {settings.crf}, gop {settings.gop}, {info.width}x{info.height}): "
        f"{entry.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s to prepare"
    )

    for name, length in (("T-LoFi", 25), ("full", 100)):
        idx = np.unique(snippet_frame_indices(info.num_frames, length, 8, 8))
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            got = read_frames(entry, info, idx)
            times.append(time.perf_counter() - t0)
        print(
            f"read one {name} clip ({len(idx)} distinct frames) from the store: {min(times):.2f} s "
            f"(decode the source whole: {t_decode:.1f} s); {got.nbytes / 1e6:.0f} MB uint8"
        )
    del whole

    # copies of the entry stand for distinct videos
    copies = []
    for i in range(max(args.videos, 40)):
        dst = args.work / "store" / f"copy{i:04d}.mp4"
        if not dst.exists():
            dst.hardlink_to(entry)
            sidecar(dst).write_text(sidecar(entry).read_text())
        copies.append((dst, info))

    ratios = []
    for r in range(args.rounds):
        serial = batches_per_s(copies, 0, 3)
        parallel = batches_per_s(copies, 2, 6)
        ratios.append(parallel / serial)
        print(f"loader round {r + 1}: 0 workers {serial:.2f} batches/s, 2 workers {parallel:.2f}: {ratios[-1]:.2f}x")
    print(
        f"loader: 2 workers / 0 workers = {statistics.median(ratios):.2f}x median "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {args.rounds} rounds)"
    )
    if args.skip_epoch:
        return 0

    encoder = create_encoder("tsm_resnet_tiny").train()
    optim = OptimConfig(batch_size=4, epochs=1)
    store = copies[: args.videos]
    plan = training_plan(len(store), optim, seed=0, stream=("e",), shape=lambda e, s: (100, 32))
    loader = ClipLoader(dataset(store), plan, workers=2, prefetch=2)
    t0 = time.perf_counter()
    with PeakMemory() as peak:
        steps = 0
        for batch in loader.epoch(0):
            encoder(batch.to_device("cpu")).sum().backward()
            steps += 1
    print(
        f"one epoch of {len(store)} videos at full fidelity (L 100 x 8 frames, batch 4, 2 workers, tiny encoder): "
        f"{steps} steps in {time.perf_counter() - t0:.0f} s; peak memory of the process and its workers: "
        f"PSS {peak.pss / 2**30:.2f} GiB, RSS summed {peak.rss / 2**30:.2f} GiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
