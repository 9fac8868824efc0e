"""Deferred MLflow tracking (``tracking.defer``): a job records its runs as JSON files beside the store, and one
process logs them all (``lofi track flush``; the workflow's table jobs do it before they build a table).

Why: every sweep job is its own process, and importing MLflow and opening its SQLite store costs ~3 CPU-s
(``benchmarks/bench_tracking.py``) — a tenth of the default benchmark's jobs, which train for ~30 s each. A record
costs nothing to write; the flush pays the import once. What is lost: live curves in the MLflow UI while a job runs
(the runs appear when the flush runs), so the real-data configs keep ``defer: false``.

A record is ``<store folder>/mlflow_pending/<record id>.json``: the run's name, parent, tags, params, metrics (with
their steps and times), artifact paths, status and start/end times, written atomically when the run ends (FINISHED
or FAILED; a killed job leaves none, where a live run would stay RUNNING). ``lofi track flush`` logs each record as
one MLflow run with the times it was recorded at and the tag ``lofi.record`` = its id (the id the run's row.json and
done.json carry as ``mlflow_run_id``), then moves it to ``mlflow_pending/logged/`` with the MLflow run id. A flush
holds a lock on the folder (two table jobs flush one after the other) and skips records already in the store (a
flush killed between logging a run and moving its record does not log it twice). A record whose parent is itself
a record not yet written (a configuration's run still open in another job) waits for the next flush.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import LofiError
from harness.io import write_json_atomic
from harness.tracking import legal_name

log = logging.getLogger(__name__)

PENDING_DIR = "mlflow_pending"
LOGGED_DIR = "logged"
RECORD_PREFIX = "deferred-"  # a record's id: what row.json says instead of an MLflow run id
RECORD_TAG = "lofi.record"  # the MLflow tag that carries it once logged
_LOCK = ".flush.lock"


def pending_folder(uri: str) -> Path | None:
    """Where runs logged to ``uri`` are recorded when deferred: beside a SQLite store; None for a tracking server
    (jobs log to a server live: it is one shared writer, and its jobs are long)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent / PENDING_DIR
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


