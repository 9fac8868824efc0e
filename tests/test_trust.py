"""The trust campaign: bad inputs and faults, as a new user would meet them.

Every case ends in one of two ways: exit status 2 with exactly one ``lofi: error:`` line that names the culprit
(and no traceback), or the correct result. Around every case: nothing is written outside the command's output
folder (the case runs in a sandbox folder; inputs live beside it and are compared before/after), and a finished
run (the "good output") is never damaged — commands that are pointed at it must leave its files bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.io import is_orphan, name_problem, remove_orphans

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "smoke.yaml"
ANET = Path("/work/shared/data/activitynet/activity_net_v1-3_gt.json")
# one epoch per training stage: the campaign needs finished stages, not good ones
FAST = [
    "pretrain.optim.epochs=1",
    "pretrain.finetune.epochs=1",
    "lofi.optim.epochs=1",
    "head.optim.epochs=1",
    "head.classifier_optim.epochs=1",
]


# ------------------------------------------------------------------------------------------------ helpers
def tree(root: Path) -> dict[str, str]:
    """relative path -> content hash of every file under ``root`` (folders as 'dir')."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def refused(code: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one error line, no traceback; the line holds every needle. Returns the line."""
    assert "Traceback" not in err, err
    # a progress bar interrupted by the error may precede it on the same line (stderr is no terminal here)
    lines = [line[line.index("lofi: error:") :] for line in err.splitlines() if "lofi: error:" in line]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@dataclass
class Sandbox:
    """The folder a case runs in (its cwd): ``inputs/`` for the files it reads, ``out/`` for what it may write."""

    root: Path
    inputs: Path = field(init=False)
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.inputs = self.root / "inputs"
        self.out = self.root / "out"
        self.inputs.mkdir(parents=True)

    def write(self, name: str, text: str | bytes) -> Path:
        p = self.inputs / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text, encoding="utf-8")
        return p


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox; afterwards nothing but ``out/`` may have changed in it."""
    sb = Sandbox(tmp_path / "box")
    monkeypatch.chdir(sb.root)
    yield sb
    # the inputs are untouched and nothing appeared beside out/ (e.g. a path built from a hostile id)
    after = {k for k in tree(sb.root) if not (k == "out" or k.startswith("out/") or k.startswith("inputs"))}
    assert after == set(), f"written outside out/: {sorted(after)}"


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def anet(videos: dict[str, Any]) -> str:
    return json.dumps({"version": "VERSION 1.3", "database": videos})


def video(subset: str = "validation", duration: float = 10.0, segments: Any = ((1, 5),), label: str = "A") -> dict:
    return {
        "subset": subset,
        "duration": duration,
        "annotations": [{"segment": list(s), "label": label} for s in segments],
    }


def det(start: Any, end: Any, score: Any = 0.9, label: str = "A") -> dict:
    return {"label": label, "score": score, "segment": [start, end]}


def preds(results: dict[str, Any]) -> str:
    return json.dumps({"version": "VERSION 1.3", "results": results, "external_data": {}})


# ------------------------------------------------------------------------------------------------ a finished run
@pytest.fixture(scope="module")
def data_overrides(smoke_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    cache = tmp_path_factory.mktemp("trust-frames")
    return [f"data.root={smoke_root}", f"data.cache_dir={cache}", "tracking.enabled=false", "runtime.threads=1", *FAST]


@pytest.fixture(scope="module")
def finished(data_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished acp run: the good output the fault cases copy (and must never damage)."""
    run = tmp_path_factory.mktemp("trust-run") / "run"
    assert main(["-q", "run", "--config", str(SMOKE), "--mode", "acp", "--out", str(run), *sets(*data_overrides)]) == 0
    return run


def copy_run(finished: Path, dest: Path) -> Path:
    shutil.copytree(finished, dest, copy_function=shutil.copy2)  # copy2 keeps mtimes: the stages stay "finished"
    return dest


