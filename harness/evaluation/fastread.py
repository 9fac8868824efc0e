"""A fast reader for well-formed predictions files, vouched for by the strict reader's own rules.

``harness.io.loads_json_strict`` (Python's ``json`` with a duplicate-key hook) builds a dict per entry: on a
200 MB ActivityNet file (2.6 M entries) that is ~8 s and 1.4 GB before a number is read. This reader decodes
the file with ``msgspec`` video by video into typed entries and keeps only flat arrays, so memory stays near the
file's size. It returns ``None`` whenever it cannot vouch that the strict reader would produce exactly the same
arrays; the caller then runs the strict reader, which also words the error (the fast path never raises one of
its own). ``None`` is returned for:

- any byte the strict reader decodes differently or refuses: msgspec refuses everything Python's ``json`` refuses
  (malformed JSON, invalid UTF-8) and more (``NaN``/``Infinity``, numbers beyond a double), all of which go to the
  strict reader;
- an entry that is not exactly ``{"segment": [start, end], "score": number[, "label": str]}`` (a boolean, a string
  for a number, an extra key, a ``null``), a label that is not a class, a missing label where one is required,
  an empty ``results``, a ``results`` that is not an object of lists;
- a backslash anywhere in the file (an escaped character: the duplicate check below needs none);
- a key written twice in any object.

Duplicate keys. Decoding into a dict or a struct keeps the last of two equal keys, so they are found by counting:
in a JSON text without escapes every ``:`` byte is either the separator of one key-value pair or a character
inside a string, and a decoded string holds exactly the characters written. The reader adds up the pairs it
decoded and the colons inside the strings it kept (top-level keys, video ids, labels; the other top-level values,
such as ``external_data``, are re-read by the strict reader and their bytes counted as written). A pair dropped
as a duplicate leaves at least its separator uncounted, so the sum equals ``text.count(":")`` exactly when no key
was written twice.

Numbers: msgspec and Python both round decimal text to the nearest double (``benchmarks/bench_evaluate_file.py``
and ``tests/test_evaluation.py`` compare the arrays bit for bit); an integer becomes ``float(int)`` in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain

import msgspec
import numpy as np

from harness.io import loads_json_strict


class _Entry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    segment: tuple[float, float]
    score: float
    label: str | msgspec.UnsetType = msgspec.UNSET


_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENTRIES = msgspec.json.Decoder(list[_Entry])


@dataclass(frozen=True)
class FlatPredictions:
    """A predictions file's entries in file order (videos as listed under ``results``, then each list)."""

    names: list[str]  # video ids, in file order
    counts: np.ndarray  # (V,) int64 entries per video
    score: np.ndarray  # (P,) float64
    segments: np.ndarray  # (P, 2) float64
    label: np.ndarray | None  # (P,) int64 class index, or None when labels were not read


def read_flat(data: bytes, class_index: Mapping[str, int] | None) -> FlatPredictions | None:
    """The entries of an official-layout predictions file, or ``None`` if the strict reader must decide."""
    if b"\\" in data:
        return None
    try:
        top = _TOP.decode(data)
        results_raw = top.get("results")
        if results_raw is None:
            return None
        results = _TOP.decode(results_raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not results:
        return None
    colons = len(top) + sum(k.count(":") for k in top)
    for key, raw in top.items():
        if key != "results":
            text = bytes(raw)
            try:
                _, duplicate = loads_json_strict(text.decode("utf-8"))
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                return None
            if duplicate is not None:
                return None
            colons += text.count(b":")
    colons += len(results) + sum(v.count(":") for v in results)

    counts = np.empty(len(results), dtype=np.int64)
    scores: list[np.ndarray] = []
    segments: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    label_colons = 0
    for i, raw in enumerate(results.values()):
        try:
            entries = _ENTRIES.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        counts[i] = len(entries)
        scores.append(np.array([e.score for e in entries], dtype=np.float64))
        pairs = chain.from_iterable([e.segment for e in entries])
        segments.append(np.fromiter(pairs, dtype=np.float64, count=2 * len(entries)).reshape(-1, 2))
        if class_index is not None:
            try:
                labels.append(np.array([class_index[e.label] for e in entries], dtype=np.int64))
            except (KeyError, TypeError):  # an unknown class, or no label (UNSET)
                return None
            colons += 3 * len(entries)
        else:
            named = [e.label for e in entries if e.label is not msgspec.UNSET]
            colons += 2 * len(entries) + len(named)
            label_colons += sum(lab.count(":") for lab in named)  # type: ignore[union-attr]
    label = np.concatenate(labels) if class_index is not None else None
    if label is not None:
        per_class = np.zeros(max(class_index.values(), default=-1) + 1, dtype=np.int64)  # type: ignore[union-attr]
        for name, k in class_index.items():  # type: ignore[union-attr]
            per_class[k] = name.count(":")
        label_colons = int(per_class[label].sum()) if label.size else 0
    if colons + label_colons != data.count(b":"):
        return None  # a key written twice somewhere
    return FlatPredictions(
        names=list(results),
        counts=counts,
        score=np.concatenate(scores),
        segments=np.concatenate(segments),
        label=label,
    )
