"""Video files in and out (PyAV), an on-disk cache of decoded frames, and snippet sampling at any fidelity.

Codec choice for ``write_video``: H.264 *RGB* lossless (``libx264rgb``, ``qp=0``) in MP4 (also MOV/MKV), and FFV1
for AVI. It ships with PyAV's bundled ffmpeg, any ffmpeg-based reader decodes it, and there is no RGB->YUV
conversion, so a round trip is bit-exact (mean absolute error 0.0 on smooth 52x36 test clips, where YUV 4:4:4
lossless measured 0.40, YUV 4:2:0 crf 10 measured 4.3, MJPEG q2 4.9 and MPEG-4 q1 10.9). Files are a few KB per
small frame; hardware/browser players may not play H.264 RGB, which the benchmark never needs.

Decoding is strict: a missing, empty, corrupt or truncated file raises ``VideoError`` naming the file; it never
returns a partial or zero array. A truncated MP4 from ``write_video`` fails at open (its index, the ``moov`` box,
is written last); formats that decode silently up to the cut (e.g. MKV) are caught by comparing the decoded frame
count with the count the container declares (or duration x fps), see ``_check_complete``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import ConfigError, VideoError
from harness.integrity import IntegrityError, load_array, save_array
from harness.io import atomic_path

if TYPE_CHECKING:  # PyAV is imported where a video is opened: a job that opens none skips its import
    import av

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# extension -> (container format, codec, pixel format, codec options); the format is given explicitly so the
# temporary file of an atomic write (suffix ".tmp") still gets the right muxer.
_LOSSLESS_H264 = ("libx264rgb", "rgb24", {"qp": "0", "preset": "medium"})
_WRITERS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    ".mp4": ("mp4", *_LOSSLESS_H264),
    ".m4v": ("mp4", *_LOSSLESS_H264),
    ".mov": ("mov", *_LOSSLESS_H264),
    ".mkv": ("matroska", *_LOSSLESS_H264),
    ".avi": ("avi", "ffv1", "bgr0", {}),
}

# A decode may come up slightly short of the declared frame count on real files (edit lists, a damaged last
# GOP); more missing than this is treated as a truncated file.
_MAX_MISSING_FRAMES = 2
_MAX_MISSING_FRACTION = 0.05

_REENCODE_HINT = "re-download the file or re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (num_frames may be estimated from duration x fps)."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: file not found; check the path (or the dataset's video root)")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file; point to a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file; {_REENCODE_HINT}")


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{path}: no video stream in the file; point to a file that contains video")
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _stream_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return None


def _expected_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """Frames the container declares, else duration x fps; None when it says neither."""
    if stream.frames > 0:
        return int(stream.frames)
    fps, duration = _stream_fps(stream), _stream_duration(container, stream)
    if fps and duration:
        return int(round(fps * duration))
    return None


def _check_complete(path: Path, decoded: int, expected: int | None) -> None:
    if decoded == 0:
        raise VideoError(f"{path}: no frame could be decoded; {_REENCODE_HINT}")
    if expected is None:
        return
    missing = expected - decoded
    if missing > max(_MAX_MISSING_FRAMES, _MAX_MISSING_FRACTION * expected):
        raise VideoError(f"{path}: truncated, decoded {decoded} of {expected} declared frames; {_REENCODE_HINT}")


def _describe(exc: BaseException) -> str:
    """FFmpeg's own words without the errno and file name PyAV adds."""
    return str(getattr(exc, "strerror", None) or exc).rstrip(".")


def _scaled_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) with the longer side at most ``max_side`` (aspect kept; never upscales; 0 = keep)."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _decode_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, max_side: int
) -> Iterator[np.ndarray]:
    for frame in container.decode(stream):
        height, width = _scaled_size(frame.height, frame.width, max_side)
        if (height, width) != (frame.height, frame.width):
            # area averaging: the right filter for large downscales (no aliasing)
            frame = frame.reformat(width=width, height=height, interpolation="AREA")
        yield frame.to_ndarray(format="rgb24")


def decode_video(path: PathLike, max_side: int = 0) -> np.ndarray:
    """All frames of the first video stream as uint8 (T, H, W, 3) RGB.

    ``max_side`` > 0 shrinks each frame while decoding so its longer side is at most ``max_side`` (keeps memory
    bounded on large sources). Raises ``VideoError`` naming the file if it is missing, empty, corrupt, truncated,
    has no video stream or yields no frame.
    """
    import av

    path = Path(path)
    _check_readable(path)
    try:
        with av.open(str(path), mode="r") as container:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            expected = _expected_frames(container, stream)
            frames = list(_decode_frames(container, stream, max_side))
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise VideoError(f"{path}: cannot decode ({_describe(exc)}); {_REENCODE_HINT}") from exc
    _check_complete(path, len(frames), expected)
    return np.stack(frames)


