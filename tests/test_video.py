"""Video decoding/writing, the decoded-frame cache, snippet sampling, and the fidelity shape arithmetic."""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from harness.data.video import (
    FrameCache,
    VideoInfo,
    decode_video,
    probe_video,
    sample_snippets,
    snippet_frame_indices,
    write_video,
)
from harness.errors import ConfigError, VideoError
from harness.fidelity import PAPER_RATIOS, fidelity_shape


def smooth_frames(num_frames: int = 12, height: int = 24, width: int = 32, phase: float = 0.0) -> np.ndarray:
    """Moving colour gradients: the kind of content a codec round trip must keep."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for t in range(num_frames):
        r = 128 + 100 * np.sin(x / 7 + t / 3 + phase)
        g = 128 + 100 * np.cos(y / 5 - t / 4 + phase)
        b = 128 + 80 * np.sin((x + y) / 9 + t / 5)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def constant_frames(num_frames: int, height: int = 12, width: int = 20) -> np.ndarray:
    """Frame t is a flat image of value 10 * t: sampled values reveal which frames were picked."""
    values = (np.arange(num_frames, dtype=np.uint8) * 10)[:, None, None, None]
    return np.broadcast_to(values, (num_frames, height, width, 3)).copy()


@pytest.fixture()
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", smooth_frames(), fps=25)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------------
# write / decode / probe
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".avi"])
def test_round_trip_is_nearly_lossless(tmp_path: Path, ext: str) -> None:
    frames = smooth_frames(num_frames=10, height=23, width=31)  # odd sizes on purpose
    path = write_video(tmp_path / f"clip{ext}", frames, fps=25)
    decoded = decode_video(path)
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 0.5
    assert no_temp_files(tmp_path)


def test_probe_reports_what_was_written(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", smooth_frames(num_frames=24), fps=30000 / 1001)
    info = probe_video(path)
    assert isinstance(info, VideoInfo)
    assert (info.num_frames, info.width, info.height) == (24, 32, 24)
    assert info.fps == pytest.approx(30000 / 1001)
    assert info.duration == pytest.approx(24 * 1001 / 30000, abs=1e-3)


def test_decode_max_side_shrinks_longer_side(video: Path) -> None:
    frames = decode_video(video, max_side=16)
    assert frames.shape == (12, 12, 16, 3)  # 24x32 -> 12x16, aspect kept
    assert decode_video(video, max_side=64).shape == (12, 24, 32, 3)  # never upscales


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", smooth_frames().astype(np.float32), fps=25)
    with pytest.raises(ValueError, match="T=0"):
        write_video(tmp_path / "a.mp4", np.zeros((0, 8, 8, 3), np.uint8), fps=25)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.mp4", smooth_frames(), fps=0)
    with pytest.raises(ValueError, match=r"\.webm"):
        write_video(tmp_path / "a.webm", smooth_frames(), fps=25)
    assert not list(tmp_path.iterdir())


def test_write_video_replaces_atomically(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", smooth_frames(num_frames=4), fps=25)
    write_video(path, smooth_frames(num_frames=7), fps=25)
    assert decode_video(path).shape[0] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


# ----------------------------------------------------------------------------------------------------------------
# broken inputs: always VideoError naming the file, never a partial or empty array
# ----------------------------------------------------------------------------------------------------------------


def assert_video_error(path: Path, problem: str) -> None:
    for reader in (decode_video, probe_video):
        with pytest.raises(VideoError, match=re.escape(str(path))) as info:
            reader(path)
        assert problem in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    assert_video_error(tmp_path / "nope.mp4", "not found")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    assert_video_error(path, "empty file")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_video_error(path, "cannot")


def test_text_file_renamed_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video\n" * 100)
    assert_video_error(path, "cannot")


@pytest.mark.parametrize("keep", ["half", "100 bytes"])
def test_truncated_mp4(video: Path, keep: str) -> None:
    # write_video's MP4 keeps its index (moov) at the end, so any cut makes the file unreadable at open.
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2] if keep == "half" else data[:100])
    assert_video_error(video, "cannot")


def test_truncated_file_that_still_decodes_partly_is_rejected(tmp_path: Path) -> None:
    # Matroska decodes silently up to the cut (PyAV returns the first frames, no error): the decoded count is
    # compared with duration x fps and a short decode is an error, not a shorter video.
    path = write_video(tmp_path / "clip.mkv", smooth_frames(num_frames=24), fps=25)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=re.escape(str(path)) + r".*truncated, decoded \d+ of 24"):
        decode_video(path)


def test_file_without_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 8000, index * 1024, Fraction(1, 8000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert_video_error(path, "no video stream")


# ----------------------------------------------------------------------------------------------------------------
# FrameCache
# ----------------------------------------------------------------------------------------------------------------


def test_cache_decodes_once_then_hits_memory_and_disk(video: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = FrameCache(root)
    first = cache.get(video)
    assert (cache.misses, cache.hits) == (1, 0)
    assert np.array_equal(first, decode_video(video))
    assert cache.get(video) is first
    assert (cache.misses, cache.memory_hits, cache.disk_hits) == (1, 1, 0)
    assert cache.entry_path(video).is_file() and no_temp_files(root)

    other_process = FrameCache(root)  # a fresh cache on the same root: the .npy on disk is reused
    assert np.array_equal(other_process.get(video), first)
    assert (other_process.misses, other_process.disk_hits) == (0, 1)


def test_cache_returns_read_only_arrays(video: Path, tmp_path: Path) -> None:
    frames = FrameCache(tmp_path / "cache").get(video)
    with pytest.raises(ValueError):
        frames[0, 0, 0, 0] = 1


def test_cache_invalidated_when_source_rewritten(video: Path, tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    before = cache.get(video)
    write_video(video, smooth_frames(num_frames=5, phase=1.0), fps=25)
    after = cache.get(video)
    assert cache.misses == 2 and after.shape[0] == 5
    assert np.array_equal(after, decode_video(video))
    assert before.shape[0] == 12


def test_cache_invalidated_by_mtime_alone(video: Path, tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    cache.get(video)
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    cache.get(video)
    assert (cache.misses, cache.hits) == (2, 0)


def test_cache_max_side_is_part_of_the_key(video: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    full = FrameCache(root).get(video)
    small_cache = FrameCache(root, max_side=16)
    small = small_cache.get(video)
    assert small_cache.misses == 1
    assert full.shape == (12, 24, 32, 3) and small.shape == (12, 12, 16, 3)


def test_cache_lru_evicts_oldest(tmp_path: Path) -> None:
    fa, fb = smooth_frames(num_frames=3), smooth_frames(num_frames=4)
    a = write_video(tmp_path / "a.mp4", fa, fps=25)
    b = write_video(tmp_path / "b.mp4", fb, fps=25)
    cache = FrameCache(tmp_path / "cache", memory_bytes=fb.nbytes)  # room for b, or a, not both
    cache.get(a), cache.get(b), cache.get(a)
    assert (cache.misses, cache.memory_hits, cache.disk_hits) == (2, 0, 1)
    assert cache.held_bytes == fa.nbytes


def test_cache_memory_is_bounded_in_bytes(tmp_path: Path) -> None:
    fa, fb = smooth_frames(num_frames=3), smooth_frames(num_frames=4)
    a = write_video(tmp_path / "a.mp4", fa, fps=25)
    b = write_video(tmp_path / "b.mp4", fb, fps=25)
    both = FrameCache(tmp_path / "cache", memory_bytes=fa.nbytes + fb.nbytes)
    both.get(a), both.get(b), both.get(a), both.get(b)
    assert (both.misses, both.memory_hits) == (2, 2) and both.held_bytes == fa.nbytes + fb.nbytes
    none = FrameCache(tmp_path / "cache", memory_bytes=fa.nbytes - 1)  # smaller than any video: nothing held
    none.get(a), none.get(a)
    assert (none.memory_hits, none.disk_hits, none.held_bytes) == (0, 2, 0)


def test_cache_recovers_from_a_damaged_entry(video: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    expected = FrameCache(root).get(video)
    FrameCache(root).entry_path(video).write_bytes(b"garbage")
    cache = FrameCache(root)
    assert np.array_equal(cache.get(video), expected)
    assert cache.misses == 1
    assert np.array_equal(np.load(cache.entry_path(video)), expected)  # rewritten


def test_cache_propagates_video_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_text("nope")
    with pytest.raises(VideoError, match=re.escape(str(path))):
        FrameCache(tmp_path / "cache").get(path)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_cache_concurrent_readers_agree(video: Path, tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(video))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(np.array_equal(r, results[0]) for r in results)
    assert cache.misses + cache.hits == 4 and cache.misses >= 1
    assert no_temp_files(tmp_path / "cache")


# ----------------------------------------------------------------------------------------------------------------
# snippet indices and sampling
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_frames", "num_snippets", "frames_per_snippet", "stride", "expected"),
    [
        # bins [0,5) [5,10): centres 2.5 -> frame 2, 7.5 -> frame 7; F=2, stride 2 spans c-1, c+1
        (10, 2, 2, 2, [[1, 3], [6, 8]]),
        (10, 5, 1, 1, [[1], [3], [5], [7], [9]]),
        # more snippets than frames: each frame serves two bins
        (4, 8, 1, 1, [[0], [0], [1], [1], [2], [2], [3], [3]]),
        (10, 1, 3, 4, [[1, 5, 9]]),
        # even span of odd length leans late: centre 5, frames 5 and 6
        (10, 1, 2, 1, [[5, 6]]),
        # clamped at both ends: centre 2, raw [-2, 2, 6]
        (5, 1, 3, 4, [[0, 2, 4]]),
        (1, 3, 2, 3, [[0, 0], [0, 0], [0, 0]]),
        # bins of 7/3 frames: centres at 7/6, 7/2, 35/6 -> frames 1, 3, 5
        (7, 3, 1, 1, [[1], [3], [5]]),
    ],
)
def test_snippet_frame_indices_hand_cases(
    num_frames: int, num_snippets: int, frames_per_snippet: int, stride: int, expected: list[list[int]]
) -> None:
    indices = snippet_frame_indices(num_frames, num_snippets, frames_per_snippet, stride)
    assert indices.dtype == np.int64
    assert indices.tolist() == expected


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_frames=0),
        dict(num_snippets=0),
        dict(frames_per_snippet=0),
        dict(stride=0),
        dict(stride=1.5),
        dict(num_snippets=True),
    ],
)
def test_snippet_frame_indices_rejects_bad_arguments(bad: dict) -> None:
    args = dict(num_frames=10, num_snippets=2, frames_per_snippet=2, stride=1) | bad
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=name):
        snippet_frame_indices(**args)


@pytest.mark.parametrize(("num_snippets", "size"), [(1, 112), (3, 158), (7, 224), (5, 17)])
def test_sample_snippets_shape_and_range(num_snippets: int, size: int) -> None:
    out = sample_snippets(smooth_frames(num_frames=12, height=16, width=24), num_snippets, 2, 2, size)
    assert out.dtype == torch.float32
    assert out.shape == (num_snippets, 2, 3, size, size)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0.05  # real content, not a constant/zero tensor


def test_sample_snippets_picks_the_indexed_frames() -> None:
    frames = constant_frames(10)
    out = sample_snippets(frames, num_snippets=2, frames_per_snippet=2, stride=2, size=9)
    expected = torch.tensor([[1, 3], [6, 8]], dtype=torch.float32) * 10 / 255  # indices of the hand case
    assert torch.allclose(out, expected[:, :, None, None, None].expand_as(out), atol=1e-6)


def test_sample_snippets_without_resize_is_exact() -> None:
    frames = smooth_frames(num_frames=6, height=16, width=16)
    out = sample_snippets(frames, num_snippets=3, frames_per_snippet=1, stride=1, size=16)
    expected = torch.from_numpy(frames[[1, 3, 5]]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(out[:, 0], expected)


def test_sample_snippets_is_deterministic_and_leaves_input_alone() -> None:
    frames = smooth_frames(num_frames=9, height=20, width=28)
    frames.flags.writeable = False  # as FrameCache hands them out
    copy = frames.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's non-writable array warning
        first = sample_snippets(frames, 4, 3, 2, 158)
        second = sample_snippets(frames, 4, 3, 2, 158)
    assert torch.equal(first, second)
    assert np.array_equal(frames, copy)


def test_sample_snippets_antialiases_downscaling() -> None:
    # A one-pixel checkerboard shrunk 7x must average to grey; plain bilinear samples single pixels at this odd
    # factor and returns pure black/white (max error 0.5).
    board = ((np.indices((56, 56)).sum(axis=0) % 2) * 255).astype(np.uint8)
    frames = np.repeat(board[None, :, :, None], 3, axis=3)
    out = sample_snippets(frames, 1, 1, 1, 8)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.02)


def test_sample_snippets_squashes_non_square_frames_whole() -> None:
    frames = np.zeros((2, 16, 32, 3), np.uint8)
    frames[:, :, :16, 0] = 255  # left half red
    frames[:, :, 16:, 2] = 255  # right half blue
    out = sample_snippets(frames, 1, 1, 1, 8)[0, 0]
    assert torch.allclose(out[0, :, :3], torch.ones(8, 3)) and torch.allclose(out[2, :, 5:], torch.ones(8, 3))
    assert float(out[0, :, 5:].max()) == 0.0 and float(out[2, :, :3].max()) == 0.0


def test_sample_snippets_rejects_bad_frames() -> None:
    with pytest.raises(ValueError, match="uint8"):
        sample_snippets(np.zeros((4, 8, 8, 3), np.float32), 1, 1, 1, 8)
    with pytest.raises(ConfigError, match="size"):
        sample_snippets(np.zeros((4, 8, 8, 3), np.uint8), 1, 1, 1, 0)


# ----------------------------------------------------------------------------------------------------------------
# fidelity_shape
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r_t", "r_s", "expected"),
    [(1, 1, (100, 224)), (1, 2, (100, 112)), (4, 1, (25, 224)), (2, math.sqrt(2), (50, 158)), (100, 64, (1, 8))],
)
def test_fidelity_shape_paper_values(r_t: float, r_s: float, expected: tuple[int, int]) -> None:
    assert fidelity_shape(100, 224, r_t, r_s) == expected


def test_paper_ratios() -> None:
    shapes = {name: fidelity_shape(100, 224, *ratios) for name, ratios in PAPER_RATIOS.items()}
    assert shapes == {"S": (100, 112), "T": (25, 224), "ST": (50, 158)}


@pytest.mark.parametrize(
    ("r_t", "r_s", "pattern"),
    [
        (0.5, 1, r"r_t=0\.5: .*1 <= r_t <= 100"),
        (1, 0.9, r"r_s=0\.9: .*r_s >= 1"),
        (101, 1, r"r_t=101: .*1 <= r_t <= 100"),
        (float("nan"), 1, r"r_t=nan: .*1 <= r_t <= 100"),
        (1, float("inf"), r"r_s=inf: .*r_s >= 1"),
    ],
)
def test_fidelity_shape_rejects_impossible_ratios(r_t: float, r_s: float, pattern: str) -> None:
    with pytest.raises(ConfigError, match="impossible fidelity ratio " + pattern):
        fidelity_shape(100, 224, r_t, r_s)


def test_resize_in_chunks_equals_one_batched_resize() -> None:
    import torch.nn.functional as F

    from harness.data.video import _RESIZE_CHUNK, resize_frames

    n = 2 * _RESIZE_CHUNK + 5  # three chunks, the last one short
    frames = torch.randint(0, 256, (n, 9, 14, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inverse = torch.arange(n).flip(0)
    whole = F.interpolate(
        frames.permute(0, 3, 1, 2).float() / 255, size=(8, 8), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    got = resize_frames(frames, inverse, (n, 1), 8)
    assert torch.equal(got.reshape(n, 3, 8, 8), whole[inverse])
