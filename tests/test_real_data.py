"""Real data as a newcomer brings it (issue 21): the official ActivityNet-1.3 annotation file, videos named as the
README says, a partial download, the checks that run before training, and one LoFi run through to a table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

ANET = Path(__file__).resolve().parents[2] / "shared" / "data" / "activitynet" / "activity_net_v1-3_gt.json"
if not ANET.is_file():  # a worktree of /work/wt/<name>: the shared folder is one level higher
    ANET = Path("/work/shared/data/activitynet/activity_net_v1-3_gt.json")
ABSENT_FROM_HOLDOUT = ["Blow-drying hair", "Brushing teeth", "Cleaning windows", "Playing beach volleyball"]


def _need_anet() -> Path:
    if not ANET.is_file():
        pytest.skip(f"shared data not available: {ANET}")
    return ANET


def _anet_config(root: Path, **data: object):
    """config/activitynet.yaml's data section on ``root`` (annotations: the official file)."""
    from harness.experiment import DataConfig

    fields = {
        "name": "activitynet",
        "synthetic_profile": None,
        "root": root,
        "annotations": str(_need_anet()),
        "layout": "activitynet",
        "video_dir": "videos",
        "val_subset": "holdout",
        "val_holdout": 0.1,
        "test_subset": "validation",
        "acp_source": "",
        "icp_source": "",
    }
    return DataConfig(**{**fields, **data})


def _holdout_dataset():
    from harness.data.annotations import read_annotations
    from harness.pipeline.data import hold_out_validation

    cfg = _anet_config(Path("unused"))
    return hold_out_validation(read_annotations(_need_anet()), cfg, source=str(ANET))


def _as_predictions(videos, extra_label: str | None = None) -> dict:
    """Each video's ground-truth segments as detections (score 0.9), plus one of ``extra_label`` per video."""
    out = {}
    for v in videos:
        entries = [{"label": s.label, "score": 0.9, "segment": [s.start, s.end]} for s in v.segments]
        if extra_label is not None:
            entries.append({"label": extra_label, "score": 0.95, "segment": [0.0, min(5.0, v.duration)]})
        out[v.id] = entries
    return out


