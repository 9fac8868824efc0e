"""The frames of a dataset's videos: where a video's file is (``video_file``), the frame source over the store
``data.store`` names (``VideoFrames``) and a stage's loader of clips from it (``clip_loader``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.data.model import Video
from harness.errors import LofiError, VideoError
from harness.experiment import DataConfig, FidelityConfig, RuntimeConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def video_file(cfg: DataConfig, video: Video) -> Path:
    """Where a video's file is: the path ``prepare_dataset`` found (or the annotation's own), else
    ``root/video_dir/<id><ext>``."""
    if video.path is not None:
        return Path(video.path)
    return cfg.root / cfg.video_dir / f"{video.id}{cfg.video_ext}"


class VideoFrames:
    """The frames of the dataset's videos, from the store ``data.store`` names: ``decoded`` (whole videos decoded
    once into the FrameCache) or ``prepared`` (each video re-encoded once by ``lofi data prepare``, then only the
    frames asked for are decoded; ``harness.data.store``). Corrupt videos stop the run or, with
    ``data.skip_corrupt``, are skipped with a warning and counted."""

    def __init__(self, cfg: DataConfig, *, cache_bytes: int = 2**30, absent: frozenset[str] = frozenset()) -> None:
        from harness.data.video import FrameCache

        self.cfg = cfg
        self.absent = absent  # videos known to have no file (data.missing: miss): left out without a warning
        self.cache = FrameCache(cfg.cache_dir, max_side=cfg.max_side, memory_bytes=cache_bytes)
        self.skipped: list[str] = []
        self._prepared: dict[Path, tuple[Path, object]] = {}  # source -> (store entry, StoreInfo)

    def store_settings(self):  # -> harness.data.store.StoreSettings
        from harness.data.store import StoreSettings

        return StoreSettings(max_side=self.cfg.max_side, crf=self.cfg.store_crf, gop=self.cfg.store_gop)

    def store_dir(self) -> Path:
        return self.cfg.cache_dir / "store"

    def prepare(self, path: Path):  # -> (entry, StoreInfo)
        """The prepared-store entry of the video at ``path``, re-encoding the video when the entry is missing."""
        return self._entry(path)

    def _entry(self, path: Path):  # -> (entry, StoreInfo); prepares the video when its entry is missing
        from harness.data.store import prepare_video

        if path not in self._prepared:
            self._prepared[path] = prepare_video(path, self.store_dir(), self.store_settings())
        return self._prepared[path]

    def usable(self, videos: list[Video], *, read: bool = True) -> list[Video]:
        """The videos that decode; this also fills the store (decodes or re-encodes) before training starts.

        ``read=False`` (a stage that reads no pixel, the blind control): a video whose decoded frames are already
        on disk counts as decoding without loading them (the same list, without reading the whole store)."""
        from tqdm import tqdm

        out = []
        videos = [v for v in videos if v.id not in self.absent]
        for v in tqdm(videos, desc="decode", unit="video", disable=len(videos) < 50, leave=False):
            try:
                if self.cfg.store == "prepared":
                    self._entry(video_file(self.cfg, v))
                elif read or not self.cache.has(video_file(self.cfg, v)):
                    self.cache.get(video_file(self.cfg, v))
                out.append(v)
            except VideoError as exc:
                if not self.cfg.skip_corrupt:
                    raise LofiError(f"{exc} (set data.skip_corrupt=true to skip such videos)") from None
                if v.id not in self.skipped:  # a frame source shared by several stages counts a video once
                    log.warning("skipping video %s: %s", v.id, exc)
                    self.skipped.append(v.id)
        return out

    def num_frames(self, path: Path) -> int:
        if self.cfg.store == "prepared":
            return self._entry(path)[1].num_frames
        return len(self.cache.get(path))

    def fetch(self, path: Path, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) frames of the video at ``path``."""
        if self.cfg.store == "prepared":
            from harness.data.store import read_frames

            entry, info = self._entry(path)
            return read_frames(entry, info, indices)
        return self.cache.get(path)[indices]

    def dataset(self, videos: list[Video], fid: FidelityConfig):  # -> harness.data.loader.ClipDataset
        """Clips of ``videos`` (item i = videos[i]) at ``fid``'s frames per snippet and stride."""
        from harness.data.loader import ClipDataset

        paths = [video_file(self.cfg, v) for v in videos]
        return ClipDataset(
            lambda i, idx: self.fetch(paths[i], idx),
            lambda i: self.num_frames(paths[i]),
            frames=fid.frames,
            stride=fid.stride,
        )

    def clip(self, video: Video, *, snippets: int, frames: int, stride: int, size: int) -> torch.Tensor:
        """float32 (L, F, 3, size, size) in [0, 1] on the CPU."""
        import torch  # imported when frames are read: the stage plan reads datasets without torch

        from harness.data.video import resize_frames, select_snippet_frames, snippet_frame_indices

        path = video_file(self.cfg, video)
        unique, inverse = select_snippet_frames(snippet_frame_indices(self.num_frames(path), snippets, frames, stride))
        selected = torch.from_numpy(np.ascontiguousarray(self.fetch(path, unique)))
        return resize_frames(selected, torch.from_numpy(inverse), (snippets, frames), size)

    def batch(self, videos: list[Video], *, snippets: int, fid: FidelityConfig, size: int) -> torch.Tensor:
        """(B, L, F, 3, size, size) float in [0, 1] on the CPU (tests, tools; stages use ``loader``)."""
        import torch

        return torch.stack(
            [self.clip(v, snippets=snippets, frames=fid.frames, stride=fid.stride, size=size) for v in videos]
        )


def clip_loader(
    frames: VideoFrames, videos: list[Video], fid: FidelityConfig, plan, runtime: RuntimeConfig, device: torch.device
):  # -> harness.data.loader.ClipLoader
    """The stage's loader of ``videos`` clips in ``plan`` order, with the runtime's workers, prefetch and pinning."""
    from harness.data.loader import ClipLoader

    return ClipLoader(
        frames.dataset(videos, fid),
        plan,
        workers=runtime.workers,
        prefetch=runtime.prefetch,
        pin_memory=runtime.pin_memory and device.type == "cuda",
    )
