"""Soft-NMS (G-TAD Gaussian, BMN width-gated), top-k and class fusion on worked examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.postprocess import fuse_with_classes, predictions_file, soft_nms_bmn, soft_nms_gaussian, top_k

# A [0,10] 0.9; B [0,8] 0.8 (IoU(A,B) = 8/10 = 0.8); C [20,30] 0.7 (IoU 0 with both).
PROPS = np.array([[0.0, 10.0, 0.9], [0.0, 8.0, 0.8], [20.0, 30.0, 0.7]])


def test_gaussian_soft_nms_worked_example() -> None:
    # pick A; B -> 0.8·exp(-0.8²/0.8) = 0.8·e^-0.8 = 0.3595; C unchanged (IoU 0) -> pick C (0.7), then B.
    out = soft_nms_gaussian(PROPS, sigma=0.8, top_k=100)
    expected = np.array([[0, 10, 0.9], [20, 30, 0.7], [0, 8, 0.8 * math.exp(-0.8)]])
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(soft_nms_gaussian(PROPS, sigma=0.8, top_k=2), expected[:2], atol=1e-12)
    assert PROPS[1, 2] == 0.8  # input untouched


def test_bmn_soft_nms_gate_grows_with_width() -> None:
    # duration 100: A's width 0.1 -> gate 0.5 + 0.4·0.1 = 0.54 < IoU 0.8 -> B decays to 0.8·e^(-0.64/0.4)
    # = 0.8·e^-1.6 = 0.1615, below C.
    out = soft_nms_bmn(PROPS, alpha=0.4, low=0.5, high=0.9, top_k=100, duration=100.0)
    np.testing.assert_allclose(out, [[0, 10, 0.9], [20, 30, 0.7], [0, 8, 0.8 * math.exp(-1.6)]], atol=1e-12)
    # duration 10: A spans the whole video -> gate 0.9 > 0.8 -> no decay; order A, B, C with original scores.
    out = soft_nms_bmn(PROPS, alpha=0.4, low=0.5, high=0.9, top_k=100, duration=10.0)
    np.testing.assert_allclose(out, PROPS, atol=1e-12)
    # fractions of the video (BMN's own coordinates) are the default
    np.testing.assert_allclose(soft_nms_bmn(PROPS / [100, 100, 1], top_k=1), [[0, 0.1, 0.9]], atol=1e-12)


def test_soft_nms_edge_cases() -> None:
    assert soft_nms_gaussian(np.zeros((0, 3))).shape == (0, 3)
    # equal scores: input order decides; identical segments decay each other fully to exp(-1/sigma)
    out = soft_nms_gaussian(np.array([[0, 1, 0.5], [0, 1, 0.5]]), sigma=0.5)
    np.testing.assert_allclose(out[:, 2], [0.5, 0.5 * math.exp(-2.0)], atol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        soft_nms_gaussian(np.zeros((4, 2)))


def test_top_k_and_fusion() -> None:
    np.testing.assert_array_equal(top_k(PROPS[::-1], 2), PROPS[:2])
    props = np.array([[0.0, 10.0, 0.5], [5.0, 6.0, 1.0]])
    # top-2 classes: b (0.6), c (0.3). Fused: b·p1 = 0.3, b·p2 = 0.6, c·p1 = 0.15, c·p2 = 0.3.
    entries = fuse_with_classes(props, [0.1, 0.6, 0.3], ["a", "b", "c"], top_k_classes=2)
    got = [(e["label"], e["score"], e["segment"]) for e in entries]
    assert [g[0] for g in got] == ["b", "b", "c", "c"]
    assert [g[1] for g in got] == pytest.approx([0.6, 0.3, 0.3, 0.15])
    assert [g[2] for g in got] == [[5.0, 6.0], [0.0, 10.0], [5.0, 6.0], [0.0, 10.0]]
    assert all(type(e["score"]) is float for e in entries)  # plain floats, not numpy scalars (np.float64 is a float)
    f = predictions_file({"vid": entries})
    assert f["version"] == "VERSION 1.3" and f["external_data"] == {} and f["results"]["vid"][0]["label"] == "b"
    assert json.loads(json.dumps(f)) == f  # the official file round-trips through JSON unchanged
