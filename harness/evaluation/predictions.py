"""Reading predictions (the official layout, ``{"version", "results": {video_id: [{"label", "score", "segment"}]},
"external_data"}``) into flat arrays against a ground truth (``harness.evaluation.detection``), with one-line errors
that name the file, the video and the problem. The fast path is ``harness.evaluation.fastread`` (msgspec); this
module's strict reader decides whenever the fast one cannot.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from harness.errors import PredictionError
from harness.evaluation.fastread import FlatPredictions, read_flat
from harness.io import loads_json_strict

if TYPE_CHECKING:
    from harness.evaluation.detection import DetectionGroundTruth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionPredictions:
    """Predictions as flat arrays, in file order. ``video`` is -1 for a video not in the ground truth's subset;
    ``label`` is -1 when labels were not read (proposals)."""

    source: str
    video: np.ndarray  # (P,) int64
    label: np.ndarray  # (P,) int64
    score: np.ndarray  # (P,) float64
    segments: np.ndarray  # (P, 2) float64
    unknown_videos: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.score.shape[0])


def _shown(vid: Any) -> str:
    """A video id as written, or its repr when it holds characters that would break the one-line message."""
    return vid if isinstance(vid, str) and vid.isprintable() else repr(vid)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _diagnose_entry(entry: Any, class_index: Mapping[str, int] | None, subset: str) -> str:
    """Say what is wrong with one prediction entry (called only once something failed)."""
    if not isinstance(entry, dict):
        return f'entry {entry!r} is not an object; expected {{"label", "score", "segment": [start, end]}}'
    keys = ("segment", "score") + (("label",) if class_index is not None else ())
    for key in keys:
        if key not in entry:
            return f"entry {entry!r} has no {key!r} key; every entry needs label, score and segment"
    seg = entry["segment"]
    if not isinstance(seg, (list, tuple)) or len(seg) != 2 or not all(_is_number(x) for x in seg):
        return f"segment {seg!r} is not a [start, end] pair of numbers; write it as [start, end] in seconds"
    if not _is_number(entry["score"]):
        return f"score {entry['score']!r} is not a number; write the score as a number"
    if class_index is not None and entry["label"] not in class_index:
        return (
            f"label {entry['label']!r} is not a class of the ground truth's {subset!r} subset "
            f"({len(class_index)} classes); use the ground-truth class names"
        )
    return f"entry {entry!r} is malformed"


def _read_predictions_bytes(source: str) -> bytes:
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise PredictionError(f"{source}: file not found; pass the predictions JSON") from None
    except IsADirectoryError:
        raise PredictionError(f"{source}: is a folder; pass the predictions JSON file inside it") from None


def _read_predictions_json(source: str, raw: bytes) -> Any:
    """Parse a predictions file; a key written twice (a video's list, an entry's score) is an error, as in the
    annotation reader: JSON would keep the last one silently."""
    try:
        data, duplicate = loads_json_strict(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictionError(f"{source}: not valid JSON ({exc}); write the official layout") from None
    if duplicate is not None:
        raise PredictionError(
            f"{source}: key {duplicate!r} appears twice in one JSON object (JSON would keep only the last); "
            "write each video once under results, with all its entries in one list"
        )
    return data


def _flatten(
    data: Any,
    source: str,
    class_index: Mapping[str, int] | None,
    subset: str,
    *,
    from_file: bool,
    absent: dict[str, int] | None = None,
) -> FlatPredictions:
    """The entries of parsed predictions as flat arrays, checking each entry's keys and types. ``absent``: see
    ``_label`` (labels of classes without instances counted there and given -1)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("results"), Mapping):
        raise PredictionError(
            f'{source}: no "results" object; expected {{"version", "results": {{video_id: [entries]}}, '
            '"external_data"}'
        )
    if not data["results"]:
        message = f'{source}: "results" is empty, so there is nothing to evaluate (mAP is 0 by definition)'
        if from_file:
            raise PredictionError(f"{message}; pass the predictions of a finished run")
        log.warning(message)
    starts: list[float] = []
    ends: list[float] = []
    scores: list[float] = []
    labels: list[int] = []
    counts: list[int] = []
    names: list[str] = []
    for vid, entries in data["results"].items():
        if not isinstance(entries, list):
            raise PredictionError(
                f"{source}: video {_shown(vid)}: results must be a list of entries, got {type(entries).__name__}"
            )
        names.append(vid)
        counts.append(len(entries))
        entry: Any = None
        try:
            for entry in entries:
                seg = entry["segment"]
                if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                    raise TypeError  # "06" would unpack into two characters
                s, e, score = seg[0], seg[1], entry["score"]
                if not (_is_number(s) and _is_number(e) and _is_number(score)):
                    raise TypeError  # strings and booleans are not numbers here
                starts.append(float(s))
                ends.append(float(e))
                scores.append(float(score))
                if class_index is not None:
                    labels.append(_label(class_index, entry["label"], absent))
        except (KeyError, TypeError, ValueError, IndexError):
            problem = _diagnose_entry(entry, class_index, subset)
            raise PredictionError(f"{source}: video {_shown(vid)}: {problem}") from None
    return FlatPredictions(
        names=names,
        counts=np.asarray(counts, dtype=np.int64),
        score=np.asarray(scores, dtype=np.float64),
        segments=np.column_stack([np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)]),
        label=np.asarray(labels, dtype=np.int64) if class_index is not None else None,
    )


