"""A compact per-video frame store: each video re-encoded once, then only the frames a batch needs are decoded.

``prepare_video`` (``lofi data prepare``) re-encodes a source video with PyAV to H.264 (yuv420p, constant quality
``crf``) at the dataset's frame size (longer side at most ``max_side``, even dimensions as 4:2:0 needs), keeping
every frame at the source's frame rate (so frame indices, and the sampler's ``stride``, mean what they mean on
the source), without B-frames and with a keyframe every ``gop`` frames. A JSON sidecar records the frame count,
frame rate and size, so sampling needs no probe, and the stored file's CRC-32, checked before a process first reads
the entry (a damaged entry is re-encoded with a warning: H.264 can decode garbage bytes without an error). This is the field's practice (videos re-encoded to a fixed size
before training) and costs a few MB per ActivityNet video instead of the hundreds of MB of decoded uint8 frames
(figures: README, real data; ``benchmarks/bench_store.py``).

``read_frames`` decodes only what is asked for: it seeks to the keyframe at or before a wanted frame whenever the
next wanted frame lies more than a GOP ahead of the decoder, and otherwise decodes on; frames are identified by
their presentation time (pts = index / fps, exact because the store is constant-frame-rate and has no B-frames).

Why not seek in the source videos directly: their frame rates are not always constant (a pts does not always
give the frame index), their GOPs are long (up to 10 s on YouTube uploads, so a seek decodes hundreds of frames)
and their frames are 2-10× larger than needed, so every epoch would pay for that again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange

from harness.data.video import _check_readable, _scaled_size, _video_stream, probe_video
from harness.errors import VideoError
from harness.integrity import file_crc32
from harness.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
STORE_FORMAT = 2  # bump when the encoding changes, so old entries are ignored (2: the sidecar holds a CRC-32)

_REPREPARE_HINT = "delete it and run `lofi data prepare` again"


@dataclass(frozen=True)
class StoreSettings:
    """How a store re-encodes: frame size bound, H.264 constant quality, keyframe interval, x264 preset."""

    max_side: int = 256
    crf: int = 20
    gop: int = 16
    preset: str = "veryfast"


@dataclass(frozen=True)
class StoreInfo:
    """The sidecar of one stored video."""

    num_frames: int
    fps: float
    width: int
    height: int
    gop: int
    source: str
    format: int = STORE_FORMAT
    crc32: int = -1  # of the stored video file, checked once per process before it is read (-1: none recorded)


def _even(n: int) -> int:
    return max(2, n - n % 2)


def store_entry(store_dir: PathLike, source: PathLike, settings: StoreSettings) -> Path:
    """The stored video (``.mp4``; its sidecar is the same name with ``.json``) for ``source`` as it is now."""
    src = Path(source).resolve()
    st = src.stat()
    text = f"v{STORE_FORMAT}|{src}|{st.st_size}|{st.st_mtime_ns}|{settings}"
    return Path(store_dir) / f"{src.stem}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.mp4"


def sidecar(entry: Path) -> Path:
    return entry.with_suffix(".json")


def load_info(entry: Path) -> StoreInfo | None:
    """The sidecar of a finished entry, or None when the entry is absent (or unfinished: the sidecar is last)."""
    side = sidecar(entry)
    if not side.is_file() or not entry.is_file():
        return None
    try:
        info = StoreInfo(**json.loads(side.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise VideoError(f"{side}: unreadable store sidecar ({exc}); {_REPREPARE_HINT}") from None
    return info if info.format == STORE_FORMAT else None


def prepare_video(source: PathLike, store_dir: PathLike, settings: StoreSettings) -> tuple[Path, StoreInfo]:
    """Re-encode ``source`` into ``store_dir`` (nothing to do when its entry exists); returns (entry, info).

    Raises ``VideoError`` naming the file when the source cannot be decoded whole (missing, corrupt, truncated).
    """
    src = Path(source)
    _check_readable(src)
    entry = store_entry(store_dir, src, settings)
    info = load_info(entry)
    if info is not None:
        if file_crc32(entry) == info.crc32:
            return entry, info
        # damaged after it was written (a torn copy, a bad block): H.264 may decode garbage without an error
        log.warning("%s: checksum mismatch with its sidecar (the file was damaged); re-encoding %s", entry, src)
        sidecar(entry).unlink(missing_ok=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    declared = probe_video(src)
    try:
        with av.open(str(src), mode="r") as inp:
            stream = _video_stream(inp, src)
            stream.thread_type = "AUTO"
            height, width = _scaled_size(declared.height, declared.width, settings.max_side)
            height, width = _even(height), _even(width)
            rate = Fraction(declared.fps).limit_denominator(1001)
            n = 0
            with atomic_path(entry) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
                enc = out.add_stream("libx264", rate=rate)
                enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
                # no B-frames: decode order = presentation order, so pts -> index is exact; short GOP: cheap seeks
                enc.options = {
                    "crf": str(settings.crf),
                    "preset": settings.preset,
                    "g": str(settings.gop),
                    "keyint_min": str(settings.gop),
                    "sc_threshold": "0",
                    "bf": "0",
                }
                enc.thread_count = 1  # `prepare --workers` parallelises over videos
                for frame in inp.decode(stream):
                    # area averaging for the downscale, as decode_video does; limited ("MPEG") range, which is what
                    # an unflagged H.264 stream is read as (RGB sources decode as full range)
                    frame = frame.reformat(
                        width=width,
                        height=height,
                        format="yuv420p",
                        interpolation="AREA",
                        dst_color_range=ColorRange.MPEG,
                    )
                    frame.pts, frame.time_base = n, 1 / rate
                    out.mux(enc.encode(frame))
                    n += 1
                out.mux(enc.encode(None))
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise VideoError(f"{src}: cannot decode ({exc}); re-download or re-encode the file") from exc
    missing = declared.num_frames - n
    if n == 0 or missing > max(2, 0.05 * declared.num_frames):
        entry.unlink(missing_ok=True)
        raise VideoError(f"{src}: truncated, decoded {n} of {declared.num_frames} declared frames")
    info = StoreInfo(
        num_frames=n,
        fps=float(rate),
        width=width,
        height=height,
        gop=settings.gop,
        source=str(src.resolve()),
        crc32=file_crc32(entry),
    )
    write_json_atomic(sidecar(entry), asdict(info))  # last: an entry without it is unfinished
    return entry, info


def read_frames(entry: Path, info: StoreInfo, indices: np.ndarray) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB frames ``indices`` (any order, repeats allowed) of a stored video."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        return np.zeros((0, info.height, info.width, 3), np.uint8)
    if idx.min() < 0 or idx.max() >= info.num_frames:
        raise ValueError(f"{entry}: frame indices must lie in [0, {info.num_frames}), got {idx.min()}..{idx.max()}")
    wanted = np.unique(idx)
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(entry), mode="r") as container:
            stream = container.streams.video[0]
            tb = stream.time_base
            ticks = 1 / (tb * Fraction(info.fps).limit_denominator(1001))  # stream ticks per frame
            position = -1  # index of the last decoded frame
            frames = None
            for target in wanted.tolist():
                if target in got:
                    continue
                if frames is None or target <= position or target - position > info.gop:
                    # the keyframe at or before `target`; backward seeks land on a keyframe
                    container.seek(int(target * ticks), stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                for frame in frames:
                    position = int(round(frame.pts / ticks))
                    if position == target:
                        got[target] = frame.to_ndarray(format="rgb24")
                        break
                    if position > target:
                        break
                if target not in got:
                    raise VideoError(f"{entry}: frame {target} of {info.num_frames} not found; {_REPREPARE_HINT}")
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise VideoError(f"{entry}: cannot decode ({exc}); {_REPREPARE_HINT}") from exc
    stack = np.stack([got[i] for i in wanted.tolist()])
    return stack[np.searchsorted(wanted, idx)]
