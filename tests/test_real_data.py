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
    from harness.evaluation.detection import load_ground_truth, load_predictions
    from harness.pipeline.headtrain import absent_classes, evaluate_split

    ds = _holdout_dataset()
    holdout = ds.subset("holdout")
    assert len(holdout) == 965 and len(ds.classes) == 200
    assert absent_classes(ds, "holdout") == ABSENT_FROM_HOLDOUT
    props = {v.id: [{"label": "proposal", "score": 1.0, "segment": [0.0, v.duration]}] for v in holdout}
    plain = evaluate_split(ds, "holdout", _as_predictions(holdout), props)
    with caplog.at_level(logging.DEBUG, logger="harness.evaluation.detection"):
        mixed = evaluate_split(ds, "holdout", _as_predictions(holdout, "Brushing teeth"), props)
    assert mixed["mAP"] == plain["mAP"] and plain["average_mAP"] > 0.9  # dropped: not a single number moves
    assert any("965 prediction(s) of 1 class(es)" in r.getMessage() for r in caplog.records)

    user_file = tmp_path / "predictions.json"
    user_file.write_text(json.dumps({"results": _as_predictions(holdout[:3], "Brushing teeth")}))
    with pytest.raises(PredictionError, match="label 'Brushing teeth' is not a class of the ground truth's 'holdout'"):
        load_predictions(user_file, load_ground_truth(ds, subset="holdout"))
