"""Forward+backward cost of the G-TAD head vs temporal length, as ratios to L = 100 measured in the same run.

    python benchmarks/bench_heads.py                    # B=2, D_in=400, L in 100/50/25, both alignment paths
    python benchmarks/bench_heads.py --lengths 100 25 --repeats 5 --paths materialised

Each configuration runs ``--warmup`` untimed steps (the first one builds and caches the alignment map), then
``--repeats`` timed steps; the median is reported. Absolute seconds depend on the machine; the ratios to L = 100
are what to compare (LoFi's T-fidelity saving in the head).
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
    seconds: float
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
    torch.manual_seed(seed)
    model = GTAD(in_features, max(lengths), fused_projection=(path == "fused")).to(device)
    timings = []
    for length in lengths:
        x = torch.randn(batch, in_features, length, device=device)
        first = time_step(model, x)
        for _ in range(max(0, warmup - 1)):
            time_step(model, x)
        seconds = statistics.median(time_step(model, x) for _ in range(repeats))
        log.info("%s L=%d: %.3f s (first step %.3f s)", path, length, seconds, first)
        timings.append(Timing(path, length, seconds, first))
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    params = sum(p.numel() for p in GTAD(args.in_features, args.lengths[0]).parameters())
    print(f"gtad parameters (in_features={args.in_features}): {params:,}")
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__}")
    print(f"{'path':<13}{'L':>5}{'fwd+bwd s':>12}{'ratio':>9}{'first s':>10}")
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
        base = timings[0].seconds
        for t in timings:
            print(f"{t.path:<13}{t.length:>5}{t.seconds:>12.3f}{t.seconds / base:>9.3f}{t.first_seconds:>10.3f}")


if __name__ == "__main__":
    main()
