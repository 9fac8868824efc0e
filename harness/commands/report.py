"""`lofi report tables`: parses the arguments and calls ``harness.report.build.build_report``."""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from harness.commands._options import add_config, add_config_options
from harness.errors import LofiError
from harness.modes import TABLE_KINDS as KINDS

EPILOG = """\
which rows each table shows:
  with --config, the config's sweep lists, in their order: ablation and memory tables sweep.ablation_modes,
  pre-training table sweep.pretrain_modes, encoders x heads table sweep.model_modes, controls table
  sweep.control_modes plus ACP on sweep.control_seeds (other runs are ignored); without it, every mode in the
  runs given, in the canonical order, and the control seeds are the seeds only ACP ran. ACP runs on the control
  seeds appear in the controls table only. ACP is the baseline of every comparison.

what it computes:
  mean ± sd over seeds of mAP@0.5/0.75/0.95 and average mAP (in %), from each run's row.json;
  Δ to ACP with a 95% paired bootstrap interval: videos of the test subset AND seeds resampled (--n-boot);
  p: two-sided paired permutation test over videos (--n-perm), Holm-corrected within each table.
  MDE under every table with tests: the smallest Δ detected with 80% power at two-sided alpha = 0.05,
  (z_0.975 + z_0.80) x SE = 2.80 x the bootstrap standard error of Δ; a table where no Δ is significant says so.
  Ablation table: the activation memory relative to full fidelity and, when e2e-full is among its rows, each
  configuration's share of the end-to-end gain, (config - ACP) / (e2e-full - ACP), with a 95% interval from one
  joint bootstrap (the same videos and seeds for ACP, the configuration and e2e-full); "n/a (no end-to-end
  gain)" when the e2e-full - ACP interval does not lie above 0.
  Controls table (what the benchmark can see): the floor (blind: the head on all-zero features), the positive
  control (e2e-full vs ACP), the negative control (ACP on the control seeds vs ACP on the sweep's seeds: the
  same configuration, paired by video only, which must not be flagged), each with Δ, interval, p and p (Holm);
  the class oracle (each run's test proposals labelled with the ground-truth video class: how much the
  classifier caps the table) and the classifier's top-1 accuracy (row.json "proposals" and "class_scores").
  The tests re-evaluate every run's predictions (row.json "predictions") on the ground truth, so the runs'
  prediction files must still exist (or pass --no-stats for tables without Δ, p, shares and oracle).

outputs (under --out):
  table_<kind>.md / .csv / .tex      one section per dataset/encoder/head; provenance under every table
  plot_map_vs_tiou_<group>.png       mAP vs tIoU, mean ± sd over seeds, per configuration
  plot_map_vs_memory_<group>.png     average mAP vs activation memory relative to full fidelity; ACP and
                                     e2e-full as horizontal reference lines

examples:
  lofi report tables --runs-glob 'results/synthetic/**/row.json' --config config/default.yaml --out results/
  lofi report tables --runs runs/acp-s0 runs/lofi-long-s0 --ground-truth data/smoke/annotations.json \\
      --out results/ --n-boot 1000 --seed 0 --which ablation,controls
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="tables and plots from finished runs (with significance tests)",
        description="Build reports from the tidy result rows (row.json) of finished runs.",
    )
    rsub = p.add_subparsers(dest="report_command", metavar="REPORT")
    rsub.required = True
    t = rsub.add_parser(
        "tables",
        help="paper-style tables (Markdown, CSV, LaTeX) + plots, with seeds and paired tests over videos",
        description="Build the ablation (paper Table 2), pre-training (Table 1), encoders × heads (Table 6), "
        "memory and controls tables from runs' row.json files. Published numbers are shown beside measured ones "
        "only for ActivityNet/HACS rows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", nargs="+", metavar="DIR", help="run folders (each holding row.json) or row.json files")
    src.add_argument(
        "--runs-glob",
        metavar="PATTERN",
        help="recursive glob of row.json files, e.g. 'results/synthetic/**/row.json' (quote it)",
    )
    add_config_options(
        t,
        required=False,
        config_help="experiment config whose sweep.*_modes choose and order each table's rows and whose "
        "sweep.control_seeds name the negative control's ACP runs (default: every mode in the runs)",
        set_help="override a value of --config, e.g. --set sweep.ablation_modes=[acp,e2e-full] (repeatable)",
    )
    t.add_argument(
        "--ground-truth",
        metavar="GT",
        default=None,
        help="annotations JSON for the tests (default: each row's ground_truth)",
    )
    t.add_argument("--out", required=True, metavar="DIR", help="folder for tables and plots (e.g. results/)")
    t.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    t.add_argument("--n-perm", type=int, default=None, help="permutations (default: same as --n-boot)")
    t.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    t.add_argument(
        "--which", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)} (default all)"
    )
    t.add_argument("--no-stats", action="store_true", help="skip the tests (no predictions needed)")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    t.add_argument(
        "--step-bench",
        type=Path,
        default=None,
        metavar="JSON",
        help="rows of `lofi bench step --json` (e.g. a GPU's): the memory table shows their peak memory, step time "
        "and frames/s per fidelity",
    )
    t.set_defaults(func=_run_tables)
    _register_power(rsub)


POWER_EPILOG = """\
what it computes (harness/report/power.py):
  for every mode against ACP (with --config: sweep.ablation_modes and sweep.control_modes; else every mode) and
  the negative control (ACP on the control seeds), the Δ of seed-mean average mAP split into a video part (1.96 x
  sd of Δ over resamples of the test videos, seeds fixed) and a seed part (1.96 x sd(per-seed Δ) / sqrt(seeds));
  the parts add in quadrature. With --halfwidth H (a 95% interval of +-H) or --effect D (a Δ of D detected with
  80% power at two-sided alpha = 0.05, i.e. SE <= D / 2.80): the test videos needed at 3, 5, 10, 20, 50 seeds
  (--grid) and the cheapest (videos, seeds) under cost = seeds x (--seed-cost + --video-cost x videos), from
  SE(V, S)^2 = sigma_v^2 / V + sigma_s^2 / S fitted to the measured parts. The default costs are this machine's
  synthetic sweep (docs/synthetic.md): ~1,000 CPU-s of training per seed, ~0.32 CPU-s per test video and seed.

