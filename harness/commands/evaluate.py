"""`lofi evaluate detection|proposals`: official ActivityNet metrics of a predictions file."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from harness.errors import LofiError
from harness.evaluation.detection import evaluate_detection, load_ground_truth
from harness.evaluation.predictions import load_predictions
from harness.evaluation.proposals import evaluate_proposals

DETECTION_HELP = """\
Detection mAP with the official ActivityNet protocol (eval_detection.py): AP per class at tIoU 0.50:0.05:0.95,
mAP per threshold and their mean (average mAP). Predictions: the official layout
{"version", "results": {video_id: [{"label", "score", "segment": [start, end]}]}, "external_data"}.
Predictions of videos outside the subset are false positives; an unknown label is an error.

example:
  lofi evaluate detection --ground-truth activity_net_v1-3_gt.json --predictions runs/x/predictions.json
  lofi evaluate detection --ground-truth GT.json --predictions P.json --json > metrics.json
"""

PROPOSALS_HELP = """\
Proposal metrics with the official ActivityNet protocol (eval_proposal.py): average recall over tIoU
0.50:0.05:0.95 at 1, 5, 10, 100 average proposals per video (AR@AN) and the area under the AR-AN curve (AUC),
as fractions (the official script prints 100 x AUC). Labels in the predictions file are ignored.

example:
  lofi evaluate proposals --ground-truth activity_net_v1-3_gt.json --predictions runs/x/proposals.json
  lofi evaluate proposals --ground-truth GT.json --predictions P.json --max-avg-proposals 100 --json
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ground-truth",
        required=True,
        metavar="GT",
        help="official ActivityNet-layout annotations JSON (database -> video -> subset, annotations)",
    )
    p.add_argument("--predictions", required=True, metavar="PRED", help="predictions JSON in the official layout")
    p.add_argument("--subset", default="validation", help="ground-truth subset to evaluate (default: validation)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object instead of a table")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="ActivityNet detection mAP or proposal AR@AN of a predictions file",
        description="Evaluate a predictions file against ground truth with the official ActivityNet protocols.",
        epilog="example:\n  lofi evaluate detection --ground-truth GT.json --predictions P.json\n"
        "  lofi evaluate proposals --ground-truth GT.json --predictions P.json --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="evaluate_command", metavar="METRIC")
    sub.required = True
    det = sub.add_parser(
        "detection",
        help="mAP at tIoU 0.50:0.05:0.95 and average mAP",
        description=DETECTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(det)
    det.set_defaults(func=run_detection)
    prop = sub.add_parser(
        "proposals",
        help="AR@1/5/10/100 and AUC of class-agnostic proposals",
        description=PROPOSALS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(prop)
    prop.add_argument(
        "--max-avg-proposals",
        type=float,
        default=100,
        metavar="N",
        help="maximum average number of proposals per video on the AR-AN curve (default: 100)",
    )
    prop.set_defaults(func=run_proposals)


def run_detection(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    gt = load_ground_truth(args.ground_truth, subset=args.subset)
    preds = load_predictions(args.predictions, gt)
    result = evaluate_detection(gt, preds)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    rows = [[f"{t:.2f}", f"{100 * m:.2f}"] for t, m in zip(result.tiou_thresholds, result.mAP)]
    rows.append(["average", f"{100 * result.average_mAP:.2f}"])
    print(
        f"{len(gt.classes)} classes, {gt.num_instances} instances in {len(gt.video_ids)} {args.subset} videos; "
        f"{len(preds)} predictions"
    )
    print(tabulate(rows, headers=["tIoU", "mAP (%)"], tablefmt="github"))
    return 0


def run_proposals(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    if not args.max_avg_proposals > 0:
        raise LofiError(f"--max-avg-proposals must be > 0, got {args.max_avg_proposals}")
    gt = load_ground_truth(args.ground_truth, subset=args.subset)
    preds = load_predictions(args.predictions, gt, require_label=False)
    metrics = evaluate_proposals(gt, preds, max_avg_proposals=args.max_avg_proposals)
    if args.json:
        print(json.dumps(metrics))
        return 0
    rows = [[k, "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}"] for k, v in metrics.items()]
    print(tabulate(rows, headers=["metric", "value (%)"], tablefmt="github"))
    return 0
