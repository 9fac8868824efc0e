"""`lofi track init|ui|server`: set up the MLflow store of a sweep once, show how to browse it, serve it to many workers.

MLflow's SQLite store is created (schema migrations) on first use; parallel jobs that all "first use" it race.
`lofi track init` runs once before the sweep's parallel jobs (the Snakefile makes every training rule depend on
its output) and creates the store, the experiment and a parent "sweep" run whose id each job passes on as
``--parent-run-id``, so the MLflow UI shows the sweep as one tree.

The sweep's store: ``tracking.uri`` if set, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<sweep.results>/
mlflow.db`` — beside the sweep's other results, so the smoke and default sweeps never mix. The Snakefile writes
this choice into the resolved config it hands to every job.

Many workers (a cluster's jobs, parallel processes) share one MLflow tracking server instead of a SQLite file:
`lofi track server` starts `mlflow server` on a backend store (default the sweep's SQLite file: the server is then
its only writer) and an artifact root, bound to 127.0.0.1 unless --host says otherwise; jobs log to it when
``MLFLOW_TRACKING_URI=http://HOST:PORT`` (or ``tracking.uri``) points there.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from harness.commands._options import add_config_options
from harness.experiment import ExperimentConfig


def sweep_tracking_uri(cfg: ExperimentConfig) -> str:
    """Where a sweep's runs are logged (see the module docstring)."""
    from harness.tracking import store_uri, tracking_uri

    return tracking_uri(cfg.tracking, default=store_uri(cfg.sweep.results))


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
    add_config_options(i)
    i.add_argument("--out", required=True, type=Path, metavar="JSON", help="where to write the ids")
    i.set_defaults(func=_init)
    u = tsub.add_parser(
        "ui",
        help="print the `mlflow ui` command that shows the config's sweep",
        description="Print the exact `mlflow ui --backend-store-uri ...` command for the "
        "config's store (run it from the project root).",
    )
    add_config_options(u)
    u.add_argument("--url", default="http://127.0.0.1:5000", help="the UI's address (default %(default)s)")
    u.set_defaults(func=_ui)
    y = tsub.add_parser(
        "sync",
        help="log a finished run again from its own files (after the tracking store failed during it)",
        description="Log RUN (a run folder holding row.json, metrics.json, config.yaml) into the MLflow store as a "
        "new run: its config as params, its row's tags and metrics, the head's per-epoch history, metrics.json and "
        "the test predictions as artifacts; then record the new run id in RUN/row.json and clear its "
        "tracking_error. The store: --config's sweep store (default: RUN/config.yaml's), as `lofi track init`.",
        epilog="example:\n  lofi track sync results/synthetic/tsm_resnet_tiny/gtad/lofi-S/seed0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    y.add_argument("run", type=Path, metavar="RUN", help="the run folder (its row.json)")
    add_config_options(y, required=False, config_help="experiment config naming the store (default RUN/config.yaml)")
    y.set_defaults(func=_sync)
    f = tsub.add_parser(
        "flush",
        help="log the runs that jobs recorded with tracking.defer (the workflow's table jobs do it)",
        description="Log every run recorded beside the config's sweep store (tracking.defer: <store folder>/"
        "mlflow_pending/) as an MLflow run, with the times, params, metrics, tags, parent and artifacts it was "
        "recorded with and the tag lofi.record naming the record (the id row.json carries); logged records move to "
        "mlflow_pending/logged/. Safe to repeat and to run beside another flush (a lock; runs already in the store "
        "are not logged twice).",
        epilog="example:\n  lofi track flush --config results/config.resolved.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(f)
    f.add_argument(
        "--keep-going",
        action="store_true",
        help="a store that fails (or a file among the records that is not one) is one WARNING line and exit 0, the "
        "records stay pending (the table jobs: tracking never costs a table)",
    )
    f.set_defaults(func=_flush)
    _register_server(tsub)


def _register_server(tsub: argparse._SubParsersAction) -> None:
    """`lofi track server`: its own function, the longest of the subcommands' option sets."""
    s = tsub.add_parser(
        "server",
        help="start an MLflow tracking server for many parallel workers",
        description="Start `mlflow server` (runs until stopped). Point the workers at it with "
        "MLFLOW_TRACKING_URI=http://HOST:PORT (or tracking.uri). The server has no authentication: keep it on "
        "127.0.0.1, or on a cluster's internal network behind its firewall.",
        epilog="examples:\n  lofi track server --config config/activitynet.yaml --port 5000\n"
        "  lofi track server --backend-store-uri postgresql://mlflow@db/mlflow --artifacts-destination "
        "/shared/mlartifacts --host 0.0.0.0 --workers 4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(s, required=False, config_help="experiment config: its sweep's store by default")
    s.add_argument(
        "--backend-store-uri",
        default=None,
        metavar="URI",
        help="where runs are stored (default sqlite:///<sweep.results>/mlflow.db; results/ without --config)",
    )
    s.add_argument(
        "--artifacts-destination",
        default=None,
        metavar="DIR",
        help="where the server keeps artifacts (default <sweep.results>/mlartifacts)",
    )
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s: this machine only)")
    s.add_argument("--port", type=int, default=5000, help="port (default %(default)s)")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes (default 1 on a SQLite store, its only writer; 4 otherwise)",
    )
    s.add_argument(
        "--allowed-hosts",
        default=None,
        help="Host headers the server accepts beyond localhost and private IPs (mlflow's DNS-rebinding guard), "
        "e.g. login01.cluster,login01",
    )
    s.add_argument("--print-only", action="store_true", help="print the mlflow command instead of running it")
    s.set_defaults(func=_server)


def _init(args: argparse.Namespace) -> int:
    from harness.config import evolve, flatten, to_dict
    from harness.experiment import load_experiment
    from harness.io import write_json_atomic
    from harness.tracking import git_commit, prepare_experiment, start_run

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
            strict=True,  # the sweep's set-up: a store that does not work is an error before any job starts
        ) as run:
            run.log_params(flatten(to_dict(cfg)))
        info = {"experiment_id": prepare_experiment(tracking), "sweep_run_id": run.run_id, "tracking_uri": uri}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, info)
    print(json.dumps(info))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from harness.config import evolve, flatten, to_dict
    from harness.errors import LofiError
    from harness.experiment import load_experiment
    from harness.io import write_json_atomic
    from harness.pipeline.files import METRICS, ROW, results_file
    from harness.tracking import sync_run

    row_path, metrics_path = args.run / ROW, args.run / METRICS
    for f in (row_path, metrics_path):
        if not f.is_file():
            raise LofiError(f"{f}: not found; pass the folder of a finished run (lofi run --out)")
    try:
        row, metrics = (json.loads(f.read_text(encoding="utf-8")) for f in (row_path, metrics_path))
    except ValueError as exc:
        raise LofiError(f"{args.run}: unreadable row.json or metrics.json ({exc}); re-run the run") from None
    cfg = load_experiment(args.config or args.run / "config.yaml", args.overrides)
    if not cfg.tracking.enabled:
        raise LofiError(
            f"{args.config or args.run / 'config.yaml'}: tracking.enabled is false; pass --set tracking.enabled=true"
        )
    tracking = evolve(cfg.tracking, uri=sweep_tracking_uri(cfg))
    predictions = args.run / "head" / results_file("predictions", "testing")
    files = [f for f in (metrics_path, predictions) if f.is_file()]
    params = {**flatten(to_dict(cfg)), "mode": row.get("mode"), "seed": row.get("seed"), "commit": row.get("commit")}
    run_id = sync_run(tracking, row=row, params=params, metrics=metrics, files=files)
    write_json_atomic(row_path, {**row, "mlflow_run_id": run_id, "tracking_error": ""})
    print(f"{args.run}: logged as MLflow run {run_id} in {tracking.uri}")
    return 0


