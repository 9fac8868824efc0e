"""From a DataConfig to tensors: the dataset, its video files, clips at a fidelity, TAL targets, pre-training
sources. Everything random takes an explicit seed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.model import TALDataset, Video
from harness.errors import LofiError, VideoError
from harness.experiment import DataConfig, FidelityConfig, RuntimeConfig

log = logging.getLogger(__name__)


def prepare_dataset(cfg: DataConfig) -> TALDataset:
    """Read the annotations; generate the synthetic benchmark first when the config asks for it."""
    from harness.data.annotations import read_annotations

    if cfg.synthetic_profile:
        from harness.data.synthetic import generate

        if not (cfg.root / "manifest.json").is_file():
            log.info(
                "generating the synthetic benchmark (profile %s, seed %d) into %s",
                cfg.synthetic_profile,
                cfg.synthetic_seed,
                cfg.root,
            )
        generate(cfg.synthetic_profile, cfg.synthetic_seed, cfg.root)  # no-op when complete
    path = cfg.annotations_path()
    if not path.is_file():
        raise LofiError(f"{path}: annotation file not found; set data.root / data.annotations in the config")
    ds = read_annotations(path, layout=cfg.layout, clip_segments=cfg.clip_segments)
    if cfg.val_holdout > 0:
        ds = hold_out_validation(ds, cfg, source=str(path))
    ds = _fill_durations(ds, cfg)
    for subset in {cfg.train_subset, cfg.val_subset, cfg.test_subset}:
        if not ds.subset(subset):
            raise LofiError(
                f"{path}: no videos in subset '{subset}'; set data.*_subset to one of {sorted(ds.subset_counts())}"
            )
    return ds


def _fill_durations(ds: TALDataset, cfg: DataConfig) -> TALDataset:
    """THUMOS14's annotation files carry no durations: take them from the video files."""
    import dataclasses
    import math

    from harness.data.video import probe_video

    missing = [v for v in ds.videos.values() if not math.isfinite(v.duration)]
    if not missing:
        return ds
    log.info("%s: reading the duration of %d videos from their files", cfg.annotations_path(), len(missing))
    videos = dict(ds.videos)
    for v in missing:
        videos[v.id] = dataclasses.replace(v, duration=probe_video(video_file(cfg, v)).duration)
    return dataclasses.replace(ds, videos=videos)


def hold_out_validation(ds: TALDataset, cfg: DataConfig, *, source: str) -> TALDataset:
    """Move ``cfg.val_holdout`` of the training videos into a new subset ``cfg.val_subset`` (fixed by id hash)."""
    import dataclasses
    import hashlib

    if not 0 < cfg.val_holdout < 1:
        raise LofiError(f"data.val_holdout={cfg.val_holdout}: must lie in (0, 1), e.g. 0.1")
    if ds.subset(cfg.val_subset):
        raise LofiError(
            f"{source}: data.val_holdout needs a new subset name, but '{cfg.val_subset}' already has videos; "
            "set data.val_subset to e.g. holdout"
        )
    train = sorted(ds.subset(cfg.train_subset), key=lambda v: hashlib.sha1(v.id.encode()).hexdigest())
    moved = {v.id for v in train[: max(1, round(cfg.val_holdout * len(train)))]}
    videos = {k: dataclasses.replace(v, subset=cfg.val_subset) if k in moved else v for k, v in ds.videos.items()}
    log.info(
        "%s: %d of %d %s videos held out as '%s'", source, len(moved), len(train), cfg.train_subset, cfg.val_subset
    )
    return dataclasses.replace(ds, videos=videos)


def video_file(cfg: DataConfig, video: Video) -> Path:
    """Where a video's file is: the annotation's own path (the reader resolved it against the annotation file's
    folder), else ``root/video_dir/<id><ext>``."""
    if video.path is not None:
        return Path(video.path)
    return cfg.root / cfg.video_dir / f"{video.id}{cfg.video_ext}"


def dominant_label(video: Video) -> str:
    """The video-level class: the label covering the most time (ActivityNet videos mostly have one)."""
    total: dict[str, float] = {}
    for s in video.segments:
        total[s.label] = total.get(s.label, 0.0) + (s.end - s.start)
    return max(sorted(total), key=lambda k: total[k])


