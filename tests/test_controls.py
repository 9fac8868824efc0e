"""The controls table (harness.report.controls.controls_table via harness.report.build.build_report), the class oracle and the
classifier's top-1 accuracy, on TEST FIXTURES: made-up annotations, proposals, class scores, predictions and
row.json files written into tmp_path. None of these numbers is a measured result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.evaluation.detection import evaluate_detection, load_ground_truth
from harness.evaluation.predictions import load_predictions
from harness.experiment import SweepConfig
from harness.postprocess import fuse_with_classes
from harness.report.build import (
    build_report,
    classifier_top1,
    ground_truth_classes,
    oracle_average_map,
    oracle_predictions,
    table_modes,
)
from harness.report.controls import controls_table
from harness.report.rows import NEGATIVE, load_rows
from harness.report.tables import NO_GAIN, SHARE_COLUMN

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("jump", "run")
N_VIDEOS = 8
SEEDS, CONTROL_SEEDS = (0, 1), (10, 11)
# jitter (seconds) of each mode's best proposal; e2e-full's proposals are the ground-truth segments exactly
NOISE = {"blind": 12.0, "acp": 3.0, "lofi-long": 2.0, "e2e-full": 0.0}
WRONG = {3, 7}  # videos the classifier gets wrong (top-1 accuracy 6/8 on every seed)


def _official(results: dict) -> dict:
    return {"version": "fixture", "results": results, "external_data": {}}


def _write_annotations(path: Path) -> dict:
    rng = np.random.default_rng(0)
    db = {}
    for i in range(N_VIDEOS):
        start = float(rng.uniform(0, 60))
        db[f"vid{i:02d}"] = {
            "subset": "validation",
            "duration": 100.0,
            "annotations": [{"segment": [start, start + 20.0], "label": CLASSES[i % 2]}],
        }
    path.write_text(json.dumps({"version": "fixture", "database": db}))
    return db


def _write_class_scores(path: Path, db: dict) -> Path:
    scores = {}
    for i, vid in enumerate(db):
        right = CLASSES.index(db[vid]["annotations"][0]["label"])
        p = np.full(len(CLASSES), 0.2)
        p[right if i not in WRONG else 1 - right] = 0.8
        scores[vid] = p.tolist()
    path.write_text(json.dumps({"classes": list(CLASSES), "scores": scores}))
    return path


def _write_run(root: Path, mode: str, seed: int, db: dict, gt: Path, scores: Path) -> Path:
    run = root / mode / f"seed{seed}"
    run.mkdir(parents=True)
    rng = np.random.default_rng([seed, len(mode)])
    class_scores = json.loads(scores.read_text())["scores"]
    proposals, detections = {}, {}
    for vid, info in db.items():
        s, e = info["annotations"][0]["segment"]
        j = rng.normal(0, NOISE[mode], 2)
        props = np.array([[min(s + j[0], e - 1.0), e + abs(j[1]), 0.9]])
        if mode != "e2e-full":  # a false proposal too
            a = float(rng.uniform(0, 80))
            props = np.vstack([props, [a, a + 10.0, float(rng.uniform(0.1, 0.95))]])
        proposals[vid] = [{"label": "proposal", "score": p[2], "segment": [p[0], p[1]]} for p in props.tolist()]
        detections[vid] = fuse_with_classes(props, class_scores[vid], list(CLASSES), top_k_classes=2)
    (run / "proposals.json").write_text(json.dumps(_official(proposals)))
    (run / "predictions.json").write_text(json.dumps(_official(detections)))
    avg = evaluate_detection(load_ground_truth(gt, subset="validation"), run / "predictions.json").average_mAP
    row = {
        "dataset": "synthetic",
        "encoder": "tsm_resnet_tiny",
        "head": "gtad",
        "mode": mode,
        "cycle": {"lofi-long": "long", "e2e-full": "full"}.get(mode, ""),
        "seed": seed,
        "split": "validation",
        "commit": "fixturecommit",
        "average_mAP": avg,
        "activation_rel": {"lofi-long": 0.3, "e2e-full": 1.0}.get(mode, 0.0),
        "predictions": "predictions.json",
        "proposals": "proposals.json",
        "class_scores": str(scores),
        "ground_truth": str(gt),
    }
    (run / "row.json").write_text(json.dumps(row))
    return run


@pytest.fixture(scope="module")
def control_runs(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("controls")
    gt = root / "annotations.json"
    db = _write_annotations(gt)
    scores = _write_class_scores(root / "class_scores.json", db)
    runs = [
        _write_run(root / "runs", mode, seed, db, gt, scores)
        for mode in ("blind", "acp", "lofi-long", "e2e-full")
        for seed in SEEDS
    ]
    runs += [_write_run(root / "runs", "acp", seed, db, gt, scores) for seed in CONTROL_SEEDS]
    return root, runs


def _cells(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return [rows[0], *rows[2:]]


# ---------------------------------------------------------------------------------------------------------------
# The class oracle and the classifier's accuracy, worked by hand


def _one_video(tmp_path: Path) -> Path:
    gt = tmp_path / "gt.json"
    db = {"v0": {"subset": "validation", "duration": 100.0, "annotations": [{"segment": [10, 30], "label": "run"}]}}
    gt.write_text(json.dumps({"version": "fixture", "database": db}))
    return gt


def test_oracle_of_one_exact_proposal_is_one_and_a_better_scored_false_one_halves_it(tmp_path: Path) -> None:
    gt_path = _one_video(tmp_path)
    gt, labels = load_ground_truth(gt_path, subset="validation"), ground_truth_classes(gt_path, "validation")
    assert labels == {"v0": "run"}
    exact = {"v0": [{"label": "proposal", "score": 0.6, "segment": [10.0, 30.0]}]}
    # one ground-truth segment, one proposal with tIoU 1 labelled with the true class: AP = 1 at every threshold
    assert oracle_average_map(_official(exact), gt, labels) == 1.0
    # a false proposal ranked above it: precision 1/2 at the only true positive, AP = 1/2 at every threshold
    both = {"v0": [*exact["v0"], {"label": "proposal", "score": 0.9, "segment": [50.0, 70.0]}]}
    assert oracle_average_map(_official(both), gt, labels) == 0.5


def test_oracle_predictions_are_the_fused_one_hot_entries(tmp_path: Path) -> None:
    # The oracle's arrays, built directly, against what load_predictions reads from the fuse_with_classes entries
    # (one-hot class scores, top-1 class) of every labelled video: proposals with tied scores, a video without a
    # ground-truth class (no instance), one without proposals, one outside the ground truth.
    gt_path = tmp_path / "gt.json"
    rng = np.random.default_rng(3)
    db = {
        f"v{i}": {
            "subset": "validation",
            "duration": 100.0,
            "annotations": [] if i == 4 else [{"segment": [10.0 * i, 10.0 * i + 20], "label": CLASSES[i % 2]}],
        }
        for i in range(6)
    }
    gt_path.write_text(json.dumps({"version": "fixture", "database": db}))
    gt, labels = load_ground_truth(gt_path, subset="validation"), ground_truth_classes(gt_path, "validation")
    proposals = {
        vid: [
            {"label": "proposal", "score": float(rng.choice([0.2, 0.5, 0.9])), "segment": [a, a + 15.0]}
            for a in rng.uniform(0, 80, 12).tolist()
        ]
        for vid in ("v3", "v0", "v4", "elsewhere", "v1", "v5")
    }
    props = load_predictions(_official(proposals), gt, require_label=False)
    fused = {}
    for vid in gt.video_ids:
        idx = np.flatnonzero(props.video == gt.video_index[vid])
        if vid in labels and idx.size:
            one_hot = (np.array(gt.classes) == labels[vid]).astype(float)
            segs = np.column_stack([props.segments[idx], props.score[idx]])
            fused[vid] = fuse_with_classes(segs, one_hot, list(gt.classes), top_k_classes=1)
    expected = load_predictions(_official(fused), gt)
    got = oracle_predictions(props, gt, labels)
    for field in ("video", "label", "score", "segments"):
        a, b = getattr(expected, field), getattr(got, field)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == np.ascontiguousarray(b).tobytes(), field
    assert (got.source, got.unknown_videos) == (expected.source, expected.unknown_videos)
    assert oracle_average_map(_official(proposals), gt, labels) == evaluate_detection(gt, expected).average_mAP


def test_classifier_top1_from_class_scores_and_from_predictions(tmp_path: Path) -> None:
    labels = {"a": "run", "b": "jump", "c": "run"}
    scores = tmp_path / "scores.json"
    scores.write_text(
        json.dumps({"classes": ["jump", "run"], "scores": {"a": [0.1, 0.9], "b": [0.3, 0.7], "c": [0, 1]}})
    )
    assert classifier_top1(labels, scores) == pytest.approx(2 / 3)
    preds = tmp_path / "preds.json"
    entry = {"segment": [0, 1]}
    preds.write_text(
        json.dumps(
            _official(
                {
                    "a": [{**entry, "label": "run", "score": 0.8}, {**entry, "label": "jump", "score": 0.1}],
                    "b": [{**entry, "label": "jump", "score": 0.5}],
                    "c": [{**entry, "label": "jump", "score": 0.9}, {**entry, "label": "run", "score": 0.2}],
                }
            )
        )
    )
    assert classifier_top1(labels, None, preds) == pytest.approx(2 / 3)  # no shared file: top-scored detection


# ---------------------------------------------------------------------------------------------------------------
# The table


@pytest.fixture(scope="module")
def report(control_runs, tmp_path_factory) -> Path:
    _, runs = control_runs
    out = tmp_path_factory.mktemp("report")
    sweep = SweepConfig(
        seeds=SEEDS, control_seeds=CONTROL_SEEDS, ablation_modes=("acp", "lofi-long", "e2e-full"), n_boot=60
    )
    build_report(
        load_rows(runs),
        out=out,
        kinds=["ablation", "controls"],
        modes=table_modes(sweep),
        control_seeds=sweep.control_seeds,
        n_boot=60,
        seed=0,
        plots=False,
    )
    return out


def test_controls_table_has_floor_positive_negative_control_and_oracle(report: Path) -> None:
    text = (report / "table_controls.md").read_text()
    cells = _cells(text)
    header, body = cells[0], {r[1]: dict(zip(cells[0], r)) for r in cells[1:]}
    for col in ("Control", "Seeds", "Avg", "Δ Avg vs ACP [95% CI]", "p", "p (Holm)", "Oracle Avg (GT class)"):
        assert col in header
    assert [r[0] for r in cells[1:]] == ["floor", "reference", "positive control", "negative control"]
    assert list(body) == ["Blind (zeroed features)", "ACP", "End-to-end (full fidelity)", "ACP, seeds 10, 11"]
    negative = body["ACP, seeds 10, 11"]
    assert negative["Seeds"] == "10, 11" and body["ACP"]["Seeds"] == "0, 1"
    assert re.fullmatch(r"(<0\.001|[01]\.\d{3})", negative["p"]) and re.fullmatch(r"[01]\.\d{3}", negative["p (Holm)"])
    # e2e-full's proposals are the ground-truth segments: with the true class every one is exact, oracle mAP 100
    assert body["End-to-end (full fidelity)"]["Oracle Avg (GT class)"] == "100.00 ± 0.00"
    assert all(r["Cls. top-1 (%)"] == "75.00 ± 0.00" for r in body.values())  # 6 of 8 videos, every seed
    assert "Holm-corrected over 3 comparison(s)" in text and "paired by video only" in text
    assert "MDE" in text and "Negative control" in text and "Positive control" in text

    numeric = pd.read_csv(report / "table_controls.csv").set_index("control")
    neg = numeric.loc["negative control"]
    assert neg["p_value"] > 0.05  # the same configuration on other seeds is not flagged
    assert neg["delta_ci_low"] <= 0 <= neg["delta_ci_high"]
    assert (numeric["oracle_average_mAP_mean"] >= numeric["average_mAP_mean"] - 1e-9).all()


def test_negative_control_runs_appear_in_the_controls_table_only(report: Path) -> None:
    text = (report / "table_ablation.md").read_text()
    assert "seeds 0, 1)" in text and "10" not in _cells(text)[1][0]
    numeric = pd.read_csv(report / "table_ablation.csv").set_index("mode")
    assert numeric.loc["acp", "n_seeds"] == 2


def test_ablation_table_shows_the_share_of_the_end_to_end_gain(report: Path) -> None:
    cells = _cells((report / "table_ablation.md").read_text())
    body = {r[0]: dict(zip(cells[0], r)) for r in cells[1:]}
    assert SHARE_COLUMN in cells[0] and "Act. mem. (rel.)" in cells[0]
    assert (
        body["ACP"][SHARE_COLUMN] == "0 (ACP)" and body["End-to-end (full fidelity)"][SHARE_COLUMN] == "1 (reference)"
    )
    numeric = pd.read_csv(report / "table_ablation.csv").set_index("mode")
    share = body["Long C-LoFi"][SHARE_COLUMN]
    if numeric.loc["e2e-full", "delta_ci_low"] > 0:
        lo, est, hi = (numeric.loc["lofi-long", c] for c in ("gain_share_ci_low", "gain_share", "gain_share_ci_high"))
        assert share == f"{est:.2f} [{lo:.2f}, {hi:.2f}]"
    else:
        assert share == NO_GAIN
    assert body["Long C-LoFi"]["Act. mem. (rel.)"] == "0.30"


def test_controls_table_without_stats_has_no_comparisons(control_runs) -> None:
    _, runs = control_runs
    table = controls_table(load_rows(runs), modes=("blind", "acp", "e2e-full"), control_seeds=CONTROL_SEEDS)
    shown = table.display.set_index("Config")
    assert shown.loc["ACP, seeds 10, 11", "p"] == "–" and shown.loc["ACP", "Oracle Avg (GT class)"] == "–"
    assert NEGATIVE not in " ".join(table.notes)


def test_the_command_builds_the_controls_with_the_configs_seeds(control_runs, tmp_path: Path) -> None:
    _, runs = control_runs
    out = tmp_path / "out"
    rc = main(
        [
            "-q",
            "report",
            "tables",
            "--runs",
            *map(str, runs),
            "--out",
            str(out),
            "--which",
            "controls",
            "--no-plots",
            "--n-boot",
            "20",
            "--config",
            str(ROOT / "config" / "smoke.yaml"),
            "--set",
            "sweep.seeds=[0, 1]",
            "--set",
            "sweep.control_seeds=[10, 11]",  # the seeds of the fixture's runs
        ]
    )
    assert rc == 0
    cells = _cells((out / "table_controls.md").read_text())
    assert cells[-1][1] == "ACP, seeds 10, 11"


def test_help_documents_controls_mde_and_the_gain_share(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["report", "tables", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("Controls table", "negative control", "class oracle", "MDE", "2.80", "share of the end-to-end gain"):
        assert phrase in text


# ---------------------------------------------------------------------------------------------------------------
# The strata table and the fidelity pairs


def test_strata_table_from_a_sweep_and_pair_comparisons(control_runs, tmp_path: Path) -> None:
    """The strata table as the workflow builds it: the floor first, a column per stratum of ``strata.json`` whose
    values are the runs' mAP on those videos alone, and the pair comparison's Δ equal to the seed-mean difference
    of the rows' own average mAPs (worked out from the rows, not from the comparison code)."""
    from harness.report.build import _Matcher, _Tests
    from harness.report.strata import stratum_column

    root, runs = control_runs
    gt = root / "annotations.json"
    ids = sorted(json.loads(gt.read_text())["database"])
    (root / "strata.json").write_text(json.dumps({"half": {"first": ids[:4], "second": ids[4:]}}))
    try:
        rows = load_rows(runs)
        build_report(
            rows,
            out=tmp_path,
            kinds=["strata"],
            modes={"strata": ("blind", "acp", "lofi-long", "e2e-full")},
            control_seeds=CONTROL_SEEDS,
            n_boot=60,
            seed=0,
            plots=False,
        )
    finally:
        (root / "strata.json").unlink()
    text = (tmp_path / "table_strata.md").read_text()
    cells = _cells(text)
    assert [r[0] for r in cells[1:]] == ["Blind (zeroed features)", "ACP", "Long C-LoFi", "End-to-end (full fidelity)"]
    assert any(h.startswith("first (half, 4 videos)") for h in cells[0])
    numeric = pd.read_csv(tmp_path / "table_strata.csv").set_index("mode")
    # e2e-full's detections are exact: 100 on every stratum whatever the class scores' errors allow
    e2e = rows[rows["mode"] == "e2e-full"]
    assert numeric.loc["e2e-full", "average_mAP_mean"] == pytest.approx(100 * e2e["average_mAP"].mean())
    assert numeric.loc["e2e-full", f"{stratum_column('half', 'first')}_mean"] <= 100.0

    main = rows[~rows["seed"].isin(CONTROL_SEEDS)]
    tests = _Tests(_Matcher(None), 60, 60, 0, True)
    (pair,) = tests.compare_pairs(main, [("acp", "e2e-full"), ("acp", "lofi-S")])  # lofi-S never ran: skipped
    by_mode = main.groupby("mode")["average_mAP"].mean()
    assert pair.config == "e2e-full" and pair.baseline == "acp"
    assert pair.diff == pytest.approx(by_mode["e2e-full"] - by_mode["acp"], abs=1e-9)
    assert pair.ci_low <= pair.diff <= pair.ci_high and pair.p_adjusted == pytest.approx(pair.p_value)
