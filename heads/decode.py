"""Proposals of one video from a BMN-layout head's outputs (BMN's post-processing, vectorised).

Boundary convention (the one of heads/labels.py): ``start[i]`` / ``end[i]`` score the boundary at ``i / L``; map
cell ``[d, s]`` is the proposal ``[s / L, (s + d + 1) / L]`` whose end boundary is ``e = s + d + 1``.

- Candidate starts / ends (BMN): anchor i (0 < i < L - 1) is a candidate when it is a strict local maximum of
  its probability or above 0.5 · the maximum; start anchor 0 and end anchor L - 1 are always candidates. The two
  edge anchors BMN never considers (start L - 1, end 0) are candidates when above 0.5 · max.
- Proposals: every valid cell (``e <= L``, ``d < D``) whose start and end are candidates. The end probability of
  boundary e is ``end[min(e, L - 1)]``: the video end ``e = L`` has no anchor of its own, and its nearest anchor
  L - 1 is positive in the labels for a GT ending at the video end. Deviation from BMN, which drops ``e = L``
  (``end_index < tscale``) and so can never propose a segment that reaches the end of the video; pass
  ``include_video_end=False`` for BMN's behaviour. Boundary e = L is always a candidate (as end anchor L - 1).
- Score ``score="bmn"``: start[s] · end[e] · reg[d, s] · cls[d, s] (BMN: xmin · xmax · clr · reg);
  ``score="map"``: reg · cls only, G-TAD's published score (its ActivityNet code keeps BMN's candidate rule and
  drops ``e = L`` as BMN; its THUMOS-14 code takes every cell). The pipeline decodes every head with
  ``score="bmn"`` and ``include_video_end=True`` (harness/pipeline/headtrain.py): one decoding for both heads, so
  a table compares heads and encoders, not post-processing.
- Times: ``[s / L · duration, e / L · duration]`` seconds, sorted by decreasing score. No NMS here
  (harness/postprocess.py).
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

SCORES = ("bmn", "map")


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def boundary_candidates(prob: np.ndarray, *, always: int) -> np.ndarray:
    """Bool (L,): strict interior local maxima or ``prob > 0.5 · max``; index ``always`` forced on (BMN)."""
    L = prob.shape[0]
    cand = prob > 0.5 * prob.max(initial=0.0)
    if L >= 3:
        mid = prob[1:-1]
        cand[1:-1] |= (mid > prob[:-2]) & (mid > prob[2:])
    cand[always] = True
    return cand


def decode_proposals(
    start: ArrayLike,
    end: ArrayLike,
    iou_map: ArrayLike,
    duration: float,
    *,
    score: str = "bmn",
    include_video_end: bool = True,
) -> np.ndarray:
    """(N, 3) float64 [t_start, t_end, score] in seconds for one video, sorted by decreasing score.

    ``start``, ``end`` (L,); ``iou_map`` (2, D, L) with channel 0 regression, 1 classification.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score '{score}'; known: {', '.join(SCORES)}")
    p_start, p_end, pmap = _to_numpy(start), _to_numpy(end), _to_numpy(iou_map)
    L = p_start.shape[0]
    if p_end.shape != (L,) or pmap.ndim != 3 or pmap.shape[0] != 2 or pmap.shape[2] != L:
        raise ValueError(
            f"expected start/end (L,) and iou_map (2, D, L); got {p_start.shape}, {p_end.shape}, {pmap.shape}"
        )
    D = pmap.shape[1]
    start_cand = boundary_candidates(p_start, always=0)
    end_cand = boundary_candidates(p_end, always=L - 1)

    d, s = np.meshgrid(np.arange(D), np.arange(L), indexing="ij")
    e = s + d + 1  # end boundary index of each cell
    end_anchor = np.minimum(e, L - 1)
    keep = (e <= L) if include_video_end else (e <= L - 1)
    keep &= start_cand[s] & end_cand[end_anchor]
    d, s, e, end_anchor = d[keep], s[keep], e[keep], end_anchor[keep]

    conf = pmap[0, d, s] * pmap[1, d, s]
    if score == "bmn":
        conf = conf * p_start[s] * p_end[end_anchor]
    scale = float(duration) / L
    out = np.stack([s * scale, e * scale, conf], axis=1).astype(np.float64)
    order = np.argsort(-out[:, 2], kind="stable")
    return out[order]