def test_the_pipeline_evaluates_the_real_holdout_whose_class_set_is_incomplete(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """ActivityNet's 10% holdout lacks 4 of the 200 classes; the head's predictions of them have no AP there and do
    not stop the run. A user's predictions file with such a label is still refused."""
    from harness.errors import PredictionError
    from harness.evaluation.detection import load_ground_truth
    from harness.evaluation.predictions import load_predictions
    from harness.pipeline.headtrain import absent_classes, evaluate_split

    ds = _holdout_dataset()
    holdout = ds.subset("holdout")
    assert len(holdout) == 965 and len(ds.classes) == 200
    assert absent_classes(ds, "holdout") == ABSENT_FROM_HOLDOUT
    props = {v.id: [{"label": "proposal", "score": 1.0, "segment": [0.0, v.duration]}] for v in holdout}
    plain = evaluate_split(ds, "holdout", _as_predictions(holdout), props)
    with caplog.at_level(logging.DEBUG, logger="harness.evaluation.predictions"):
        mixed = evaluate_split(ds, "holdout", _as_predictions(holdout, "Brushing teeth"), props)
    assert mixed["mAP"] == plain["mAP"] and plain["average_mAP"] > 0.9  # dropped: not a single number moves
    assert any("965 prediction(s) of 1 class(es)" in r.getMessage() for r in caplog.records)

    user_file = tmp_path / "predictions.json"
    user_file.write_text(json.dumps({"results": _as_predictions(holdout[:3], "Brushing teeth")}))
    with pytest.raises(PredictionError, match="label 'Brushing teeth' is not a class of the ground truth's 'holdout'"):
        load_predictions(user_file, load_ground_truth(ds, subset="holdout"))


# ------------------------------------------------------------------------------------------- a partial download
# A handful of real ids per subset (the holdout is fixed by id hash over the whole file), their stand-in videos
# named as the README says (data/activitynet/videos/v_<id>.mp4), everything else "gone from YouTube".
PICK = {"training": 6, "holdout": 2, "validation": 3}
CONFIG = Path(__file__).resolve().parents[1] / "config" / "activitynet.yaml"
TOY = [  # config/activitynet.yaml at toy size on a CPU (the smoke config's sizes)
    "fidelity.snippets=8",
    "fidelity.frames=2",
    "fidelity.stride=2",
    "fidelity.size=16",
    "sweep.optuna.r_s=[1.0,2.0]",
    "sweep.pretrain_modes=[acp,acp+,lofi-long]",  # no ICP: timm's ImageNet weights need the hub
    "encoder.name=tsm_resnet_tiny",
    "encoder.pretrained=false",
    "encoder.grad_checkpointing=false",
    "encoder.channels_last=false",
    "pretrain.clip_frames=2",
    "pretrain.finetune.epochs=1",
    "lofi.optim.epochs=2",
    "lofi.optim.batch_size=4",
    "head.hidden=16",
    "head.hidden_2d=8",
    "head.hidden_3d=16",
    "head.samples=4",
    "head.fused_projection=true",
    "head.optim.epochs=2",
    "head.optim.batch_size=4",
    "head.classifier_optim.epochs=2",
    "tracking.enabled=false",
    "runtime.threads=1",
    "runtime.workers=0",
    "runtime.amp=false",
]


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder laid out as the README says, with 11 of ActivityNet's 19,228 videos, and a stand-in for the
    Kinetics-400 checkpoint (a tsm_resnet_tiny state dict: any timm ResNet state dict loads)."""
    import shutil

    import torch

    from encoders import create_encoder
    from harness.data.testvideo import activitynet_like

    ds = _holdout_dataset()
    base = tmp_path_factory.mktemp("newcomer")
    root = base / "data" / "activitynet"
    (root / "videos").mkdir(parents=True)
    shutil.copy(ANET, root / ANET.name)
    ids = {s: sorted(v.id for v in ds.subset(s) if v.segments)[:n] for s, n in PICK.items()}
    for i, vid in enumerate(v for vs in ids.values() for v in vs):
        activitynet_like(root / "videos" / f"v_{vid}.mp4", 2.0, fps=8, width=64, height=48, seed=i)
    weights = base / "weights" / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment8_e50.pth"
    weights.parent.mkdir()
    torch.save(create_encoder("tsm_resnet_tiny").state_dict(), weights)
    sets = [f"data.root={root}", f"data.cache_dir={base / 'cache'}", f"encoder.checkpoint={weights}", *TOY]
    return {"base": base, "root": root, "ids": ids, "dataset": ds, "sets": sets}


def _lofi(*args: object, cwd: Path) -> tuple[int, str, str]:
    """``lofi ARGS`` as a newcomer types it (a new process, this checkout's code)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(CONFIG.parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )
    return done.returncode, done.stdout, done.stderr


def _sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_video_files_are_found_under_the_names_downloads_use(tmp_path: Path) -> None:
    from harness.data.files import find_video_files

    for name in ("v_a.mp4", "b.mp4", "v_c.mkv", "d.webm", "e.avi"):
        (tmp_path / name).write_bytes(b"")
    files = find_video_files(tmp_path, ["a", "b", "c", "d", "e"], ext=".mp4")
    assert {k: p.name for k, p in files.found.items()} == {"a": "v_a.mp4", "b": "b.mp4", "c": "v_c.mkv", "d": "d.webm"}
    assert files.missing == ("e",)


def test_missing_videos_stop_or_are_left_out_as_data_missing_says(download: dict) -> None:
    from harness.errors import LofiError
    from harness.pipeline.data import absent_videos, missing_counts, prepare_dataset

    root, ids, full = download["root"], download["ids"], download["dataset"]
    cfg = _anet_config(root, annotations=ANET.name, missing="error")
    with pytest.raises(LofiError) as err:
        prepare_dataset(cfg)
    msg = str(err.value)
    assert "19217 of 19228 annotated videos have no file" in msg and "v_<id>.mp4, <id>.mp4" in msg
    assert "data.missing=skip" in msg and "\n" not in msg

    skip = prepare_dataset(_anet_config(root, annotations=ANET.name, missing="skip"))
    assert {s: sorted(v.id for v in skip.subset(s)) for s in PICK} == ids  # every subset: the videos present
    assert missing_counts(skip)["validation"] == len(full.subset("validation")) - 3 and not absent_videos(skip)

    miss = prepare_dataset(_anet_config(root, annotations=ANET.name, missing="miss"))
    assert len(miss.subset("validation")) == len(full.subset("validation"))  # the test split keeps its misses
    assert sorted(v.id for v in miss.subset("training")) == ids["training"]
    assert len(absent_videos(miss)) == len(full.subset("validation")) - 3


def test_data_prepare_prints_one_line_and_fails_when_it_prepared_nothing(download: dict, tmp_path: Path) -> None:
    code, out, err = _lofi("data", "prepare", "--config", CONFIG, *_sets(*download["sets"]), cwd=tmp_path)
    assert code == 0, err
    (line,) = out.strip().splitlines()
    assert "prepared 11 videos" in line and "19217 without a file (data.missing=skip" in line
    assert "activitynet-missing.txt" in line and line.endswith("0 undecodable")

    broken = tmp_path / "broken"  # every file there, none decodable (data.skip_corrupt: true in the config)
    (broken / "videos").mkdir(parents=True)
    for vid in (v for vs in download["ids"].values() for v in vs):
        (broken / "videos" / f"v_{vid}.mp4").write_bytes(b"not a video")
    code, out, err = _lofi(
        "data", "prepare", "--config", CONFIG, *_sets(*download["sets"], f"data.root={broken}", f"data.annotations={ANET}"),
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 2 and not out
    assert "none of the 11 videos could be prepared (listed in" in err.strip().splitlines()[-1]


def test_everything_checkable_is_checked_before_training(download: dict, tmp_path: Path) -> None:
    import torch

    sets = download["sets"]
    check = ("config", "check", "--config", CONFIG, "--against-machine")
    code, out, err = _lofi(*check, *_sets(*sets, "runtime.device=cpu"), cwd=tmp_path)
    assert code == 0, err
    assert "ok: data:" in out and "holdout 2, validation 3 videos" in out and "ok: ACP weights:" in out

    code, _, err = _lofi(*check, *_sets(*sets, "runtime.device=cpu", "data.test_subset=testing"), cwd=tmp_path)
    assert code == 2 and "data.test_subset = 'testing' has no labelled instance" in err
    code, _, err = _lofi(*check, *_sets(*sets, "runtime.device=cpu", "encoder.checkpoint=nowhere.pth"), cwd=tmp_path)
    assert code == 2 and "encoder.checkpoint = 'nowhere.pth': no such file" in err
    if not torch.cuda.is_available():
        code, _, err = _lofi(*check, *_sets(*sets), cwd=tmp_path)  # config/activitynet.yaml asks for cuda
        assert code == 2 and "runtime.device=cuda but no CUDA device" in err
        code, out, err = _lofi(*check, "--no-device", *_sets(*sets), cwd=tmp_path)  # the workflow's CPU job
        assert code == 0 and "device" not in out, err

    run = ("run", "--config", CONFIG, "--mode", "lofi-long", "--out", tmp_path / "run")
    code, _, err = _lofi(*run, *_sets(*sets, "runtime.device=cpu", "data.test_subset=testing"), cwd=tmp_path)
    assert code == 2 and "no labelled instance" in err and not (tmp_path / "run").exists()  # before any stage


def test_stage_keys_follow_the_videos_and_ignore_the_validation_cadence(download: dict, tmp_path: Path) -> None:
    import shutil

    from harness.experiment import load_experiment
    from harness.pipeline.plan import plan_run

    root = tmp_path / "activitynet"
    shutil.copytree(download["root"], root)

    def keys(*extra: str) -> dict[str, str]:
        cfg = load_experiment(CONFIG, [*download["sets"], f"data.root={root}", *extra])
        return {s.name: s.key for s in plan_run(cfg, mode="lofi-long", seed=0, run_dir=tmp_path / "r").stages}

    before = keys()
    reporting = ("head.validate_every=5", "runtime.progress=true", "tracking.enabled=true", "tracking.experiment=x")
    assert keys(*reporting) == before  # reporting settings: no stage is out of date
    (root / "videos" / f"v_{download['dataset'].subset('validation')[-1].id}.mp4").write_bytes(b"")  # one more
    after = keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"features-lofi-long-seed0", "classifier-seed0", "head-seed0"}  # they read the test split
    (root / "videos" / f"v_{download['dataset'].subset('training')[-1].id}.mp4").write_bytes(b"")
    assert {n for n, k in keys().items() if after[n] != k} == set(before) - {"pretrain-acp-seed0"}


def test_the_readme_followed_literally_gets_to_a_table(download: dict, tmp_path: Path) -> None:
    """README § Real data with stand-in videos: prepare, one LoFi run at toy size, the table with its footnotes."""
    sets = _sets(*download["sets"], "runtime.device=cpu")
    code, _, err = _lofi("data", "prepare", "--config", CONFIG, *sets, cwd=tmp_path)
    assert code == 0, err
    run = tmp_path / "runs" / "long"
    code, out, err = _lofi("-q", "run", "--config", CONFIG, "--mode", "lofi-long", "--out", run, *sets, cwd=tmp_path)
    assert code == 0, err
    row = json.loads((run / "row.json").read_text())
    n_val = len(download["dataset"].subset("validation"))
    assert row["missing_videos"]["count"] == 19228 - 11 and row["missing_videos"]["test"] == n_val - 3
    assert len((run / "missing_videos.txt").read_text().splitlines()) == 1 + 19228 - 11  # the list: a file
    assert row["split"] == "validation" and not row["skipped_videos"]
    predicted = json.loads((run / "head" / "predictions_testing.json").read_text())["results"]
    assert sorted(predicted) == download["ids"]["validation"]

    code, _, err = _lofi(
        "report", "tables", "--runs", run, "--out", tmp_path / "one", "--which", "ablation", "--no-plots", cwd=tmp_path
    )
    assert code == 0, err
    assert "No significance tests: the rows hold no ACP run" in (tmp_path / "one" / "table_ablation.md").read_text()

    acp = tmp_path / "runs" / "acp"  # the baseline, sharing the LoFi run's pre-training and classifier stages
    code, _, err = _lofi(
        "-q", "run", "--config", CONFIG, "--mode", "acp", "--out", acp, "--stages", run, *sets, cwd=tmp_path
    )
    assert code == 0, err
    code, _, err = _lofi(
        "report", "tables", "--runs", run, acp, "--out", tmp_path / "rep", "--which", "ablation", "--no-plots",
        "--n-boot", "50", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    table = (tmp_path / "rep" / "table_ablation.md").read_text()
    assert "| ACP         | 8   | 16²    |" in table and "| Long C-LoFi | 2–8 | 8²–16² |" in table  # filled
    assert "34.49" not in table and "not the paper's (full_L 8 (paper: 100); full_size 16 (paper: 224))" in table
    assert "n = 3 test videos" in table  # the tests evaluate what the runs evaluated: the videos present
    assert (
        f"Missing videos: 19217 annotated video(s) without a file (data.missing: skip; list: {row['missing_videos']['list']}): {n_val - 3} of them in the test split, left out of the evaluation"
        in table
    )


def test_thumos_durations_come_from_the_files_present(tmp_path: Path) -> None:
    """THUMOS14's annotations carry no durations: the videos present give theirs (the stage plan never opens one)."""
    import math

    from harness.data.testvideo import activitynet_like
    from harness.experiment import DataConfig
    from harness.pipeline.data import hold_out_validation, prepare_dataset, video_sets

    gt = ANET.parents[1] / "thumos14" / "thumos_gt.json"
    if not gt.is_file():
        pytest.skip(f"shared data not available: {gt}")
    from harness.data.annotations import read_annotations

    fields = {"name": "thumos14", "synthetic_profile": None, "root": tmp_path, "annotations": str(gt)}
    cfg = DataConfig(
        **fields, layout="thumos14-json", video_dir="videos", val_subset="holdout", val_holdout=0.1, missing="skip"
    )
    ds = hold_out_validation(read_annotations(gt, layout="thumos14-json"), cfg, source=str(gt))
    (tmp_path / "videos").mkdir()
    for subset in ("training", "holdout", "testing"):
        vid = sorted(v.id for v in ds.subset(subset) if v.segments)[0]
        activitynet_like(tmp_path / "videos" / f"{vid}.mp4", 1.5, fps=8, width=32, height=24)
    assert set(video_sets(cfg) or {}) == {"training", "holdout", "testing"}
    read = prepare_dataset(cfg)
    assert len(read.videos) == 3 and all(math.isclose(v.duration, 1.5, rel_tol=0.1) for v in read.videos.values())
