"""The strata breakdown (harness.report.strata) against a case worked out by hand, and its table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import LofiError
from harness.evaluation.detection import load_ground_truth, match_detections
from harness.evaluation.predictions import load_predictions
from harness.report import strata


def _ground_truth(tmp_path: Path) -> Path:
    db = {
        vid: {"subset": "testing", "duration": 20.0, "annotations": [{"segment": [0.0, 10.0], "label": "jump"}]}
        for vid in ("a1", "a2", "b1", "b2")
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"version": "t", "database": db}))
    return path


def _matches(gt_path: Path):
    gt = load_ground_truth(gt_path, subset="testing")
    hit = lambda score: [{"segment": [0.0, 10.0], "score": score, "label": "jump"}]
    results = {
        "a1": hit(0.9),
        "a2": hit(0.8),
        "b1": [{"segment": [12.0, 19.0], "score": 0.95, "label": "jump"}],  # misses at every tIoU
        "b2": hit(0.5),
    }
    return match_detections(gt, load_predictions({"version": "t", "results": results}, gt))


def test_stratum_map_is_the_evaluators_map_on_its_videos_alone(tmp_path: Path) -> None:
    """Worked by hand (one class, one instance per video, every hit exact so every tIoU gives the same AP):
    stratum a: two hits, the only detections -> AP 1. Stratum b: a false positive (0.95) ranked above a hit (0.5),
    and b1's instance never found -> precision 1/2 at recall 1/2 -> AP 0.25. All four: FP, TP, TP, TP by score over 4 instances -> interpolated
    precision 3/4 at recalls 1/4, 2/4, 3/4 -> AP 3 x 1/4 x 3/4 = 0.5625."""
    matches = _matches(_ground_truth(tmp_path))
    values, sizes = strata.video_strata_metrics(matches, {"group": {"a": ["a1", "a2"], "b": ["b1", "b2"]}})
    assert values == pytest.approx({"stratum:group:a": 1.0, "stratum:group:b": 0.25})
    assert sizes == {"stratum:group:a": 2, "stratum:group:b": 2}
    everyone, _ = strata.video_strata_metrics(matches, {"group": {"all": ["a1", "a2", "b1", "b2"]}})
    assert everyone["stratum:group:all"] == pytest.approx(0.5625)
    missing, counts = strata.video_strata_metrics(matches, {"group": {"none": ["zz"]}})
    assert np.isnan(missing["stratum:group:none"]) and counts["stratum:group:none"] == 0


def test_tiou_ranges_average_the_rows_thresholds() -> None:
    row = {f"mAP_{t:.2f}": t for t in np.round(np.arange(0.5, 0.951, 0.05), 2)}
    got = strata.tiou_range_metrics(row)
    assert got["tIoU 0.50–0.70"] == pytest.approx(0.6)  # (0.5 + 0.55 + 0.6 + 0.65 + 0.7) / 5
    assert got["tIoU 0.75–0.95"] == pytest.approx(0.85)


def test_strata_table_shows_the_floor_first_and_gains_over_it(tmp_path: Path) -> None:
    gt = _ground_truth(tmp_path)
    (tmp_path / "strata.json").write_text(json.dumps({"cue band": {"fine": ["a1", "a2"], "coarse": ["b1", "b2"]}}))
    matches = _matches(gt)
    base = {"dataset": "d", "encoder": "e", "head": "h", "ground_truth": str(gt), "row_path": "r", "row_time": "t"}
    thresholds = {f"mAP_{t:.2f}": 0.5 for t in np.round(np.arange(0.5, 0.951, 0.05), 2)}
    rows = pd.DataFrame(
        [
            {**base, "mode": "blind", "seed": 0, "average_mAP": 0.3, **thresholds},
            {**base, "mode": "acp", "seed": 0, "average_mAP": 0.5625, **thresholds},
        ]
    )
    annotated, sizes = strata.annotate(rows, lambda row: matches, None)
    table = strata.strata_table(annotated, ["blind", "acp"], str, sizes)
    assert list(table.display["Config"]) == ["blind", "acp"]
    assert "fine (cue band, 2 videos)" in table.display.columns
    acp = table.numeric.set_index("mode").loc["acp"]
    assert acp["stratum:cue band:fine_mean"] == pytest.approx(100.0)
    assert acp["stratum:cue band:fine_minus_floor"] == pytest.approx(0.0)  # same predictions for both rows here
    assert acp["average_mAP_minus_floor"] == pytest.approx(26.25)
    # without predictions to re-evaluate, only the tIoU ranges
    plain, no_sizes = strata.annotate(rows, None, None)
    assert not any(c.startswith("stratum:") for c in plain.columns) and no_sizes == {}


def test_bad_strata_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "strata.json"
    bad.write_text(json.dumps({"cue band": {"fine": "a1"}}))
    with pytest.raises(LofiError, match="not a list of video ids"):
        strata.read_strata(bad)
    bad.write_text("{")
    with pytest.raises(LofiError, match="not valid JSON"):
        strata.read_strata(bad)
