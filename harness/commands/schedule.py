"""`lofi schedule`: print the fidelity the LoFi stage uses at each epoch or iteration."""

from __future__ import annotations

import argparse
import json
import math

from harness.errors import LofiError
from harness.schedule import CYCLES, schedule_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule",
        help="show a LoFi fidelity schedule (S/T/ST, long or short cycle)",
        description="Print the fidelity (name, r_t, r_s) the LoFi stage trains at: one entry per epoch for fixed "
        "and long-cycle schedules, one per iteration (mini-batch) for the short cycle. r_t divides the number of "
        "snippets, r_s the frame side.",
        epilog="examples:\n  lofi schedule --cycle long --epochs 6 --json\n"
        "  lofi schedule --cycle short --epochs 1 --iterations-per-epoch 48 --c-s 16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cycle", required=True, choices=CYCLES, help="schedule: fixed S/T/ST/full/custom or long/short")
    p.add_argument("--epochs", type=int, required=True, help="number of LoFi epochs")
    p.add_argument("--iterations-per-epoch", type=int, default=1, help="mini-batches per epoch (short cycle)")
    p.add_argument("--c-l", type=int, default=1, help="long cycle: epochs per fidelity (paper: 1)")
    p.add_argument("--c-s", type=int, default=16, help="short cycle: mini-batches per fidelity (paper: 16)")
    p.add_argument("--r-t", type=float, default=1.0, help="custom cycle: temporal ratio")
    p.add_argument("--r-s", type=float, default=1.0, help="custom cycle: spatial ratio")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, r_t, r_s}")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    for flag in ("r_t", "r_s"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= 1):
            option = "--" + flag.replace("_", "-")
            raise LofiError(f"{option} {value:g}: must be a finite ratio >= 1 (below 1 would exceed full fidelity)")
    table = schedule_table(
        args.cycle,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        c_l=args.c_l,
        c_s=args.c_s,
        custom=(args.r_t, args.r_s),
    )
    rows = [f.as_dict() for f in table]
    if args.json:
        print(json.dumps(rows))
    else:
        unit = "iteration" if args.cycle == "short" else "epoch"
        print(
            tabulate(
                [[i, r["name"], r["r_t"], r["r_s"]] for i, r in enumerate(rows)], headers=[unit, "name", "r_t", "r_s"]
            )
        )
    return 0
