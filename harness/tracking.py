"""MLflow tracking behind a small interface, so the core pipeline imports (and runs) without MLflow.

Default store: SQLite under ``results/`` (MLflow 3 deprecates file stores); ``MLFLOW_TRACKING_URI`` wins when
set. Metric names are made MLflow-legal here (``mAP@0.5`` → ``mAP_0.5``), once, for every caller.

Tracking never costs a result: the store is a copy of what a run writes into its own folder (row, metrics,
predictions). When the store fails mid-run (the SQLite file deleted or made read-only, the server gone), the first failure
is logged as one WARNING line naming the store and the cause (the traceback only at debug level, ``-vv``), tracking
is off for the rest of the process, the run goes on, and its row records the failure (``tracking_error``);
``lofi track sync RUN`` logs the run again from its files once the store is back. A store that fails before any
work (at the process's first run) and ``lofi track init`` (the sweep's set-up) stay strict: one-line error.

``tracking.defer`` (a SQLite store): runs are recorded beside the store and logged later by ``lofi track flush``,
so a job never imports MLflow (harness/tracking_deferred.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from harness.experiment import TrackingConfig

log = logging.getLogger(__name__)
STORE_FILE = "mlflow.db"


def store_uri(results: str | os.PathLike[str] = "results") -> str:
    """The SQLite store beside a results folder, ``sqlite:///<results>/mlflow.db``: the one place it is spelled."""
    return f"sqlite:///{Path(results).as_posix()}/{STORE_FILE}"


DEFAULT_URI = store_uri()
_ILLEGAL = re.compile(r"[^A-Za-z0-9_\-. /]")


def legal_name(name: str) -> str:
    """MLflow allows alphanumerics, '_', '-', '.', ' ', '/' in metric and param names."""
    return _ILLEGAL.sub("_", name)


def tracking_uri(cfg: TrackingConfig, default: str = DEFAULT_URI) -> str:
    """``tracking.uri`` if set, else ``$MLFLOW_TRACKING_URI``, else ``default``."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default


@functools.lru_cache(maxsize=8)
def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the checkout (with '+dirty' when it has changes), or 'unknown' outside git. Asked once per
    process (a run records it twice; each ask is two git processes)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Tracker(Protocol):
    """What a stage or run logs through: ``NullTracker`` (off), ``MlflowTracker`` (live), ``RecordingTracker``
    (``tracking.defer``: harness/tracking_deferred.py)."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class NullTracker:
    """Tracking turned off: every call is accepted and ignored."""

    run_id: str = ""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...


_failure = ""  # the first tracking failure of this process, "" while tracking works
_depth = 0  # runs open now in this process: a store failing while one is open fails mid-run


def tracking_failure() -> str:
    """The store and cause of this process's tracking failure ("" when none): the row's ``tracking_error``."""
    return _failure


def reset_tracking_failure() -> None:
    """Forget a failure (done when the outermost open run ends, so the next run of the process tries again)."""
    global _failure
    _failure = ""


def _cause(uri: str, exc: BaseException) -> str:
    """Why the store failed, in words: for a SQLite file, whether it is gone or read-only (SQLite says "readonly
    database" for both), else the error's own first line."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            return "the store file no longer exists (deleted or moved while the run was writing to it)"
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return "the store file or its folder is read-only"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def note_failure(uri: str, exc: BaseException) -> None:
    """Record (once per process) and report, in one WARNING line, that the store at ``uri`` failed."""
    global _failure
    if _failure:
        return
    _failure = f"{uri}: {_cause(uri, exc)}"
    log.warning(
        "tracking stopped, %s; the run goes on and writes its own files (row.json: tracking_error); log it again "
        "later with `lofi track sync RUN`",
        _failure,
    )
    log.debug("traceback of the tracking failure", exc_info=exc)


class _QuietStoreErrors(logging.Filter):
    """MLflow's SQL store logs every database error at ERROR with its traceback (~300 lines for a deleted store file)
    before raising it; ``note_failure`` reports it in one line, so the record is dropped unless logging is at debug
    level (``-vv``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.exc_info is None and "exception is caught" not in record.getMessage()) or (
            logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        )


_STORE_LOGGERS = ("mlflow.store.db.utils",)  # the loggers of MLflow's that log store errors with tracebacks


