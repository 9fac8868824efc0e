"""Deferred tracking (tracking.defer): runs recorded by the jobs and logged by `lofi track flush` land in MLflow as
the same runs a live job logs; recording never imports MLflow; a flush is safe to repeat, to interrupt and to run
twice at once; a broken store costs one line (or, in a table job, a warning and the records kept)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.experiment import TrackingConfig
from harness.tracking import ensure_experiment, start_run
from harness.tracking_deferred import LOGGED_DIR, PENDING_DIR, RECORD_TAG, flush, pending_folder

ROOT = Path(__file__).resolve().parents[1]


class _Boom(Exception):
    pass


def _work(cfg: TrackingConfig, artifact: Path) -> dict[str, str]:
    """What a run job does: a configuration run with params, tags, final metrics and an artifact; two child stage
    runs with per-epoch curves, one of which fails. Returns the ids the trackers gave, by run name."""
    ids = {}
    with start_run(cfg, run_name="config/seed0", parent_run_id="", tags={"mode": "acp", "seed": "0"}) as run:
        ids["config/seed0"] = run.run_id
        run.log_params({"lr": 0.05, "head.name": "gtad", "mAP@0.5": 1})  # a name MLflow does not allow
        with start_run(cfg, run_name="pretrain-seed0", parent_run_id=run.run_id, tags={"stage": "pretrain"}) as s:
            ids["pretrain-seed0"] = s.run_id
            for epoch in range(3):
                s.log_metrics({"loss": 1.0 / (epoch + 1), "acc": 0.25 * epoch}, step=epoch)
        with pytest.raises(_Boom), start_run(cfg, run_name="head-seed0", parent_run_id=run.run_id, tags={}) as h:
            ids["head-seed0"] = h.run_id
            h.log_metrics({"loss": 2.0}, step=0)
            raise _Boom
        run.set_tags({"kind": "configuration"})
        run.log_metrics({"average_mAP": 0.4, "mAP@0.5": 0.6})
        run.log_artifact(artifact)
    return ids


def _tree(uri: str, experiment: str) -> dict[str, Any]:
    """Every run of an experiment, by name: parent's name, status, params, tags (MLflow's own and the record's
    aside), metric histories (value, step) and artifact names."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    names = {r.info.run_id: r.info.run_name for r in runs}
    tree = {}
    for r in runs:
        tree[r.info.run_name] = {
            "parent": names.get(r.data.tags.get("mlflow.parentRunId", "")),
            "status": r.info.status,
            "params": r.data.params,
            "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.") and k != RECORD_TAG},
            "metrics": {
                k: [(m.value, m.step) for m in client.get_metric_history(r.info.run_id, k)] for k in r.data.metrics
            },
            "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id)),
            "ended": r.info.end_time is not None and r.info.end_time >= r.info.start_time,
        }
    return tree


def _cfg(tmp: Path, *, defer: bool) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{tmp}/mlflow.db", experiment="t", defer=defer)


def _flush(cfg: TrackingConfig):
    return flush(cfg.uri, lambda name: ensure_experiment(TrackingConfig(uri=cfg.uri, experiment=name)))


def test_deferred_runs_are_logged_as_the_live_runs(tmp_path: Path) -> None:
    artifact = tmp_path / "metrics.json"
    artifact.write_text('{"average_mAP": 0.4}')
    live, deferred = _cfg(tmp_path / "live", defer=False), _cfg(tmp_path / "deferred", defer=True)
    _work(live, artifact)
    ids = _work(deferred, artifact)
    assert all(i.startswith("deferred-") for i in ids.values())
    pending = tmp_path / "deferred" / PENDING_DIR
    assert sorted(p.stem for p in pending.glob("*.json")) == sorted(ids.values())
    assert not (tmp_path / "deferred" / "mlflow.db").exists()  # recording touched no store
    result = _flush(deferred)
    assert (result.logged, result.already, result.waiting) == (3, 0, [])
    expected = _tree(live.uri, "t")
    assert expected["head-seed0"]["status"] == "FAILED" and expected["pretrain-seed0"]["parent"] == "config/seed0"
    assert expected["pretrain-seed0"]["metrics"]["loss"] == [(1.0, 0), (0.5, 1), (pytest.approx(1 / 3), 2)]
    assert _tree(deferred.uri, "t") == expected
    # each logged run carries its record's id; the records moved to logged/ with their MLflow ids
    assert not list(pending.glob("*.json"))
    logged = {json.loads(p.read_text())["record"] for p in (pending / LOGGED_DIR).glob("*.json")}
    assert logged == set(ids.values())
    assert _flush(deferred).logged == 0  # nothing twice


