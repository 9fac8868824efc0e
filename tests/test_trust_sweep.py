"""The trust campaign one level up (issue 22): faults of a whole sweep — damaged stores, diverged runs, a tracking
store lost mid-run, servers stopped, two sweeps on one folder. One test (or a few) per fault class; each asserts
what the user sees (one line naming the culprit, or a WARNING and the correct result) and what is left on disk."""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.data.testvideo import activitynet_like
from harness.errors import LofiError
from harness.integrity import TRAILER_BYTES, IntegrityError, load_array, read_sealed, save_array, write_sealed


def _flip(path: Path, at: float = 0.6) -> None:
    """Damage one payload byte of a file in place (its size, and a leading header, stay intact)."""
    raw = bytearray(path.read_bytes())
    i = int((len(raw) - TRAILER_BYTES) * at)
    raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------------------------ sealed files
def test_sealed_files_detect_damage_truncation_and_a_missing_trailer(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = save_array(tmp_path / "a.npy", arr)
    back = load_array(path)
    assert np.array_equal(back, arr) and back.dtype == arr.dtype
    assert np.array_equal(np.load(path), arr)  # still an .npy file for numpy (the trailer is ignored)
    _flip(path)
    with pytest.raises(IntegrityError, match=r"a\.npy: checksum mismatch"):
        load_array(path)
    cut = write_sealed(tmp_path / "cut.bin", b"x" * 100)
    cut.write_bytes(cut.read_bytes()[:50])
    with pytest.raises(IntegrityError, match="no checksum trailer"):
        read_sealed(cut)
    old = tmp_path / "old.npy"
    np.save(old, arr)  # written without a trailer (an older version)
    with pytest.raises(IntegrityError, match=r"old\.npy: no checksum trailer"):
        load_array(old)


# ------------------------------------------------------------------------------------------ frame store
def _tiny_dataset(root: Path, store: str) -> Path:
    (root / "videos").mkdir(parents=True)
    database = {}
    for vid, subset in (("a", "training"), ("b", "validation"), ("c", "testing")):
        activitynet_like(root / "videos" / f"{vid}.mp4", 0.5, width=64, height=48, seed=len(database))
        database[vid] = {"subset": subset, "duration": 0.5, "annotations": [{"segment": [0.1, 0.3], "label": "x"}]}
    (root / "annotations.json").write_text(json.dumps({"database": database}))
    config = root / "c.yaml"
    config.write_text(
        f"data: {{name: t, synthetic_profile: null, root: {root}, video_dir: videos, layout: activitynet, "
        f"cache_dir: {root / 'cache'}, store: {store}, max_side: 32}}\n"
    )
    return config


def test_a_frame_cache_entry_with_garbage_pixels_is_rebuilt_by_data_prepare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's silent wrong result: an entry whose header is intact and whose pixels are garbage."""
    config = _tiny_dataset(tmp_path, "decoded")
    assert main(["data", "prepare", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repaired"] == 0
    entries = sorted((tmp_path / "cache").glob("*.npy"))
    clean = {e: load_array(e).copy() for e in entries}
    _flip(entries[1])
    assert main(["data", "prepare", "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["failed"], summary["repaired"]) == (0, 1)
    for e in entries:  # every entry verified and equal to the clean decode
        assert np.array_equal(load_array(e), clean[e])
    # a training job's reader: the same WARNING (in-process here, so the log record can be read) and clean frames
    from harness.data.video import FrameCache

    cache = FrameCache(tmp_path / "cache", max_side=32)
    video = tmp_path / "videos" / "b.mp4"
    entry = cache.entry_path(video)
    _flip(entry)
    with caplog.at_level(logging.WARNING):
        frames = cache.get(video)
    assert cache.repaired == 1 and np.array_equal(frames, clean[entry])
    assert any(str(entry) in r.getMessage() and "checksum mismatch" in r.getMessage() for r in caplog.records)


def test_a_damaged_prepared_store_entry_is_re_encoded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from harness.data.store import StoreSettings, prepare_video, read_frames

    src = activitynet_like(tmp_path / "v.mp4", 1.0, width=64, height=48, seed=0)
    settings = StoreSettings(max_side=32)
    entry, info = prepare_video(src, tmp_path / "store", settings)
    clean = read_frames(entry, info, np.arange(info.num_frames)).astype(np.int16)
    assert info.crc32 == zlib.crc32(entry.read_bytes())
    _flip(entry, at=0.7)
    with caplog.at_level(logging.WARNING):
        again, info2 = prepare_video(src, tmp_path / "store", settings)
    assert again == entry and info2.crc32 == zlib.crc32(entry.read_bytes())
    assert any("checksum mismatch" in r.getMessage() and str(entry) in r.getMessage() for r in caplog.records)
    # The repaired entry decodes to the video the first encode held, within H.264 noise. Not bit for bit: on a
    # 2-core AVX512 machine, in full-suite runs (in-process and in a fresh interpreter alike; never alone), the
    # re-encode differed from the first encode by up to ~3 levels on average — prepared-store encodes are not
    # repeatable under load, an open bug (note of 2026-12-06). A damaged entry does not decode at all (a
    # VideoError where measured) and a one-frame shift differs by ~8 levels on this clip: both fail this bound.
    repaired = read_frames(entry, info2, np.arange(info2.num_frames)).astype(np.int16)
    assert repaired.shape == clean.shape and np.abs(repaired - clean).mean() < 6.0


# ------------------------------------------------------------------------------------------ stage outputs
def test_a_damaged_feature_file_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    from harness.pipeline.features import feature_path, load_features

    out = tmp_path / "features"
    for vid in ("a", "b"):
        save_array(feature_path(out, vid), np.ones((4, 3), np.float32))
    assert load_features(out, ["a", "b"]).shape == (2, 3, 4)
    _flip(feature_path(out, "b"))
    with pytest.raises(LofiError, match=r"b\.npy: corrupt feature file \(checksum mismatch.*delete .*features") as err:
        load_features(out, ["a", "b"])
    assert "\n" not in str(err.value)


def test_a_damaged_checkpoint_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    from harness.pipeline.runtime import load_torch, save_torch

    path = tmp_path / "stage" / "encoder.pt"
    save_torch(path, {"encoder": {"w": torch.arange(1000.0)}})
    assert torch.equal(load_torch(path)["encoder"]["w"], torch.arange(1000.0))
    _flip(path)  # torch.load alone reads this file without a word (one weight changed)
    with pytest.raises(LofiError, match=r"encoder\.pt: not a readable checkpoint \(checksum mismatch.*delete .*stage"):
        load_torch(path)


def test_the_stage_format_is_part_of_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages written before sealed files rerun (their key changed) instead of failing on an unsealed file."""
    from harness.experiment import load_experiment
    from harness.pipeline import plan

    cfg = load_experiment(Path("config/smoke.yaml"), [])
    before = [s.key for s in plan.plan_run(cfg, mode="acp", seed=0, run_dir=tmp_path).stages]
    monkeypatch.setattr(plan, "STAGE_FORMAT", plan.STAGE_FORMAT - 1)
    after = [s.key for s in plan.plan_run(cfg, mode="acp", seed=0, run_dir=tmp_path).stages]
    assert len(before) == len(after) and all(a != b for a, b in zip(before, after))


# ------------------------------------------------------------------------------------------ divergence
def test_divergence_thresholds() -> None:
    from harness.divergence import LOSS_RISE, VAL_COLLAPSE, VAL_FLOOR, loss_rise, run_divergence, val_collapse

    start = 4.0
    assert "lofi loss rose" in loss_rise([{"loss": start}, {"loss": start * LOSS_RISE}], "lofi")
    assert loss_rise([{"loss": start}, {"loss": start * LOSS_RISE * 0.99}], "lofi") == ""
    assert loss_rise([{"loss": start}], "lofi") == ""  # one epoch: nothing to compare
    best = VAL_FLOOR * 4
    curve = [{"val_average_mAP": best}, {"val_average_mAP": best * 0.9}]
    assert "collapsed" in val_collapse(curve, best * VAL_COLLAPSE * 0.99)
    assert val_collapse(curve, best * VAL_COLLAPSE) == ""
    noise = [{"val_average_mAP": VAL_FLOOR * 0.9}]
    assert val_collapse(noise, 0.0) == ""  # below the floor: noise, not a collapse
    both = run_divergence({"lofi": [{"loss": start}, {"loss": start * 2}]}, {"history": curve, "validation": {}})
    assert both.startswith("lofi loss rose")


def test_a_diverged_run_is_flagged_in_its_row_and_tables_or_refused(
    tmp_path: Path,
    tiny_overrides: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's case: lofi.optim.lr=1000 makes the LoFi loss climb without a NaN."""
    from harness.report.notes import DIVERGED_MARK
    from harness.report.rows import load_rows
    from harness.report.tables import ablation_table
    from harness.report.writers import to_markdown

    base = ["run", "--config", "config/smoke.yaml", "--mode", "lofi-S", "--stages", str(tmp_path / "stages")]
    sets = [a for o in [*tiny_overrides, "lofi.optim.lr=1000", "runtime.progress=false"] for a in ("--set", o)]
    with caplog.at_level(logging.WARNING):
        assert main([*base, "--out", str(tmp_path / "warn"), *sets]) == 0
    row = json.loads((tmp_path / "warn" / "row.json").read_text())
    assert row["diverged"].startswith("lofi") and "loss rose" in row["diverged"]
    warnings = [r.getMessage() for r in caplog.records if "training diverged" in r.getMessage()]
    assert len(warnings) == 1 and row["diverged"] in warnings[0]
    text = to_markdown(ablation_table(load_rows([tmp_path / "warn"])))
    assert f"{DIVERGED_MARK}1" in text and f"lofi-S seed 0: {row['diverged']}" in text
    capsys.readouterr()
    # the same run refused: the finished stages are reused, then one line and no row
    fail = [*sets, "--set", "runtime.on_divergence=fail"]
    assert main([*base, "--out", str(tmp_path / "fail"), *fail]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("lofi: error:") == 1 and "training diverged" in err
    assert not (tmp_path / "fail" / "row.json").exists()
    # and the flagged finished row is not handed back as a result under `fail` either
    assert main([*base, "--out", str(tmp_path / "warn"), *fail]) == 2


# ------------------------------------------------------------------------------------------ tracking store lost
_DELETE_STORE_AT_HEAD = """
import sys
from pathlib import Path
from typing import Any

import harness.pipeline.headtrain as headtrain
from harness.cli import main

store, original = Path(sys.argv[1]), headtrain.run


def run(ctx):  # the store vanishes as the head stage's work starts (its runner: harness/pipeline/stages.py)
    store.unlink()
    return original(ctx)


headtrain.run = run
sys.exit(main(sys.argv[2:]))
"""


def test_a_tracking_store_deleted_mid_run_costs_one_line_and_no_result(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from harness.tracking import reset_tracking_failure

    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")]
    overrides += [f"tracking.uri={uri}", "tracking.experiment=t", "tracking.defer=false", "runtime.progress=false"]
    sets = [a for o in overrides for a in ("--set", o)]
    run = tmp_path / "run"
    argv = ["run", "--config", "config/smoke.yaml", "--mode", "acp", "--out", str(run), *sets]
    proc = subprocess.run(
        [sys.executable, "-c", _DELETE_STORE_AT_HEAD, str(store), *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[:6000]
    lines = [line for line in proc.stderr.splitlines() if "tracking stopped" in line]
    assert len(lines) == 1 and str(store) in lines[0] and "no longer exists" in lines[0], proc.stderr[-3000:]
    row = json.loads((run / "row.json").read_text())  # the result is kept: row, metrics, predictions
    assert "no longer exists" in row["tracking_error"]
    assert (run / "metrics.json").is_file() and (run / "head" / "predictions_testing.json").is_file()
    # re-synced later, from the run's own files, into the (new) store
    reset_tracking_failure()
    assert main(["track", "sync", str(run)]) == 0
    synced = json.loads((run / "row.json").read_text())
    assert synced["tracking_error"] == "" and synced["mlflow_run_id"] != row["mlflow_run_id"]
    logged = MlflowClient(tracking_uri=uri).get_run(synced["mlflow_run_id"])
    assert logged.data.metrics["average_mAP"] == pytest.approx(row["average_mAP"])
    assert logged.data.params["mode"] == "acp" and logged.data.tags["kind"] == "configuration"


# ------------------------------------------------------------------------------------------ servers stop cleanly
def _server_group(log: Path, proc: Any, timeout: float = 60.0) -> int:
    """The process group `lofi track server` reports for mlflow (its log line)."""
    import re
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"as process group (\d+)", log.read_text())
        if found:
            return int(found.group(1))
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(log.read_text())


@pytest.mark.parametrize(("when", "sig"), [("at-once", "SIGTERM"), ("answering", "SIGINT")])
def test_track_server_leaves_no_process_behind(tmp_path: Path, when: str, sig: str) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from harness.procgroup import group_members

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "harness.cli", "track", "server", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination", str(tmp_path)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        pgid = _server_group(log, proc)
        if when == "answering":
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                    time.sleep(0.3)
            assert len(group_members(pgid)) > 1  # a tree: mlflow and its workers
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=60) == 128 + getattr(signal, sig)
        assert group_members(pgid) == [], log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------------------ concurrent sweeps
def test_a_second_sweep_on_the_same_results_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    from harness.sweeplock import LOCK_FILE, acquire

    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "config/smoke.yaml").read_text())
    results = tmp_path / "results"
    data["sweep"]["results"] = str(results)
    data["data"]["root"] = str(tmp_path / "data")
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    first = acquire(results, command="snakemake --cores 2 (the first sweep)")  # the first sweep, running
    try:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--cores", "1"]
        conf = ["--configfile", str(config)]  # last: --configfile takes every word after it
        # a target no rule makes: were the lock not taken, snakemake would stop at once anyway
        target = str(results / "config.resolved.yaml")
        second = subprocess.run([*cmd, target, *conf], cwd=root, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        text = second.stdout + second.stderr
        lines = [line for line in text.splitlines() if "another sweep is running" in line]
        assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "the first sweep" in lines[0], text
        assert "rerun-incomplete" not in text and "Traceback" not in text and "--unlock" not in text
        assert not (results / "config.resolved.yaml").exists()  # refused before it touched the folder
        # a dry run only reads: allowed while the sweep runs
        dry = subprocess.run([*cmd, "-n", "all", *conf], cwd=root, capture_output=True, text=True, timeout=300)
        assert dry.returncode == 0, dry.stderr[-2000:]
    finally:
        first.close()
    # the kernel releases the lock when its holder dies, however it dies: no stale lock after kill -9
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from harness.sweeplock import acquire; acquire({str(results)!r}); input()"],
        stdin=subprocess.PIPE,
        cwd=root,
    )
    deadline = __import__("time").monotonic() + 60
    while str(holder.pid) not in (results / LOCK_FILE).read_text():
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.05)
    holder.kill()
    holder.wait()
    acquire(results, command="after kill -9").close()


# ------------------------------------------------------------------------------------------ smaller items
def test_a_write_that_fails_names_the_file_the_user_knows(tmp_path: Path) -> None:
    """A real fault (ulimit -f, as a full disk): PyAV names the hidden temporary; the error names the video."""
    import subprocess
    import sys

    script = (
        "import resource, signal, numpy as np\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from harness.data.video import write_video\n"
        "from harness.errors import user_message\n"
        "try:\n"
        "    write_video(sys.argv[1], np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), np.uint8), 8)\n"
        "except OSError as exc:\n"
        "    print(user_message(exc))\n"
    )
    target = tmp_path / "video.mp4"
    out = subprocess.run([sys.executable, "-c", "import sys\n" + script, str(target)], capture_output=True, text=True)
    assert out.stdout.startswith(f"{target}: File too large"), out.stdout + out.stderr
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-written left


def test_a_segment_starting_before_zero_is_reported_as_such(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from harness.data.annotations import read_annotations

    early, late, duration = 3.0, 0.5, 10.0
    database = {
        "a": {"subset": "validation", "duration": duration, "annotations": [{"segment": [-early, 4.0], "label": "x"}]},
        "b": {
            "subset": "validation",
            "duration": duration,
            "annotations": [{"segment": [6, duration + late], "label": "x"}],
        },
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": database}))
    with caplog.at_level(logging.WARNING):
        repaired = read_annotations(path).meta["repaired"]
    assert (repaired["before_start"], repaired["max_before_start_s"]) == (1, early)
    assert (repaired["past_end"], repaired["max_past_end_s"]) == (1, late)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"starts {early:.3g} s before 0" in message and f"ends {late:.3g} s past the end" in message


def test_an_empty_config_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert main(["config", "check", "--config", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("lofi: error:") == 1 and str(empty) in err and "empty" in err
    (tmp_path / "defaults.yaml").write_text("{}\n")  # every default, on purpose
    assert main(["config", "check", "--config", str(tmp_path / "defaults.yaml")]) == 0