def probe_video(path: PathLike) -> VideoInfo:
    """Stream metadata without decoding (num_frames is duration x fps when the container has no frame count)."""
    import av

    path = Path(path)
    _check_readable(path)
    try:
        with av.open(str(path), mode="r") as container:
            stream = _video_stream(container, path)
            fps = _stream_fps(stream)
            duration = _stream_duration(container, stream)
            num_frames = _expected_frames(container, stream)
            width, height = stream.codec_context.width, stream.codec_context.height
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise VideoError(f"{path}: cannot read the header ({_describe(exc)}); {_REENCODE_HINT}") from exc
    if not fps or not num_frames or not width or not height:
        raise VideoError(f"{path}: the header has no frame rate, frame count or size; {_REENCODE_HINT}")
    if duration is None:
        duration = num_frames / fps
    return VideoInfo(num_frames=num_frames, fps=fps, width=width, height=height, duration=duration)


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}"
        raise ValueError(f"frames must be a uint8 numpy array (T, H, W, 3), got {got}")
    if frames.shape[0] == 0:
        raise ValueError("frames must hold at least one frame, got T=0")


def write_video(path: PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 (T, H, W, 3) RGB frames losslessly (see the module docstring), atomically; returns the path."""
    import av

    path = Path(path)
    _check_frames(frames)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"{path}: fps must be a positive number, got {fps}")
    ext = path.suffix.lower()
    if ext not in _WRITERS:
        raise ValueError(f"{path}: cannot write '{ext}' videos; use one of {', '.join(sorted(_WRITERS))}")
    fmt, codec, pix_fmt, options = _WRITERS[ext]
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 2997/100, 30000/1001 stays exact
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = dict(options)
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------------------------------------------
# Decoded-frame cache
# --------------------------------------------------------------------------------------------------------------

_CACHE_FORMAT = 2  # bump when the stored layout or decoding changes, so old entries are ignored (2: sealed files)


def _cache_key(path: Path, size: int, mtime_ns: int, max_side: int) -> str:
    text = f"v{_CACHE_FORMAT}|{path}|{size}|{mtime_ns}|{max_side}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FrameCache:
    """Decode each video once: uint8 frames kept on disk (``.npy``) plus an in-process LRU of recent videos,
    bounded in bytes (``memory_bytes``; each DataLoader worker process holds its own).

    Whole decoded videos are the right store for small videos (the synthetic benchmark); for long ones
    (ActivityNet: ~0.4 GB per video at 256 px) use the prepared store (``harness.data.store``).

    The disk key hashes (resolved path, size, mtime_ns, max_side), so rewriting the source invalidates its entry
    (stale files are simply never read again). Entries are written atomically: concurrent workers, threads or
    processes, may decode the same video twice but never read a partial file. Entries are sealed
    (``harness.integrity``: a CRC-32 trailer checked on every read from disk), so an entry damaged after it was
    written (garbage pixels under an intact header) is decoded again with a warning, never read (``repaired``
    counts them). Returned arrays are read-only because they are shared between callers.
    """

    def __init__(self, root: PathLike, max_side: int = 0, memory_bytes: int = 2**30) -> None:
        if max_side < 0 or memory_bytes < 0:
            raise ConfigError(f"FrameCache: max_side={max_side}, memory_bytes={memory_bytes}; use values >= 0")
        self.root = Path(root)
        self.max_side = max_side
        self.memory_bytes = memory_bytes
        self._held = 0  # bytes in the LRU
        self.memory_hits = 0
        self.disk_hits = 0
        self.misses = 0
        self.repaired = 0  # damaged disk entries decoded again
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits

    def entry_path(self, path: PathLike) -> Path:
        """Where the decoded frames of ``path`` (as it is now) are stored."""
        source = Path(path)
        _check_readable(source)
        return self._entry_for(source.resolve(), source.stat())

    def _entry_for(self, resolved: Path, stat: os.stat_result) -> Path:
        key = _cache_key(resolved, stat.st_size, stat.st_mtime_ns, self.max_side)
        return self.root / f"{resolved.stem}-{key}.npy"

    def has(self, path: PathLike) -> bool:
        """Whether ``path`` (as it is now) has an entry on disk, i.e. has decoded before: its key names the source's
        size and mtime and only a finished decode writes it. Reads no frame (an entry damaged since is repaired by
        the next ``get``)."""
        return self.entry_path(path).is_file()

    def get(self, path: PathLike) -> np.ndarray:
        """uint8 (T, H, W, 3) frames of ``path``, from memory, disk, or a fresh decode (then stored)."""
        source = Path(path)
        _check_readable(source)
        resolved = source.resolve()
        stat = resolved.stat()
        entry = self._entry_for(resolved, stat)
        key = entry.name
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.memory_hits += 1
                return self._memory[key]
        frames = self._load(entry)
        if frames is not None:
            with self._lock:
                self.disk_hits += 1
        else:
            frames = decode_video(resolved, max_side=self.max_side)
            with self._lock:
                self.misses += 1
            after = resolved.stat()
            if (after.st_mtime_ns, after.st_size) == (stat.st_mtime_ns, stat.st_size):
                self._store(entry, frames)
            else:  # the source changed while decoding: the key would describe another file
                log.warning("%s changed while decoding; not cached", resolved)
        frames.flags.writeable = False
        self._remember(key, frames)
        return frames

    def _load(self, entry: Path) -> np.ndarray | None:
        try:
            frames = load_array(entry)
        except FileNotFoundError:
            return None
        except (OSError, IntegrityError) as exc:  # damaged by something outside this class: decode again
            log.warning("%s; decoding the video again", exc if isinstance(exc, IntegrityError) else f"{entry}: {exc}")
            with self._lock:
                self.repaired += 1
            return None
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            log.warning("%s: cache entry has shape %s %s; decoding the video again", entry, frames.dtype, frames.shape)
            with self._lock:
                self.repaired += 1
            return None
        return frames

    def _store(self, entry: Path, frames: np.ndarray) -> None:
        save_array(entry, frames)

    @property
    def held_bytes(self) -> int:
        """Bytes of decoded frames held in memory now (at most ``memory_bytes``)."""
        return self._held

    def _remember(self, key: str, frames: np.ndarray) -> None:
        if frames.nbytes > self.memory_bytes:  # larger than the whole budget: never held
            return
        with self._lock:
            if key in self._memory:
                self._held -= self._memory.pop(key).nbytes
            self._memory[key] = frames
            self._held += frames.nbytes
            while self._held > self.memory_bytes:
                self._held -= self._memory.popitem(last=False)[1].nbytes


# --------------------------------------------------------------------------------------------------------------
# Snippet sampling
# --------------------------------------------------------------------------------------------------------------


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"snippet sampling: {name}={value!r} is invalid; use an integer >= 1")


def snippet_frame_indices(num_frames: int, num_snippets: int, frames_per_snippet: int, stride: int) -> np.ndarray:
    """int64 (L, F) frame indices: snippet i is centred on the frame holding the centre of the i-th of L equal
    bins of the video, c_i = floor((i + 1/2) * T / L); its F frames are ``stride`` apart, starting at
    c_i - floor((F - 1) * stride / 2) (so an even span leans one frame late), clamped to [0, T - 1].
    """
    _check_positive(
        num_frames=num_frames, num_snippets=num_snippets, frames_per_snippet=frames_per_snippet, stride=stride
    )
    bins = np.arange(num_snippets, dtype=np.int64)
    centres = ((2 * bins + 1) * num_frames) // (2 * num_snippets)  # integer arithmetic: exact for any T, L
    offsets = np.arange(frames_per_snippet, dtype=np.int64) * stride - ((frames_per_snippet - 1) * stride) // 2
    return np.clip(centres[:, None] + offsets[None, :], 0, num_frames - 1)


def select_snippet_frames(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique frame indices, inverse): each distinct frame of an (L, F) index array is fetched and resized once."""
    unique, inverse = np.unique(np.asarray(indices).reshape(-1), return_inverse=True)
    return unique, inverse.reshape(-1)


def resize_frames(frames: torch.Tensor, inverse: torch.Tensor, shape: tuple[int, int], size: int) -> torch.Tensor:
    """float32 (L, F, 3, size, size) in [0, 1] from uint8 (U, H, W, 3) distinct frames on any device, and the
    (L·F,) positions of each snippet frame among them.

    Bilinear interpolation with antialiasing, batched over at most ``_RESIZE_CHUNK`` frames at a time (the float
    copy of a full-fidelity clip at 256 px would be ~0.35 GB; each frame is resized on its own either way, so the
    chunking changes no value). A non-square frame is resized to size x size as a whole (aspect ratio not kept,
    nothing cropped), so every fidelity sees the full field of view.
    """
    n, height, width = frames.shape[:3]
    if (height, width) == (size, size):
        batch = frames.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    else:
        batch = torch.empty((n, 3, size, size), dtype=torch.float32, device=frames.device)
        for start in range(0, n, _RESIZE_CHUNK):
            part = frames[start : start + _RESIZE_CHUNK].permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
            part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            batch[start : start + _RESIZE_CHUNK] = part.clamp_(0.0, 1.0)  # rounding can step a hair outside [0, 1]
    out = batch[inverse]
    return out.reshape(*shape, 3, size, size).contiguous()


_RESIZE_CHUNK = 64


def sample_snippets(
    frames: np.ndarray, num_snippets: int, frames_per_snippet: int, stride: int, size: int
) -> torch.Tensor:
    """float32 (L, F, 3, size, size) in [0, 1] from uint8 (T, H, W, 3) frames (indices: ``snippet_frame_indices``).

    Only the selected frames are converted, each distinct frame once (``resize_frames``).
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}"
        raise ValueError(f"frames must be a uint8 numpy array (T, H, W, 3), got {got}")
    _check_positive(size=size)
    indices = snippet_frame_indices(frames.shape[0], num_snippets, frames_per_snippet, stride)
    unique, inverse = select_snippet_frames(indices)
    selected = torch.from_numpy(frames[unique])  # fancy indexing copies: writable, cache array untouched
    return resize_frames(selected, torch.from_numpy(inverse), (num_snippets, frames_per_snippet), size)