def rerun(capsys: pytest.CaptureFixture[str], run: Path, data_overrides: list[str]) -> tuple[int, str, str]:
    return cli(capsys, "-q", "run", "--config", SMOKE, "--mode", "acp", "--out", run, *sets(*data_overrides))


def corrupt_keeping_fingerprint(path: Path, payload: bytes = b"\x00garbage") -> None:
    """Bit rot: other bytes, same size and mtime, so the stage marker's fingerprint still matches."""
    st = path.stat()
    data = (payload * (st.st_size // len(payload) + 1))[: st.st_size]
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ================================================================================================ 1. config values
CONFIG_CASES = [
    ("lofi.optim.epochs=0", "lofi.optim.epochs"),
    ("head.optim.epochs=0", "head.optim.epochs"),
    ("pretrain.optim.epochs=0", "pretrain.optim.epochs"),
    ("pretrain.finetune.epochs=0", "pretrain.finetune.epochs"),
    ("head.optim.lr=-0.1", "head.optim.lr"),
    ("lofi.optim.lr=0", "lofi.optim.lr"),
    ("head.optim.batch_size=0", "head.optim.batch_size"),
    ("pretrain.finetune.batch_size=0", "pretrain.finetune.batch_size"),
    ("lofi.optim.accumulate=99", "lofi.optim.accumulate"),
    ("lofi.r_s=100", "lofi.r_s"),  # would be clamped to the minimum frame size: refused, not relabelled
    ("lofi.r_t=1000", "lofi.r_t"),
    ("lofi.encoder_lr_scale=0", "lofi.encoder_lr_scale"),  # LoFi with a frozen encoder = acp, reported as LoFi
    ("encoder.name=$(touch PWNED)", "encoder.name"),
    ("encoder.name=x`touch PWNED`", "encoder.name"),
    ("head.name=../../x", "head.name"),
    ("lofi.head=a;b", "lofi.head"),
    ("sweep.results=r;touch PWNED", "sweep.results"),
    ("sweep.results=my results", "sweep.results"),
    ("sweep.encoders=[tsm_resnet_tiny, '$(id)']", "sweep.encoders[1]"),
    ("sweep.heads=['gtad|x']", "sweep.heads[0]"),
    ("data.test_subset=../../x", "data.test_subset"),
    ("data.name=a/b", "data.name"),
    ('tracking.experiment=x"y', "tracking.experiment"),
    ("data.val_subset=testing", "data.val_subset"),
    ("data.val_holdout=1.0", "data.val_holdout"),
    ("post.low=0.95", "post.low"),
    ("runtime.threads=-1", "runtime.threads"),
    ("head.optim.epochs=2.5", "head.optim.epochs"),
    ("fidelity.snipets=8", "did you mean 'snippets'"),
    ("lofi.optim.epochs", "expected KEY=VALUE"),
]


@pytest.mark.parametrize(("override", "needle"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_value_is_refused(box: Sandbox, capsys: pytest.CaptureFixture[str], override: str, needle: str) -> None:
    code, _, err = cli(capsys, "config", "check", "--config", SMOKE, "--set", override)
    refused(code, err, "lofi: error: ", needle)
    assert not (box.root / "PWNED").exists()


RUN_CASES = [
    ("lofi.optim.epochs=0", "lofi.optim.epochs"),
    ("encoder.name=nope", "unknown encoder 'nope'"),
    ("head.name=nope", "unknown head 'nope'"),
    ("head.class_scores=inputs/nope.json", "head.class_scores"),
    ("data.acp_source=", "encoder.checkpoint"),  # ACP from weights, but no weights file named
    ("data.acp_source= encoder.checkpoint=inputs/nope.pth", "encoder.checkpoint = 'inputs/nope.pth'"),
    ("data.train_subset=nosuch", "no videos in subset 'nosuch'"),
    ("data.annotations=inputs/missing.json", "annotation file not found"),
]


@pytest.mark.parametrize(("override", "needle"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_refuses_before_any_work(
    box: Sandbox, capsys: pytest.CaptureFixture[str], data_overrides: list[str], override: str, needle: str
) -> None:
    code, _, err = cli(
        capsys,
        "run",
        "--config",
        SMOKE,
        "--mode",
        "lofi-long",
        "--out",
        box.out,
        *sets(*data_overrides, *override.split()),
    )
    refused(code, err, needle)
    assert not box.out.exists()  # refused up front: no stage started


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("data: {name: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("\x00\x01binary", "inputs/bad.yaml"),
    ],
    ids=["yaml-syntax", "yaml-list", "yaml-binary"],
)
def test_bad_config_file(box: Sandbox, capsys: pytest.CaptureFixture[str], text: str, needle: str) -> None:
    path = box.write("bad.yaml", text)
    refused(*cli(capsys, "config", "show", "--config", path)[::2], needle)


def test_config_path_is_a_folder(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    refused(*cli(capsys, "config", "check", "--config", box.inputs)[::2], str(box.inputs))


def test_config_schema_out_under_a_file(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = box.write("afile", "x")
    refused(
        *cli(capsys, "config", "schema", "--out", blocker / "schema.json")[::2],
        str(blocker),
        "a file may be where a folder is needed",
    )


# ================================================================================================ 2. annotations
HOSTILE_IDS = ["../../../../escape", "a/b", "..", ".hidden", "a\nb", "a\\b", "", "x" * 300, "nul\x00"]


@pytest.mark.parametrize("vid", HOSTILE_IDS, ids=[repr(v)[:20] for v in HOSTILE_IDS])
def test_hostile_video_id_is_refused(box: Sandbox, capsys: pytest.CaptureFixture[str], vid: str) -> None:
    path = box.write("gt.json", anet({"ok": video(), vid: video()}))
    line = refused(*cli(capsys, "data", "stats", "--annotations", path)[::2], str(path), "video id")
    assert "\n" not in line


def test_hostile_id_in_bsn_and_thumos_layouts(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    box.write("video_info_new.csv", "video,subset\nv_../x,training\n")
    bsn = box.write("anet_anno_action.json", json.dumps({"v_../x": {"duration_second": 5, "annotations": []}}))
    refused(*cli(capsys, "data", "stats", "--annotations", bsn)[::2], "video id", "'../x'")
    csv = box.write("val_Annotation.csv", "video,type,start,end\nvideo_validation_1/../../x,A,1,2\n")
    refused(*cli(capsys, "data", "stats", "--annotations", csv)[::2], "video id")


def test_hostile_id_stops_a_run_before_any_file_is_written(
    box: Sandbox, capsys: pytest.CaptureFixture[str], smoke_root: Path, data_overrides: list[str]
) -> None:
    """The issue's security case: an id such as ../../somewhere/x reached the features stage and was written outside
    --out, and the run exited 0. Now the annotation reader refuses it and nothing is written."""
    data = json.loads((smoke_root / "annotations.json").read_text())
    vid = next(iter(data["database"]))
    entry = data["database"].pop(vid)
    entry["video"] = str(smoke_root / entry["video"])
    data["database"]["../../../../../somewhere/x"] = entry
    gt = box.write("annotations.json", json.dumps(data))
    overrides = [*data_overrides, f"data.annotations={gt}", "data.synthetic_profile=null"]
    code, _, err = cli(capsys, "run", "--config", SMOKE, "--mode", "acp", "--out", box.out, *sets(*overrides))
    refused(code, err, str(gt), "video id")
    assert not box.out.exists()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (anet({"v": video(segments=[(5, 1)])}), ("video v:", "starts after it ends")),
        ('{"database": {"v": ' + json.dumps(video()) + ', "v": ' + json.dumps(video()) + "}}", ("video v:", "twice")),
        ('{"database": {"v": {"subset": "validation", "duration": 10, "annotations": [', ("malformed JSON",)),
        (b"\xff\xfe\x00binary", ("cannot read the file",)),
        ("[1, 2, 3]", ("unrecognised annotation layout",)),
        (anet({"v": video(duration=-1)}), ("video v:", "not positive")),
        (anet({"v": video(segments=[("06",)])}), ("video v:", "not [start, end]")),
        (anet({"v": {**video(), "subset": "train"}}), ("unknown subset 'train'",)),
    ],
    ids=["reversed", "duplicate-id", "truncated", "binary", "json-list", "negative-duration", "one-number", "subset"],
)
def test_bad_annotation_file(box: Sandbox, capsys: pytest.CaptureFixture[str], text: Any, needles: tuple) -> None:
    path = box.write("gt.json", text)
    refused(*cli(capsys, "data", "stats", "--annotations", path)[::2], str(path), *needles)


def test_annotation_path_is_a_folder(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    box.write("dir.json/inner", "x")
    refused(*cli(capsys, "data", "stats", "--annotations", box.inputs / "dir.json")[::2], "dir.json")


def test_overshooting_segments_load_clipped_and_reported(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    path = box.write("gt.json", anet({"v": video(segments=[(1, 10.25), (3, 3)]), "w": video(segments=[(-0.5, 2)])}))
    code, out, _ = cli(capsys, "data", "stats", "--annotations", path, "--json")
    assert code == 0
    assert json.loads(out)["repaired"] == {
        "clipped": 2,
        "zero_length": 1,
        "max_overshoot_s": 0.5,
        "before_start": 1,
        "max_before_start_s": 0.5,
        "past_end": 1,
        "max_past_end_s": 0.25,
    }
    refused(*cli(capsys, "data", "stats", "--annotations", path, "--strict")[::2], "video v:", "outside the video")


@pytest.mark.skipif(not ANET.is_file(), reason="the official ActivityNet-1.3 file is not on this machine")
def test_official_activitynet_file_loads_as_published(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "data", "stats", "--annotations", ANET, "--json")
    stats = json.loads(out)
    assert code == 0 and stats["videos"] == {"training": 9649, "validation": 4728, "testing": 4851}
    assert stats["instances"] == 22152 and stats["classes"] == 200
    # counted independently below: segments ending > 1e-6 relative past the duration, and start == end
    raw = json.loads(ANET.read_text())["database"]
    segs = [(a["segment"], v["duration"]) for v in raw.values() for a in v["annotations"]]
    assert stats["repaired"]["clipped"] == sum(s[1] > d * (1 + 1e-6) or s[0] < 0 for s, d in segs)
    assert stats["repaired"]["zero_length"] == sum(s[0] == s[1] for s, _ in segs)
    refused(*cli(capsys, "data", "stats", "--annotations", ANET, "--strict")[::2], "cp52LdlmlUk")


@pytest.mark.skipif(not ANET.is_file(), reason="the official ActivityNet-1.3 file is not on this machine")
def test_official_activitynet_file_loads_with_its_config() -> None:
    from harness.data.annotations import read_annotations
    from harness.experiment import load_experiment

    cfg = load_experiment(ROOT / "config" / "activitynet.yaml", [f"data.root={ANET.parent}"])
    ds = read_annotations(cfg.data.annotations_path(), layout=cfg.data.layout, clip_segments=cfg.data.clip_segments)
    assert len(ds.videos) == 19228 and ds.meta["repaired"]["clipped"] > 200


# ================================================================================================ 3. predictions
@pytest.fixture
def gt_file(box: Sandbox) -> Path:
    return box.write("gt.json", anet({"v1": video(segments=[(0, 10)]), "v2": video(segments=[(2, 6)])}))


PREDICTION_CASES = [
    ('{"results": {"v1": [' + json.dumps(det(0, 10)) + '], "v1": []}}', ("'v1' appears twice",)),
    (
        '{"results": {"v1": [{"label": "A", "score": 0.5, "score": 0.9, "segment": [0, 1]}]}}',
        ("'score' appears twice",),
    ),
    (preds({"v1": [{"label": "A", "score": 0.9, "segment": "06"}]}), ("video v1", "'06' is not a [start, end] pair")),
    (preds({"v1": [det("0", "6")]}), ("video v1", "not a [start, end] pair of numbers")),
    (preds({"v1": [{"label": "A", "score": 0.9, "segment": [0]}]}), ("video v1", "[start, end]")),
    (preds({"v1": [det(0, 6, True)]}), ("video v1", "score True is not a number")),
    (preds({"v1": [det(0, 6, "0.9")]}), ("video v1", "not a number")),
    (preds({"v1": [det(6, 0)]}), ("video v1", "reversed")),
    (preds({"v1": [det(0, float("nan"))]}), ("video v1", "not finite")),
    (preds({"v1": [det(0, 6, 0.9, "Nope")]}), ("'Nope' is not a class",)),
    (preds({"v1": {"label": "A"}}), ("must be a list",)),
    (preds({}), ('"results" is empty',)),
    (preds({"x1": [det(0, 6)], "x2": [det(1, 2)]}), ("none of its 2 video(s)", "--subset")),
    ('{"results": {"v1": [', ("not valid JSON",)),
    ("[]", ('no "results" object',)),
]


@pytest.mark.parametrize(("text", "needles"), PREDICTION_CASES, ids=[f"pred{i}" for i in range(len(PREDICTION_CASES))])
def test_bad_predictions_file(
    box: Sandbox, gt_file: Path, capsys: pytest.CaptureFixture[str], text: str, needles: tuple
) -> None:
    path = box.write("pred.json", text)
    args = ("evaluate", "detection", "--ground-truth", gt_file, "--predictions", path)
    refused(*cli(capsys, *args)[::2], str(path), *needles)


def test_predictions_path_is_a_folder(box: Sandbox, gt_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "evaluate", "detection", "--ground-truth", gt_file, "--predictions", box.inputs)
    refused(code, err, "is a folder")


def test_ground_truth_without_database_names_no_missing_flag(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    gt = box.write("gt.json", json.dumps({"videos": {}}))
    pred = box.write("pred.json", preds({"v1": [det(0, 1)]}))
    line = refused(*cli(capsys, "evaluate", "detection", "--ground-truth", gt, "--predictions", pred)[::2], "database")
    assert "--layout" not in line  # lofi evaluate has no such flag


def test_partly_unknown_videos_score_as_false_positives(
    box: Sandbox, gt_file: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The correct result, not an error: an unknown video's prediction ranked first is a false positive.
    v1 [0,10] and v2 [2,6] are found exactly; the stray (score 1.0) comes first: precision 1/2 at the first true
    positive, then 2/3 at the second; interpolated AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3 at every threshold."""
    pred = box.write("pred.json", preds({"stray": [det(0, 1, 1.0)], "v1": [det(0, 10, 0.9)], "v2": [det(2, 6, 0.8)]}))
    code, out, _ = cli(capsys, "evaluate", "detection", "--ground-truth", gt_file, "--predictions", pred, "--json")
    assert code == 0
    assert json.loads(out)["average_mAP"] == pytest.approx(2 / 3, abs=1e-12)
    assert any("1 of 3 video(s) are not in the 'validation' ground truth" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "proposals", "--max-avg-proposals", "0"],
        ["evaluate", "detection", "--subset", "nosuchsubset"],
    ],
    ids=["max-avg-proposals-0", "unknown-subset"],
)
def test_bad_evaluate_flags(box: Sandbox, gt_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    pred = box.write("pred.json", preds({"v1": [det(0, 10)]}))
    refused(*cli(capsys, *argv, "--ground-truth", gt_file, "--predictions", pred)[::2])


# ================================================================================================ 4. other commands
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["schedule", "--cycle", "custom", "--epochs", "2", "--r-t", "0.5"], "--r-t 0.5"),
        (["schedule", "--cycle", "custom", "--epochs", "2", "--r-s", "nan"], "--r-s nan"),
        (["schedule", "--cycle", "long", "--epochs", "0"], "epochs"),
        (["schedule", "--cycle", "short", "--epochs", "1", "--c-s", "0"], "c_s"),
        (
            [
                "bench",
                "memory",
                "--encoder",
                "tsm_resnet_tiny",
                "--head",
                "gtad",
                "--snippets",
                "0",
                "--size",
                "32",
                "--frames",
                "1",
                "--device",
                "meta",
            ],
            "--snippets",
        ),
        (
            [
                "bench",
                "memory",
                "--encoder",
                "nope",
                "--head",
                "gtad",
                "--snippets",
                "4",
                "--size",
                "32",
                "--frames",
                "1",
                "--device",
                "meta",
            ],
            "unknown encoder",
        ),
        (["report", "tables", "--runs", "inputs", "--out", "out", "--no-stats"], "no row.json"),
        (["report", "tables", "--runs-glob", "nothing/**/row.json", "--out", "out"], "matches no file"),
    ],
    ids=[
        "r-t-below-1",
        "r-s-nan",
        "epochs-0",
        "c-s-0",
        "snippets-0",
        "bench-unknown-encoder",
        "report-no-row",
        "report-empty-glob",
    ],
)
def test_bad_command_flags(box: Sandbox, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    refused(*cli(capsys, *argv)[::2], needle)


def test_corrupt_row_in_report(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    row = box.write("run/row.json", '{"dataset": "synthetic", "mode": ')
    refused(*cli(capsys, "report", "tables", "--runs", row.parent, "--out", box.out, "--no-stats")[::2], str(row))


# ================================================================================================ 5. faults on a finished run
def test_corrupt_done_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str]
) -> None:
    run = copy_run(finished, tmp_path / "run")
    (run / "features" / "acp" / "seed0" / "done.json").write_text('{"key": ')
    refused(*rerun(capsys, run, data_overrides)[::2], "done.json", "unreadable stage marker")


@pytest.mark.parametrize(
    "marker",
    ["[1, 2]", '{"key": "x", "outputs": []}', '{"key": "K", "outputs": {"../../../../etc/passwd": {}}}'],
    ids=["list", "outputs-not-object", "outputs-outside"],
)
def test_forged_done_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str], marker: str
) -> None:
    run = copy_run(finished, tmp_path / "run")
    done = run / "pretrain" / "acp" / "seed0" / "done.json"
    key = json.loads(done.read_text())["key"]
    done.write_text(marker.replace('"K"', json.dumps(key)))
    refused(*rerun(capsys, run, data_overrides)[::2], "done.json")


def test_corrupt_row_json_on_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str]
) -> None:
    run = copy_run(finished, tmp_path / "run")
    (run / "row.json").write_text("{truncated")
    refused(*rerun(capsys, run, data_overrides)[::2], "row.json", "delete it and re-run")


def test_changed_stage_output_is_refused_not_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str]
) -> None:
    run = copy_run(finished, tmp_path / "run")
    npy = next((run / "features" / "acp" / "seed0" / "videos").glob("*.npy"))
    npy.write_bytes(b"short")
    refused(*rerun(capsys, run, data_overrides)[::2], str(npy), "missing or changed")


def test_bit_rot_in_a_feature_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str]
) -> None:
    run = copy_run(finished, tmp_path / "run")
    npy = sorted((run / "features" / "acp" / "seed0" / "videos").glob("syn_tr_*.npy"))[0]
    corrupt_keeping_fingerprint(npy)
    shutil.rmtree(run / "head")
    (run / "row.json").unlink()
    refused(*rerun(capsys, run, data_overrides)[::2], str(npy), "corrupt feature file")


def test_bit_rot_in_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str]
) -> None:
    run = copy_run(finished, tmp_path / "run")
    corrupt_keeping_fingerprint(run / "pretrain" / "acp" / "seed0" / "encoder.pt")
    shutil.rmtree(run / "features")
    shutil.rmtree(run / "head")
    (run / "row.json").unlink()
    refused(*rerun(capsys, run, data_overrides)[::2], "encoder.pt", "not a readable checkpoint")


def test_bit_rot_in_metrics_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str]
) -> None:
    run = copy_run(finished, tmp_path / "run")
    corrupt_keeping_fingerprint(run / "head" / "metrics.json", b"{")
    (run / "row.json").unlink()
    refused(*rerun(capsys, run, data_overrides)[::2], "metrics.json", "corrupt")


@pytest.mark.parametrize("where", ["out", "cache", "schema"])
def test_unwritable_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_overrides: list[str], where: str
) -> None:
    """A real fault: a folder this process may not write (a fresh folder in /sys refuses mkdir, even for root;
    chmod would not stop root). Every place a command writes: --out, the frame cache, a written file."""
    denied = Path("/sys/lofi-trust-campaign")
    try:
        denied.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - not Linux's sysfs
        denied.rmdir()
        pytest.skip("/sys is writable here")
    if where == "schema":
        code, _, err = cli(capsys, "config", "schema", "--out", denied / "schema.json")
    else:
        out = denied if where == "out" else tmp_path / "run"
        extra = [] if where == "out" else [f"data.cache_dir={denied}"]
        code, _, err = cli(
            capsys, "-q", "run", "--config", SMOKE, "--mode", "acp", "--out", out, *sets(*data_overrides, *extra)
        )
    refused(code, err, str(denied), "choose a folder you can write")


def test_out_is_an_existing_file(box: Sandbox, capsys: pytest.CaptureFixture[str], data_overrides: list[str]) -> None:
    box.out.mkdir()
    blocker = box.out / "row"
    blocker.write_text("keep me")
    code, _, err = cli(capsys, "run", "--config", SMOKE, "--mode", "acp", "--out", blocker, *sets(*data_overrides))
    refused(code, err, str(blocker))
    assert blocker.read_text() == "keep me"


def test_full_disk_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while a checkpoint is written (torch's own writer reported it as 'unexpected pos'): the message says
    the disk is full and names the file."""
    import errno
    import io

    import harness.integrity

    class Full(io.BytesIO):  # a file whose write() fails as on a full disk: errno, no file name
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:  # checkpoints (sealed files) fail to write
        return Full() if ".pt." in Path(path).name else open(path, *args, **kwargs)

    monkeypatch.setattr(harness.integrity, "open", fake_open, raising=False)
    code, _, err = cli(
        capsys, "-q", "run", "--config", SMOKE, "--mode", "acp", "--out", tmp_path / "r", *sets(*data_overrides)
    )
    refused(code, err, "encoder.pt", "No space left on device", "free space")


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE fault injection")
def test_real_write_failure_in_a_subprocess(tmp_path: Path, data_overrides: list[str]) -> None:
    """A real fault: the process may not write files over 64 KiB (ulimit -f), so the first checkpoint write fails
    at the operating system, as on a full disk."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    argv = [
        sys.executable,
        "-m",
        "harness.cli",
        "-q",
        "run",
        "--config",
        str(SMOKE),
        "--mode",
        "acp",
        "--out",
        str(tmp_path / "r"),
        *sets(*data_overrides),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit, timeout=300, cwd=tmp_path)
    refused(proc.returncode, proc.stderr, "encoder.pt", "File too large")


@pytest.mark.parametrize("store", ["under-a-file", "not-a-database"])
def test_broken_tracking_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str], store: str
) -> None:
    """An MLflow store that cannot be opened is one line, not an OSError/SQLAlchemy traceback."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder, not a database")
    uri, needles = {
        "under-a-file": (f"sqlite:///{blocker}/mlflow.db", (str(blocker), "a file may be where a folder is needed")),
        "not-a-database": (f"sqlite:///{blocker}", ("store error", "file is not a database", "tracking.uri")),
    }[store]
    run = copy_run(finished, tmp_path / "run")
    (run / "row.json").unlink()
    shutil.rmtree(run / "head")
    overrides = [o for o in data_overrides if not o.startswith("tracking.")]
    overrides += ["tracking.enabled=true", f"tracking.uri={uri}", "tracking.defer=false"]  # live: opened at start
    code, _, err = cli(capsys, "-q", "run", "--config", SMOKE, "--mode", "acp", "--out", run, *sets(*overrides))
    refused(code, err, *needles)


# ================================================================================================ 6. loose ends
def test_orphaned_temporaries_are_removed_at_the_next_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], finished: Path, data_overrides: list[str]
) -> None:
    """kill -9 during a checkpoint write leaves .<name>.<host>-<pid>.<rand>.tmp; the next start removes it (its
    writer is dead) but keeps a live writer's; and the rerun gives the same numbers (nothing good damaged)."""
    from harness.io import _HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    run = copy_run(finished, tmp_path / "run")
    stage = run / "pretrain" / "acp" / "seed0"
    orphan = stage / f".encoder.pt.{_HOST}-{dead_pid}.abc123.tmp"
    live = stage / f".encoder.pt.{_HOST}-{os.getpid()}.def456.tmp"
    orphan.write_bytes(b"half a checkpoint")
    live.write_bytes(b"a concurrent writer's")
    assert is_orphan(orphan) and not is_orphan(live)
    before = json.loads((run / "row.json").read_text())["average_mAP"]
    shutil.rmtree(run / "head")
    (run / "row.json").unlink()
    code, out, _ = rerun(capsys, run, data_overrides)
    assert code == 0 and not orphan.exists() and live.exists()
    assert json.loads(out)["average_mAP"] == before


def test_remove_orphans_counts() -> None:
    assert remove_orphans(Path("/nonexistent/folder")) == 0


def test_name_problem_accepts_real_ids() -> None:
    for vid in ("-5KQ66BBWC4", "v_abc", "video_test_0000004", "syn_tr_0001", "a.b"):
        assert name_problem(vid) is None, vid


def test_skipped_videos_are_in_the_row_and_under_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], smoke_root: Path, data_overrides: list[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(smoke_root, data)
    gt = json.loads((data / "annotations.json").read_text())
    victim = sorted(v for v, e in gt["database"].items() if e["subset"] == "testing")[0]
    (data / gt["database"][victim]["video"]).write_bytes(b"not a video")
    overrides = [o for o in data_overrides if not o.startswith("data.root")]
    overrides += [f"data.root={data}", "data.skip_corrupt=true"]
    code, _, _ = cli(
        capsys, "-q", "run", "--config", SMOKE, "--mode", "acp", "--out", tmp_path / "run", *sets(*overrides)
    )
    assert code == 0
    row = json.loads((tmp_path / "run" / "row.json").read_text())
    assert row["skipped_videos"] == [victim]
    code, _, _ = cli(
        capsys,
        "-q",
        "report",
        "tables",
        "--runs",
        tmp_path / "run",
        "--out",
        tmp_path / "rep",
        "--no-stats",
        "--no-plots",
        "--which",
        "ablation",
    )
    assert code == 0
    table = (tmp_path / "rep" / "table_ablation.md").read_text()
    assert f"Skipped videos (undecodable, data.skip_corrupt): acp seed 0: 1 ({victim})" in table


def test_a_bug_still_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only user-caused errors are mapped: an exception from wrong code propagates (pytest sees it)."""
    import harness.commands.schedule as schedule

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(schedule, "schedule_table", broken)
    with pytest.raises(ZeroDivisionError):
        main(["schedule", "--cycle", "long", "--epochs", "1"])
