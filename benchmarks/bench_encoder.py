"""Encoder forward + backward on CPU: the fused temporal shift against the plain one, and channels_last.

    python benchmarks/bench_encoder.py [--encoder tsm_resnet18] [--frames 16] [--size 112] [--repeats 5]

Each variant runs ``--repeats`` rounds interleaved with the others (so machine load hits all alike); the figure is
each variant's best round relative to the baseline's (plain shift, NCHW) in the same process. The GPU figures
come from ``benchmarks/gpu_check.sh`` (``lofi bench step --channels-last / --compile / --cudnn-benchmark``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import encoders.tsm as tsm
from encoders import create_encoder

FUSED = tsm.temporal_shift


def plain_shift(x: torch.Tensor, *, n_segment: int, shift_div: int = 8) -> torch.Tensor:
    """The shift as it was: a zero tensor and three slice copies."""
    n, c, h, w = x.shape
    fold = c // shift_div
    g = x.view(n // n_segment, n_segment, c, h, w)
    out = torch.zeros_like(g)
    out[:, :-1, :fold] = g[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = g[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = g[:, :, 2 * fold :]
    return out.view(n, c, h, w)


def step(encoder, x) -> float:
    t0 = time.perf_counter()
    encoder(x).sum().backward()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="tsm_resnet18")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip: 2 snippets x 8")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(1, args.frames // 8, 8, 3, args.size, args.size)
    variants = {
        "plain shift, NCHW": (plain_shift, False),
        "fused shift, NCHW": (FUSED, False),
        "plain shift, channels_last": (plain_shift, True),
        "fused shift, channels_last": (FUSED, True),
    }
    models = {k: create_encoder(args.encoder, channels_last=cl).train() for k, (_, cl) in variants.items()}
    best = {k: float("inf") for k in variants}
    for _ in range(args.repeats + 1):  # the first round warms up
        for k, (shift, _) in variants.items():
            tsm.temporal_shift = shift
            best[k] = min(best[k], step(models[k], x))
    tsm.temporal_shift = FUSED
    base = best["plain shift, NCHW"]
    print(f"{args.encoder}, {args.frames} frames at {args.size}^2, {args.threads} thread(s), best of {args.repeats}")
    for k, v in best.items():
        print(f"  {k:28s} {v:7.3f} s   {base / v:5.2f}x the plain NCHW step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
