"""Slow, straightforward reference implementations of the ActivityNet metrics, written from the protocol text.

They take the raw official dicts (``database`` and ``results``), loop per prediction / per video with plain Python
and share no code with the vectorised evaluator, so the tests and ``benchmarks/bench_evaluation.py`` can check
one against the other. Same tie rules as the fast code (stable sort by descending score; equal tIoU: ground
truth in input order). Do not use them for real evaluations: they are slow on purpose.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

TIOU = [float(t) for t in np.linspace(0.5, 0.95, 10)]  # the same floats as the fast evaluator


def _tiou(p: Sequence[float], g: Sequence[float]) -> float:
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    union = (g[1] - g[0]) + (p[1] - p[0]) - inter
    return inter / union if union > 0 else 0.0


GroundTruth = dict[str, list[tuple[str, list[float]]]]  # video -> [(label, [start, end])]


def _gt_by_video(database: Mapping[str, Any], subset: str) -> tuple[GroundTruth, list[str]]:
    per_video: dict[str, list[tuple[str, list[float]]]] = {}
    labels: set[str] = set()
    for vid, info in database.items():
        if info["subset"] != subset:
            continue
        per_video[vid] = [(a["label"], [float(a["segment"][0]), float(a["segment"][1])])
                          for a in info["annotations"]]
        labels.update(lab for lab, _ in per_video[vid])
    return per_video, sorted(labels)


def _interpolated_ap(tp: list[int], npos: int) -> float:
    """VOC 2011 interpolated AP, written as loops."""
    precision, recall = [], []
    hits = 0
    for i, t in enumerate(tp):
        hits += t
        precision.append(hits / (i + 1))
        recall.append(hits / npos)
    mprec = [0.0] + precision + [0.0]
    mrec = [0.0] + recall + [1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mprec[i]
    return ap


def reference_detection_ap(
    database: Mapping[str, Any],
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    subset: str = "validation",
    tiou_thresholds: Sequence[float] = TIOU,
) -> tuple[list[str], list[list[float]]]:
    """``(classes, ap)`` with ``ap[t][c]`` the AP of class c at threshold t."""
    gt, classes = _gt_by_video(database, subset)
    preds = [(vid, e["label"], float(e["score"]), [float(e["segment"][0]), float(e["segment"][1])])
             for vid, entries in results.items() for e in entries]
    ap = [[0.0] * len(classes) for _ in tiou_thresholds]
    for c, label in enumerate(classes):
        mine = [p for p in preds if p[1] == label]
        mine = sorted(mine, key=lambda p: -p[2])  # Python's sort is stable: ties keep input order
        npos = sum(1 for inst in gt.values() for lab, _ in inst if lab == label)
        for t, thr in enumerate(tiou_thresholds):
            used: set[tuple[str, int]] = set()
            tp = []
            for vid, _, _, seg in mine:
                cands = [(k, _tiou(seg, g)) for k, (lab, g) in enumerate(gt.get(vid, [])) if lab == label]
                cands.sort(key=lambda kc: -kc[1])
                hit = 0
                for k, iou in cands:
                    if iou < thr:
                        break
                    if (vid, k) in used:
                        continue
                    used.add((vid, k))
                    hit = 1
                    break
                tp.append(hit)
            ap[t][c] = _interpolated_ap(tp, npos)
    return classes, ap


def reference_proposal_metrics(
    database: Mapping[str, Any],
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    subset: str = "validation",
    max_avg_proposals: float = 100,
    tiou_thresholds: Sequence[float] = TIOU,
) -> dict[str, Any]:
    """AR curve like the official ``average_recall_vs_avg_nr_proposals``, with per-video loops.

    Returns ``{"avg_recall": [100], "proposals_per_video": [100], "AR@1", "AR@5", "AR@10", "AR@100", "AUC"}``
    (AR@N read at grid index N·100/max_avg − 1 when N·100/max_avg is a whole number, None beyond the grid).
    """
    gt, _ = _gt_by_video(database, subset)
    videos = [v for v, inst in gt.items() if inst]
    p_all = sum(len(entries) for entries in results.values())
    ratio = max_avg_proposals * float(len(videos)) / p_all
    tious: dict[str, list[list[float]]] = {}  # video -> per kept proposal, tIoU with each instance
    widths: dict[str, int] = {}
    total = 0
    for v in videos:
        props = list(results.get(v, []))
        if not props:
            widths[v] = 1
            tious[v] = []
            continue
        props = sorted(props, key=lambda e: -float(e["score"]))
        n = min(int(len(props) * ratio), len(props))
        total += n
        widths[v] = n
        tious[v] = [[_tiou([float(e["segment"][0]), float(e["segment"][1])], g) for _, g in gt[v]] for e in props[:n]]
    scale = max_avg_proposals * float(len(videos)) / total
    pcn = [k / 100.0 * scale for k in range(1, 101)]
    npos = sum(len(gt[v]) for v in videos)
    avg_recall = [0.0] * 100
    for thr in tiou_thresholds:
        for j, p in enumerate(pcn):
            found = 0
            for v in videos:
                m = min(int(widths[v] * p), widths[v])
                for g in range(len(gt[v])):
                    if any(tious[v][r][g] >= thr for r in range(min(m, len(tious[v])))):
                        found += 1
            avg_recall[j] += found / npos / len(tiou_thresholds)
    per_video = [p * (float(total) / len(videos)) for p in pcn]
    auc = 0.0
    for j in range(1, 100):
        auc += (per_video[j] - per_video[j - 1]) * (avg_recall[j] + avg_recall[j - 1]) / 2
    out: dict[str, Any] = {"avg_recall": avg_recall, "proposals_per_video": per_video, "AUC": auc / per_video[-1]}
    for n in (1, 5, 10, 100):
        j = round(n * 100 / max_avg_proposals) - 1
        out[f"AR@{n}"] = avg_recall[j] if 0 <= j < 100 else None
    return out
