"""MLflow tracking behind a small interface, so the core pipeline imports (and runs) without MLflow.

Default store: SQLite under ``results/`` (MLflow 3 deprecates file stores); ``MLFLOW_TRACKING_URI`` wins when
set. Metric names are made MLflow-legal here (``mAP@0.5`` → ``mAP_0.5``), once, for every caller.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.experiment import TrackingConfig

log = logging.getLogger(__name__)
DEFAULT_URI = "sqlite:///results/mlflow.db"
_ILLEGAL = re.compile(r"[^A-Za-z0-9_\-. /]")


def legal_name(name: str) -> str:
    """MLflow allows alphanumerics, '_', '-', '.', ' ', '/' in metric and param names."""
    return _ILLEGAL.sub("_", name)


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the checkout (with '+dirty' when it has changes), or 'unknown' outside git."""
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


class NullTracker:
    """Tracking turned off: every call is accepted and ignored."""

    run_id: str = ""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class MlflowTracker:
    """One MLflow run. ``MlflowClient.log_batch`` splits long lists into requests within the server's limits
    (100 params or tags, 1000 metrics each) and truncates values past MLflow's length limits with a warning; only
    the names are ours to make legal."""

    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._client.log_batch(self.run_id, params=[Param(legal_name(k), str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id, metrics=[Metric(legal_name(k), float(v), now, step or 0) for k, v in metrics.items()]
        )

    def log_artifact(self, path: str | Path) -> None:
        self._client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(legal_name(k), str(v)) for k, v in tags.items()])


def ensure_experiment(cfg: TrackingConfig) -> str:
    """Create the store and the experiment if needed (do this once before parallel jobs start)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    return exp.experiment_id if exp is not None else client.create_experiment(cfg.experiment)


@contextmanager
def start_run(
    cfg: TrackingConfig,
    *,
    run_name: str,
    parent_run_id: str = "",
    tags: Mapping[str, str] | None = None,
) -> Iterator[NullTracker | MlflowTracker]:
    """A tracked run (child of ``parent_run_id`` when given); marks it FAILED if the body raises. Under torchrun
    only rank 0 logs."""
    from harness.pipeline.distributed import current

    if not cfg.enabled or not current().main:
        yield NullTracker()
        return
    from mlflow.tracking import MlflowClient

    # MLflow logs its own migrations at INFO on first use; keep our output readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    exp_id = ensure_experiment(cfg)
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags={legal_name(k): str(v) for k, v in all_tags.items()})
    tracker = MlflowTracker(client, run.info.run_id)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