def _quiet_store_loggers() -> None:
    for name in _STORE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietStoreErrors) for f in logger.filters):
            logger.addFilter(_QuietStoreErrors())


class MlflowTracker:
    """One MLflow run. ``MlflowClient.log_batch`` splits long lists into requests within the server's limits
    (100 params or tags, 1000 metrics each) and truncates values past MLflow's length limits with a warning; only
    the names are ours to make legal. A store error in any call turns tracking off (``note_failure``)."""

    def __init__(self, client: Any, run_id: str, uri: str = "", *, strict: bool = False) -> None:
        self._client = client
        self.run_id = run_id
        self.uri = uri
        self.strict = strict  # raise store errors instead (``lofi track init``)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        from harness.errors import is_store_error

        if _failure and not self.strict:
            return
        try:
            getattr(self._client, method)(*args, **kwargs)
        except Exception as exc:
            if self.strict or not is_store_error(exc):
                raise
            note_failure(self.uri, exc)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._call("log_batch", self.run_id, params=[Param(legal_name(k), str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._call(
            "log_batch",
            self.run_id,
            metrics=[Metric(legal_name(k), float(v), now, step or 0) for k, v in metrics.items()],
        )

    def log_artifact(self, path: str | Path) -> None:
        self._call("log_artifact", self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("log_batch", self.run_id, tags=[RunTag(legal_name(k), str(v)) for k, v in tags.items()])

    def terminate(self, status: str) -> None:
        self._call("set_terminated", self.run_id, status=status)


# MLflow 3's UI opens an experiment by its recorded type: without this tag it guesses "GenAI" (traces, tokens) for
# an experiment with no logged models; "custom_model_development" opens the Runs table of a model-training project.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The saved runs-table view that answers "which configuration wins, over seeds": an experiment tag the UI reads
# when the page is opened with ?viewStateShareKey=<key> (the same place its own "Share" button writes to).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
COMPARE_VIEW = "lofi-compare"
CONFIGURATION_KIND = "configuration"  # the `kind` tag of a configuration's run (`harness.pipeline.run.run_all`)
# The columns of that view: the configuration (tags) and its final test metrics.
COMPARE_TAGS = ("mode", "seed", "fidelities", "r_t", "r_s", "L", "size", "encoder", "head")
COMPARE_METRICS = ("average_mAP", "mAP_0.50", "mAP_0.75", "mAP_0.95", "activation_rel")


def configuration_tags(row: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a configuration's run (from its row.json): what the compare view filters on and shows."""
    tags = {"kind": CONFIGURATION_KIND}
    tags.update({k: "" if row.get(k) is None else str(row[k]) for k in COMPARE_TAGS if k in row})
    return tags


ROW_METRIC_PREFIXES = ("mAP_", "average_mAP", "AR_", "AUC", "activation", "time_")


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a run's row that its MLflow run carries as metrics (final test metrics, memory, times)."""
    return {
        k: v
        for k, v in row.items()
        if k.startswith(ROW_METRIC_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def sync_run(
    cfg: TrackingConfig, *, row: Mapping[str, Any], params: Mapping[str, Any], metrics: Mapping[str, Any], files=()
) -> str:
    """Log a finished run again from its own files (``lofi track sync RUN``): a new MLflow run with the config as
    params, the row's configuration tags and metrics, the head's per-epoch history and ``files`` as artifacts.
    Strict: a store that still fails is an error. Returns the new run's id."""
    run_name = f"{row.get('dataset')}/{row.get('encoder')}/{row.get('head')}/{row.get('mode')}/seed{row.get('seed')}"
    tags = {"mode": str(row.get("mode")), "seed": str(row.get("seed")), "config_hash": str(row.get("config_hash"))}
    with start_run(cfg, run_name=run_name, tags={**tags, "synced": "true"}, strict=True) as run:
        run.log_params(params)
        run.set_tags(configuration_tags(row))
        run.log_metrics(row_metrics(row))
        for epoch, values in enumerate(metrics.get("history") or []):
            numbers = {f"head_{k}": v for k, v in values.items() if isinstance(v, (int, float))}
            run.log_metrics(numbers, step=epoch)
        for f in files:
            run.log_artifact(f)
    return run.run_id


def compare_view_state() -> dict[str, Any]:
    """The runs-table state of the compare view: configuration runs only (flat: their sweep parent is filtered
    out), grouped by mode with the mean over seeds, best average mAP first."""
    col = lambda kind, name: f"{kind}.`{name}`"  # the UI's column keys
    return {
        "searchFilter": f"tags.kind = '{CONFIGURATION_KIND}'",
        "orderByKey": col("metrics", "average_mAP"),
        "orderByAsc": False,
        "selectedColumns": [col("tags", t) for t in COMPARE_TAGS] + [col("metrics", m) for m in COMPARE_METRICS],
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "mode"}]},
        "groupsExpanded": {},
    }


def compare_path(experiment_id: str) -> str:
    """The UI route of the compare view (append to the server's address)."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARE_VIEW}&workflowType=machine_learning"


def _prepare_experiment(client: Any, experiment_id: str) -> None:
    """Record the experiment's type, the compare view and a note linking to it (idempotent)."""
    exp = client.get_experiment(experiment_id)
    want = {
        EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
        VIEW_TAG_PREFIX + COMPARE_VIEW: json.dumps(compare_view_state(), sort_keys=True),
        "mlflow.note.content": (
            "lofi-bench sweep. **Which configuration wins, over seeds:** "
            f"[configurations by mode, mean over seeds]({compare_path(experiment_id)}) "
            "(one row per mode; expand a group for its seeds; remove *Group by* for every run)."
        ),
    }
    for key, value in want.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


def ensure_experiment(cfg: TrackingConfig) -> str:
    """Create the store and the experiment if needed (do this once before parallel jobs start; a race between
    processes creating it is resolved by reading back the winner's experiment)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        exp_id = client.create_experiment(cfg.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id
    _prepare_experiment(client, exp_id)
    return exp_id


def prepare_experiment(cfg: TrackingConfig) -> str:
    """``ensure_experiment`` and (again, for an experiment made by an older version) its type, view and note."""
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment(cfg)
    _prepare_experiment(MlflowClient(tracking_uri=tracking_uri(cfg)), exp_id)
    return exp_id


@contextmanager
def start_run(
    cfg: TrackingConfig,
    *,
    run_name: str,
    parent_run_id: str = "",
    tags: Mapping[str, str] | None = None,
    strict: bool = False,
) -> Iterator[Tracker]:
    """A tracked run (child of ``parent_run_id`` when given); marks it FAILED if the body raises. Under torchrun
    only rank 0 logs. With ``tracking.defer`` and a SQLite store the run is recorded, not logged
    (harness/tracking_deferred.py), and MLflow is not imported. A store that fails mid-run (while another run of
    this process is open, e.g. a stage inside its configuration's run, or during the body) gives a ``NullTracker``
    after one WARNING line (module docstring); one that fails as the outermost run opens, before any work, or with
    ``strict`` (``lofi track init``, ``lofi track sync``) raises (one line at the CLI)."""
    global _depth
    from harness.errors import is_store_error
    from harness.pipeline.distributed import current

    if not cfg.enabled or not current().main or (_failure and not strict):
        yield NullTracker()
        return
    uri = tracking_uri(cfg)
    if cfg.defer and not strict:
        from harness.tracking_deferred import pending_folder, recording

        folder = pending_folder(uri)
        if folder is not None:
            with recording(
                folder,
                experiment=cfg.experiment,
                run_name=run_name,
                parent_run_id=parent_run_id,
                tags=tags or {},
                on_error=lambda exc: note_failure(str(folder), exc),  # names the records folder, not the store
            ) as recorder:
                yield recorder
            return
    from mlflow.tracking import MlflowClient

    # MLflow logs its own migrations at INFO on first use; keep our output readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _quiet_store_loggers()
    try:
        exp_id = ensure_experiment(cfg)
        client = MlflowClient(tracking_uri=uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags={legal_name(k): str(v) for k, v in all_tags.items()})
    except Exception as exc:
        if strict or not _depth or not is_store_error(exc):
            raise  # before any work: one line (harness.errors.user_message), fix the store and start again
        note_failure(uri, exc)
        yield NullTracker()
        return
    tracker = MlflowTracker(client, run.info.run_id, uri, strict=strict)
    _depth += 1
    try:
        try:
            yield tracker
        except BaseException:
            tracker.terminate("FAILED")
            raise
        tracker.terminate("FINISHED")
    finally:
        _depth -= 1
        if not _depth:
            reset_tracking_failure()