class RecordingTracker:
    """The tracker of a deferred run: the calls of ``MlflowTracker``, kept in the record (names made legal as a
    live run makes them)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.run_id: str = record["record"]

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.record["params"].update({legal_name(k): str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = _now_ms()
        self.record["metrics"] += [[legal_name(k), float(v), now, step or 0] for k, v in metrics.items()]

    def log_artifact(self, path: str | Path) -> None:
        self.record["artifacts"].append(str(Path(path).resolve()))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.record["tags"].update({legal_name(k): str(v) for k, v in tags.items()})


@contextmanager
def recording(
    folder: Path,
    *,
    experiment: str,
    run_name: str,
    parent_run_id: str,
    tags: Mapping[str, str],
    on_error: Callable[[OSError], None],
) -> Iterator[RecordingTracker]:
    """A deferred run: yields its tracker, and writes its record when the body ends (status FAILED if it raised).
    A record that cannot be written goes to ``on_error`` (tracking never costs a result: the run's own files
    stand, ``lofi track sync RUN`` logs it from them)."""
    folder.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails here, before any work
    record: dict[str, Any] = {
        "record": RECORD_PREFIX + uuid.uuid4().hex,
        "experiment": experiment,
        "run_name": run_name,
        "parent": parent_run_id,
        "tags": {legal_name(k): str(v) for k, v in tags.items()},
        "params": {},
        "metrics": [],
        "artifacts": [],
        "start_time": _now_ms(),
    }
    status = "FAILED"
    try:
        yield RecordingTracker(record)
        status = "FINISHED"
    finally:
        record.update(status=status, end_time=_now_ms())
        try:
            write_json_atomic(folder / f"{record['record']}.json", record, indent=None)
        except OSError as exc:
            on_error(exc)
        else:
            if not parent_run_id.startswith(RECORD_PREFIX):  # once per job, not per nested stage
                log.info("MLflow run recorded in %s; `lofi track flush` logs it (tracking.defer)", folder)


@dataclass
class FlushResult:
    logged: int = 0  # records logged by this flush
    already: int = 0  # records found in the store already (a flush killed before moving them)
    waiting: list[str] = field(default_factory=list)  # records whose parent record is not written yet
    missing_artifacts: list[str] = field(default_factory=list)


_RECORD_KEYS = ("record", "experiment", "run_name", "parent", "tags", "params", "metrics", "artifacts", "status")
_RECORD_KEYS += ("start_time", "end_time")


def _read_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob(f"{RECORD_PREFIX}*.json")):
        # written atomically by `recording`, so anything else here is a hand-edited or foreign file
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise LofiError(f"{path}: not a tracking record ({exc}); move it out of {folder}") from None
        missing = [k for k in _RECORD_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise LofiError(f"{path}: not a tracking record (no {', '.join(missing)}); move it out of {folder}")
        records.append(rec)
    return sorted(records, key=lambda r: (r["start_time"], r["record"]))


def _logged_ids(folder: Path) -> dict[str, str]:
    """record id -> MLflow run id of the records already logged."""
    ids = {}
    for path in (folder / LOGGED_DIR).glob(f"{RECORD_PREFIX}*.json"):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            ids[rec["record"]] = rec["mlflow_run_id"]
        except (ValueError, KeyError):
            continue  # a damaged copy of a logged record: its run is in the store, nothing refers to it by file
    return ids


def _in_store(client: Any, experiment_id: str) -> dict[str, str]:
    """record id -> MLflow run id of the runs a flush logged in this experiment (one paged search)."""
    found, token = {}, None
    while True:
        where = f"tags.`{RECORD_TAG}` LIKE '{RECORD_PREFIX}%'"
        page = client.search_runs([experiment_id], filter_string=where, max_results=1000, page_token=token)
        found.update({r.data.tags[RECORD_TAG]: r.info.run_id for r in page})
        token = page.token
        if not token:
            return found


def _log_record(client: Any, exp_id: str, rec: dict[str, Any], parent: str, result: FlushResult) -> str:
    """Log one record as an MLflow run with the times it was recorded at; returns the run's id."""
    from mlflow.entities import Metric, Param

    tags = {**rec["tags"], RECORD_TAG: rec["record"]}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(exp_id, start_time=rec["start_time"], tags=tags, run_name=rec["run_name"]).info.run_id
    client.log_batch(  # MLflow splits it into requests within its limits
        run_id,
        metrics=[Metric(k, v, t, s) for k, v, t, s in rec["metrics"]],
        params=[Param(k, v) for k, v in rec["params"].items()],
    )
    for path in rec["artifacts"]:
        if Path(path).is_file():
            client.log_artifact(run_id, path)
        else:
            result.missing_artifacts.append(path)
    client.set_terminated(run_id, status=rec["status"], end_time=rec["end_time"])
    return run_id


def flush(uri: str, ensure_experiment: Callable[[str], str]) -> FlushResult:
    """Log every pending record of the store at ``uri`` (see the module docstring), parents before their children;
    ``ensure_experiment`` gives an experiment's id by name (creating it). Store errors propagate."""
    from mlflow.tracking import MlflowClient

    folder = pending_folder(uri)
    result = FlushResult()
    if folder is None or not folder.is_dir():
        return result
    with open(folder / _LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends however it ends
        todo = _read_records(folder)  # a foreign file is an error before the store is opened (or created)
        client = MlflowClient(tracking_uri=uri)
        ids = _logged_ids(folder)
        experiments: dict[str, tuple[str, dict[str, str]]] = {}
        while todo:
            # a parent and its child can start in the same millisecond: log in rounds, each after its parent
            ready = [r for r in todo if not r["parent"].startswith(RECORD_PREFIX) or r["parent"] in ids]
            if not ready:
                break
            for rec in ready:
                name = rec["experiment"]
                if name not in experiments:
                    exp_id = ensure_experiment(name)
                    experiments[name] = (exp_id, _in_store(client, exp_id))
                exp_id, stored = experiments[name]
                run_id = stored.get(rec["record"])
                if run_id is None:
                    run_id = _log_record(client, exp_id, rec, ids.get(rec["parent"], rec["parent"]), result)
                    result.logged += 1
                else:
                    result.already += 1
                write_json_atomic(folder / LOGGED_DIR / f"{rec['record']}.json", {**rec, "mlflow_run_id": run_id})
                (folder / f"{rec['record']}.json").unlink()
                ids[rec["record"]] = run_id
            todo = [r for r in todo if r["record"] not in ids]
        result.waiting = [r["record"] for r in todo]
    return result
