"""Annotation readers: every supported layout becomes one ``TALDataset`` (see docs/contracts.md).

Layouts
-------
``activitynet``   official ActivityNet-1.3 JSON (``database`` -> id -> ``subset``, ``duration``, ``annotations``);
                  HACS-v1.1 shares it. Optional per-video keys written by our synthetic benchmark: ``fps``,
                  ``video`` (path relative to the JSON file) and ``ambiguous`` (list of [start, end]).
``bsn``           BSN/G-TAD/BMN ``anet_anno_action.json`` (ids ``v_<id>``, ``duration_second``,
                  ``duration_frame``) + ``video_info_new.csv`` (column ``subset``) + optional ``action_name.csv``
                  (class list, column ``action``). Ids lose the ``v_`` prefix; fps = duration_frame/duration_second.
``thumos14-csv``  ``val_Annotation.csv`` / ``test_Annotation.csv`` (columns video, type, start, end, ...).
``thumos14-json`` ``thumos_gt.json``: the official layout without durations, segments as strings.

THUMOS14 specifics
------------------
* Subsets keep the name the file gives, mapped onto ``SUBSETS``: CSV videos ``video_validation_*`` ->
  ``"validation"``, ``video_test_*`` -> ``"testing"``; JSON ``"train"`` -> ``"training"``, ``"test"`` ->
  ``"testing"``. Under the THUMOS14 protocol one trains on the validation videos (``"validation"`` in the CSVs,
  ``"training"`` in the JSON, which already encodes that role) and evaluates on ``"testing"``.
* Neither file states video durations: ``Video.duration`` is NaN (unknown) and only ``start >= 0`` is checked.
* ``Ambiguous`` spans go to ``Video.ambiguous``; they are neither instances nor a class.

Segment checks and ``clip_segments``
------------------------------------
A segment must satisfy ``0 <= start < end <= duration``. Overshoots up to ``FLOAT_TOLERANCE * duration`` are
rounding noise and are clipped silently.

By default (``clip_segments=True``) files load as published: the official ActivityNet-1.3 file has 215 segments
ending up to 0.85 s after their video's duration and 12 zero-length segments (start == end). Segments are clipped
to ``[0, duration]`` and zero-length segments are kept — the official ActivityNet evaluation keeps them as ground
truth too, so instance counts and mAP stay comparable — and ONE warning says how many were repaired, by how much
and where; the counts are also in ``dataset.meta["repaired"]`` (``lofi data stats`` prints them). Strict mode
(``clip_segments=False``: ``lofi data stats --strict``, ``data.clip_segments: false``) refuses such a segment with
an ``AnnotationError`` instead — the check for files we generate ourselves, where it would be a bug. A segment
whose start is after its end is an error in both modes. The evaluator reads ground truth through the same
readers (``read_ground_truth``), with official-layout segments kept as written (``as_written``): the official
evaluator does not clip them, and clipping changes tIoUs.

Video ids
---------
An id becomes a file name (``<id>.npy`` features, ``<id><ext>`` videos), so every reader refuses an id that is
empty, holds a path separator or a control character, starts with a dot, or is over 200 bytes
(``harness.io.name_problem``): no path built from an annotation file leaves its folder.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.model import SUBSETS, Segment, TALDataset, Video
from harness.errors import AnnotationError
from harness.io import loads_json_strict, name_problem, write_json_atomic

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

LAYOUTS = ("auto", "activitynet", "bsn", "thumos14-csv", "thumos14-json")
FLOAT_TOLERANCE = 1e-6  # relative to the duration: overshoots below this are float noise, not annotation errors
AMBIGUOUS_LABEL = "Ambiguous"
ACTIVITYNET_VERSION = "VERSION 1.3"
STRUCTURE_FILE = "anet_structure.json"

_ACTIVITYNET_SUBSETS = {s: s for s in SUBSETS}
_THUMOS_JSON_SUBSETS = {
    "train": "training",
    "training": "training",
    "validation": "validation",
    "val": "validation",
    "test": "testing",
    "testing": "testing",
}
_THUMOS_ID_PREFIXES = {"video_validation_": "validation", "video_test_": "testing"}
_THUMOS_CSV_COLUMNS = ("video", "type", "start", "end")
_LENIENT_FIX = (
    "fix the annotation, or leave strict mode (data.clip_segments: true, lofi data stats without --strict) to clip it"
)
REPAIR_EXAMPLES = 3  # segments named in the warning


# --------------------------------------------------------------------------------------------------------------
# Small checks shared by every layout


def _fail(file: Path, vid: str | None, problem: str, fix: str) -> AnnotationError:
    where = f"{file}: video {vid}" if vid is not None else str(file)
    return AnnotationError(f"{where}: {problem}; {fix}")


def _number(value: Any, file: Path, vid: str, what: str, *, allow_str: bool = False) -> float:
    """A finite float from a JSON/CSV value; strings only where the layout writes numbers as strings."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, str))
        or (isinstance(value, str) and not allow_str)
    ):
        raise _fail(file, vid, f"{what} is {value!r}, not a number", f"write {what} as a number in seconds")
    try:
        number = float(value)
    except ValueError:
        raise _fail(file, vid, f"{what} is {value!r}, not a number", f"write {what} as a number") from None
    if not math.isfinite(number):
        raise _fail(file, vid, f"{what} is {value!r}, not a finite number", f"write {what} as a finite number")
    return number