def load_predictions(
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any],
    gt: DetectionGroundTruth,
    *,
    require_label: bool = True,
    absent_labels: Literal["error", "drop"] = "error",
) -> DetectionPredictions:
    """Read an official-layout predictions file (or the already-parsed dict).

    With ``require_label=False`` (proposals) labels are neither required nor checked.
    ``absent_labels="drop"`` is for the pipeline's own predictions on a subset (a holdout, a partial download):
    the classifier scores every class of the dataset, so a prediction may carry a class that has no instance in
    this subset. Such a class has no AP and its predictions compete with no other class, so dropping them changes
    no number; they are counted and logged once. A user's file keeps the default, ``"error"``.
    Raises :class:`PredictionError` naming the file, the video and the problem: a malformed file, a key written
    twice, an entry without label/score/segment, a segment that is not a pair of numbers, a non-finite score or
    segment, start > end, an unknown label; and a *file* that cannot be what the user meant — an empty
    ``results``, or one whose videos are all outside the ground truth's subset (mAP would be 0, reported as if
    measured). An in-memory dict (a library caller's) keeps the metric's own answer for those (0) with a WARNING.
    Some videos outside the subset (false positives) or ground-truth videos without predictions (misses) are
    legitimate and get one WARNING with their counts.
    """
    class_index = gt.class_index if require_label else None
    absent: dict[str, int] | None = {} if absent_labels == "drop" else None  # label -> predictions dropped
    from_file = not isinstance(path_or_dict, Mapping)
    if isinstance(path_or_dict, Mapping):
        source = "<predictions>"
        flat = _flatten(path_or_dict, source, class_index, gt.subset, from_file=False, absent=absent)
    else:
        source = str(path_or_dict)
        raw = _read_predictions_bytes(source)
        flat = read_flat(raw, class_index)  # None (an unknown label among others): the strict reader decides
        if flat is None:
            data = _read_predictions_json(source, raw)
            flat = _flatten(data, source, class_index, gt.subset, from_file=True, absent=absent)
        del raw
    names, count_arr, score, segments = flat.names, flat.counts, flat.score, flat.segments
    per_video = np.array([gt.video_index.get(v, -1) for v in names], dtype=np.int64)
    video = np.repeat(per_video, count_arr)
    owner = np.repeat(np.arange(len(names)), count_arr)  # index into names, to name the video in errors
    _check_values(source, owner, names, score, segments)
    unknown = check_videos(source, names, per_video, gt, from_file=from_file)
    label = flat.label if flat.label is not None else np.full(score.shape, -1, np.int64)
    if absent:
        keep = label >= 0
        video, label, score, segments = video[keep], label[keep], score[keep], segments[keep]
        log.debug(
            "%s: %d prediction(s) of %d class(es) without instances in the %r ground truth (e.g. %r) dropped: "
            "such a class has no AP",
            source,
            sum(absent.values()),
            len(absent),
            gt.subset,
            sorted(absent)[0],
        )
    return DetectionPredictions(
        source=source, video=video, label=label, score=score, segments=segments, unknown_videos=unknown
    )


def _check_values(
    source: str, owner: np.ndarray, names: Sequence[str], score: np.ndarray, segments: np.ndarray
) -> None:
    """Every score and segment finite, every segment [start, end] with start <= end; else the first bad one's
    video (``names[owner[i]]``) and problem."""
    checks = (
        (~np.isfinite(score), "score {0} is not finite; scores must be real numbers"),
        (~np.isfinite(segments).all(axis=1), "segment {1} is not finite"),
        (segments[:, 0] > segments[:, 1], "segment {1} is reversed (start > end); write [start, end]"),
    )
    for bad, template in checks:
        idx = np.flatnonzero(bad)
        if idx.size:
            i = int(idx[0])
            msg = template.format(score[i], segments[i].tolist())
            raise PredictionError(f"{source}: video {_shown(names[owner[i]])}: {msg}")


def check_videos(
    source: str, names: Sequence[str], per_video: np.ndarray, gt: DetectionGroundTruth, *, from_file: bool
) -> tuple[str, ...]:
    """The predicted videos outside the ground truth's subset (false positives; all of them in a file: an error),
    with one WARNING for those and one for ground-truth videos without a prediction (misses)."""
    unknown = tuple(v for v, k in zip(names, per_video) if k < 0)
    if names and len(unknown) == len(names):
        message = (
            f"{source}: none of its {len(names)} video(s) (e.g. {names[0]!r}) is in the ground truth's "
            f"{gt.subset!r} subset ({len(gt.video_ids)} videos, e.g. {gt.video_ids[0]!r})"
        )
        if from_file:
            raise PredictionError(
                f"{message}; pass the subset the predictions were made for (--subset) or the matching ground truth"
            )
        log.warning("%s; every prediction is a false positive", message)
    elif unknown:
        log.warning(
            "%s: %d of %d video(s) are not in the %r ground truth (e.g. %r); their predictions count as false "
            "positives",
            source,
            len(unknown),
            len(names),
            gt.subset,
            unknown[0],
        )
    missing = len(gt.video_ids) - len(set(per_video[per_video >= 0].tolist()))
    if missing and names:
        log.warning(
            "%s: %d of %d %r ground-truth video(s) have no prediction; their instances count as misses",
            source,
            missing,
            len(gt.video_ids),
            gt.subset,
        )
    return unknown


def _label(class_index: Mapping[str, int], label: Any, absent: dict[str, int] | None) -> int:
    """The class index of ``label``. A label outside ``class_index`` raises KeyError (diagnosed by the caller), or,
    when ``absent`` is a dict, is counted there and gets -1 (dropped)."""
    if absent is None or label in class_index or not isinstance(label, str):
        return class_index[label]
    absent[label] = absent.get(label, 0) + 1
    return -1
