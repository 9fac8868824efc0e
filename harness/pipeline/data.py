"""From a DataConfig to the dataset a stage reads: annotations read (the synthetic benchmark generated first when
the config names a profile, by a command's data step, never by a stage), the validation subset held out, every
video's file found and ``data.missing`` applied; and ``StageData``, the dataset with its frame source, built once per
process.

Elsewhere: the frame source and its loader (``harness/data/frames.py``), TAL targets and video labels
(``harness/pipeline/targets.py``), pre-training source indexes (``harness/data/sources.py``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.data.frames import VideoFrames, video_file
from harness.data.model import TALDataset
from harness.errors import LofiError
from harness.experiment import DataConfig

log = logging.getLogger(__name__)


def prepare_dataset(cfg: DataConfig, *, generate: bool = True) -> TALDataset:
    """Read the annotations (generating the synthetic benchmark first when the config asks for it), hold out the
    validation subset, find every video's file and apply ``data.missing`` to those without one.

    ``generate=False`` is a stage's data step (``lofi stage``, a workflow job): data is prepared by commands only
    (``lofi data synth``, the workflow's data job; ``lofi run`` and ``lofi search`` before their first stage), so an
    incomplete synthetic benchmark is an error naming the command; a complete one is still checked to be the
    config's profile and seed.

    Everything a run can get wrong about its data stops here, before any training: no annotation file, an empty
    subset, a validation or test subset without a single labelled instance (ActivityNet's ``testing``), video
    files under another name (the error says which names were tried)."""
    if cfg.synthetic_profile:
        from harness.data.synthetic import generate as generate_benchmark

        if not (cfg.root / "manifest.json").is_file():
            if not generate:
                raise LofiError(
                    f"data.root={cfg.root}: no complete synthetic benchmark (profile {cfg.synthetic_profile}, seed "
                    f"{cfg.synthetic_seed}), and a stage does not generate data; run `lofi data synth --profile "
                    f"{cfg.synthetic_profile} --seed {cfg.synthetic_seed} --out {cfg.root}` first (the workflow's "
                    "data job does; `lofi run` does it before its first stage)"
                )
            log.info(
                "generating the synthetic benchmark (profile %s, seed %d) into %s",
                cfg.synthetic_profile,
                cfg.synthetic_seed,
                cfg.root,
            )
        # complete: writes nothing, only checks that the folder holds this profile and seed
        generate_benchmark(cfg.synthetic_profile, cfg.synthetic_seed, cfg.root)
    return _with_durations(cfg, *_fingerprint(cfg))


def _fingerprint(cfg: DataConfig) -> tuple[int, int, int]:
    """What the dataset read from ``cfg`` depends on besides the config: the annotation file and the video folder
    (its mtime changes when a file is added or removed)."""
    try:
        ann = cfg.annotations_path().stat()
    except OSError:
        return (0, 0, 0)
    try:
        folder = (cfg.root / cfg.video_dir).stat().st_mtime_ns
    except OSError:
        folder = 0
    return (ann.st_mtime_ns, ann.st_size, folder)


@functools.lru_cache(maxsize=4)
def _with_durations(cfg: DataConfig, *fingerprint: int) -> TALDataset:
    return _fill_durations(_read_dataset(cfg, *fingerprint), cfg)


@functools.lru_cache(maxsize=4)
def _read_dataset(cfg: DataConfig, *fingerprint: int) -> TALDataset:
    """The dataset of ``cfg`` without the durations read from video files (cached per process: the plan's keys
    read it without opening a video, the stages through ``prepare_dataset``)."""
    from harness.data.annotations import read_annotations
    from harness.data.files import names_tried

    path = cfg.annotations_path()
    if not path.is_file():
        raise LofiError(f"{path}: annotation file not found; set data.root / data.annotations in the config")
    ds = read_annotations(path, layout=cfg.layout, clip_segments=cfg.clip_segments)
    if cfg.val_holdout > 0:  # before the files are looked up: the holdout never depends on what was downloaded
        ds = hold_out_validation(ds, cfg, source=str(path))
    subsets = dict.fromkeys((cfg.train_subset, cfg.val_subset, cfg.test_subset))
    for subset in subsets:  # what the annotations must hold, whatever was downloaded
        videos = ds.subset(subset)
        if not videos:
            raise LofiError(
                f"{path}: no videos in subset '{subset}'; set data.*_subset to one of {sorted(ds.subset_counts())}"
            )
        if subset != cfg.train_subset and not any(v.segments for v in videos):
            key = "data.test_subset" if subset == cfg.test_subset else "data.val_subset"
            raise LofiError(
                f"{path}: {key} = '{subset}' has no labelled instance, so it cannot be evaluated (ActivityNet's and "
                f"HACS's test labels are not public); set {key} to a labelled subset, e.g. validation"
            )
    ds = locate_videos(ds, cfg)
    for subset in subsets:
        if not ds.subset(subset):
            raise LofiError(
                f"{cfg.root / cfg.video_dir}: no video of subset '{subset}' has a file (data.missing: {cfg.missing}; "
                f"names tried: {names_tried(cfg.video_ext)}); put the videos there or fix data.root / data.video_dir"
            )
    return ds


def locate_videos(ds: TALDataset, cfg: DataConfig) -> TALDataset:
    """Every video with its file (``harness.data.files``), and ``data.missing`` applied to those without one:
    ``meta["missing"]`` = ``{"policy", "folder", "names", "ids": {subset: [ids]}}`` (empty ``ids``: none missing).
    ``error``: stop, one line; ``skip``: drop them from every subset; ``miss``: drop them from training and
    validation, keep the test subset's (no file: no prediction, their instances count as misses)."""
    import dataclasses
    from types import MappingProxyType

    from harness.data.files import find_video_files, names_tried

    folder = cfg.root / cfg.video_dir
    named = {v.id: Path(v.path) for v in ds.videos.values() if v.path is not None}
    files = find_video_files(folder, list(ds.videos), ext=cfg.video_ext, named=named)
    by_subset: dict[str, list[str]] = {}
    for vid in files.missing:
        by_subset.setdefault(ds.videos[vid].subset, []).append(vid)
    info = {"policy": cfg.missing, "folder": str(folder), "names": names_tried(cfg.video_ext), "ids": by_subset}
    if files.missing and cfg.missing == "error":
        first = ds.videos[files.missing[0]]
        where = str(first.path) if first.path is not None else f"{folder}/{{{names_tried(cfg.video_ext)}}}"
        raise LofiError(
            f"{folder}: {len(files.missing)} of {len(ds.videos)} annotated videos have no file (e.g. {first.id}: "
            f"looked for {where}); download them there, or set data.missing=skip (leave them out of every subset) "
            "or data.missing=miss (missing test videos score as misses)"
        )
    if files.missing:
        log.info(
            "%s: %d of %d annotated videos have no file (%s); data.missing=%s: %s",
            folder,
            len(files.missing),
            len(ds.videos),
            ", ".join(f"{s}: {len(ids)}" for s, ids in by_subset.items()),
            cfg.missing,
            "left out of every subset" if cfg.missing == "skip" else "test videos kept as misses, others left out",
        )
    kept_absent = cfg.test_subset if cfg.missing == "miss" else None
    videos = {
        vid: dataclasses.replace(v, path=files.found[vid]) if vid in files.found else v
        for vid, v in ds.videos.items()
        if vid in files.found or v.subset == kept_absent
    }
    meta = {**ds.meta, "missing": info}
    return dataclasses.replace(ds, videos=videos, meta=MappingProxyType(meta))


def missing_counts(ds: TALDataset) -> dict[str, int]:
    """Videos without a file per subset (``locate_videos``; empty when every file was found)."""
    info = ds.meta.get("missing")
    ids = info.get("ids", {}) if isinstance(info, Mapping) else {}
    return {s: len(v) for s, v in ids.items()}


def absent_videos(ds: TALDataset) -> frozenset[str]:
    """The videos kept in ``ds`` without a file (``data.missing: miss``: test videos scored as misses)."""
    info = ds.meta.get("missing")
    ids = info.get("ids", {}) if isinstance(info, Mapping) else {}
    return frozenset(v for vs in ids.values() for v in vs if v in ds.videos)


def write_missing_list(ds: TALDataset, path: Path) -> int:
    """Write the videos without a file (``locate_videos``) to ``path``, one ``<subset>\t<id>`` line each, under a
    header saying where they were looked for and what ``data.missing`` did; returns their count (0: no file)."""
    from harness.io import write_text_atomic

    info = ds.meta.get("missing")
    if not isinstance(info, Mapping) or not info.get("ids"):
        return 0
    lines = [f"{subset}\t{vid}" for subset, ids in info["ids"].items() for vid in ids]
    header = (
        f"# {len(lines)} annotated videos without a file in {info['folder']} (names tried: {info['names']}); "
        f"data.missing={info['policy']}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, header + "\n".join(lines) + "\n")
    return len(lines)


def video_sets(cfg: DataConfig) -> dict[str, str] | None:
    """A digest of each subset's video ids as the stages will read them (after ``data.missing``), for the stage
    keys: a stage is out of date when videos are added. None for the synthetic benchmark (its videos follow from
    its profile and seed, which are in the key) and when the data cannot be read (no stage can run on it: the
    stage, or ``harness.pipeline.preflight``, says why; a dry run of the workflow still plans)."""
    from harness.data.files import id_set_digest

    if cfg.synthetic_profile:
        return None
    try:
        ds = _read_dataset(cfg, *_fingerprint(cfg))
    except LofiError:
        return None
    absent = absent_videos(ds)
    subsets = dict.fromkeys((cfg.train_subset, cfg.val_subset, cfg.test_subset))
    return {s: id_set_digest(v.id for v in ds.subset(s) if v.id not in absent) for s in subsets}


def _fill_durations(ds: TALDataset, cfg: DataConfig) -> TALDataset:
    """THUMOS14's annotation files carry no durations: take them from the video files."""
    import dataclasses
    import math

    # a video without a file (data.missing: miss) keeps no duration: the evaluation does not read it
    missing = [v for v in ds.videos.values() if not math.isfinite(v.duration) and v.path is not None]
    if not missing:
        return ds
    from harness.data.video import probe_video  # PyAV: only when a duration must be read from a file

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


@dataclass(frozen=True)
class StageData:
    """The dataset and the frame source of one DataConfig, built once per process and passed to every stage
    (the frame source's in-memory cache is then shared: each video is read from the disk cache once)."""

    cfg: DataConfig
    ds: TALDataset
    frames: VideoFrames


def load_stage_data(cfg: DataConfig, *, cache_bytes: int = 2**30, generate: bool = True) -> StageData:
    """Read (or, with ``generate``, generate) the dataset and open its frame source: what every stage starts from.
    ``cache_bytes``: the in-memory frame cache's budget (``runtime.cache_bytes``)."""
    ds = prepare_dataset(cfg, generate=generate)
    return StageData(cfg, ds, VideoFrames(cfg, cache_bytes=cache_bytes, absent=absent_videos(ds)))


def stage_data(cfg: DataConfig, data: StageData | None, *, cache_bytes: int = 2**30) -> StageData:
    """``data`` when given (it must have been built from ``cfg``), else a new one (a stage run alone: the data must
    have been prepared by a command, ``prepare_dataset(generate=False)``)."""
    if data is None:
        return load_stage_data(cfg, cache_bytes=cache_bytes, generate=False)
    if data.cfg != cfg:
        raise LofiError(
            f"stage data built for data.root={data.cfg.root} differs from this stage's data config "
            f"(data.root={cfg.root}); build it with load_stage_data(cfg.data)"
        )
    return data
