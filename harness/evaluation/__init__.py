"""ActivityNet-protocol evaluation: detection mAP (``detection``), the predictions reader (``predictions``, its fast
path ``fastread``) and proposal AR@AN / AUC (``proposals``)."""

from harness.evaluation.detection import (
    TIOU_THRESHOLDS,
    DetectionGroundTruth,
    DetectionMatches,
    DetectionResult,
    ap_from_matches,
    evaluate_detection,
    load_ground_truth,
    match_detections,
)
from harness.evaluation.predictions import DetectionPredictions, load_predictions
from harness.evaluation.proposals import evaluate_proposals

__all__ = [
    "TIOU_THRESHOLDS",
    "DetectionGroundTruth",
    "DetectionMatches",
    "DetectionPredictions",
    "DetectionResult",
    "ap_from_matches",
    "evaluate_detection",
    "evaluate_proposals",
    "load_ground_truth",
    "load_predictions",
    "match_detections",
]
