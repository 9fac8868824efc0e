"""Training targets for the BMN-layout heads (BMN and G-TAD), following BMN's label making.

Conventions (fractions of the video, L snippets, gap 1/L):
- Start / end *anchor* i (i = 0..L-1) is the boundary position i/L with the region ``[(i - 0.5)/L, (i + 0.5)/L]``,
  one gap wide and centred on the boundary. ``start[i]`` = max over ground truth of the IoA (intersection over
  the anchor's length) of that region with the GT start's region ``[g_s - 1.5/L, g_s + 1.5/L]`` (BMN's and
  G-TAD's ``gt_len_small = 3 · gap``); ``end[i]`` likewise with the GT end. So ``start[i]`` says "boundary i/L is a
  start" and ``end[i]`` says "boundary i/L is an end".
  Deliberate difference from the published BMN and G-TAD code: there ``anchor_xmin = gap · (i - 0.5)`` over
  i = 0..L-1 but ``anchor_xmax = gap · (i + 0.5)`` over i = 1..L, so their anchor i is ``[(i - 0.5)/L, (i + 1.5)/L]``:
  two gaps wide and centred half a gap *after* the boundary i/L that their decoding (and ours, heads/decode.py)
  reads ``start[i]`` / ``end[i]`` as. The one-gap region labels the boundary the decoder uses; it changes which
  snippets are positive (IoA > 0.5) near each GT boundary, not the proposal map.
- Map cell ``[d, s]`` is the proposal ``[s/L, (s + d + 1)/L]``; ``iou_map[d, s]`` = max IoU with the GT; cells
  with ``s + d + 1 > L`` (ending past the video) are 0. Its end boundary index is ``e = s + d + 1``; the decoder
  reads the end probability of that boundary from ``end[min(e, L - 1)]`` (see heads/decode.py).
- Segments are clipped to [0, 1] (as BMN). No segments → all-zero targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from heads.common import interval_ioa, interval_iou, valid_map_mask

SegmentsLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]

BOUNDARY_REGION_GAPS = 3.0  # width of the GT start/end region, in temporal gaps (BMN)


def _as_segments(segments: SegmentsLike) -> torch.Tensor:
    """(K, 2) float64 clipped to [0, 1]; any empty input → (0, 2)."""
    if torch.is_tensor(segments):
        seg = segments.detach().to("cpu", torch.float64)
    else:
        seg = torch.from_numpy(np.asarray(segments, dtype=np.float64))
    if seg.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.float64)
    if seg.dim() != 2 or seg.shape[1] != 2:
        raise ValueError(f"segments must be (K, 2) [start, end] fractions, got shape {tuple(seg.shape)}")
    return seg.clamp(0.0, 1.0)


def make_targets(
    segments: SegmentsLike, temporal_length: int, max_duration: int | None = None
) -> dict[str, torch.Tensor]:
    """Targets for one video: ``start`` (L,), ``end`` (L,), ``iou_map`` (D, L), float32 in [0, 1].

    ``segments`` (K, 2): [start, end] as fractions of the video. ``max_duration`` D defaults to L.
    """
    L = int(temporal_length)
    D = L if max_duration is None else int(max_duration)
    seg = _as_segments(segments)
    if seg.shape[0] == 0:
        return {
            "start": torch.zeros(L),
            "end": torch.zeros(L),
            "iou_map": torch.zeros(D, L),
        }
    gap = 1.0 / L
    gs, ge = seg[:, 0], seg[:, 1]  # (K,)

    idx = torch.arange(L, dtype=torch.float64)
    a_lo = ((idx - 0.5) * gap)[:, None]  # (L, 1) anchor regions
    a_hi = ((idx + 0.5) * gap)[:, None]
    half = 0.5 * BOUNDARY_REGION_GAPS * gap
    start = interval_ioa(a_lo, a_hi, (gs - half)[None, :], (gs + half)[None, :]).amax(dim=1)
    end = interval_ioa(a_lo, a_hi, (ge - half)[None, :], (ge + half)[None, :]).amax(dim=1)

    d = torch.arange(D, dtype=torch.float64)[:, None]
    s = torch.arange(L, dtype=torch.float64)[None, :]
    p_lo = (s * gap).expand(D, L)[..., None]  # (D, L, 1)
    p_hi = ((s + d + 1) * gap)[..., None]
    iou = interval_iou(p_lo, p_hi, gs.view(1, 1, -1), ge.view(1, 1, -1)).amax(dim=-1)  # (D, L)
    iou = iou * valid_map_mask(D, L)
    return {"start": start.float(), "end": end.float(), "iou_map": iou.float()}


def make_targets_batch(
    segments: Sequence[SegmentsLike], temporal_length: int, max_duration: int | None = None
) -> dict[str, torch.Tensor]:
    """:func:`make_targets` for each video, stacked: ``start`` (B, L), ``end`` (B, L), ``iou_map`` (B, D, L)."""
    per_video = [make_targets(seg, temporal_length, max_duration) for seg in segments]
    if not per_video:
        raise ValueError("make_targets_batch needs at least one video")
    return {key: torch.stack([t[key] for t in per_video]) for key in ("start", "end", "iou_map")}
