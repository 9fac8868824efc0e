"""What the heads are trained against: TAL targets of a batch of videos (start/end/IoU maps from their segments) and
a video's class (the label covering the most time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.data.model import Video

if TYPE_CHECKING:
    import torch


def relative_segments(video: Video) -> np.ndarray:
    """(K, 2) segments as fractions of the video's duration, clipped to [0, 1]."""
    seg = video.segment_array() / max(video.duration, 1e-9)
    return np.clip(seg, 0.0, 1.0)


def tal_targets(videos: list[Video], snippets: int, max_duration: int) -> dict[str, torch.Tensor]:
    import torch

    from heads.labels import make_targets

    per = [make_targets(relative_segments(v), snippets, max_duration) for v in videos]
    return {k: torch.stack([torch.as_tensor(t[k]) for t in per]) for k in per[0]}


def dominant_label(video: Video) -> str:
    """The video-level class: the label covering the most time (ActivityNet videos mostly have one)."""
    total: dict[str, float] = {}
    for s in video.segments:
        total[s.label] = total.get(s.label, 0.0) + (s.end - s.start)
    return max(sorted(total), key=lambda k: total[k])
