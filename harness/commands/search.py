"""`lofi search`: Optuna search over the LoFi ratios (r_t, r_s) on the validation split, with its report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.commands._options import add_config_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="Optuna search over (r_t, r_s): validation mAP of the full lofi-custom chain (+ report)",
        description="A seeded, resumable Optuna study over the temporal ratio r_t and spatial ratio r_s "
        "(ranges: sweep.optuna.r_t / r_s), maximising the VALIDATION average mAP of the full chain in mode "
        "lofi-custom; trials share one ACP pre-training (OUT/shared/) and run in OUT/trials/<n>. Poor trials are "
        "pruned on the per-epoch validation mAP of the head (MedianPruner; sweep.optuna.pruning). The study lives "
        "in its own storage (default the journal file OUT/optuna.journal; or an RDB URL); re-running the same "
        "command resumes it and runs only the trials still missing (trials of a killed worker are failed and not "
        "counted). Any number of workers may run the same command on one storage at once (add --no-report to "
        "all but a last call): together they finish exactly --trials trials. The best ratios are then re-run with "
        "sweep.optuna.fresh_seeds and reported on the test split.",
        epilog="examples:\n  lofi search --config config/smoke.yaml --out results/smoke/optuna --trials 3\n"
        "  lofi search --config config/default.yaml --out results/optuna --multi-objective "
        "--report results/optuna_rt_rs.md"
        "\n  for i in 1 2 3 4; do lofi search --config config/smoke.yaml --out results/smoke/optuna --trials 12 "
        "--no-report & done; wait   # 4 workers, one study",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(p)
    p.add_argument("--out", required=True, type=Path, help="search folder (trials/, shared/, optuna.db)")
    p.add_argument(
        "--trials", type=int, default=None, help="finished trials wanted in total (default sweep.optuna.trials)"
    )
    p.add_argument(
        "--multi-objective",
        action="store_true",
        default=None,
        help="maximise validation mAP and minimise activation memory (no pruning); "
        "default sweep.optuna.multi_objective",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="a journal file (PATH.journal; default OUT/optuna.journal) or an RDB URL (postgresql://…, sqlite:///…)",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="Markdown report (default OUT/optuna_rt_rs.md); the plots are written beside it",
    )
    p.add_argument("--no-report", action="store_true", help="run the study only (no fresh-seed re-runs, no report)")
    p.add_argument("--pruner-startup-trials", type=int, default=3, help="finished trials before pruning starts")
    p.add_argument("--pruner-warmup-steps", type=int, default=1, help="head epochs of a trial before it can be pruned")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from harness.config import evolve
    from harness.experiment import load_experiment
    from harness.search.study import PrunerOptions, run_study
    from harness.search.summary import best_trial, write_report

    cfg = load_experiment(args.config, list(args.overrides))
    # A search is one long process (every trial in it): MLflow's import is paid once, so it logs live
    # (tracking.defer saves short sweep jobs that import; nothing would flush a search's records).
    cfg = evolve(cfg, tracking=evolve(cfg.tracking, defer=False))
    result = run_study(
        cfg,
        args.out,
        args.trials,
        multi_objective=args.multi_objective,
        storage=args.storage,
        pruner=PrunerOptions(args.pruner_startup_trials, args.pruner_warmup_steps),
    )
    summary: dict[str, object] = {
        "study": result.study_name,
        "storage": result.storage,
        "finished_trials": result.counted,
        "ran": result.ran,
    }
    if any(t.state.name == "COMPLETE" for t in result.study.get_trials(deepcopy=False)):
        b = best_trial(result.study)
        summary.update(best_trial=b.number, r_t=b.params["r_t"], r_s=b.params["r_s"], val_average_mAP=b.values[0])
    if not args.no_report:
        summary["report"] = str(write_report(result, cfg, args.out, args.report))
    print(json.dumps(summary))
    return 0