def test_recording_a_run_does_not_import_mlflow(tmp_path: Path) -> None:
    code = (
        "import sys; from harness.experiment import TrackingConfig; from harness.tracking import start_run\n"
        f"cfg = TrackingConfig(uri='sqlite:///{tmp_path}/mlflow.db', defer=True)\n"
        "with start_run(cfg, run_name='r') as run: run.log_metrics({'a': 1.0})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert len(list((tmp_path / PENDING_DIR).glob("deferred-*.json"))) == 1


def test_a_server_is_logged_live_and_strict_runs_are_never_deferred(tmp_path: Path) -> None:
    assert pending_folder("http://127.0.0.1:5000") is None
    assert pending_folder(f"sqlite:///{tmp_path}/x/mlflow.db") == tmp_path / "x" / PENDING_DIR
    cfg = _cfg(tmp_path, defer=True)
    with start_run(cfg, run_name="sweep", strict=True) as run:  # `lofi track init`: checks the store up front
        assert not run.run_id.startswith("deferred-")
    assert (tmp_path / "mlflow.db").is_file()


def test_a_killed_flush_logs_no_run_twice_and_children_wait_for_their_parent(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, defer=True)
    pending = tmp_path / PENDING_DIR
    with start_run(cfg, run_name="parent") as parent:
        with start_run(cfg, run_name="child", parent_run_id=parent.run_id) as child:
            child.log_metrics({"loss": 1.0})
        # the parent's record is written when it ends: a flush now (another table job) leaves the child waiting
        result = _flush(cfg)
        assert (result.logged, result.waiting) == (0, [child.run_id])
    assert _flush(cfg).logged == 2
    # a flush killed after logging the runs but before moving their records: the next one finds them in the store
    for p in (pending / LOGGED_DIR).glob("*.json"):
        rec = json.loads(p.read_text())
        del rec["mlflow_run_id"]
        (pending / p.name).write_text(json.dumps(rec))
        p.unlink()
    result = _flush(cfg)
    assert (result.logged, result.already) == (0, 2)
    tree = _tree(cfg.uri, "t")
    assert sorted(tree) == ["child", "parent"] and tree["child"]["parent"] == "parent"


def test_flush_on_a_broken_store_is_one_line_or_a_warning_that_keeps_the_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "mlflow.db"
    cfg = _cfg(tmp_path, defer=True)
    with start_run(cfg, run_name="r") as run:
        run.log_metrics({"a": 1.0})
    store.write_text("not a database")
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "config/smoke.yaml").read_text())
    sets = ["--set", f"tracking.uri={cfg.uri}"]
    assert main(["track", "flush", "--config", str(config), *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "store error" in err[0] and "Traceback" not in err[0]
    assert main(["track", "flush", "--config", str(config), *sets, "--keep-going"]) == 0
    warned = [r.getMessage() for r in caplog.records if "tracking flush failed" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / PENDING_DIR) in warned[0] and "Traceback" not in warned[0]
    assert len(list((tmp_path / PENDING_DIR).glob("deferred-*.json"))) == 1  # kept for the next flush
    store.unlink()  # the store mended: the next flush (a new process; MLflow caches a store per process) logs it
    cmd = [sys.executable, "-m", "harness.cli", "track", "flush", "--config", str(config), *sets]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "logged 1 run(s)" in out.stdout, out.stderr[-2000:]
    (logged,) = (tmp_path / PENDING_DIR / LOGGED_DIR).glob("deferred-*.json")
    assert json.loads(logged.read_text())["mlflow_run_id"] and not list((tmp_path / PENDING_DIR).glob("deferred-*"))


def test_a_table_says_how_to_find_a_recorded_run() -> None:
    import pandas as pd

    from harness.report.notes import provenance

    rows = pd.DataFrame({"mlflow_run_id": ["deferred-ab12"], "commit": ["c0"], "config_hash": ["h0"]})
    line = provenance(rows)[0]
    assert (
        "MLflow run id(s): deferred-ab12 (recorded runs: `lofi track flush` logs each with the tag lofi.record" in line
    )
    live = provenance(rows.assign(mlflow_run_id=["0123abcd"]))[0]
    assert "MLflow run id(s): 0123abcd; rows written" in live


def test_a_record_that_cannot_be_written_costs_one_warning_not_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    from harness.tracking import reset_tracking_failure, tracking_failure

    cfg = _cfg(tmp_path, defer=True)
    pending = tmp_path / PENDING_DIR
    try:
        with start_run(cfg, run_name="r") as run:
            shutil.rmtree(pending)
            pending.write_text("a file where the records go")  # the folder gone while the run trained
            run.log_metrics({"a": 1.0})
        warned = [r.getMessage() for r in caplog.records if "tracking stopped" in r.getMessage()]
        assert len(warned) == 1 and str(pending) in warned[0] and str(pending) in tracking_failure()
    finally:
        reset_tracking_failure()


def test_a_file_among_the_records_that_is_not_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path, defer=True)
    with start_run(cfg, run_name="r"):
        pass
    foreign = tmp_path / PENDING_DIR / "deferred-foreign.json"
    foreign.write_text('{"record": "deferred-foreign"}')  # JSON, but not a record
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "config/smoke.yaml").read_text())
    sets = ["--set", f"tracking.uri={cfg.uri}"]
    assert main(["track", "flush", "--config", str(config), *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(foreign) in err[0] and "not a tracking record (no experiment" in err[0]
    assert main(["track", "flush", "--config", str(config), *sets, "--keep-going"]) == 0  # a table job goes on
    assert any(str(foreign) in r.getMessage() for r in caplog.records if "tracking flush failed" in r.getMessage())
    assert foreign.is_file() and len(list((tmp_path / PENDING_DIR).glob("deferred-*.json"))) == 2  # nothing lost
