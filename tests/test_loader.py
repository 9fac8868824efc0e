"""The input pipeline (harness/data/loader.py) and the prepared frame store (harness/data/store.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data.loader import (
    ClipDataset,
    ClipLoader,
    epoch_order,
    fixed_plan,
    step_batches,
    training_plan,
)
from harness.data.store import StoreSettings, prepare_video, read_frames
from harness.data.testvideo import activitynet_like
from harness.data.video import decode_video, sample_snippets, write_video
from harness.experiment import OptimConfig
from harness.pipeline.fit import fit, make_optimizer


def _videos(tmp_path: Path, n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (int(rng.integers(9, 20)), 12 + 2 * i, 16, 3), dtype=np.uint8) for i in range(n)]


def _dataset(frames: list[np.ndarray]) -> ClipDataset:
    return ClipDataset(lambda i, idx: frames[i][idx], lambda i: len(frames[i]), frames=2, stride=2)


def _shape(epoch: int, step: int) -> tuple[int, int]:  # a schedule that changes L and size between steps
    return (4, 8) if (epoch + step) % 2 else (2, 12)


OPTIM = OptimConfig(batch_size=2, accumulate=1, epochs=2)


def _collect(loader: ClipLoader, epochs: int = 2) -> list[tuple]:
    return [
        (b.epoch, b.step, b.micro, b.items.tolist(), b.to_device("cpu")) for e in range(epochs) for b in loader.epoch(e)
    ]


def test_batches_do_not_depend_on_the_worker_count(tmp_path: Path) -> None:
    frames = _videos(tmp_path)
    plan = training_plan(len(frames), OPTIM, seed=3, stream=("t",), shape=_shape)
    serial = _collect(ClipLoader(_dataset(frames), plan, workers=0))
    parallel = _collect(ClipLoader(_dataset(frames), plan, workers=2, prefetch=1))
    assert [s[:4] for s in serial] == [p[:4] for p in parallel]
    assert all(torch.equal(s[4], p[4]) for s, p in zip(serial, parallel))
    # and each clip is what sample_snippets makes from the whole video (the CPU path of before)
    for epoch, step, _, items, x in serial:
        length, size = _shape(epoch, step)
        assert x.shape == (len(items), length, 2, 3, size, size)
        for j, item in enumerate(items):
            assert torch.equal(x[j], sample_snippets(frames[item], length, 2, 2, size))


def test_plan_follows_the_training_loop_order() -> None:
    optim = OptimConfig(batch_size=4, accumulate=2, epochs=2)
    plan = training_plan(7, optim, seed=5, stream=("toy-order",), shape=lambda e, s: (1, 8))
    calls = []

    def step(epoch, step, micro, idx):
        calls.append((epoch, step, micro, idx.tolist()))
        return (w**2).sum(), {}

    w = torch.nn.Parameter(torch.ones(2))
    fit(make_optimizer([w], optim), step, n_items=7, optim=optim, seed=5, order_stream=("toy-order",), stage="t")
    planned = [(r[0].epoch, r[0].step, r[0].micro, [q.item for q in r]) for e in range(2) for r in plan(e)]
    assert planned == calls
    assert [q.item for r in plan(1) for q in r] == epoch_order(7, seed=5, stream=("toy-order",), epoch=1).tolist()


def test_rank_plans_partition_every_step_in_the_single_process_order() -> None:
    """Rank r's micro-batches are the single process's with accumulate = world size (the DDP equivalence)."""
    world = 3
    single = training_plan(11, OptimConfig(batch_size=6, accumulate=world), seed=1, stream=("s",), shape=_shape)
    ranks = [
        training_plan(11, OptimConfig(batch_size=6), seed=1, stream=("s",), shape=_shape, rank=r, world_size=world)
        for r in range(world)
    ]
    for e in range(2):
        want = [[(q.step, q.micro, q.item) for q in m] for m in single(e)]
        got = sorted(([(q.step, q.micro, q.item) for q in m] for r in ranks for m in r(e)), key=lambda m: m[0][:2])
        assert got == sorted(want, key=lambda m: m[0][:2])
    with pytest.raises(ValueError, match="rank"):
        training_plan(11, OptimConfig(batch_size=6), seed=1, stream=("s",), shape=_shape, rank=3, world_size=3)


def test_a_short_last_batch_gives_an_empty_share_a_weightless_filler() -> None:
    order = np.arange(9)  # batch 4 on 4 ranks: steps of 4, 4, 1 items
    shares = [step_batches(order, 4, 1, rank=r, world_size=4) for r in range(4)]
    assert [mb.items.tolist() for r in range(4) for mb in shares[r][0]] == [[0], [1], [2], [3]]
    last = [shares[r][2] for r in range(4)]
    assert [(mb.position, mb.items.tolist(), mb.weight) for mb in last[0]] == [(0, [8], 1.0)]
    for r in range(1, 4):
        assert [(mb.items.tolist(), mb.weight) for mb in last[r]] == [([8], 0.0)]


def test_fit_checks_the_loader_against_its_order(tmp_path: Path) -> None:
    frames = _videos(tmp_path, 4)
    optim = OptimConfig(batch_size=2, epochs=1)
    w = torch.nn.Parameter(torch.zeros(1))
    seen = []

    def step(epoch, step, micro, idx, batch):
        seen.append(batch.items.tolist())
        return (w - batch.to_device("cpu").mean()) ** 2, {}

    good = ClipLoader(_dataset(frames), training_plan(4, optim, seed=0, stream=("o",), shape=lambda e, s: (2, 8)))
    fit(make_optimizer([w], optim), step, n_items=4, optim=optim, seed=0, order_stream=("o",), stage="t", loader=good)
    assert seen == [[int(i) for i in pair] for pair in epoch_order(4, seed=0, stream=("o",), epoch=0).reshape(2, 2)]
    other = ClipLoader(_dataset(frames), training_plan(4, optim, seed=1, stream=("o",), shape=lambda e, s: (2, 8)))
    with pytest.raises(RuntimeError, match="plan differs"):
        fit(
            make_optimizer([w], optim),
            step,
            n_items=4,
            optim=optim,
            seed=0,
            order_stream=("o",),
            stage="t",
            loader=other,
        )


def test_fixed_plan_covers_items_in_order() -> None:
    plan = fixed_plan(5, 2, snippets=3, size=8)
    assert [[q.item for q in b] for b in plan(0)] == [[0, 1], [2, 3], [4]]


# ---------------------------------------------------------------------------------------------- prepared store
SECONDS = 2  # short: the 120 s figure is benchmarks/bench_store.py's


@pytest.fixture(scope="module")
def anet_video(tmp_path_factory) -> Path:
    return activitynet_like(tmp_path_factory.mktemp("anet") / "v.mp4", SECONDS)


def test_prepared_store_is_small_and_decodes_what_is_asked(anet_video: Path, tmp_path: Path) -> None:
    settings = StoreSettings(max_side=256)
    entry, info = prepare_video(anet_video, tmp_path / "store", settings)
    assert (info.num_frames, info.fps, info.width, info.height) == (SECONDS * 30, 30.0, 256, 144)
    per_120s = entry.stat().st_size / SECONDS * 120
    assert per_120s <= 40e6, f"{per_120s / 1e6:.1f} MB per 120 s"
    whole = decode_video(entry)  # every frame in order: the reference for seeking reads
    rng = np.random.default_rng(1)
    for idx in (rng.integers(0, info.num_frames, 25), np.array([59, 0, 0, 17, 16, 58]), np.arange(info.num_frames)):
        assert np.array_equal(read_frames(entry, info, idx), whole[idx])
    # lossy, but close to the source decoded at the same size (PSNR over 30 dB)
    source = decode_video(anet_video, max_side=256)
    mse = np.mean((source.astype(np.float64) - whole.astype(np.float64)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30
    assert prepare_video(anet_video, tmp_path / "store", settings)[0] == entry  # prepared once
    with pytest.raises(ValueError, match="frame indices"):
        read_frames(entry, info, np.array([info.num_frames]))


def test_prepare_rejects_a_broken_video(tmp_path: Path) -> None:
    from harness.errors import VideoError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoError, match=r"bad\.mp4"):
        prepare_video(bad, tmp_path / "store", StoreSettings())


def test_prepared_store_keeps_the_frame_order_of_small_sources(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:16, 0:24]
    frames = np.stack([np.stack([xx * 3 + t, yy * 4, np.full_like(xx, 12 * t)], -1) for t in range(20)])
    src = write_video(tmp_path / "s.mp4", frames.astype(np.uint8), fps=25)
    entry, info = prepare_video(src, tmp_path / "store", StoreSettings(max_side=0, crf=0))
    got = read_frames(entry, info, np.array([3, 19, 0]))
    # smooth frames survive 4:2:0 at crf 0 within a few levels; each frame is the one asked for (blue = 12 t)
    assert got.shape == (3, 16, 24, 3) and np.abs(got.astype(int) - frames[[3, 19, 0]]).mean() < 4
    assert np.abs(got[..., 2].mean(axis=(1, 2)) - [36, 228, 0]).max() < 3


# ---------------------------------------------------------------------------------------------- lofi bench step
def test_bench_step_cli_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from harness.cli import main

    args = ["bench", "step", "--encoder", "tsm_resnet_tiny", "--head", "bmn", "--snippets", "8", "--frames", "2"]
    args += ["--size", "16", "--batch", "2", "--videos", "2", "--seconds", "1", "--precision", "fp32"]
    args += ["--steps", "2", "--repeats", "1", "--warmup", "1", "--work", str(tmp_path / "w")]
    args += ["--config", "config/smoke.yaml", "--json", str(tmp_path / "rows.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "busy" in out and "frames/s" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["fidelity"], r["precision"]) for r in rows] == [
        ("full", "fp32"),
        ("S", "fp32"),
        ("T", "fp32"),
        ("ST", "fp32"),
    ]
    for r in rows:
        assert r["error"] == "" and r["step_s"] > 0 and 0 < r["busy"] <= 1 and r["load_s"] > 0
        assert r["frames_per_s"] == pytest.approx(r["batch"] * r["snippets"] * 2 / r["step_s"])
    assert [(r["snippets"], r["size"]) for r in rows] == [(8, 16), (8, 8), (2, 16), (4, 11)]
    assert main([*args[:-2], "--steps", "0"]) == 2  # bad input: one-line error, exit code 2


def test_data_prepare_cli_fills_the_store_and_reports_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from harness.cli import main

    (tmp_path / "videos").mkdir()
    database = {}
    for vid, subset in (("a", "training"), ("b", "validation"), ("c", "testing")):
        activitynet_like(tmp_path / "videos" / f"{vid}.mp4", 0.5, width=64, height=48, seed=len(database))
        database[vid] = {"subset": subset, "duration": 0.5, "annotations": [{"segment": [0.1, 0.3], "label": "x"}]}
    (tmp_path / "annotations.json").write_text(json.dumps({"database": database}))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {{name: t, synthetic_profile: null, root: {tmp_path}, video_dir: videos, layout: activitynet, "
        f"cache_dir: {tmp_path / 'cache'}, store: prepared, max_side: 32}}\n"
    )
    assert main(["data", "prepare", "--config", str(config), "--workers", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["videos"], summary["failed"]) == (3, 0)
    entries = sorted((tmp_path / "cache" / "store").glob("*.mp4"))
    assert len(entries) == 3 and summary["bytes"] == sum(e.stat().st_size for e in entries)
    (tmp_path / "videos" / "c.mp4").write_bytes(b"broken")
    assert main(["data", "prepare", "--config", str(config)]) == 2  # one-line error naming the file
    assert "c.mp4" in capsys.readouterr().err
    skip = ["--set", "data.skip_corrupt=true", "--json"]
    assert main(["data", "prepare", "--config", str(config), *skip]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["failed"] == 1


def test_data_prepare_fills_the_decoded_cache_with_videos_and_acp_clips(
    smoke_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The workflow's `frames` job: every video and ACP clip decoded once, so later readers only hit the disk."""
    import json

    from harness.cli import main
    from harness.data.frames import VideoFrames, video_file
    from harness.data.sources import read_source_index
    from harness.experiment import load_experiment
    from harness.pipeline.data import prepare_dataset

    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {{name: synthetic, synthetic_profile: smoke, root: {smoke_root}, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    assert main(["data", "prepare", "--config", str(config), "--workers", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is exactly the JSON summary (the workflow keeps it)
    cfg = load_experiment(config, []).data
    ds = prepare_dataset(cfg)
    clips = read_source_index(cfg, cfg.acp_source, "clips")[1]
    assert (summary["videos"], summary["failed"]) == (len(ds.videos) + len(clips), 0)
    entries = list((tmp_path / "cache").glob("*.npy"))
    assert len(entries) == summary["videos"] and summary["bytes"] == sum(e.stat().st_size for e in entries)
    frames = VideoFrames(cfg)
    # MB per hour of video counts the annotated videos only (the clips have no duration in the annotations)
    video_bytes = sum(frames.cache.entry_path(video_file(cfg, v)).stat().st_size for v in ds.videos.values())
    hours = sum(v.duration for v in ds.videos.values()) / 3600
    assert summary["mb_per_hour"] == pytest.approx(video_bytes / 1e6 / hours)
    for path in [video_file(cfg, v) for v in ds.videos.values()] + [c.path for c in clips]:
        frames.cache.get(path)
    assert (frames.cache.disk_hits, frames.cache.misses) == (summary["videos"], 0)
