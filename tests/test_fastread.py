"""The fast predictions reader (``harness.evaluation.fastread``) against the strict one it stands in for.

Differential: every file is read by ``load_predictions`` as shipped and with the fast reader switched off; the
arrays (bit for bit) or the error message must be the same. Well-formed files must take the fast path; a key
written twice anywhere, an escape, a non-finite literal, an extra key must fall back to the strict reader.
"""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.errors import PredictionError
from harness.evaluation import detection, load_ground_truth, load_predictions, predictions
from harness.evaluation.fastread import read_flat

CLASSES = ("A", "B:c", "Long jump")


@pytest.fixture
def gt(tmp_path: Path) -> detection.DetectionGroundTruth:
    db = {
        v: {"subset": "validation", "duration": 100.0, "annotations": [{"segment": [0, 10], "label": c}]}
        for v, c in (("v1", "A"), ("v:2", "B:c"), ("v3", "Long jump"))
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": db}))
    return load_ground_truth(path)


def outcome(path: Path, gt: detection.DetectionGroundTruth, require_label: bool) -> Any:
    try:
        p = load_predictions(path, gt, require_label=require_label)
    except PredictionError as exc:
        return str(exc)
    return [(a.dtype.str, a.shape, a.tobytes()) for a in (p.video, p.label, p.score, p.segments)], p.unknown_videos


def both(
    text: str, tmp_path: Path, gt: detection.DetectionGroundTruth, monkeypatch: pytest.MonkeyPatch, labels: bool = True
) -> tuple[Any, Any, bool]:
    """(outcome as shipped, outcome of the strict reader alone, whether the fast reader vouched for the file)."""
    path = tmp_path / "pred.json"
    path.write_text(text, encoding="utf-8")
    fast = outcome(path, gt, labels)
    took_fast = read_flat(path.read_bytes(), gt.class_index if labels else None) is not None
    with monkeypatch.context() as m:
        m.setattr(predictions, "read_flat", lambda data, class_index: None)
        strict = outcome(path, gt, labels)
    return fast, strict, took_fast


def tricky_numbers(rng: np.random.Generator, n: int) -> list[str]:
    """Number literals whose rounding to a double is easy to get wrong: random bit patterns written with 17 and
    with 25 significant digits, halfway cases, subnormals, integers past 2**53 and 2**64, -0, exponents."""
    out: list[str] = []
    for bits in rng.integers(0, 2**63 - 1, size=n, dtype=np.int64):
        x = struct.unpack("<d", struct.pack("<q", int(bits)))[0]
        if np.isfinite(x):
            out += [repr(x), f"{x:.25e}", f"{-x:.16e}"]
    out += ["5e-324", "2.4703282292062328e-324", "2.2250738585072011e-308", "9007199254740993", "1e23"]
    out += [str(2**64 + 1), str(-(2**70) - 3), "-0", "-0.0", "0.1", "1E+2", "123456789012345678901234567890"]
    out += ["8.98846567431158e307", "1.7976931348623157e308", "0.30000000000000004", "1e-400"]
    return out


def test_well_formed_files_take_the_fast_path_with_identical_arrays(
    tmp_path: Path, gt: detection.DetectionGroundTruth, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    nums = tricky_numbers(rng, 300)
    entries = []
    for i, num in enumerate(nums):
        label = CLASSES[i % 3]
        entries.append(f'{{"segment": [{nums[i - 1]}, {num}], "score": {num}, "label": {json.dumps(label)}}}')
    # reversed or non-finite segments are the array checks' business, after the reader: same error both ways
    videos = {"v1": entries[:200], "v:2": entries[200:400], "v3": [], "elsewhere": entries[400:]}
    body = ",\n ".join(f"{json.dumps(v)}: [{', '.join(e)}]" for v, e in videos.items())
    text = '{"version": "1.3", "external_data": {"used": true, "details": {"a:b": [1, {"c": null}]}},\n'
    text += f'"results": {{{body}}}, "note:x": "a:b"}}'
    fast, strict, took_fast = both(text, tmp_path, gt, monkeypatch)
    assert took_fast and fast == strict
    # ordered entries so that no segment is reversed: the arrays themselves must be equal
    ordered = [
        f'{{"label": "{CLASSES[i % 3]}", "score": {a}, "segment": [{a}, {b}]}}'
        for i, (a, b) in enumerate(itertools.pairwise(nums))
        if np.isfinite(float(a)) and np.isfinite(float(b)) and float(a) <= float(b)
    ]
    ok = json.dumps({"version": "1.3"})[:-1] + ', "results": {"v1": [' + ", ".join(ordered) + "]}}"
    fast, strict, took_fast = both(ok, tmp_path, gt, monkeypatch)
    assert took_fast and not isinstance(fast, str) and fast == strict
    # proposals: labels optional and unchecked
    no_label = (
        '{"results": {"v1": [{"score": 0.5, "segment": [0, 1]}, {"score": 1, "segment": [2, 3], "label": "x:y"}]}}'
    )
    fast, strict, took_fast = both(no_label, tmp_path, gt, monkeypatch, labels=False)
    assert took_fast and not isinstance(fast, str) and fast == strict


DET = '{"label": "A", "score": 0.5, "segment": [0, 10]}'


@pytest.mark.parametrize(
    "text",
    [
        '{"results": {"v1": [' + DET + '], "v1": []}}',  # a video listed twice
        '{"results": {"v1": [{"label": "A", "score": 0.5, "score": 0.7, "segment": [0, 10]}]}}',
        '{"results": {"v1": [{"label": "A", "label": "B:c", "score": 0.5, "segment": [0, 10]}]}}',
        '{"results": {"v1": [{"label": "A", "score": 0.5, "segment": [0, 10], "segment": [1, 2]}]}}',
        '{"results": {"v1": []}, "results": {"v1": [' + DET + "]}}",  # the whole results twice
        '{"results": 1, "results": {"v1": [' + DET + "]}}",
        '{"version": "a:b", "version": "c", "results": {"v1": [' + DET + "]}}",
        '{"external_data": {"x": 1, "x": {"y:z": "w:"}}, "results": {"v1": [' + DET + "]}}",
        '{"results": {"v:2": [{"label": "B:c", "score": 0.5, "segment": [0, 10]}], "v:2": [' + DET + "]}}",
    ],
)
def test_a_key_written_twice_is_refused_as_before(
    text: str, tmp_path: Path, gt: detection.DetectionGroundTruth, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, strict, took_fast = both(text, tmp_path, gt, monkeypatch)
    assert not took_fast and fast == strict and "appears twice" in fast


@pytest.mark.parametrize(
    "entry",
    [
        '{"label": "A", "score": NaN, "segment": [0, 10]}',
        '{"label": "A", "score": Infinity, "segment": [0, 10]}',
        '{"label": "A", "score": 1e400, "segment": [0, 10]}',
        '{"label": "A", "score": true, "segment": [0, 10]}',
        '{"label": "A", "score": "0.5", "segment": [0, 10]}',
        '{"label": "A", "score": 0.5, "segment": [0, 10], "extra": 1}',
        '{"label": null, "score": 0.5, "segment": [0, 10]}',
        '{"label": "Nope", "score": 0.5, "segment": [0, 10]}',
        '{"score": 0.5, "segment": [0, 10]}',
        '{"label": "A", "score": 0.5, "segment": [0, 10, 20]}',
        '{"label": "A", "score": 0.5, "segment": "06"}',
        '{"label": "\\u0041", "score": 0.5, "segment": [0, 10]}',  # an escape: the strict reader decides
        '{"label": "A", "score": 0.5, "segment": [10, 0]}',
        "[1, 2]",
        "null",
    ],
)
@pytest.mark.parametrize("labels", [True, False])
def test_anything_else_gets_the_strict_readers_answer(
    entry: str, labels: bool, tmp_path: Path, gt: detection.DetectionGroundTruth, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = '{"results": {"v1": [' + DET + ", " + entry + "]}}"
    fast, strict, _ = both(text, tmp_path, gt, monkeypatch, labels=labels)
    assert fast == strict


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"results": {}}',
        '{"results": []}',
        '{"results": {"v1": {"label": "A"}}}',
        '{"results": {"v9": [' + DET + "]}}",
        '{"version": "1.3"}',
        '\ufeff{"results": {"v1": [' + DET + "]}}",
        '{"results": {"v1": [' + DET + "]}} trailing",
    ],
)
def test_malformed_files_get_the_strict_readers_answer(
    text: str, tmp_path: Path, gt: detection.DetectionGroundTruth, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, strict, took_fast = both(text, tmp_path, gt, monkeypatch)
    assert fast == strict and isinstance(fast, str)


def test_invalid_utf8_gets_the_strict_readers_answer(
    tmp_path: Path, gt: detection.DetectionGroundTruth, monkeypatch: pytest.MonkeyPatch
) -> None:
    for raw in (b'{"results": {"v1\xff": []}}', b'{"external_data": "\xed\xa0\x80", "results": {"v1": []}}'):
        path = tmp_path / "pred.json"
        path.write_bytes(raw)
        assert read_flat(raw, gt.class_index) is None
        fast = outcome(path, gt, True)
        with monkeypatch.context() as m:
            m.setattr(predictions, "read_flat", lambda data, class_index: None)
            assert fast == outcome(path, gt, True) and "not valid JSON" in fast
