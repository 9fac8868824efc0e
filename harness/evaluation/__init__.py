"""ActivityNet-protocol evaluation: detection mAP (``detection``) and proposal AR@AN / AUC (``proposals``)."""

from harness.evaluation.detection import (
    TIOU_THRESHOLDS,
    DetectionGroundTruth,
    DetectionMatches,
    DetectionPredictions,
    DetectionResult,
    ap_from_matches,
    evaluate_detection,
    load_ground_truth,
    load_predictions,
    match_detections,
)
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