examples:
  lofi report power results/ --config config/default.yaml
  lofi report power results/ --halfwidth 1.0
  lofi report power results/ --effect 0.5 --seed-cost 5e5 --video-cost 30
"""


def _register_power(rsub: argparse._SubParsersAction) -> None:
    p = rsub.add_parser(
        "power",
        help="video and seed parts of every Δ's interval, and the videos x seeds a target needs",
        description="Split each Δ vs ACP into its video and seed parts and size a run for a target half-width or "
        "a Δ to detect with 80% power.",
        epilog=POWER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", metavar="RESULTS", type=Path, help="a sweep's results folder (row.json files below it)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--halfwidth", type=float, metavar="H", help="target 95%% half-width of Δ, in points")
    goal.add_argument("--effect", type=float, metavar="D", help="Δ (points) to detect with 80%% power, alpha 0.05")
    add_config(p, required=False, help="config whose sweep lists choose the modes")
    p.add_argument("--ground-truth", metavar="GT", default=None, help="annotations JSON (default: each row's)")
    p.add_argument("--n-boot", type=int, default=1000, help="video resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--seed-cost", type=float, default=1000.0, help="cost of one seed's training (default 1000)")
    p.add_argument("--video-cost", type=float, default=0.32, help="cost per test video and seed (default 0.32)")
    p.add_argument("--grid", default="3,5,10,20,50", help="seed counts of the videos-needed columns")
    p.set_defaults(func=_run_power)


def _run_power(args: argparse.Namespace) -> int:
    from harness.report.power import format_power, sweep_decompositions, target_se
    from harness.report.rows import load_rows

    paths = sorted(glob.glob(str(args.results / "**" / "row.json"), recursive=True))
    if not paths:
        raise LofiError(f"{args.results}: no row.json below it; give a sweep's results folder (e.g. results/)")
    try:
        grid = [int(s) for s in args.grid.split(",") if s.strip()]
    except ValueError:
        raise LofiError(f"--grid {args.grid!r}: give comma-separated seed counts, e.g. 3,5,10") from None
    if any(s < 1 for s in grid):
        raise LofiError(f"--grid {args.grid!r}: seed counts must be >= 1")
    modes = None
    control_seeds = None
    if args.config:
        from harness.experiment import load_experiment

        sweep = load_experiment(args.config, []).sweep
        modes = list(dict.fromkeys((*sweep.ablation_modes, *sweep.control_modes)))
        control_seeds = sweep.control_seeds
    target, text = None, ""
    if args.halfwidth is not None or args.effect is not None:
        target = target_se(halfwidth=args.halfwidth, effect=args.effect)
        text = f"±{args.halfwidth:g} (95%)" if args.halfwidth is not None else f"detect Δ = {args.effect:g} (80% power)"
    groups = sweep_decompositions(
        load_rows(paths),
        modes=modes,
        control_seeds=control_seeds,
        n_boot=args.n_boot,
        seed=args.seed,
        ground_truth=args.ground_truth,
    )
    print(
        format_power(
            groups, target=target, target_text=text, seed_cost=args.seed_cost, video_cost=args.video_cost, grid=grid
        )
    )
    return 0


def _run_tables(args: argparse.Namespace) -> int:
    from harness.experiment import load_experiment
    from harness.report.build import build_report, table_modes
    from harness.report.rows import load_rows

    if args.overrides and not args.config:
        raise LofiError("--set needs --config (it overrides a value of that config)")
    if args.runs:
        paths = list(args.runs)
    else:
        paths = sorted(glob.glob(args.runs_glob, recursive=True))
        if not paths:
            raise LofiError(f"--runs-glob {args.runs_glob!r} matches no file; quote the pattern and check the folder")
    sweep = load_experiment(args.config, args.overrides).sweep if args.config else None
    step_bench = _read_step_bench(args.step_bench) if args.step_bench else ()
    written = build_report(
        load_rows(paths),
        out=args.out,
        kinds=[k.strip() for k in args.which.split(",") if k.strip()],
        modes=table_modes(sweep) if sweep else None,
        control_seeds=sweep.control_seeds if sweep else None,
        n_boot=args.n_boot,
        n_perm=args.n_perm,
        seed=args.seed,
        ground_truth=args.ground_truth,
        stats=not args.no_stats,
        plots=not args.no_plots,
        step_bench=step_bench,
    )
    for path in written:
        print(path)
    return 0


def _read_step_bench(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LofiError(f"{path}: no such file; write it with `lofi bench step --json {path}`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LofiError(f"{path}: not JSON ({exc}); write it with `lofi bench step --json {path}`") from None
    keys = {"fidelity", "precision", "batch", "step_s"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and keys <= r.keys() for r in rows):
        raise LofiError(f"{path}: not `lofi bench step --json` rows (a list of objects with {', '.join(sorted(keys))})")
    return rows
