"""`lofi bench memory`: the memory of one end-to-end training step at full fidelity and at the paper's LoFi settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.commands._options import add_config
from harness.errors import ConfigError

MEMORY_DESCRIPTION = """\
Run one training step (encoder forward on random video, head, scalar loss, backward) at full fidelity
(--snippets L x --size S^2) and at the paper's low-fidelity settings, and report its memory:

  full  L snippets, S x S            S   r_s = 2:  L, S/2 x S/2
  T     r_t = 4:  L/4, S x S          ST  r_t = 2, r_s = sqrt(2):  L/2, S/sqrt(2) x S/sqrt(2)

activation bytes: the tensors autograd keeps for the backward pass (each storage once, weights excluded). This
  is what LoFi reduces; it is exact, the same on every device, and grows linearly with --batch.
peak bytes (CUDA only): torch.cuda.max_memory_allocated over the step; adds weights, gradients, temporary
  buffers and allocator rounding to the activations.

--device meta computes activation bytes without allocating any memory or computing anything, so full fidelity
(100 x 8 x 224^2) of a ResNet50 can be measured on a laptop in seconds.

S, T and ST are each designed to need about 1/4 of full fidelity's activations; the head's L x L proposal map
scales with L^2, so heads with a big map save more than 4x under T and ST.
"""

MEMORY_EPILOG = """\
examples:
  lofi bench memory --encoder tsm_resnet18 --head gtad --snippets 100 --size 224 --frames 8 --device meta
  lofi bench memory --encoder tsm_resnet_tiny --head bmn --snippets 32 --size 64 --frames 2 --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="measure the cost of training steps (memory, step time)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench_sub.required = True
    memory = bench_sub.add_parser(
        "memory",
        help="activation memory of one training step at full, S, T and ST fidelity",
        description=MEMORY_DESCRIPTION,
        epilog=MEMORY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    memory.add_argument("--encoder", required=True, help="encoder name (see encoders.list_encoders())")
    memory.add_argument("--head", required=True, help="TAL head name (gtad, bmn)")
    memory.add_argument("--snippets", type=int, required=True, help="full-fidelity snippets per video L (paper: 100)")
    memory.add_argument("--size", type=int, required=True, help="full-fidelity frame side S in pixels (paper: 224)")
    memory.add_argument("--frames", type=int, required=True, help="frames per snippet F")
    memory.add_argument("--batch", type=int, default=1, help="videos per step B (memory is linear in B; default 1)")
    memory.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda", "meta"), help="where to run the step (default cpu)"
    )
    memory.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="checkpoint each encoder stage (keeps only stage inputs; recomputation shows in peak bytes only)",
    )
    memory.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="run the forward under autocast")
    memory.add_argument("--json", action="store_true", help='print {"full": bytes, "S": .., "T": .., "ST": ..}')
    add_config(
        memory,
        required=False,
        help="take the head's widths from this experiment config (as the runs build it); default: the published head's",
    )
    memory.set_defaults(func=run_memory)
    _register_step(bench_sub)


STEP_DESCRIPTION = """\
Time one LoFi training step (encoder + TAL head + loss + backward + SGD step) at full fidelity and at the paper's
S, T and ST settings, in fp32 and under bf16 autocast, first on a batch already on the device, then for --steps
steps fed by the real input pipeline (worker processes, prefetch, pinned memory, uint8 frames resized on the
device) from the prepared store of --videos generated ActivityNet-like videos (640x360, 30 fps, H.264,
--seconds long, written once under --work).

columns: step s (median, batch on the device), videos/s and frames/s (B*L*F per second) of that step, peak GiB
(CUDA only), load s/batch (a worker's time to decode and sample one batch), wait s/step (time the loop waited
for the loader), loader step s (wall time per step with the loader), busy (the device's share of that wall time).
"""

STEP_EPILOG = """\
examples:
  lofi bench step --encoder tsm_resnet_tiny --head gtad --snippets 16 --frames 2 --size 32 --batch 2 \\
      --videos 4 --seconds 4 --precision fp32 --steps 3 --work /tmp/lofi-bench
  lofi bench step --encoder tsm_resnet18 --head gtad --snippets 100 --frames 8 --stride 8 --size 224 \\
      --batch 16 --full-batch 4 --videos 32 --seconds 120 --workers 14 --device cuda --work /tmp/lofi-bench
"""


