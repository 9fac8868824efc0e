"""ActivityNet-like test videos: H.264 (yuv420p) at 640x360 and 30 fps by default, a detailed texture panning.

Used by ``lofi bench step`` (generated videos through the real loader), the store benchmark and tests. The texture
is random noise smoothed over 3 pixels: as much fine detail as camera footage, so the encoder and the prepared
store see a realistic bit rate (a flat or purely synthetic pattern would compress unrealistically well).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from harness.io import atomic_path

PathLike = str | os.PathLike[str]


def activitynet_like(
    path: PathLike, seconds: float, *, fps: int = 30, width: int = 640, height: int = 360, seed: int = 0
) -> Path:
    """Write the video atomically (libx264, ultrafast, CRF 23) and return its path."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (height + 64, width + 64, 3)).astype(np.float32)
    for axis in (0, 1):
        tex = (tex + np.roll(tex, 1, axis) + np.roll(tex, 2, axis)) / 3
    tex = tex.astype(np.uint8)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(int(round(seconds * fps))):
            dy, dx = (i // 2) % 64, i % 64
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(tex[dy : dy + height, dx : dx + width]), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