def _flush(args: argparse.Namespace) -> int:
    import logging

    from harness.config import evolve
    from harness.errors import LofiError, is_store_error
    from harness.experiment import load_experiment
    from harness.tracking import ensure_experiment
    from harness.tracking_deferred import flush, pending_folder

    cfg = load_experiment(args.config, args.overrides)
    uri = sweep_tracking_uri(cfg)
    if not cfg.tracking.enabled or pending_folder(uri) is None:
        print(f"nothing to flush: tracking is {'off' if not cfg.tracking.enabled else 'a server, logged live'}")
        return 0
    tracking = evolve(cfg.tracking, uri=uri)
    try:
        result = flush(uri, lambda name: ensure_experiment(evolve(tracking, experiment=name)))
    except Exception as exc:  # a store that fails, or a file in the records folder that is not a record
        if not (args.keep_going and (is_store_error(exc) or isinstance(exc, LofiError))):
            raise
        logging.getLogger(__name__).warning(
            "tracking flush failed (%s: %s); the records stay in %s; run `lofi track flush` again once the store works",
            type(exc).__name__,
            " ".join(str(exc).split())[:200],
            pending_folder(uri),
        )
        return 0
    for path in result.missing_artifacts:
        logging.getLogger(__name__).warning("%s: recorded as an artifact but gone; its run is logged without it", path)
    waiting = (
        f"; {len(result.waiting)} wait for their parent run's record (its job still running, or killed before it "
        "ended: `lofi track sync RUN` logs a finished run from its files)"
        if result.waiting
        else ""
    )
    print(f"logged {result.logged} run(s) into {uri} ({result.already} already there){waiting}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from harness.experiment import load_experiment
    from harness.tracking import compare_path

    cfg = load_experiment(args.config, args.overrides)
    uri = sweep_tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        print(f"mlflow ui --backend-store-uri {shlex.quote(uri)}")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return 0  # no sweep logged yet: opening the store would create it
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(cfg.tracking.experiment)
    base = uri if uri.startswith(("http://", "https://")) else args.url
    if exp is not None:
        print(f"which configuration wins, over seeds: {base.rstrip('/')}/{compare_path(exp.experiment_id)}")
    return 0


def server_command(args: argparse.Namespace) -> list[str]:
    """The `mlflow server` command line for ``lofi track server``'s arguments."""
    from harness.errors import ConfigError
    from harness.tracking import store_uri

    results = Path("results")
    if args.config is not None:
        from harness.experiment import load_experiment

        results = Path(load_experiment(args.config, args.overrides).sweep.results)
    backend = args.backend_store_uri or store_uri(results)
    if "://" not in backend:
        raise ConfigError(
            f"--backend-store-uri {backend!r} is not a database URI; use e.g. sqlite:///results/mlflow.db or "
            "postgresql://user@host/db"
        )
    if backend.startswith("sqlite:///"):
        Path(backend[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    artifacts = Path(args.artifacts_destination or results / "mlartifacts")
    workers = args.workers or (1 if backend.startswith("sqlite:") else 4)
    if workers < 1 or not 0 < args.port < 65536:
        raise ConfigError(f"--workers {workers} / --port {args.port}: use at least one worker and a port in 1-65535")
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(workers),
        *(["--allowed-hosts", args.allowed_hosts] if args.allowed_hosts else []),
    ]


def _server(args: argparse.Namespace) -> int:
    cmd = server_command(args)
    print(shlex.join(cmd), flush=True)
    if args.print_only:
        return 0
    print(f"workers: export MLFLOW_TRACKING_URI=http://{args.host}:{args.port}", flush=True)
    # mlflow server is a tree (uvicorn, a job runner, its consumers): run it as one process group and stop all of
    # it on SIGTERM/SIGINT/SIGHUP (harness/procgroup.py); exec-ing mlflow left the consumers orphaned
    from harness.procgroup import run_group

    return run_group(cmd)