def _register_step(bench_sub: argparse._SubParsersAction) -> None:
    step = bench_sub.add_parser(
        "step",
        help="step time, throughput, peak memory and loader keep-up per fidelity and precision",
        description=STEP_DESCRIPTION,
        epilog=STEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    step.add_argument("--encoder", required=True, help="encoder name (see encoders.list_encoders())")
    step.add_argument("--head", required=True, help="TAL head name (gtad, bmn)")
    step.add_argument("--snippets", type=int, required=True, help="full-fidelity snippets per video L")
    step.add_argument("--frames", type=int, required=True, help="frames per snippet F")
    step.add_argument("--stride", type=int, default=1, help="frames between a snippet's frames (default 1)")
    step.add_argument("--size", type=int, required=True, help="full-fidelity frame side S")
    step.add_argument("--batch", type=int, default=16, help="videos per step (default 16)")
    step.add_argument("--full-batch", type=int, default=None, help="videos per step at full fidelity (default --batch)")
    step.add_argument("--precision", action="append", choices=("fp32", "bf16"), help="repeatable; default both")
    step.add_argument(
        "--fidelity", action="append", choices=("full", "S", "T", "ST"), help="repeatable; default all four"
    )
    step.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    step.add_argument("--videos", type=int, default=16, help="generated videos (default 16)")
    step.add_argument("--seconds", type=float, default=120.0, help="length of each generated video (default 120)")
    step.add_argument("--max-side", type=int, default=256, help="the store's frame side bound (default 256)")
    step.add_argument("--work", type=Path, required=True, help="folder for the generated videos and their store")
    step.add_argument("--workers", type=int, default=0, help="loader worker processes (default 0)")
    step.add_argument("--prefetch", type=int, default=2, help="batches each worker prepares ahead (default 2)")
    step.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    step.add_argument("--repeats", type=int, default=5, help="timed steps on a device batch (default 5)")
    step.add_argument("--steps", type=int, default=20, help="timed steps with the loader (default 20)")
    step.add_argument("--channels-last", action="store_true", help="encoder in channels_last memory format")
    step.add_argument("--grad-checkpointing", action="store_true", help="checkpoint each encoder stage")
    step.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    step.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    add_config(step, required=False, help="take the head's widths from this experiment config")
    step.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    step.set_defaults(func=run_step)


def run_step(args: argparse.Namespace) -> int:
    import os

    import torch

    from harness.bench.step import bench_step, generated_store, rows_json, rows_table

    for flag in ("snippets", "frames", "stride", "size", "batch", "videos", "steps", "repeats"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, got {args.seconds}")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    store = generated_store(
        args.work, videos=args.videos, seconds=args.seconds, max_side=args.max_side, processes=os.cpu_count() or 1
    )
    rows = bench_step(
        args.encoder,
        args.head,
        store=store,
        batch=args.batch,
        full_batch=args.full_batch,
        snippets=args.snippets,
        frames=args.frames,
        stride=args.stride,
        size=args.size,
        device=args.device,
        precisions=args.precision or ("fp32", "bf16"),
        fidelities=args.fidelity or ("full", "S", "T", "ST"),
        warmup=args.warmup,
        repeats=args.repeats,
        steps=args.steps,
        workers=args.workers,
        prefetch=args.prefetch,
        encoder_kwargs={"channels_last": args.channels_last, "grad_checkpointing": args.grad_checkpointing},
        head_kwargs=_config_head_kwargs(args.config, args.head),
        compile=args.compile,
    )
    print(
        f"{args.encoder} + {args.head}, {args.frames} frames/snippet (stride {args.stride}), device {args.device}, "
        f"{args.workers} loader workers, {args.videos} generated videos of {args.seconds:g} s "
        f"(store: {args.max_side} px H.264)"
    )
    print(rows_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows_json(rows), indent=1))
    return 0


def _config_head_kwargs(config: str | None, head: str) -> dict:
    if config is None:
        return {}
    from harness.experiment import load_experiment
    from harness.pipeline.models import head_kwargs

    return head_kwargs(load_experiment(config), head)


def run_memory(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from harness.bench.memory import measure_fidelities

    for flag in ("snippets", "size", "frames", "batch"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu or --device meta")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    reports = measure_fidelities(
        args.encoder,
        args.head,
        batch=args.batch,
        snippets=args.snippets,
        frames=args.frames,
        size=args.size,
        device=args.device,
        amp_dtype=amp_dtype,
        encoder_kwargs={"grad_checkpointing": args.grad_checkpointing},
        head_kwargs=_config_head_kwargs(args.config, args.head),
    )
    if args.json:
        print(json.dumps({name: r.activation_bytes for name, r in reports.items()}))
        return 0
    full = reports["full"]
    rows = []
    for name, r in reports.items():
        row = [
            name,
            r.snippets,
            r.size,
            f"{r.activation_bytes / 2**20:.1f}",
            f"{r.activation_bytes / full.activation_bytes:.3f}",
            f"{r.head_activation_bytes / 2**20:.1f}",
        ]
        if full.peak_bytes is not None and r.peak_bytes is not None:
            row += [f"{r.peak_bytes / 2**20:.1f}", f"{r.peak_bytes / full.peak_bytes:.3f}"]
        rows.append(row)
    headers = ["fidelity", "L", "size", "activation MiB", "vs full", "of which head MiB"]
    if full.peak_bytes is not None:
        headers += ["peak MiB", "peak vs full"]
    print(
        f"{args.encoder} + {args.head}, batch {args.batch}, {args.frames} frames/snippet, device {args.device}, "
        f"grad checkpointing {'on' if args.grad_checkpointing else 'off'}; "
        f"weights {full.param_bytes / 2**20:.1f} MiB"
    )
    print(tabulate(rows, headers=headers, disable_numparse=True))
    return 0
