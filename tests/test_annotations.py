"""Annotation readers, the writer, the bundled ActivityNet structure and `lofi data stats`.

Expected numbers on the real files are recomputed here with plain json/csv code (and the published counts are
asserted as well); error cases use small made-up files in tmp_path.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cli import main
from harness.data.annotations import (
    detect_layout,
    load_anet_structure,
    read_activitynet_json,
    read_annotations,
    read_bsn_annotations,
    read_thumos14_csv,
    read_thumos14_json,
    write_activitynet_json,
)
from harness.data.model import Segment, TALDataset, Video
from harness.errors import AnnotationError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ANET = SHARED / "activitynet"
THUMOS = SHARED / "thumos14"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


def _anet(videos: dict[str, Any]) -> dict[str, Any]:
    return {"version": "VERSION 1.3", "taxonomy": [], "database": videos}


def _video(
    subset: str = "training", duration: Any = 10.0, segments: list[Any] | None = None, label: str = "Jump"
) -> dict[str, Any]:
    segments = [[1.0, 4.0]] if segments is None else segments
    return {"subset": subset, "duration": duration, "annotations": [{"segment": s, "label": label} for s in segments]}


def _assert_one_line(message: str, *parts: str) -> None:
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ----------------------------------------------------------------------------------------------------------------
# Real files


@pytest.fixture(scope="module")
def anet_raw() -> dict[str, Any]:
    return json.loads(_need(ANET / "activity_net_v1-3_gt.json").read_text())["database"]


@pytest.fixture(scope="module")
def anet_dataset() -> TALDataset:
    return read_annotations(_need(ANET / "activity_net_v1-3_gt.json"), clip_segments=True)


def test_activitynet_official_counts(anet_dataset: TALDataset, anet_raw: dict[str, Any]) -> None:
    assert anet_dataset.meta["layout"] == "activitynet"
    assert anet_dataset.subset_counts() == {"training": 9649, "validation": 4728, "testing": 4851}
    assert anet_dataset.subset_counts() == dict(Counter(v["subset"] for v in anet_raw.values()))
    labels = sorted({a["label"] for v in anet_raw.values() for a in v["annotations"]})
    assert len(anet_dataset.classes) == 200
    assert list(anet_dataset.classes) == labels
    assert anet_dataset.num_instances() == sum(len(v["annotations"]) for v in anet_raw.values())
    assert all(not v.segments for v in anet_dataset.subset("testing"))


def test_activitynet_lenient_mode_clips_to_duration(anet_dataset: TALDataset, anet_raw: dict[str, Any]) -> None:
    for vid, video in anet_dataset.videos.items():
        assert video.duration == anet_raw[vid]["duration"]
        arr = video.segment_array()
        assert np.all(arr >= 0) and np.all(arr <= video.duration) and np.all(arr[:, 0] <= arr[:, 1])
    # cp52LdlmlUk's only segment ends at 129.962107 in a 129.96 s video
    assert anet_raw["cp52LdlmlUk"]["annotations"][0]["segment"][1] > anet_raw["cp52LdlmlUk"]["duration"]
    assert anet_dataset.videos["cp52LdlmlUk"].segments[0].end == 129.96


def test_activitynet_official_strict_mode_names_the_first_bad_video(anet_raw: dict[str, Any]) -> None:
    def bad(v: dict[str, Any]) -> bool:
        d = v["duration"]
        return any(s[1] > d * (1 + 1e-6) or s[0] < 0 or s[0] >= s[1] for s in (a["segment"] for a in v["annotations"]))

    first_bad = next(vid for vid, v in anet_raw.items() if bad(v))
    path = ANET / "activity_net_v1-3_gt.json"
    with pytest.raises(AnnotationError) as err:
        read_activitynet_json(path, clip_segments=False)
    _assert_one_line(str(err.value), str(path), f"video {first_bad}:", "strict mode")


def test_bsn_layout_matches_official(anet_dataset: TALDataset) -> None:
    path = _need(ANET / "anet_anno_action.json")
    bsn = read_annotations(path, clip_segments=True)
    assert bsn.meta["layout"] == "bsn"
    assert bsn.subset_counts() == {"training": 9649, "validation": 4728, "testing": 4851}
    assert set(bsn.videos) == set(anet_dataset.videos)  # "v_" stripped
    with (ANET / "action_name.csv").open() as handle:
        names = [row["action"] for row in csv.DictReader(handle)]
    assert list(bsn.classes) == names and len(names) == 200
    raw = json.loads(path.read_text())
    assert bsn.num_instances() == sum(len(v["annotations"]) for v in raw.values())
    with (ANET / "video_info_new.csv").open() as handle:
        info = {row["video"][2:]: row for row in csv.DictReader(handle)}
    for vid in ("QOlSCBRmfWY", "--1DO2V4K74"):
        assert bsn.videos[vid].subset == info[vid]["subset"]
        assert bsn.videos[vid].fps == pytest.approx(float(info[vid]["rfps"]), rel=1e-6)


def _thumos_csv_rows() -> list[dict[str, str]]:
    rows = []
    for name in ("val_Annotation.csv", "test_Annotation.csv"):
        with _need(THUMOS / name).open() as handle:
            rows += list(csv.DictReader(handle))
    return rows


def test_thumos14_csv_counts() -> None:
    rows = _thumos_csv_rows()
    ds = read_thumos14_csv([THUMOS / "val_Annotation.csv", THUMOS / "test_Annotation.csv"])
    val_ids = {r["video"] for r in rows if r["video"].startswith("video_validation_")}
    test_ids = {r["video"] for r in rows if r["video"].startswith("video_test_")}
    assert (len(val_ids), len(test_ids)) == (200, 213)
    assert ds.subset_counts() == {"validation": 200, "testing": 213}
    classes = sorted({r["type"] for r in rows} - {"Ambiguous"})
    assert len(classes) == 20 and list(ds.classes) == classes and "Ambiguous" not in ds.classes
    assert ds.num_instances() == sum(r["type"] != "Ambiguous" for r in rows)
    assert sum(len(v.ambiguous) for v in ds.videos.values()) == sum(r["type"] == "Ambiguous" for r in rows)
    only_ambiguous = ds.videos["video_test_0001292"]  # its three rows are all Ambiguous
    assert only_ambiguous.segments == () and len(only_ambiguous.ambiguous) == 3
    assert all(math.isnan(v.duration) for v in ds.videos.values())
    single = read_annotations(THUMOS / "val_Annotation.csv")
    assert single.meta["layout"] == "thumos14-csv" and single.subset_counts() == {"validation": 200}


def test_thumos14_json_counts() -> None:
    path = _need(THUMOS / "thumos_gt.json")
    raw = json.loads(path.read_text())["database"]
    ds = read_annotations(path)
    assert ds.meta["layout"] == "thumos14-json"
    assert ds.subset_counts() == {"training": 200, "testing": 210}
    assert dict(Counter(v["subset"] for v in raw.values())) == {"train": 200, "test": 210}
    assert len(ds.classes) == 20
    assert ds.num_instances() == sum(len(v["annotations"]) for v in raw.values())
    first = next(iter(raw))
    assert ds.videos[first].segments[0].start == float(raw[first]["annotations"][0]["segment"][0])


# ----------------------------------------------------------------------------------------------------------------
# Made-up files: reading and every error case


def test_reads_optional_fps_video_and_ambiguous(tmp_path: Path) -> None:
    entry = _video("validation", 20.0, [[2, 5], [6.5, 9]]) | {
        "fps": 25,
        "video": "videos/a.mp4",
        "ambiguous": [[10, 11]],
    }
    path = _write(tmp_path / "gt.json", _anet({"a": entry, "b": _video("testing", 5.0, [])}))
    ds = read_annotations(path)
    a = ds.videos["a"]
    assert a == Video(
        "a",
        "validation",
        20.0,
        (Segment(2.0, 5.0, "Jump"), Segment(6.5, 9.0, "Jump")),
        25.0,
        (Segment(10.0, 11.0, "Ambiguous"),),
        tmp_path / "videos" / "a.mp4",
    )
    assert ds.videos["b"].segments == () and ds.classes == ("Jump",)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"duration": 10.0, "annotations": []}, "missing field 'subset'"),
        ({"subset": "training", "annotations": []}, "missing field 'duration'"),
        ({"subset": "training", "duration": 10.0}, "missing field 'annotations'"),
        ({"subset": "training", "duration": 10.0, "annotations": [{"label": "Jump"}]}, "missing field 'segment'"),
        ({"subset": "training", "duration": 10.0, "annotations": [{"segment": [1, 2]}]}, "missing field 'label'"),
        (_video(duration="ten"), "not a number"),
        (_video(duration=-3), "not positive"),
        (_video(segments=[["1", 2]]), "not a number"),
        (_video(segments=[[1, None]]), "not a number"),
        (_video(segments=[[1]]), "not [start, end]"),
        (_video(segments=[[5, 2]]), "starts after it ends"),
        (_video(segments=[[3, 3]]), "zero length"),
        (_video(segments=[[1, 10.5]]), "outside the video"),
        (_video(segments=[[-0.5, 2]]), "outside the video"),
        (_video(subset="train"), "unknown subset 'train'"),
    ],
)
def test_activitynet_errors_name_file_and_video(tmp_path: Path, entry: dict[str, Any], words: str) -> None:
    path = _write(tmp_path / "gt.json", _anet({"ok1": _video(), "bad_vid": entry}))
    with pytest.raises(AnnotationError) as err:
        read_annotations(path, layout="activitynet", clip_segments=False)  # strict: the repairable ones too
    _assert_one_line(str(err.value), str(path), "video bad_vid:", words, ";")


def test_duplicate_video_id_is_an_error(tmp_path: Path) -> None:
    text = (
        '{"database": {\n"dup": {"subset": "training", "duration": 5, "annotations": []},\n'
        '"other": {"subset": "training", "duration": 5, "annotations": []},\n'
        '"dup": {"subset": "validation", "duration": 5, "annotations": []}\n}}\n'
    )
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "video dup:", "line 4")


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"database": {\n  "a": {"subset": "training",\n    "duration": 5,, "annotations": []}\n}}\n')
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "line 3", "malformed JSON")


def test_missing_file_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="file not found"):
        read_annotations(tmp_path / "nope.json")
    path = _write(tmp_path / "odd.json", {"hello": [1, 2]})
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "--layout")


def test_float_noise_past_the_end_is_clipped_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    duration = 100.0
    path = _write(tmp_path / "gt.json", _anet({"a": _video(duration=duration, segments=[[0, duration + 5e-5]])}))
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.videos["a"].segments[0].end == duration
    assert not caplog.records


def test_clip_segments_clips_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    videos = {
        "a": _video(duration=10.0, segments=[[-0.25, 3.0], [8.0, 10.5], [2.0, 2.0]]),
        "b": _video(duration=4.0, segments=[[1.0, 4.2], [5.0, 6.0]]),  # the second lies wholly past the end
    }
    path = _write(tmp_path / "gt.json", _anet(videos))
    with pytest.raises(AnnotationError, match="video a:"):
        read_annotations(path, clip_segments=False)
    with caplog.at_level(logging.WARNING, logger="harness.data.annotations"):
        ds = read_annotations(path)  # the default: clip, count, report
    np.testing.assert_array_equal(ds.videos["a"].segment_array(), [[0.0, 3.0], [8.0, 10.0], [2.0, 2.0]])
    np.testing.assert_array_equal(ds.videos["b"].segment_array(), [[1.0, 4.0], [4.0, 4.0]])
    assert len(caplog.records) == 1
    # clipped: [-0.25,3], [8,10.5], [1,4.2], [5,6]; zero-length kept: [2,2]
    _assert_one_line(
        caplog.records[0].getMessage(),
        str(path),
        "clipped 4",
        "kept 1 zero-length",
        "a [8, 10.5] ends 0.5 s past the end",
    )
    assert ds.meta["repaired"] == {  # b's [5, 6]: 6 - 4; one starts before 0 ([-0.25, 3]), three end past the end
        "clipped": 4,
        "zero_length": 1,
        "max_overshoot_s": 2.0,
        "before_start": 1,
        "max_before_start_s": 0.25,
        "past_end": 3,
        "max_past_end_s": 2.0,
    }


def test_reversed_segment_is_an_error_even_when_clipping(tmp_path: Path) -> None:
    path = _write(tmp_path / "gt.json", _anet({"rev": _video(segments=[[4.0, 3.0]])}))
    with pytest.raises(AnnotationError) as err:
        read_annotations(path, clip_segments=True)
    _assert_one_line(str(err.value), str(path), "video rev:", "swap")


def _bsn_files(tmp_path: Path, info_rows: list[str], videos: dict[str, Any], names: list[str] | None = None) -> Path:
    (tmp_path / "video_info_new.csv").write_text(
        "video,numFrame,seconds,fps,rfps,subset,featureFrame\n" + "".join(r + "\n" for r in info_rows)
    )
    if names is not None:
        (tmp_path / "action_name.csv").write_text("action\n" + "".join(n + "\n" for n in names))
    return _write(tmp_path / "anet_anno_action.json", videos)


def _bsn_video(segments: list[list[float]], label: str = "Jump") -> dict[str, Any]:
    return {
        "duration_second": 10.0,
        "duration_frame": 300,
        "feature_frame": 288,
        "annotations": [{"segment": s, "label": label} for s in segments],
    }


def test_bsn_small_file(tmp_path: Path) -> None:
    path = _bsn_files(
        tmp_path,
        ["v_aa,300,10,30,30,training,288", "v_bb,300,10,30,30,validation,288"],
        {"v_aa": _bsn_video([[1, 2]]), "v_bb": _bsn_video([[3, 4], [5, 6]], "Run")},
        names=["Run", "Jump", "Swim"],
    )
    ds = read_annotations(path)
    assert ds.subset_counts() == {"training": 1, "validation": 1}
    assert ds.classes == ("Run", "Jump", "Swim")  # the class list file's order, unused classes included
    assert ds.videos["aa"].fps == 30.0 and ds.num_instances() == 3


def test_bsn_errors(tmp_path: Path) -> None:
    path = _bsn_files(
        tmp_path, ["v_aa,300,10,30,30,training,288"], {"v_aa": _bsn_video([[1, 2]]), "v_zz": _bsn_video([[1, 2]])}
    )
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "video zz:", "video_info_new.csv")

    path = _bsn_files(tmp_path, ["v_aa,300,10,30,30,train,288"], {"v_aa": _bsn_video([[1, 2]])})
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(tmp_path / "video_info_new.csv"), "video aa:", "unknown subset")

    path = _bsn_files(
        tmp_path, ["v_aa,300,10,30,30,training,288"], {"v_aa": _bsn_video([[1, 2]], "Fly")}, names=["Run"]
    )
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "video aa:", "'Fly'", "action_name.csv")

    with pytest.raises(AnnotationError, match="--video-info"):
        read_bsn_annotations(path, tmp_path / "missing.csv")


def test_thumos_csv_errors(tmp_path: Path) -> None:
    header = "video,type,type_idx,start,end,startFrame,endFrame\n"
    path = tmp_path / "val_Annotation.csv"
    path.write_text(header + "video_validation_0000001,Billiards,12,1.0,abc,30,60\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "video video_validation_0000001:", "not a number")

    path.write_text(header + "clip_0001,Billiards,12,1.0,2.0,30,60\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "video clip_0001:", "unknown subset")

    path.write_text("video,label\nx,y\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    _assert_one_line(str(err.value), str(path), "unrecognised CSV columns")


def test_thumos_json_small_file_maps_subsets_and_ambiguous(tmp_path: Path) -> None:
    db = {
        "video_validation_1": {
            "subset": "train",
            "annotations": [
                {"segment": ["1.5", "2.5"], "label": "Dive"},
                {"segment": ["3", "4"], "label": "Ambiguous"},
            ],
        },
        "video_test_1": {"subset": "test", "annotations": [{"segment": ["0.5", "x"], "label": "Dive"}]},
    }
    path = _write(tmp_path / "thumos_gt.json", {"database": db})
    assert detect_layout(path) == "thumos14-json"
    with pytest.raises(AnnotationError) as err:
        read_thumos14_json(path)
    _assert_one_line(str(err.value), str(path), "video video_test_1:", "not a number")
    db["video_test_1"]["annotations"][0]["segment"][1] = "0.75"
    ds = read_thumos14_json(_write(path, {"database": db}))
    assert ds.subset_counts() == {"training": 1, "testing": 1} and ds.classes == ("Dive",)
    assert ds.videos["video_validation_1"].segments == (Segment(1.5, 2.5, "Dive"),)
    assert ds.videos["video_validation_1"].ambiguous == (Segment(3.0, 4.0, "Ambiguous"),)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    videos = {
        "a": Video(
            "a",
            "training",
            12.5,
            (Segment(0.0, 3.25, "Run"), Segment(4.0, 12.5, "Jump")),
            29.97,
            path=tmp_path / "videos" / "a.mp4",
        ),
        "b": Video("b", "validation", 7.0, (Segment(1.0, 2.0, "Run"),), ambiguous=(Segment(3.0, 4.0, "Ambiguous"),)),
        "c": Video("c", "testing", math.nan),
    }
    original = TALDataset("toy", videos, ("Jump", "Run"))
    out = tmp_path / "out" / "gt.json"
    write_activitynet_json(original, out)
    raw = json.loads(out.read_text())
    assert raw["version"] == "VERSION 1.3"
    assert raw["database"]["a"]["video"] == "../videos/a.mp4" and raw["database"]["a"]["fps"] == 29.97
    assert raw["database"]["c"]["duration"] is None and "fps" not in raw["database"]["b"]
    back = read_annotations(out)
    assert back.classes == original.classes and list(back.videos) == list(videos)
    assert back.videos["a"].path.resolve() == videos["a"].path.resolve()
    for vid in ("a", "b"):
        assert back.videos[vid] == Video(**{**videos[vid].__dict__, "path": back.videos[vid].path})
    assert math.isnan(back.videos["c"].duration) and back.videos["c"].subset == "testing"
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temporary file


# ----------------------------------------------------------------------------------------------------------------
# Bundled structure


def test_anet_structure_file_is_compact_and_consistent() -> None:
    path = Path(__file__).resolve().parents[1] / "harness" / "data" / "anet_structure.json"
    assert path.stat().st_size < 400_000
    meta = json.loads(path.read_text())
    structure = load_anet_structure()
    assert len(structure) == meta["num_videos"] and sum(len(a) for a in structure) == meta["num_segments"]
    for arr in structure:
        assert arr.ndim == 2 and arr.shape[1] == 2
        assert np.all(arr >= 0) and np.all(arr <= 1) and np.all(arr[:, 0] < arr[:, 1])


def test_anet_structure_matches_the_real_training_subset(anet_raw: dict[str, Any]) -> None:
    expected = []
    for v in anet_raw.values():
        if v["subset"] != "training":
            continue
        d = v["duration"]
        pairs = sorted(
            (round(min(max(s, 0), d) / d, 4), round(min(e, d) / d, 4))
            for s, e in (a["segment"] for a in v["annotations"])
        )
        pairs = [p for p in pairs if p[1] > p[0]]
        if pairs:
            expected.append(pairs)
    structure = load_anet_structure()
    assert len(structure) == len(expected)
    for got, want in zip(structure, expected):
        np.testing.assert_array_equal(got, np.array(want))


# ----------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_stats_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    videos = {
        "a": _video("training", 10, [[1, 2], [3, 4]], "Run"),
        "b": _video("training", 10, [[1, 2]], "Jump"),
        "c": _video("validation", 10, [[5, 6]], "Run"),
        "d": _video("testing", 10, []),
    }
    path = _write(tmp_path / "gt.json", _anet(videos))
    assert main(["data", "stats", "--annotations", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "videos": {"training": 2, "validation": 1, "testing": 1},
        "instances": 4,
        "classes": 2,
        "repaired": {
            "clipped": 0,
            "zero_length": 0,
            "max_overshoot_s": 0.0,
            "before_start": 0,
            "max_before_start_s": 0.0,
            "past_end": 0,
            "max_past_end_s": 0.0,
        },
    }


def test_cli_stats_table_and_clip_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "gt.json", _anet({"a": _video("validation", 10, [[1, 11]])}))
    assert main(["-q", "data", "stats", "--annotations", str(path), "--clip-segments"]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "classes: 1" in out and "| subset" in out
    assert "clipped to their video: 1 segment(s) (1 ending past the end (by up to 1 s))" in out


def test_cli_stats_bad_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "gt.json", _anet({"vid7": _video(segments=[[1, 11]])}))
    assert main(["data", "stats", "--annotations", str(path), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    _assert_one_line(err[0], "lofi: error:", str(path), "video vid7:", "without --strict")


def test_cli_stats_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "stats", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "lofi data stats --annotations" in out and "--strict" in out
