"""Forward+backward cost of the G-TAD head vs temporal length, as ratios to L = 100 measured in the same run.

    python benchmarks/bench_heads.py                    # B=2, D_in=400, L in 100/50/25, both alignment paths
    python benchmarks/bench_heads.py --lengths 100 25 --repeats 5 --paths materialised

Per path, one model serves every length; each length gets ``--warmup`` untimed steps (the first builds and caches
the alignment map for that L), then ``--repeats`` timed steps, interleaved across lengths so that load from other
processes on a shared machine hits every length alike; the median and the minimum are reported. Absolute seconds depend on the
machine; the ratios to the first length (L = 100) are what to compare (LoFi's T-fidelity saving in the head).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass

import torch

from heads.gtad import GTAD

log = logging.getLogger("bench_heads")


@dataclass(frozen=True)
class Timing:
    path: str
    length: int
    seconds: float  # median
    fastest: float  # minimum: the least disturbed by other processes on a shared machine
    first_seconds: float  # the first step: includes building the alignment map for this L


def time_step(model: GTAD, x: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = model(x)
    total = out["start"].sum() + out["end"].sum() + out["iou_map"].sum()
    total.backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    *, path: str, lengths: list[int], batch: int, in_features: int, repeats: int, warmup: int, device: str, seed: int
) -> list[Timing]:
    """Median step time per length; lengths are interleaved within each repeat so that load from other processes
    on a shared machine hits every length alike and the ratios stay meaningful."""
    torch.manual_seed(seed)
    model = GTAD(in_features, max(lengths), fused_projection=(path == "fused")).to(device)
    inputs = {length: torch.randn(batch, in_features, length, device=device) for length in lengths}
    first = {length: time_step(model, inputs[length]) for length in lengths}
    for _ in range(max(0, warmup - 1)):
        for length in lengths:
            time_step(model, inputs[length])
    samples: dict[int, list[float]] = {length: [] for length in lengths}
    for _ in range(repeats):
        for length in lengths:
            samples[length].append(time_step(model, inputs[length]))
    timings = []
    for length in lengths:
        seconds = statistics.median(samples[length])
        log.info(
            "%s L=%d: median %.3f s of %s (first step %.3f s)",
            path,
            length,
            seconds,
            [round(s, 3) for s in samples[length]],
            first[length],
        )
        timings.append(Timing(path, length, seconds, min(samples[length]), first[length]))
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 50, 25], help="first one is the baseline")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--in-features", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--paths", nargs="+", default=["materialised", "fused"], choices=["materialised", "fused"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    params = sum(p.numel() for p in GTAD(args.in_features, args.lengths[0]).parameters())
    print(f"gtad parameters (in_features={args.in_features}): {params:,}")
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__}")
    print(f"{'path':<13}{'L':>5}{'median s':>10}{'ratio':>8}{'min s':>9}{'ratio':>8}{'first s':>10}")
    for path in args.paths:
        timings = measure(
            path=path,
            lengths=args.lengths,
            batch=args.batch,
            in_features=args.in_features,
            repeats=args.repeats,
            warmup=args.warmup,
            device=args.device,
            seed=args.seed,
        )
        base, base_min = timings[0].seconds, timings[0].fastest
        for t in timings:
            print(
                f"{t.path:<13}{t.length:>5}{t.seconds:>10.3f}{t.seconds / base:>8.3f}"
                f"{t.fastest:>9.3f}{t.fastest / base_min:>8.3f}{t.first_seconds:>10.3f}"
            )


if __name__ == "__main__":
    main()