def _duration(value: Any, file: Path, vid: str, what: str = "duration") -> float:
    duration = _number(value, file, vid, what)
    if duration <= 0:
        raise _fail(file, vid, f"{what} is {duration}, not positive", "write the video's length in seconds")
    return duration


def _field(entry: Mapping[str, Any], key: str, file: Path, vid: str) -> Any:
    if key not in entry:
        raise _fail(file, vid, f"missing field '{key}'", f"add '{key}' to the video's entry")
    return entry[key]


def _subset(name: Any, names: Mapping[str, str], file: Path, vid: str) -> str:
    if not isinstance(name, str) or name not in names:
        allowed = ", ".join(sorted(names))
        raise _fail(file, vid, f"unknown subset {name!r}", f"use one of: {allowed}")
    return names[name]


def _check_segment(
    file: Path, vid: str, start: float, end: float, label: str, duration: float, clip: bool, as_written: bool = False
) -> tuple[Segment, str]:
    """Validate one segment; returns it (clipped when allowed) and what was repaired: '', 'clipped' or 'zero'.
    ``as_written``: the segment exactly as the file writes it, whatever the video's duration (the evaluator's)."""
    span = f"segment [{start:g}, {end:g}] ({label})"
    if start > end:
        raise _fail(file, vid, f"{span} starts after it ends", "swap its start and end")
    if as_written:
        return Segment(start, end, label), ""
    known = math.isfinite(duration)
    tol = FLOAT_TOLERANCE * duration if known else 0.0
    lo = min(max(start, 0.0), duration) if known else max(start, 0.0)
    hi = max(min(end, duration) if known else end, lo)  # a segment entirely past the end collapses onto it
    outside = start < -tol or (known and end > duration + tol)
    if outside and not clip:
        where = f"[0, {duration:g}] s" if known else "[0, inf) s"
        by = max(-start, end - duration if known else 0.0)
        raise _fail(file, vid, f"{span} lies outside the video {where} by {by:.3g} s", _LENIENT_FIX)
    if hi <= lo and not clip:
        raise _fail(file, vid, f"{span} has zero length (start >= end)", f"remove it, or {_LENIENT_FIX}")
    repaired = "clipped" if outside else ("zero" if hi <= lo else "")
    return Segment(lo, hi, label), repaired


