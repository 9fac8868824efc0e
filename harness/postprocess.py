"""Post-processing of class-agnostic proposals: soft-NMS, top-k, labelling with video-level classes, the file.

Proposals are ``(N, 3)`` float arrays ``[start, end, score]``. Every function is pure (inputs are not modified).
Soft-NMS is sequential by nature (each pick decays the others), so it loops over the ``top_k`` picks, each
vectorised over all proposals.

- :func:`soft_nms_gaussian` — G-TAD's recipe: after each pick, every other proposal's score is multiplied by
  ``exp(-IoU² / sigma)`` (``sigma = 0.8``).
- :func:`soft_nms_bmn` — BMN's (official code and mmaction2's ``soft_nms``): the decay ``exp(-IoU² / alpha)``
  is applied only where ``IoU > low + (high - low) · width``, ``width`` being the *picked* proposal's length as a
  fraction of the video (BMN works in [0, 1] coordinates; pass ``duration`` for seconds). Wide picks thus only
  suppress near-duplicates. BMN's loop runs while ``len(kept) <= top_k`` and then truncates to ``top_k`` after a
  sort by score; picked scores never increase, so keeping the first ``top_k`` picks is the same result.

Ties in score: the earlier proposal (input order) is picked first.

Deliberate difference from the published loops (BSN's ``Soft_NMS``, copied by BMN and G-TAD): they run ``while
len(candidates) > 1``, so the last remaining candidate is never kept, and G-TAD's also stops once every remaining
score is 0. Both only matter for a video with at most ``top_k`` candidates (the published loops then return one
proposal fewer); here every candidate is a pick until ``top_k`` (a proposal the decoder found is not dropped for
being the last one).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _as_proposals(proposals: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(proposals, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"proposals must be (N, 3) [start, end, score], got shape {arr.shape}")
    return arr


def tiou_one_to_many(segment: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """tIoU of one [start, end] with each row of (N, 2+) ``segments`` (0 where the union is empty)."""
    inter = np.clip(np.minimum(segment[1], segments[:, 1]) - np.maximum(segment[0], segments[:, 0]), 0.0, None)
    union = (segments[:, 1] - segments[:, 0]) + (segment[1] - segment[0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _soft_nms(proposals: np.ndarray, top_k: int, decay_fn: Any) -> np.ndarray:
    props = _as_proposals(proposals)
    n = props.shape[0]
    k = min(int(top_k), n)
    scores = props[:, 2].copy()
    alive = np.ones(n, dtype=bool)
    out = np.empty((k, 3))
    for i in range(k):
        pick = int(np.argmax(np.where(alive, scores, -np.inf)))  # first maximum: input order on ties
        out[i] = (props[pick, 0], props[pick, 1], scores[pick])
        alive[pick] = False
        iou = tiou_one_to_many(props[pick], props)
        scores = np.where(alive, scores * decay_fn(iou, props[pick]), scores)
    return out


def soft_nms_gaussian(proposals: np.ndarray, sigma: float = 0.8, top_k: int = 100) -> np.ndarray:
    """Gaussian soft-NMS (G-TAD): decay ``score · exp(-IoU² / sigma)``; returns the ``top_k`` picks (k, 3) in pick
    order (scores non-increasing), with their decayed scores."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return _soft_nms(proposals, top_k, lambda iou, _: np.exp(-np.square(iou) / sigma))


def soft_nms_bmn(
    proposals: np.ndarray,
    alpha: float = 0.4,
    low: float = 0.5,
    high: float = 0.9,
    top_k: int = 100,
    duration: float = 1.0,
) -> np.ndarray:
    """BMN soft-NMS: decay ``exp(-IoU² / alpha)`` only where ``IoU > low + (high - low) · width / duration``
    (``width`` = the picked proposal's length); ``duration=1`` for proposals in [0, 1] video fractions."""
    if alpha <= 0 or duration <= 0:
        raise ValueError(f"alpha and duration must be > 0, got alpha={alpha}, duration={duration}")

    def decay(iou: np.ndarray, picked: np.ndarray) -> np.ndarray:
        gate = low + (high - low) * (picked[1] - picked[0]) / duration
        return np.where(iou > gate, np.exp(-np.square(iou) / alpha), 1.0)

    return _soft_nms(proposals, top_k, decay)


def top_k(proposals: np.ndarray, k: int = 100) -> np.ndarray:
    """The ``k`` best-scored proposals, by score descending (ties: input order)."""
    props = _as_proposals(proposals)
    order = np.argsort(-props[:, 2], kind="stable")[: max(int(k), 0)]
    return props[order]


def fuse_with_classes(
    proposals: np.ndarray,
    class_scores: np.ndarray | Sequence[float],
    classes: Sequence[str],
    top_k_classes: int = 2,
) -> list[dict[str, Any]]:
    """Label class-agnostic proposals with the video's ``top_k_classes`` best classes.

    Each (proposal, class) pair gives an official entry ``{"label", "score": proposal score × class score,
    "segment": [start, end]}``; entries are sorted by fused score, descending (ties: class rank, then proposal
    order).
    """
    props = _as_proposals(proposals)
    cs = np.asarray(class_scores, dtype=np.float64).reshape(-1)
    if cs.shape[0] != len(classes):
        raise ValueError(f"class_scores has {cs.shape[0]} values for {len(classes)} classes")
    best = np.argsort(-cs, kind="stable")[: max(int(top_k_classes), 0)]
    fused = cs[best][:, None] * props[None, :, 2]  # (K, N)
    cls_idx = np.repeat(best, props.shape[0])
    prop_idx = np.tile(np.arange(props.shape[0]), best.shape[0])
    flat = fused.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    return [
        {
            "label": str(classes[cls_idx[i]]),
            "score": float(flat[i]),
            "segment": [float(props[prop_idx[i], 0]), float(props[prop_idx[i], 1])],
        }
        for i in order
    ]


def predictions_file(
    entries_by_video: Mapping[str, Sequence[Mapping[str, Any]]],
    version: str = "VERSION 1.3",
    external_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The official predictions layout ``{"version", "results", "external_data"}``."""
    return {
        "version": version,
        "results": {str(v): [dict(e) for e in entries] for v, entries in entries_by_video.items()},
        "external_data": dict(external_data or {}),
    }
