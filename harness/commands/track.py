"""`lofi track init|ui`: set up the MLflow store of a sweep once, and show how to browse it.

MLflow's SQLite store is created (schema migrations) on first use; parallel jobs that all "first use" it race.
`lofi track init` runs once before the sweep's parallel jobs (the Snakefile makes every training rule depend on
its output) and creates the store, the experiment and a parent "sweep" run whose id each job passes on as
``--parent-run-id``, so the MLflow UI shows the sweep as one tree.

The sweep's store: ``tracking.uri`` if set, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<sweep.results>/
mlflow.db`` — beside the sweep's other results, so the smoke and default sweeps never mix. The Snakefile writes
this choice into the resolved config it hands to every job.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

from harness.experiment import ExperimentConfig


def sweep_tracking_uri(cfg: ExperimentConfig) -> str:
    """Where a sweep's runs are logged (see the module docstring)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.sweep.results).as_posix()}/mlflow.db"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "track",
        help="MLflow: create a sweep's store and parent run; print the UI command",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = p.add_subparsers(dest="track_command", metavar="SUBCOMMAND")
    tsub.required = True
    i = tsub.add_parser(
        "init",
        help="create the store, the experiment and the parent 'sweep' run; write their ids",
        description="Create the MLflow store and experiment of the config's sweep and a parent "
        '\'sweep\' run; write {"experiment_id", "sweep_run_id", "tracking_uri"} to --out '
        "(empty ids when tracking.enabled is false). Run once before parallel jobs start.",
        epilog="example:\n  lofi track init --config config/smoke.yaml --out results/smoke/mlflow_sweep.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("--config", required=True, type=Path, metavar="FILE", help="experiment config (YAML)")
    i.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )
    i.add_argument("--out", required=True, type=Path, metavar="JSON", help="where to write the ids")
    i.set_defaults(func=_init)
    u = tsub.add_parser(
        "ui",
        help="print the `mlflow ui` command that shows the config's sweep",
        description="Print the exact `mlflow ui --backend-store-uri ...` command for the "
        "config's store (run it from the project root).",
    )
    u.add_argument("--config", required=True, type=Path, metavar="FILE", help="experiment config (YAML)")
    u.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )
    u.set_defaults(func=_ui)


def _init(args: argparse.Namespace) -> int:
    from harness.config import evolve, flatten, to_dict
    from harness.experiment import load_experiment
    from harness.io import write_json_atomic
    from harness.tracking import ensure_experiment, git_commit, start_run

    cfg = load_experiment(args.config, args.overrides)
    uri = sweep_tracking_uri(cfg)
    info = {"experiment_id": "", "sweep_run_id": "", "tracking_uri": ""}
    if cfg.tracking.enabled:
        tracking = evolve(cfg.tracking, uri=uri)
        # The parent holds no work of its own (it ends FINISHED at once); its children (the jobs) attach by id.
        with start_run(
            tracking,
            run_name=f"sweep {cfg.data.name} {cfg.sweep.results}",
            tags={"kind": "sweep", "config": str(args.config), "commit": git_commit()},
        ) as run:
            run.log_params(flatten(to_dict(cfg)))
        info = {"experiment_id": ensure_experiment(tracking), "sweep_run_id": run.run_id, "tracking_uri": uri}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, info)
    print(json.dumps(info))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from harness.experiment import load_experiment

    cfg = load_experiment(args.config, args.overrides)
    print(f"mlflow ui --backend-store-uri {shlex.quote(sweep_tracking_uri(cfg))}")
    return 0
