"""The training pipeline end to end on the smoke benchmark: every mode, determinism, resume, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.experiment import load_experiment
from harness.pipeline.files import CHECKPOINT
from harness.pipeline.plan import MODES, Stage
from harness.pipeline.run import run_all, run_stage

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "smoke.yaml"


def _cfg(overrides, *extra):
    return load_experiment(SMOKE, [*overrides, *extra])


def _check_metrics(out: Path) -> dict:
    from harness.evaluation import evaluate_detection, load_ground_truth, load_predictions

    m = json.loads((out / "metrics.json").read_text())
    assert m["average_mAP"] == pytest.approx(float(np.mean(m["mAP"])), abs=1e-12)
    row = json.loads((out / "row.json").read_text())
    # the metrics are those of the run's saved predictions of each split, re-evaluated here from the files
    for split, metrics in ((row["split"], m), ("validation", m["validation"])):
        gt = load_ground_truth(row["ground_truth"], subset=split)
        preds = load_predictions(Path(row["predictions"]).with_name(f"predictions_{split}.json"), gt)
        np.testing.assert_allclose(metrics["mAP"], evaluate_detection(gt, preds).mAP, rtol=0, atol=1e-9)
    assert row["average_mAP"] == m["average_mAP"] and row["val_average_mAP"] == m["validation"]["average_mAP"]
    return m


def test_every_mode_produces_metrics(tmp_path, tiny_overrides):
    cfg = _cfg(tiny_overrides, "lofi.r_t=3", "lofi.r_s=1.5")
    shared = tmp_path / "shared"
    rows = {}
    for mode in MODES:
        out = tmp_path / mode
        # one stages root: the ACP encoder (and classifier) shared by every mode, as the workflow shares them
        rows[mode] = run_all(cfg, mode=mode, seed=0, out=out, stages_root=shared)
        _check_metrics(out)
    assert rows["lofi-T"]["L"] == 2 and rows["lofi-T"]["size"] == 16  # 8 snippets / r_t 4
    assert rows["lofi-ST"]["L"] == 4 and rows["lofi-ST"]["size"] == 11  # 16 / sqrt(2) = 11.3
    assert rows["lofi-custom"]["L"] == 3 and rows["lofi-custom"]["size"] == 11  # 8/3 -> 3, 16/1.5 -> 11
    assert rows["lofi-long"]["fidelities"] == "S,T,ST"
    # low fidelity saves activation memory: every LoFi setting below the full-fidelity step
    for mode in ("lofi-S", "lofi-T", "lofi-ST"):
        assert 0 < rows[mode]["activation_rel"] < 1.0, mode
    assert rows["e2e-full"]["activation_rel"] == pytest.approx(1.0)
    # one LoFi stage per cycle, none for the frozen-encoder modes; every run's head in its own folder
    lofi_dirs = {p.name for p in (shared / "lofi").iterdir()}
    assert {"S", "T", "ST", "long", "short", "full"} < lofi_dirs and len(lofi_dirs) == 7  # + custom-<key>
    assert all((tmp_path / m / "head" / "done.json").is_file() for m in MODES)


def test_same_config_and_seed_give_identical_metrics(tmp_path, tiny_overrides):
    cfg = _cfg(tiny_overrides)
    a = run_all(cfg, mode="lofi-short", seed=3, out=tmp_path / "a")
    b = run_all(cfg, mode="lofi-short", seed=3, out=tmp_path / "b")
    for k in ("average_mAP", "mAP_0.50", "mAP_0.95", "AR_100", "val_average_mAP"):
        assert a[k] == b[k], k
    pa = json.loads((tmp_path / "a/head/predictions_testing.json").read_text())
    pb = json.loads((tmp_path / "b/head/predictions_testing.json").read_text())
    assert pa == pb
    c = run_all(cfg, mode="lofi-short", seed=4, out=tmp_path / "c")
    assert c["average_mAP"] != a["average_mAP"] or c["val_average_mAP"] != a["val_average_mAP"]


def test_validating_less_often_changes_no_number(tmp_path, tiny_overrides):
    """head.validate_every only thins the validation curve: training, predictions and metrics are the same."""
    shared = tmp_path / "shared"
    a = run_all(_cfg(tiny_overrides), mode="acp", seed=0, out=tmp_path / "a", stages_root=shared)
    b = run_all(
        _cfg(tiny_overrides, "head.validate_every=2"), mode="acp", seed=0, out=tmp_path / "b", stages_root=shared
    )
    for k in ("average_mAP", "mAP_0.50", "AR_100", "val_average_mAP"):
        assert a[k] == b[k], k
    ha, hb = (json.loads((tmp_path / r / "head/metrics.json").read_text())["history"] for r in "ab")
    assert len(ha) == len(hb) >= 2 and [r["loss"] for r in ha] == [r["loss"] for r in hb]
    assert all("val_average_mAP" in r for r in ha)
    assert [("val_average_mAP" in r) for r in hb] == [(e + 1) % 2 == 0 for e in range(len(hb))]


class _Killed(BaseException):
    """Stands in for a kill: raised right after the first epoch checkpoint is written."""


def _lofi_stages(root: Path, cycle: str, seed: int, key: str) -> tuple[Stage, Stage]:
    """An ACP stage and a LoFi stage reading it, with given keys (the plan's keys are tested in test_plan.py)."""
    acp = Stage("pretrain", "acp", seed, root / "acp", "acp")
    return acp, Stage("lofi", cycle, seed, root / key, key, (acp,))


def _kill_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.pipeline.lofi as lofi

    real = lofi.save_torch

    def save_then_die(path: Path, obj: object) -> None:
        real(path, obj)
        if path.name == CHECKPOINT:
            raise _Killed

    monkeypatch.setattr(lofi, "save_torch", save_then_die)


def test_lofi_stage_resumes_after_a_kill_with_the_same_numbers(tmp_path, tiny_overrides, monkeypatch):
    cfg = _cfg(tiny_overrides, "lofi.optim.epochs=3")
    acp, straight = _lofi_stages(tmp_path, "long", 1, "a")
    run_stage(cfg, acp)
    run_stage(cfg, straight)
    resumed = Stage("lofi", "long", 1, tmp_path / "resumed", "a", (acp,))
    with monkeypatch.context() as m:
        _kill_after_first_checkpoint(m)
        with pytest.raises(_Killed):
            run_stage(cfg, resumed)
    assert (resumed.folder / CHECKPOINT).is_file() and not resumed.done.exists()
    run_stage(cfg, resumed)
    sa = torch.load(straight.folder / "encoder.pt", weights_only=True)["encoder"]
    sb = torch.load(resumed.folder / "encoder.pt", weights_only=True)["encoder"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ha = json.loads(straight.done.read_text())["history"]
    hb = json.loads(resumed.done.read_text())["history"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert not (resumed.folder / CHECKPOINT).exists()  # a temporary: removed once the stage is done


def test_stale_checkpoint_of_another_config_is_not_resumed(tmp_path, tiny_overrides, monkeypatch):
    cfg = _cfg(tiny_overrides, "lofi.optim.epochs=2")
    acp, _ = _lofi_stages(tmp_path, "S", 1, "a")
    run_stage(cfg, acp)
    x_a = Stage("lofi", "S", 1, tmp_path / "x", "a", (acp,))
    with monkeypatch.context() as m:
        _kill_after_first_checkpoint(m)
        with pytest.raises(_Killed):
            run_stage(cfg, x_a)
    other = _cfg(tiny_overrides, "lofi.optim.epochs=2", "lofi.optim.lr=0.05")
    run_stage(other, Stage("lofi", "S", 1, tmp_path / "x", "b", (acp,)))  # another key: checkpoint not resumed
    run_stage(other, Stage("lofi", "S", 1, tmp_path / "y", "b", (acp,)))
    a = torch.load(tmp_path / "x/encoder.pt", weights_only=True)["encoder"]
    b = torch.load(tmp_path / "y/encoder.pt", weights_only=True)["encoder"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_stage_epoch_and_step(tmp_path, tiny_overrides):
    from harness.errors import LofiError

    cfg = _cfg(tiny_overrides, "lofi.optim.lr=1e30")
    acp, lofi = _lofi_stages(tmp_path, "S", 2, "nan")
    run_stage(cfg, acp)
    with pytest.raises(LofiError, match=r"LoFi\[S\]: loss is .* at epoch \d+ step \d+"):
        run_stage(cfg, lofi)
    assert not lofi.done.exists()


@pytest.mark.parametrize("defer", [False, True], ids=["live", "deferred"])
def test_mlflow_records_parent_and_children(tmp_path, tiny_overrides, defer):
    """The same MLflow tree whether the jobs log live or record their runs for `lofi track flush` (tracking.defer)."""
    from mlflow.tracking import MlflowClient

    from harness.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.")]
    overrides += [f"tracking.uri={uri}", "tracking.experiment=t", f"tracking.defer={str(defer).lower()}"]
    cfg = _cfg(overrides)
    row = run_all(cfg, mode="lofi-T", seed=0, out=tmp_path / "run")
    run_id = row["mlflow_run_id"]
    if defer:
        assert run_id.startswith("deferred-") and not (tmp_path / "mlflow.db").exists()  # nothing logged yet
        assert main(["track", "flush", "--config", str(tmp_path / "run" / "config.yaml")]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id])
    if defer:  # the row names its record; the logged run carries it as a tag
        run_id = next(r.info.run_id for r in runs if r.data.tags.get("lofi.record") == row["mlflow_run_id"])
        assert all(r.data.tags["lofi.record"].startswith("deferred-") for r in runs)
    parent = client.get_run(run_id)
    assert parent.data.params["mode"] == "lofi-T" and parent.data.params["encoder.name"] == "tsm_resnet_tiny"
    assert "commit" in parent.data.params and "lofi.c_s" in parent.data.params
    assert parent.data.metrics["average_mAP"] == pytest.approx(row["average_mAP"])
    assert "mAP_0.50" in parent.data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1  # lofi-T's two pre-trainings, its LoFi stage and the head
    assert {r.data.tags["stage"] for r in children} == {"pretrain", "lofi", "head"}
    head = next(r for r in children if r.data.tags["stage"] == "head")
    assert "head_val_average_mAP" in head.data.metrics and "AR_100" in head.data.metrics
    assert all(r.info.status == "FINISHED" for r in runs)


def test_validation_holdout_is_carved_from_training(smoke_root, tiny_overrides):
    from harness.errors import LofiError
    from harness.pipeline.data import prepare_dataset

    base = prepare_dataset(_cfg(tiny_overrides).data)
    cfg = _cfg(tiny_overrides, "data.val_holdout=0.25", "data.val_subset=holdout")
    ds = prepare_dataset(cfg.data)
    n_train = len(base.subset("training"))
    held = ds.subset("holdout")
    assert len(held) == round(0.25 * n_train) and len(ds.subset("training")) == n_train - len(held)
    assert {v.id for v in held} <= {v.id for v in base.subset("training")}
    assert [v.id for v in held] == [v.id for v in prepare_dataset(cfg.data).subset("holdout")]  # fixed, not random
    assert ds.subset("testing") == base.subset("testing")
    with pytest.raises(LofiError, match="already has videos"):
        prepare_dataset(_cfg(tiny_overrides, "data.val_holdout=0.25").data)  # 'validation' exists


def test_class_scores_are_shared_and_alternatives_work(tmp_path, tiny_overrides):
    from harness.errors import LofiError
    from harness.pipeline.classify import load_class_scores

    cfg = _cfg(tiny_overrides)
    stages = tmp_path / "stages"
    rows = {
        mode: run_all(cfg, mode=mode, seed=0, out=tmp_path / mode, stages_root=stages) for mode in ("acp", "lofi-T")
    }
    # one classifier for both modes: their detections use the same class scores, so each video's labels agree
    scores = json.loads((stages / "classifier" / "seed0" / "class_scores.json").read_text())
    ds_classes = tuple(scores["classes"])
    assert len(scores["scores"]) >= len(rows) and all(abs(sum(p) - 1) < 1e-5 for p in scores["scores"].values())
    a = json.loads((tmp_path / "acp/head/predictions_testing.json").read_text())["results"]
    b = json.loads((tmp_path / "lofi-T/head/predictions_testing.json").read_text())["results"]
    for vid in a:
        top = np.argsort(scores["scores"][vid])[::-1][:2]
        assert {e["label"] for e in a[vid]} == {e["label"] for e in b[vid]} == {ds_classes[i] for i in top}
    # the per-run linear probe instead of the shared classifier
    probe = run_all(
        _cfg(tiny_overrides, "head.class_scores=features"),
        mode="acp",
        seed=0,
        out=tmp_path / "probe",
        stages_root=stages,
    )
    assert probe["run_key"] != rows["acp"]["run_key"]
    assert set(probe["stage_keys"]) == {"pretrain-acp-seed0", "features-acp-seed0", "head-seed0"}  # no classifier
    # an external scores file with a class missing is a one-line error naming the file
    bad = tmp_path / "external.json"
    bad.write_text(json.dumps({"classes": list(ds_classes[1:]), "scores": {}}))
    with pytest.raises(LofiError, match=r"external.json: malformed class scores"):
        load_class_scores(bad, ds_classes, ["x"])


def test_corrupt_video_stops_with_its_name_or_is_skipped_and_counted(smoke_root, tiny_overrides, tmp_path):
    import shutil

    from harness.data.frames import VideoFrames, video_file
    from harness.errors import LofiError
    from harness.pipeline.data import prepare_dataset

    root = tmp_path / "data"
    shutil.copytree(smoke_root, root)
    cfg = _cfg(tiny_overrides, f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}")
    ds = prepare_dataset(cfg.data)
    videos = ds.subset("training")
    bad = video_file(cfg.data, videos[1])
    bad.write_bytes(bad.read_bytes()[:100])  # truncated download
    with pytest.raises(LofiError) as err:
        VideoFrames(cfg.data).usable(videos)
    msg = str(err.value)
    assert str(bad) in msg and "skip_corrupt" in msg and "\n" not in msg
    skipping = _cfg(
        tiny_overrides, f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.skip_corrupt=true"
    )
    frames = VideoFrames(skipping.data)
    kept = frames.usable(videos)
    assert [v.id for v in kept] == [v.id for v in videos if v.id != videos[1].id]
    assert frames.skipped == [videos[1].id]


def test_usable_without_reading_gives_the_same_videos_and_loads_no_stored_entry(smoke_root, tiny_overrides, tmp_path):
    import shutil

    from harness.data.frames import VideoFrames, video_file
    from harness.pipeline.data import prepare_dataset

    root = tmp_path / "data"
    shutil.copytree(smoke_root, root)
    cfg = _cfg(tiny_overrides, f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.skip_corrupt=true")
    videos = prepare_dataset(cfg.data).subset("training")
    video_file(cfg.data, videos[1]).write_bytes(video_file(cfg.data, videos[1]).read_bytes()[:100])
    first = VideoFrames(cfg.data)
    decoded = first.usable(videos[:3])  # fills the disk cache of videos 0 and 2; video 1 does not decode
    assert first.cache.misses == 2 and first.skipped == [videos[1].id]
    blind = VideoFrames(cfg.data)  # another process: nothing in memory
    kept = blind.usable(videos, read=False)
    assert [v.id for v in kept] == [v.id for v in videos if v.id != videos[1].id]
    assert [v.id for v in kept[:2]] == [v.id for v in decoded]
    # the two stored entries were not read; every other video was decoded (and stored) as usable() does
    assert blind.cache.disk_hits == 0 and blind.cache.memory_hits == 0
    assert blind.cache.misses == len(videos) - 3 and blind.skipped == [videos[1].id]
    assert [v.id for v in VideoFrames(cfg.data).usable(videos)] == [v.id for v in kept]
