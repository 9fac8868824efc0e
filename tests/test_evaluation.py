"""ActivityNet detection mAP and proposal AR: hand-worked cases, the slow reference, errors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference_evaluation import (  # tests/reference_evaluation.py: the slow oracle
    pandas_rowwise_detection_ap,
    reference_detection_ap,
    reference_proposal_metrics,
)

from harness.cli import main
from harness.data.model import Segment, TALDataset, Video
from harness.errors import AnnotationError, PredictionError
from harness.evaluation import (
    TIOU_THRESHOLDS,
    ap_from_matches,
    evaluate_detection,
    evaluate_proposals,
    load_ground_truth,
    load_predictions,
    match_detections,
)


def ann(s: float, e: float, label: str = "A") -> dict[str, Any]:
    return {"segment": [s, e], "label": label}


def det(s: float, e: float, score: float, label: str = "A") -> dict[str, Any]:
    return {"label": label, "score": score, "segment": [s, e]}


def gt_file(tmp_path: Path, videos: dict[str, list[dict[str, Any]]], extra: dict[str, Any] | None = None) -> Path:
    db = {v: {"subset": "validation", "duration": 100.0, "annotations": a} for v, a in videos.items()}
    db.update(extra or {})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": db}))
    return path


def preds_dict(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"version": "VERSION 1.3", "results": results, "external_data": {}}


# ------------------------------------------------------------------------------------------------ hand-worked


def test_duplicate_detection_is_fp_and_partial_overlap(tmp_path: Path) -> None:
    # GT A: g1=[0,10], g2=[20,30]. Ranked: p1 [0,10] (tIoU 1 with g1) TP; p2 [0,10] duplicate: g1 taken, g2 tIoU 0
    # -> FP; p3 [20,28.2]: tIoU 8.2/10 = 0.82 with g2 -> TP for thresholds <= 0.80 (7 of them), FP above.
    # t <= 0.80: tp 1,0,1 -> precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> envelope 1, 2/3, 2/3
    #   AP = 1/2*1 + 0 + 1/2*2/3 = 5/6.       t >= 0.85: tp 1,0,0 -> AP = 1/2*1 = 1/2.
    # average mAP = (7*5/6 + 3*1/2)/10 = 11/15.
    gt = gt_file(tmp_path, {"v1": [ann(0, 10), ann(20, 30)]})
    res = evaluate_detection(gt, preds_dict({"v1": [det(0, 10, 0.9), det(0, 10, 0.8), det(20, 28.2, 0.7)]}))
    expected = np.array([5 / 6] * 7 + [1 / 2] * 3)
    np.testing.assert_allclose(res.mAP, expected, atol=1e-12)
    assert res.average_mAP == pytest.approx(11 / 15, abs=1e-12)
    np.testing.assert_array_equal(res.tiou_thresholds, TIOU_THRESHOLDS)


def test_unknown_video_and_missing_class(tmp_path: Path) -> None:
    # GT: v1 A [0,10], v2 B [5,15]. A ranked: 0.9 on v9 (not in GT) FP, 0.7 on v2 (no A there) FP, 0.5 on v1 TP.
    # precision 0, 0, 1/3; recall 0, 0, 1 -> AP_A = 1 * 1/3 = 1/3. B has no prediction -> AP_B = 0. mAP = 1/6.
    gt = gt_file(tmp_path, {"v1": [ann(0, 10)], "v2": [ann(5, 15, "B")]})
    preds = preds_dict({"v9": [det(0, 10, 0.9)], "v2": [det(5, 15, 0.7)], "v1": [det(0, 10, 0.5)]})
    res = evaluate_detection(gt, preds)
    assert res.classes == ("A", "B")
    np.testing.assert_allclose(res.ap[:, 0], 1 / 3, atol=1e-12)
    np.testing.assert_array_equal(res.ap[:, 1], 0.0)
    assert res.average_mAP == pytest.approx(1 / 6, abs=1e-12)
    m = match_detections(load_ground_truth(gt), load_predictions(preds, load_ground_truth(gt)))
    assert m.pred_video.tolist() == [-1, 1, 0]  # file order; v9 unknown
    assert m.tp.sum(axis=0).tolist() == [0, 0, 10]


def test_prediction_takes_the_highest_tiou_ground_truth(tmp_path: Path) -> None:
    # GT g1=[0,10], g2=[1,11]. p1=[1,11] (0.9): tIoU 1 with g2, 9/11 with g1 -> takes g2.
    # p2=[0,9.2] (0.8): tIoU 0.92 with g1, 8.2/11 = 0.745 with g2 -> g1, TP up to 0.90, FP at 0.95.
    # AP = 1 for 9 thresholds, 1/2 at 0.95 (tp 1,0) -> average 9.5/10 = 0.95.
    # (Taking the first GT in file order instead would give p1->g1 and p2 at most 0.745 -> a lower AP.)
    gt = gt_file(tmp_path, {"v1": [ann(0, 10), ann(1, 11)]})
    res = evaluate_detection(gt, preds_dict({"v1": [det(1, 11, 0.9), det(0, 9.2, 0.8)]}))
    np.testing.assert_allclose(res.mAP, [1.0] * 9 + [0.5], atol=1e-12)
    assert res.average_mAP == pytest.approx(0.95, abs=1e-12)


def test_score_ties_keep_input_order(tmp_path: Path) -> None:
    # Equal scores: stable order. FP then TP -> precision 0, 1/2 -> AP 1/2; TP then FP -> AP 1.
    gt = gt_file(tmp_path, {"v1": [ann(0, 10)]})
    fp_first = evaluate_detection(gt, preds_dict({"v1": [det(50, 60, 0.5), det(0, 10, 0.5)]}))
    tp_first = evaluate_detection(gt, preds_dict({"v1": [det(0, 10, 0.5), det(50, 60, 0.5)]}))
    assert fp_first.average_mAP == pytest.approx(0.5, abs=1e-12)
    assert tp_first.average_mAP == pytest.approx(1.0, abs=1e-12)


def test_other_subsets_and_empty_videos(tmp_path: Path) -> None:
    # v3 is in training: predictions there are FPs of an unknown video; v2 is a validation video without GT.
    gt_path = gt_file(
        tmp_path,
        {"v1": [ann(0, 10)], "v2": []},
        {"v3": {"subset": "training", "duration": 50.0, "annotations": [ann(0, 10, "C")]}},
    )
    gt = load_ground_truth(gt_path)
    assert gt.video_ids == ("v1", "v2") and gt.classes == ("A",)
    # ranked: v3 0.9 FP, v2 0.8 FP, v1 0.7 TP -> AP 1/3
    res = evaluate_detection(
        gt, preds_dict({"v3": [det(0, 10, 0.9)], "v2": [det(0, 10, 0.8)], "v1": [det(0, 10, 0.7)]})
    )
    assert res.average_mAP == pytest.approx(1 / 3, abs=1e-12)
    assert load_ground_truth(gt_path, subset="training").classes == ("C",)


def test_dataset_input_ignores_ambiguous() -> None:
    videos = {
        "a": Video(
            "a", "testing", 60.0, (Segment(0, 10, "X"), Segment(20, 30, "Y")), ambiguous=(Segment(40, 50, "Ambiguous"),)
        ),
        "b": Video("b", "validation", 60.0, (Segment(0, 10, "X"),)),
    }
    ds = TALDataset("t", videos, ("X", "Y"))
    gt = load_ground_truth(ds, subset="testing")
    assert gt.classes == ("X", "Y") and gt.num_instances == 2
    # A prediction on the ambiguous span is an FP: X ranked TP (0.9), Y ranked FP (0.8), TP (0.7) -> AP 1 and 1/2.
    res = evaluate_detection(
        gt, preds_dict({"a": [det(0, 10, 0.9, "X"), det(40, 50, 0.8, "Y"), det(20, 30, 0.7, "Y")]})
    )
    np.testing.assert_allclose(res.ap[0], [1.0, 0.5], atol=1e-12)


def test_empty_predictions(tmp_path: Path) -> None:
    gt = gt_file(tmp_path, {"v1": [ann(0, 10)], "v2": [ann(0, 10, "B")]})
    res = evaluate_detection(gt, preds_dict({}))
    assert res.ap.shape == (10, 2) and res.average_mAP == 0.0
    with pytest.raises(PredictionError, match="no proposal"):
        evaluate_proposals(gt, preds_dict({}))


# ------------------------------------------------------------------------------------------------ vs reference


def random_case(seed: int, n_videos: int = 30, n_classes: int = 4, n_preds: int = 300) -> tuple[dict, dict]:
    """Ground truth + tie-free predictions, many near the ground truth so that every threshold matters."""
    rng = np.random.default_rng(seed)
    db: dict[str, Any] = {}
    for i in range(n_videos):
        anns = []
        for _ in range(int(rng.integers(0, 4))):
            s = float(rng.uniform(0, 80))
            anns.append(ann(s, s + float(rng.uniform(1, 20)), f"c{rng.integers(n_classes)}"))
        db[f"v{i}"] = {
            "subset": "validation" if i < n_videos - 3 else "training",
            "duration": 100.0,
            "annotations": anns,
        }
    labels = sorted({a["label"] for v in db.values() if v["subset"] == "validation" for a in v["annotations"]})
    results: dict[str, list] = {}
    scores = rng.permutation(n_preds) / n_preds + 0.001  # distinct
    for k in range(n_preds):
        vid = f"v{rng.integers(n_videos + 2)}"  # v{n}, v{n+1} are not in the file
        anns = db.get(vid, {"annotations": []})["annotations"]
        if anns and rng.random() < 0.7:
            a = anns[rng.integers(len(anns))]
            s, e = a["segment"][0] + rng.normal(0, 2), a["segment"][1] + rng.normal(0, 2)
            s, e = min(s, e), max(s, e)
            lab = a["label"] if rng.random() < 0.8 else labels[rng.integers(len(labels))]
        else:
            s = float(rng.uniform(0, 80))
            e, lab = s + float(rng.uniform(1, 20)), labels[rng.integers(len(labels))]
        results.setdefault(vid, []).append(det(float(s), float(e), float(scores[k]), lab))
    return db, results


@pytest.mark.parametrize("seed", range(6))
def test_detection_matches_slow_reference(tmp_path: Path, seed: int) -> None:
    db, results = random_case(seed)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": db}))
    res = evaluate_detection(path, preds_dict(results))
    classes, ref = reference_detection_ap(db, results)
    assert list(res.classes) == classes
    np.testing.assert_allclose(res.ap, np.array(ref), rtol=0, atol=1e-9)
    assert 0 < res.average_mAP < 1


@pytest.mark.parametrize("seed", range(2))
def test_pandas_rowwise_baseline_agrees_with_reference(seed: int) -> None:
    """The benchmark's official-structure baseline computes the same APs as the loop reference."""
    db, results = random_case(seed)
    classes, ref = reference_detection_ap(db, results)
    classes_pd, ap_pd = pandas_rowwise_detection_ap(db, results)
    assert classes_pd == classes
    np.testing.assert_allclose(np.array(ap_pd), np.array(ref), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed,max_avg", [(0, 100), (1, 100), (2, 10), (3, 5), (4, 20)])
def test_proposals_match_slow_reference(tmp_path: Path, seed: int, max_avg: int) -> None:
    db, results = random_case(seed, n_preds=400)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": db}))
    out = evaluate_proposals(path, preds_dict(results), max_avg_proposals=max_avg)
    ref = reference_proposal_metrics(db, results, max_avg_proposals=max_avg)
    for key in ("AR@1", "AR@5", "AR@10", "AR@100", "AUC"):
        if ref[key] is None:
            assert out[key] is None
        else:
            assert out[key] == pytest.approx(ref[key], abs=1e-9), key
    assert out["AUC"] > 0


def test_video_weights_equal_literal_duplication(tmp_path: Path) -> None:
    db, results = random_case(7, n_videos=25, n_preds=300)
    val = [v for v, info in db.items() if info["subset"] == "validation"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": db}))
    gt = load_ground_truth(path)
    rng = np.random.default_rng(3)
    weights = rng.integers(0, 4, size=len(gt.video_ids))
    weights[: len(weights) // 4] = 0
    ap_w = ap_from_matches(match_detections(gt, load_predictions(preds_dict(results), gt)), weights)

    # The literal resample: video v present w times as v#0..v#{w-1}; predictions of unknown videos kept once.
    w_of = dict(zip(gt.video_ids, weights.tolist()))
    db2 = {k: v for k, v in db.items() if db[k]["subset"] != "validation"}
    res2: dict[str, list] = {}
    for v in val:
        for c in range(w_of[v]):
            db2[f"{v}#{c}"] = db[v]
            if v in results:
                res2[f"{v}#{c}"] = results[v]
    for v, entries in results.items():
        if v not in w_of:
            res2[v] = entries
    path2 = tmp_path / "gt2.json"
    path2.write_text(json.dumps({"database": db2}))
    gt2 = load_ground_truth(path2)
    res2 = {v: [e for e in es if e["label"] in gt2.class_index] for v, es in res2.items()}
    lit = evaluate_detection(gt2, preds_dict(res2))
    cols = [gt.class_index[c] for c in gt2.classes]
    np.testing.assert_allclose(ap_w[:, cols], lit.ap, rtol=0, atol=1e-9)
    missing = sorted(set(range(len(gt.classes))) - set(cols))
    assert np.isnan(ap_w[:, missing]).all()
    assert int(weights.max()) >= 2 and (weights == 0).any()
    # all-ones weights are the plain evaluation
    m = match_detections(gt, load_predictions(preds_dict(results), gt))
    np.testing.assert_array_equal(ap_from_matches(m, np.ones(len(gt.video_ids))), ap_from_matches(m))


def test_ground_truth_has_one_reader_with_segments_as_written(tmp_path: Path) -> None:
    """The evaluator reads files through the data layer's reader; official-layout segments stay as written."""
    from harness.data.annotations import read_annotations

    db = {
        "v1": {"subset": "validation", "duration": 10.0, "annotations": [ann(2, 10.5), ann(4, 4)]},
        "v2": {"subset": "validation", "duration": 8.0, "annotations": [ann(1, 3)]},
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": db}))
    gt = load_ground_truth(path)
    assert gt.gt_segments.tolist() == [[2.0, 10.5], [4.0, 4.0], [1.0, 3.0]]  # no clip past the duration
    assert read_annotations(path).videos["v1"].segments[0].end == 10.0  # the data layer's default clips
    # the strict reader's checks now guard the evaluator too: a video listed twice, a reversed segment
    path.write_text('{"database": {"v2": ' + json.dumps(db["v2"]) + ', "v2": ' + json.dumps(db["v2"]) + "}}")
    with pytest.raises(AnnotationError, match="video v2: listed twice"):
        load_ground_truth(path)
    path.write_text(json.dumps({"database": {"v2": {**db["v2"], "annotations": [ann(3, 1)]}}}))
    with pytest.raises(AnnotationError, match="starts after it ends"):
        load_ground_truth(path)


# ------------------------------------------------------------------------------------------------ proposals


def test_proposals_hand_worked(tmp_path: Path) -> None:
    # One video, GT [0,10], one exact proposal. V=1, P=1, ratio 100 -> keeps 1; grid pcn_k = k, allowed
    # min(int(k), 1) = 1, recall 1 at every AN = k = 1..100. AUC = trapezoid(1 over [1, 100]) / 100 = 99/100.
    gt = gt_file(tmp_path, {"v1": [ann(0, 10)]})
    out = evaluate_proposals(gt, preds_dict({"v1": [{"score": 1.0, "segment": [0, 10]}]}))
    assert out == pytest.approx({"AR@1": 1.0, "AR@5": 1.0, "AR@10": 1.0, "AR@100": 1.0, "AUC": 0.99}, abs=1e-12)


def test_proposals_ratio_quirk(tmp_path: Path) -> None:
    # v1, v2 each GT [0,10]; v1 proposals: [50,60] 0.9, [0,10] 0.8; v2: [0,10] 0.9, [0,8] 0.8. max_avg = 2.
    # P=4, ratio = 2*2/4 = 1: keep 2 each, N=4; pcn_k = k/100; allowed = int(2k/100) = 0 (k<50), 1 (50..99), 2.
    # AN = pcn*4/2 = k/50. Recall 0 (k<50), 1/2 (v2 only, k=50..99), 1 (k=100). AR@1 (k=50) = 1/2.
    # trapezoid: 0.02*0.25 + 49*0.02*0.5 + 0.02*0.75 = 0.51 -> AUC = 0.51/2 = 0.255.
    videos = {"v1": [ann(0, 10)], "v2": [ann(0, 10)]}
    props = {"v1": [det(50, 60, 0.9), det(0, 10, 0.8)], "v2": [det(0, 10, 0.9), det(0, 8, 0.8)]}
    out = evaluate_proposals(gt_file(tmp_path, videos), preds_dict(props), max_avg_proposals=2)
    assert out["AR@1"] == pytest.approx(0.5, abs=1e-12)
    assert out["AUC"] == pytest.approx(0.255, abs=1e-12)
    assert out["AR@5"] is None and out["AR@100"] is None
    # Two more proposals on a video outside the GT still count in P (official): P=6, ratio = 2/3 -> keep
    # int(2*2/3) = 1 each, N=2, pcn_k = 2k/100, allowed = int(2k/100) capped at 1 -> 1 from k=50; AN = k/50.
    # Recall 1/2 from k=50 on: AUC = (0.02*0.25 + 50*0.02*0.5)/2 = 0.2525.
    props["zz"] = [det(0, 10, 0.5), det(0, 20, 0.4)]
    out = evaluate_proposals(gt_file(tmp_path, videos), preds_dict(props), max_avg_proposals=2)
    assert out["AR@1"] == pytest.approx(0.5, abs=1e-12)
    assert out["AUC"] == pytest.approx(0.2525, abs=1e-12)


def test_proposals_video_without_proposals(tmp_path: Path) -> None:
    # v2 has GT but no proposal: half of the instances can never be recalled -> AR 1/2, AUC 0.99/2.
    gt = gt_file(tmp_path, {"v1": [ann(0, 10)], "v2": [ann(0, 10)]})
    out = evaluate_proposals(gt, preds_dict({"v1": [{"score": 1.0, "segment": [0, 10]}]}))
    assert out["AR@100"] == pytest.approx(0.5, abs=1e-12) and out["AUC"] == pytest.approx(0.495, abs=1e-12)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "results,needle",
    [
        ({"v1": [det(0, 10, float("nan"))]}, "not finite"),
        ({"v1": [det(0, 10, float("inf"))]}, "not finite"),
        ({"v1": [det(10, 0, 0.5)]}, "reversed"),
        ({"v1": [det(0, 10, 0.5, "Nope")]}, "'Nope' is not a class"),
        ({"v1": [{"label": "A", "segment": [0, 10]}]}, "no 'score'"),
        ({"v1": [{"label": "A", "score": 0.5}]}, "no 'segment'"),
        ({"v1": [{"score": 0.5, "segment": [0, 10]}]}, "no 'label'"),
        ({"v1": [{"label": "A", "score": 0.5, "segment": [0, 10, 20]}]}, "[start, end]"),
        ({"v1": [{"label": "A", "score": "high", "segment": [0, 10]}]}, "not a number"),
        ({"v1": {"label": "A"}}, "must be a list"),
    ],
)
def test_prediction_errors_name_file_and_video(tmp_path: Path, results: dict, needle: str) -> None:
    gt = load_ground_truth(gt_file(tmp_path, {"v1": [ann(0, 10)]}))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(preds_dict({"v0": [det(0, 1, 0.1)], **results})))
    with pytest.raises(PredictionError) as info:
        load_predictions(pred, gt)
    msg = str(info.value)
    assert "\n" not in msg and str(pred) in msg and "video v1" in msg and needle in msg


def test_malformed_files(tmp_path: Path) -> None:
    gt = load_ground_truth(gt_file(tmp_path, {"v1": [ann(0, 10)]}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PredictionError, match=r"bad\.json: not valid JSON"):
        load_predictions(bad, gt)
    bad.write_text(json.dumps({"version": "x"}))
    with pytest.raises(PredictionError, match='no "results"'):
        load_predictions(bad, gt)
    with pytest.raises(PredictionError, match="file not found"):
        load_predictions(tmp_path / "missing.json", gt)
    broken_gt = tmp_path / "broken_gt.json"
    broken_gt.write_text("[")
    with pytest.raises(AnnotationError, match=r"broken_gt\.json: line 1 column 2: malformed JSON"):
        load_ground_truth(broken_gt)
    with pytest.raises(AnnotationError, match="no video in subset 'testing'"):
        load_ground_truth(gt_file(tmp_path, {"v1": [ann(0, 10)]}), subset="testing")
    # labels are not needed (nor checked) for proposals
    props = load_predictions(
        preds_dict({"v1": [{"score": 0.5, "segment": [0, 10], "label": "Nope"}]}), gt, require_label=False
    )
    assert props.label.tolist() == [-1]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_detection_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = gt_file(tmp_path, {"v1": [ann(0, 10), ann(20, 30)]})
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(preds_dict({"v1": [det(0, 10, 0.9), det(0, 10, 0.8), det(20, 28.2, 0.7)]})))
    assert main(["evaluate", "detection", "--ground-truth", str(gt), "--predictions", str(pred), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"tiou_thresholds", "mAP", "average_mAP"}
    assert out["average_mAP"] == pytest.approx(11 / 15) and out["mAP"][0] == pytest.approx(5 / 6)
    assert main(["evaluate", "detection", "--ground-truth", str(gt), "--predictions", str(pred)]) == 0
    table = capsys.readouterr().out
    assert "average" in table and "73.33" in table and "83.33" in table


def test_cli_proposals_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = gt_file(tmp_path, {"v1": [ann(0, 10)]})
    pred = tmp_path / "prop.json"
    pred.write_text(json.dumps(preds_dict({"v1": [{"score": 1.0, "segment": [0, 10]}]})))
    argv = ["evaluate", "proposals", "--ground-truth", str(gt), "--predictions", str(pred)]
    assert main([*argv, "--json", "--max-avg-proposals", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == pytest.approx({"AR@1": 1.0, "AR@5": 1.0, "AR@10": 1.0, "AR@100": 1.0, "AUC": 0.99})
    assert main(argv) == 0
    assert "AUC" in capsys.readouterr().out
    pred.write_text(json.dumps(preds_dict({"v1": [{"score": 1.0, "segment": [10, 0]}]})))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "video v1" in err and "reversed" in err


@pytest.mark.parametrize("metric", ["detection", "proposals"])
def test_cli_help_teaches(metric: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", metric, "--help"])
    text = capsys.readouterr().out
    assert "example" in text and f"lofi evaluate {metric}" in text and "--ground-truth" in text