class Repairs:
    """What lenient mode repaired: clipped segments (with how far they overshot) and kept zero-length ones."""

    def __init__(self) -> None:
        self.clipped: list[tuple[str, float, float, float]] = []  # (video, start, end, overshoot in seconds)
        self._durations: list[float] = []  # the video duration of each clipped segment
        self.zero = 0

    def add(self, vid: str, how: str, start: float, end: float, duration: float) -> None:
        if how == "clipped":
            over = max(-start, end - duration if math.isfinite(duration) else 0.0)
            self.clipped.append((vid, start, end, over))
            self._durations.append(duration)
        elif how == "zero":
            self.zero += 1

    def summary(self) -> dict[str, Any]:
        """Counts: ``clipped`` (``before_start`` of them started before 0 s, ``past_end`` ended after the video;
        a segment may do both), the largest overshoot on either side and on each, ``zero_length``."""
        worst = max((c[3] for c in self.clipped), default=0.0)
        early = [-s for _, s, _, _ in self.clipped if s < 0]
        late = [e - d for e, d in self._ends() if e > d]
        return {
            "clipped": len(self.clipped),
            "zero_length": self.zero,
            "max_overshoot_s": worst,
            "before_start": len(early),
            "max_before_start_s": max(early, default=0.0),
            "past_end": len(late),
            "max_past_end_s": max(late, default=0.0),
        }

    def _ends(self) -> list[tuple[float, float]]:
        return [(e, d) for e, d in zip((c[2] for c in self.clipped), self._durations) if math.isfinite(d)]

    def warn(self, file: Path | str) -> None:
        if not self.clipped and not self.zero:
            return
        examples = "; ".join(
            f"{vid} [{s:g}, {e:g}] " + (f"starts {-s:.3g} s before 0" if s < 0 else f"ends {o:.3g} s past the end")
            for vid, s, e, o in sorted(self.clipped, key=lambda c: -c[3])[:REPAIR_EXAMPLES]
        )
        log.warning(
            "%s: clipped %d segment(s) to their video's [0, duration] (largest: %s) and kept %d "
            "zero-length segment(s), as the official ActivityNet evaluation does; strict mode "
            "(data.clip_segments: false, lofi data stats --strict) refuses them instead",
            file,
            len(self.clipped),
            examples or "none",
            self.zero,
        )


def _check_id(file: Path, vid: Any) -> str:
    problem = name_problem(vid)
    if problem is not None:
        raise _fail(
            file,
            None,
            f"video id {problem}; ids become file names",
            "use ids without '/', '\\', control characters or a leading dot, at most 200 bytes",
        )
    return vid


def _make_dataset(
    file: Path, videos: dict[str, Video], layout: str, classes: Sequence[str] | None, **meta: Any
) -> TALDataset:
    if classes is None:
        classes = sorted({s.label for v in videos.values() for s in v.segments})
    return TALDataset(
        name=file.stem, videos=videos, classes=tuple(classes), source=str(file), meta={"layout": layout, **meta}
    )


# --------------------------------------------------------------------------------------------------------------
# JSON loading: malformed files and duplicate keys are reported with their line