class VideoFrames:
    """The frames of the dataset's videos, from the store ``data.store`` names: ``decoded`` (whole videos decoded
    once into the FrameCache) or ``prepared`` (each video re-encoded once by ``lofi data prepare``, then only the
    frames asked for are decoded; ``harness.data.store``). Corrupt videos stop the run or, with
    ``data.skip_corrupt``, are skipped with a warning and counted."""

    def __init__(self, cfg: DataConfig, *, cache_bytes: int = 2**30) -> None:
        from harness.data.video import FrameCache

        self.cfg = cfg
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

    def usable(self, videos: list[Video]) -> list[Video]:
        """The videos that decode; this also fills the store (decodes or re-encodes) before training starts."""
        from tqdm import tqdm

        out = []
        for v in tqdm(videos, desc="decode", unit="video", disable=len(videos) < 50, leave=False):
            try:
                if self.cfg.store == "prepared":
                    self._entry(video_file(self.cfg, v))
                else:
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
        from harness.data.video import resize_frames, select_snippet_frames, snippet_frame_indices

        path = video_file(self.cfg, video)
        unique, inverse = select_snippet_frames(snippet_frame_indices(self.num_frames(path), snippets, frames, stride))
        selected = torch.from_numpy(np.ascontiguousarray(self.fetch(path, unique)))
        return resize_frames(selected, torch.from_numpy(inverse), (snippets, frames), size)

    def batch(self, videos: list[Video], *, snippets: int, fid: FidelityConfig, size: int) -> torch.Tensor:
        """(B, L, F, 3, size, size) float in [0, 1] on the CPU (tests, tools; stages use ``loader``)."""
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


@dataclass(frozen=True)
class StageData:
    """The dataset and the frame source of one DataConfig, built once per process and passed to every stage
    (the frame source's in-memory cache is then shared: each video is read from the disk cache once)."""

    cfg: DataConfig
    ds: TALDataset
    frames: VideoFrames


def load_stage_data(cfg: DataConfig, *, cache_bytes: int = 2**30) -> StageData:
    """Read (or generate) the dataset and open its frame source: what every stage starts from. ``cache_bytes``:
    the in-memory frame cache's budget (``runtime.cache_bytes``)."""
    return StageData(cfg, prepare_dataset(cfg), VideoFrames(cfg, cache_bytes=cache_bytes))


def stage_data(cfg: DataConfig, data: StageData | None, *, cache_bytes: int = 2**30) -> StageData:
    """``data`` when given (it must have been built from ``cfg``), else a new one (a stage run alone)."""
    if data is None:
        return load_stage_data(cfg, cache_bytes=cache_bytes)
    if data.cfg != cfg:
        raise LofiError(
            f"stage data built for data.root={data.cfg.root} differs from this stage's data config "
            f"(data.root={cfg.root}); build it with load_stage_data(cfg.data)"
        )
    return data


def relative_segments(video: Video) -> np.ndarray:
    """(K, 2) segments as fractions of the video's duration, clipped to [0, 1]."""
    seg = video.segment_array() / max(video.duration, 1e-9)
    return np.clip(seg, 0.0, 1.0)


def tal_targets(videos: list[Video], snippets: int, max_duration: int) -> dict[str, torch.Tensor]:
    from heads.labels import make_targets

    per = [make_targets(relative_segments(v), snippets, max_duration) for v in videos]
    return {k: torch.stack([torch.as_tensor(t[k]) for t in per]) for k in per[0]}


@dataclass(frozen=True)
class LabelledItem:
    path: Path
    label: int
    start: float = 0.0  # seconds; used for trimmed segments of long videos (ACP+)
    end: float = -1.0


def read_source_index(cfg: DataConfig, rel: str, key: str) -> tuple[list[str], list[LabelledItem]]:
    """A pre-training source index (``clips/index.json`` or ``images/index.json``)."""
    path = Path(rel) if Path(rel).is_absolute() else cfg.root / rel
    if not path.is_file():
        raise LofiError(
            f"{path}: pre-training source index not found; generate the synthetic benchmark or set "
            f"data.{'acp' if key == 'clips' else 'icp'}_source"
        )
    try:
        index = json.loads(path.read_text())
        classes = [str(c) for c in index["classes"]]
        cidx = {c: i for i, c in enumerate(classes)}
        # entry paths are relative to the dataset root, as the synthetic generator writes them
        items = [LabelledItem(cfg.root / e["path"], cidx[e["label"]]) for e in index[key]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LofiError(
            f"{path}: malformed source index ({exc}); expected {{'classes': [...], '{key}': [{{'path', 'label'}}]}}"
        ) from None
    return classes, items
