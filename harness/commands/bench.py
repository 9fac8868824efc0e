"""`lofi bench memory`: the memory of one end-to-end training step at full fidelity and at the paper's LoFi settings."""

from __future__ import annotations

import argparse
import json

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
    bench = subparsers.add_parser("bench", help="measure the cost of training steps (memory)")
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
    memory.add_argument(
        "--config",
        default=None,
        help="take the head's widths from this experiment config (as the runs build it); default: the published head's",
    )
    memory.set_defaults(func=run_memory)


def _config_head_kwargs(config: str | None, head: str) -> dict:
    if config is None:
        return {}
    from harness.experiment import load_experiment
    from harness.pipeline.models import head_kwargs

    return head_kwargs(load_experiment(config), head)


def run_memory(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from harness.memory import measure_fidelities

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