def _load_json(file: Path) -> Any:
    """Parse a JSON file; duplicate keys (e.g. a video id listed twice) are errors, not silent overwrites."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(file, None, "file not found", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(file, None, f"cannot read the file ({exc})", "check the path and that it is UTF-8 JSON") from None
    try:
        data, duplicate = loads_json_strict(text)
    except json.JSONDecodeError as exc:
        raise _fail(
            file,
            None,
            f"line {exc.lineno} column {exc.colno}: malformed JSON ({exc.msg})",
            "fix the syntax there (the file may be truncated)",
        ) from None
    if duplicate is not None:
        _raise_duplicate(file, text, data, duplicate)
    return data


def _raise_duplicate(file: Path, text: str, data: Any, key: str) -> None:
    matches = list(re.finditer(re.escape(json.dumps(key)) + r"\s*:", text))
    line = text.count("\n", 0, matches[1].start()) + 1 if len(matches) > 1 else 0
    database = _database_of(data)
    if isinstance(database, dict) and key in database:
        raise _fail(file, key, f"listed twice (second entry at line {line})", "keep one entry per video")
    raise _fail(file, None, f"line {line}: key {key!r} appears twice in the same JSON object", "keep one of them")


def _database_of(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("database"), dict):
        return data["database"]
    return data


def _require_database(file: Path, data: Any, layout: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise _fail(
            file,
            None,
            f"no top-level 'database' object, so not the {layout} layout",
            "pass the right --layout (see lofi data stats --help)",
        )
    return data["database"]


def _entry(file: Path, vid: Any, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise _fail(file, vid, f"entry is {type(entry).__name__}, not an object", "write the video as a JSON object")
    return entry


# --------------------------------------------------------------------------------------------------------------
# Official ActivityNet layout (and THUMOS14 JSON, which shares it)


def _pair(file: Path, vid: str, raw: Any, what: str, allow_str: bool) -> tuple[float, float]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        raise _fail(file, vid, f"{what} is {raw!r}, not [start, end]", f"write {what} as [start, end] in seconds")
    return (
        _number(raw[0], file, vid, f"{what} start", allow_str=allow_str),
        _number(raw[1], file, vid, f"{what} end", allow_str=allow_str),
    )


def _database_video(
    file: Path,
    vid: str,
    entry: dict[str, Any],
    *,
    subsets: Mapping[str, str],
    strings: bool,
    need_duration: bool,
    ambiguous_label: str | None,
    clip: bool,
    repaired: Repairs,
    as_written: bool = False,
) -> Video:
    subset = _subset(_field(entry, "subset", file, vid), subsets, file, vid)
    if need_duration:
        raw = _field(entry, "duration", file, vid)
        duration = math.nan if raw is None else _duration(raw, file, vid)  # null: written for unknown durations
    else:
        duration = math.nan if entry.get("duration") is None else _duration(entry["duration"], file, vid)
    annotations = _field(entry, "annotations", file, vid)
    if not isinstance(annotations, list):
        raise _fail(file, vid, "'annotations' is not a list", "write 'annotations' as a list (empty for testing)")
    segments, ambiguous = [], []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise _fail(file, vid, f"annotation {i} is not an object", 'write {"segment": [s, e], "label": ...}')
        label = _field(ann, "label", file, vid)
        if not isinstance(label, str) or not label:
            raise _fail(file, vid, f"annotation {i} has label {label!r}", "give every annotation a non-empty label")
        start, end = _pair(file, vid, _field(ann, "segment", file, vid), f"annotation {i} segment", strings)
        segment, how = _check_segment(file, vid, start, end, label, duration, clip, as_written)
        repaired.add(vid, how, start, end, duration)
        (ambiguous if label == ambiguous_label else segments).append(segment)
    for i, raw in enumerate(entry.get("ambiguous") or []):
        start, end = _pair(file, vid, raw, f"ambiguous span {i}", strings)
        segment, how = _check_segment(file, vid, start, end, AMBIGUOUS_LABEL, duration, clip, as_written)
        repaired.add(vid, how, start, end, duration)
        ambiguous.append(segment)
    fps = entry.get("fps")
    video = entry.get("video")
    if video is not None and not isinstance(video, str):
        raise _fail(file, vid, f"'video' is {video!r}, not a path", "write the video path relative to the JSON file")
    return Video(
        id=vid,
        subset=subset,
        duration=duration,
        segments=tuple(segments),
        fps=None if fps is None else _duration(fps, file, vid, "fps"),
        ambiguous=tuple(ambiguous),
        path=None if video is None else file.parent / video,
    )


def _read_database(
    file: Path,
    data: Any,
    *,
    layout: str,
    subsets: Mapping[str, str],
    strings: bool,
    need_duration: bool,
    ambiguous_label: str | None,
    clip: bool,
    as_written: bool = False,
) -> TALDataset:
    database = _require_database(file, data, layout)
    repaired = Repairs()
    videos = {
        vid: _database_video(
            file,
            _check_id(file, vid),
            _entry(file, vid, entry),
            subsets=subsets,
            strings=strings,
            need_duration=need_duration,
            ambiguous_label=ambiguous_label,
            clip=clip,
            repaired=repaired,
            as_written=as_written,
        )
        for vid, entry in database.items()
    }
    repaired.warn(file)
    version = data.get("version")
    meta = {"repaired": repaired.summary(), **({"version": version} if version else {})}
    return _make_dataset(file, videos, layout, None, **meta)


def read_activitynet_json(path: PathLike, *, clip_segments: bool = True, as_written: bool = False) -> TALDataset:
    """Read the official ActivityNet-1.3 (or HACS-v1.1) JSON layout.

    ``as_written=True`` keeps every segment exactly as the file writes it (neither clipped to nor refused past its
    video's duration; zero-length kept), as the official evaluator reads the ground truth: see
    :func:`read_ground_truth`. Every other check (ids, subsets, labels, numbers, start <= end) still applies."""
    file = Path(path)
    return _read_activitynet(file, _load_json(file), clip=clip_segments, as_written=as_written)


def _read_activitynet(file: Path, data: Any, *, clip: bool, as_written: bool = False) -> TALDataset:
    return _read_database(
        file,
        data,
        layout="activitynet",
        subsets=_ACTIVITYNET_SUBSETS,
        strings=False,
        need_duration=True,
        ambiguous_label=None,
        clip=clip,
        as_written=as_written,
    )


def read_thumos14_json(path: PathLike, *, clip_segments: bool = True) -> TALDataset:
    """Read ``thumos_gt.json``: official layout, no durations (NaN), segments as strings, subsets train/test."""
    file = Path(path)
    return _read_database(
        file,
        _load_json(file),
        layout="thumos14-json",
        subsets=_THUMOS_JSON_SUBSETS,
        strings=True,
        need_duration=False,
        ambiguous_label=AMBIGUOUS_LABEL,
        clip=clip_segments,
    )


# --------------------------------------------------------------------------------------------------------------
# BSN / G-TAD / BMN layout


def _read_csv_rows(file: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise _fail(
                    file,
                    None,
                    f"missing column(s) {', '.join(missing)} (has {reader.fieldnames})",
                    f"the file needs the columns {', '.join(required)}",
                )
            return list(reader)
    except FileNotFoundError:
        raise _fail(file, None, "file not found", "check the path") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _fail(file, None, f"cannot read the CSV ({exc})", "check the path and format") from None


def _bsn_subsets(file: Path) -> dict[str, str]:
    """``video_info_new.csv``: id (with or without ``v_``) -> subset."""
    subsets: dict[str, str] = {}
    for row in _read_csv_rows(file, ("video", "subset")):
        vid = _strip_v(row["video"])
        if vid in subsets:
            raise _fail(file, vid, "listed twice", "keep one row per video")
        subsets[vid] = _subset(row["subset"], _ACTIVITYNET_SUBSETS, file, vid)
    return subsets


def _strip_v(key: str) -> str:
    return key[2:] if key.startswith("v_") else key


def read_bsn_annotations(
    path: PathLike,
    video_info: PathLike | None = None,
    *,
    action_names: PathLike | None = None,
    clip_segments: bool = True,
) -> TALDataset:
    """Read ``anet_anno_action.json`` with the subsets from ``video_info`` (default: ``video_info_new.csv`` next to
    it) and the class list from ``action_names`` (default: ``action_name.csv`` next to it, if present)."""
    file = Path(path)
    info = Path(video_info) if video_info is not None else file.parent / "video_info_new.csv"
    if not info.exists():
        raise _fail(
            info,
            None,
            "file not found (the BSN layout keeps the subsets there)",
            "pass --video-info / video_info= with the path of video_info_new.csv",
        )
    subsets = _bsn_subsets(info)
    names_file = Path(action_names) if action_names is not None else file.parent / "action_name.csv"
    classes = None
    if action_names is not None or names_file.exists():
        classes = [row["action"] for row in _read_csv_rows(names_file, ("action",))]
    data = _load_json(file)
    if not isinstance(data, dict):
        raise _fail(file, None, "top level is not an object of videos", "pass the right --layout")
    repaired = Repairs()
    videos: dict[str, Video] = {}
    for key, entry in data.items():
        vid = _check_id(file, _strip_v(key))
        if vid in videos:
            raise _fail(file, vid, f"listed twice (as {key!r} and with/without 'v_')", "keep one entry per video")
        videos[vid] = _bsn_video(file, vid, _entry(file, vid, entry), subsets, info, clip_segments, repaired)
    repaired.warn(file)
    if classes is not None:
        _check_labels(file, videos, classes, names_file)
    return _make_dataset(file, videos, "bsn", classes, video_info=str(info), repaired=repaired.summary())


def _bsn_video(
    file: Path,
    vid: str,
    entry: dict[str, Any],
    subsets: Mapping[str, str],
    info: Path,
    clip: bool,
    repaired: Repairs,
) -> Video:
    if vid not in subsets:
        raise _fail(file, vid, f"not in {info.name}, so its subset is unknown", f"add a row for v_{vid} to {info}")
    duration = _duration(_field(entry, "duration_second", file, vid), file, vid, "duration_second")
    frames = entry.get("duration_frame")
    fps = None if frames is None else _duration(frames, file, vid, "duration_frame") / duration
    annotations = _field(entry, "annotations", file, vid)
    if not isinstance(annotations, list):
        raise _fail(file, vid, "'annotations' is not a list", "write 'annotations' as a list")
    segments = []
    for i, ann in enumerate(annotations):
        ann = _entry(file, vid, ann)
        label = _field(ann, "label", file, vid)
        start, end = _pair(file, vid, _field(ann, "segment", file, vid), f"annotation {i} segment", False)
        segment, how = _check_segment(file, vid, start, end, str(label), duration, clip)
        repaired.add(vid, how, start, end, duration)
        segments.append(segment)
    return Video(id=vid, subset=subsets[vid], duration=duration, segments=tuple(segments), fps=fps)


def _check_labels(file: Path, videos: Mapping[str, Video], classes: Sequence[str], names_file: Path) -> None:
    known = set(classes)
    for video in videos.values():
        for segment in video.segments:
            if segment.label not in known:
                raise _fail(
                    file,
                    video.id,
                    f"label {segment.label!r} is not in {names_file.name}",
                    f"add it to {names_file} or fix the label",
                )


# --------------------------------------------------------------------------------------------------------------
# THUMOS14 CSV


def _thumos_subset(file: Path, vid: str) -> str:
    for prefix, subset in _THUMOS_ID_PREFIXES.items():
        if vid.startswith(prefix):
            return subset
    raise _fail(
        file,
        vid,
        "unknown subset (THUMOS14 ids start with video_validation_ or video_test_)",
        "use the official THUMOS14 video ids",
    )


def read_thumos14_csv(paths: PathLike | Sequence[PathLike], *, clip_segments: bool = True) -> TALDataset:
    """Read one or more THUMOS14 annotation CSVs (``val_Annotation.csv``, ``test_Annotation.csv``).

    The subset comes from the video id (``video_validation_*`` -> validation, ``video_test_*`` -> testing);
    durations are unknown (NaN); ``Ambiguous`` rows go to ``Video.ambiguous``.
    """
    files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    spans: dict[str, tuple[list[Segment], list[Segment]]] = {}
    owner: dict[str, Path] = {}
    repaired = Repairs()
    for file in files:
        for line, row in enumerate(_read_csv_rows(file, _THUMOS_CSV_COLUMNS), start=2):
            vid = (row["video"] or "").strip()
            if not vid:
                raise _fail(file, None, f"line {line}: empty video id", "fill in the 'video' column")
            _check_id(file, vid)
            if owner.setdefault(vid, file) != file:
                raise _fail(file, vid, f"also listed in {owner[vid]}", "keep each video in one annotation file")
            label = (row["type"] or "").strip()
            if not label:
                raise _fail(file, vid, f"line {line}: empty action type", "fill in the 'type' column")
            start = _number(row["start"], file, vid, f"line {line} start", allow_str=True)
            end = _number(row["end"], file, vid, f"line {line} end", allow_str=True)
            segment, how = _check_segment(file, vid, start, end, label, math.nan, clip_segments)
            repaired.add(vid, how, start, end, math.nan)
            segments, ambiguous = spans.setdefault(vid, ([], []))
            (ambiguous if label == AMBIGUOUS_LABEL else segments).append(segment)
    repaired.warn(", ".join(str(f) for f in files))
    videos = {
        vid: Video(
            id=vid, subset=_thumos_subset(owner[vid], vid), duration=math.nan, segments=tuple(seg), ambiguous=tuple(amb)
        )
        for vid, (seg, amb) in spans.items()
    }
    name_file = files[0] if len(files) == 1 else files[0].parent / "thumos14"
    return _make_dataset(
        name_file, videos, "thumos14-csv", None, files=[str(f) for f in files], repaired=repaired.summary()
    )


# --------------------------------------------------------------------------------------------------------------
# Dispatch


def detect_layout(path: PathLike) -> str:
    """The layout of an annotation file, from its suffix and keys (loads JSON files)."""
    file = Path(path)
    if file.suffix.lower() == ".csv":
        return _detect_csv_layout(file)
    return _detect_json_layout(file, _load_json(file))


def _detect_csv_layout(file: Path) -> str:
    columns = _read_csv_header(file)
    if all(c in columns for c in _THUMOS_CSV_COLUMNS):
        return "thumos14-csv"
    raise _fail(
        file,
        None,
        f"unrecognised CSV columns {columns}",
        "annotation CSVs are THUMOS14's (video,type,start,end); for BSN pass the JSON and --video-info",
    )


def _read_csv_header(file: Path) -> list[str]:
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except FileNotFoundError:
        raise _fail(file, None, "file not found", "check the path") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _fail(file, None, f"cannot read the CSV ({exc})", "check the path and format") from None


def _detect_json_layout(file: Path, data: Any, fix: str = f"pass --layout, one of {', '.join(LAYOUTS[1:])}") -> str:
    if isinstance(data, dict) and isinstance(data.get("database"), dict):
        entries = [e for e in data["database"].values() if isinstance(e, dict)]
        if entries and all("duration" not in e for e in entries):
            return "thumos14-json"
        return "activitynet"
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and "duration_second" in first:
            return "bsn"
    raise _fail(
        file,
        None,
        "unrecognised annotation layout (no 'database' object, no BSN 'duration_second')",
        fix,
    )


def read_annotations(
    path: PathLike, layout: str = "auto", clip_segments: bool = True, video_info: PathLike | None = None
) -> TALDataset:
    """Read any supported annotation file into a ``TALDataset``; ``layout="auto"`` detects it from the file.

    ``clip_segments=True`` (the default) loads real files as published, clipping and counting the segments that
    overshoot their video; ``False`` is strict mode (see the module docstring). ``video_info`` is the BSN layout's
    ``video_info_new.csv`` (default: next to the JSON).
    """
    file = Path(path)
    if layout not in LAYOUTS:
        raise _fail(file, None, f"unknown layout {layout!r}", f"use one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(file)
    if layout == "thumos14-csv":
        return read_thumos14_csv(file, clip_segments=clip_segments)
    if layout == "bsn":
        return read_bsn_annotations(file, video_info, clip_segments=clip_segments)
    if layout == "thumos14-json":
        return read_thumos14_json(file, clip_segments=clip_segments)
    return read_activitynet_json(file, clip_segments=clip_segments)


def read_ground_truth(path: PathLike) -> TALDataset:
    """The ground truth of an evaluation (``harness.evaluation.detection.load_ground_truth``'s one reader).

    The official ActivityNet/HACS layout is read with its segments as written (``as_written``): the official
    evaluator uses them raw, and clipping the 215 ActivityNet-1.3 segments that overshoot their video would change
    tIoUs. Any other layout (THUMOS14 CSV/JSON, BSN) is read as ``read_annotations`` reads it (lenient mode); THUMOS
    'Ambiguous' spans end up in ``Video.ambiguous``, which the evaluation ignores.
    """
    file = Path(path)
    if file.suffix.lower() == ".csv":
        return read_annotations(file)
    data = _load_json(file)
    layout = _detect_json_layout(
        file,
        data,
        fix='pass the official ActivityNet layout {"database": {video_id: {"subset", "duration", "annotations"}}} '
        "(or a THUMOS14 CSV/JSON or BSN anet_anno_action.json)",
    )
    if layout == "activitynet":
        return _read_activitynet(file, data, clip=True, as_written=True)
    return read_annotations(file, layout=layout)


# --------------------------------------------------------------------------------------------------------------
# Writing and the bundled ActivityNet structure


def _video_entry(video: Video, folder: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "subset": video.subset,
        "duration": video.duration if math.isfinite(video.duration) else None,
        "annotations": [{"segment": [s.start, s.end], "label": s.label} for s in video.segments],
    }
    if video.fps is not None:
        entry["fps"] = video.fps
    if video.path is not None:
        entry["video"] = Path(os.path.relpath(video.path, folder)).as_posix()
    if video.ambiguous:
        entry["ambiguous"] = [[s.start, s.end] for s in video.ambiguous]
    return entry


def write_activitynet_json(dataset: TALDataset, path: PathLike, *, taxonomy: Sequence[Any] | None = None) -> Path:
    """Write the official ActivityNet layout atomically; unknown durations are written as ``null``."""
    target = Path(path)
    folder = target.parent.resolve()
    version = dataset.meta.get("version") or ACTIVITYNET_VERSION
    out: dict[str, Any] = {"version": version}
    if taxonomy is not None:
        out["taxonomy"] = list(taxonomy)
    out["database"] = {vid: _video_entry(v, folder) for vid, v in dataset.videos.items()}
    return write_json_atomic(target, out)


def load_anet_structure() -> list[np.ndarray]:
    """The bundled temporal structure of ActivityNet-1.3 training videos (``scripts/make_anet_structure.py``):
    one (K, 2) float64 array per video of [start, end] fractions of its duration."""
    text = resources.files("harness.data").joinpath(STRUCTURE_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    return [np.asarray(video, dtype=np.float64).reshape(-1, 2) for video in data["videos"]]
