"""The synthetic benchmark: layout, decodability, determinism, resume, errors, and that the designed cues exist
(v4, the default: a flicker that one frame cannot show and two frames always show, in a fine band the r_s = 2
resize erases and a coarse band it keeps, and a twitch at every boundary; the `colour-cue` control profile: texture
motion inside a fixed silhouette plus a single-frame paleness in some videos)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.data import synthetic as S
from harness.data.annotations import read_annotations
from harness.data.video import decode_video, probe_video
from harness.errors import LofiError
from harness.seeding import numpy_rng

SMOKE = S.PROFILES["smoke"]
COLOUR_CUE = S.PROFILES["colour-cue"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return S.generate("smoke", 0, tmp_path_factory.mktemp("synth") / "a", progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_annotations(smoke: Path) -> None:
    for name in ("annotations.json", "manifest.json", "clips/index.json", "images/index.json"):
        assert (smoke / name).is_file(), name
    dataset = read_annotations(smoke / "annotations.json")
    assert dataset.subset_counts() == {
        "training": SMOKE.num_training,
        "validation": SMOKE.num_validation,
        "testing": SMOKE.num_testing,
    }
    assert len(dataset.classes) == SMOKE.num_classes
    raw = json.loads((smoke / "annotations.json").read_text())["database"]
    for vid, video in dataset.videos.items():
        assert raw[vid]["video"] == f"videos/{vid}.mp4" and raw[vid]["fps"] == SMOKE.fps
        seg = video.segment_array()
        assert len(seg) >= 1
        assert np.all(seg[:, 0] >= 0) and np.all(seg[:, 1] <= video.duration + 1e-9)
        assert np.all(seg[:, 1] > seg[:, 0])
        assert np.all(np.diff(seg[:, 0]) >= 0), f"{vid}: segments not sorted"
        assert len({s.label for s in video.segments}) == 1  # one action class per video


def test_videos_decode(smoke: Path) -> None:
    dataset = read_annotations(smoke / "annotations.json")
    for video in list(dataset.videos.values())[:3]:
        frames = decode_video(smoke / "videos" / f"{video.id}.mp4")
        assert frames.shape == (round(video.duration * SMOKE.fps), SMOKE.frame_size, SMOKE.frame_size, 3)
        assert probe_video(smoke / "videos" / f"{video.id}.mp4").fps == pytest.approx(SMOKE.fps)
        assert frames.std() > 5  # not blank


def test_pretraining_sources(smoke: Path) -> None:
    targets = set(read_annotations(smoke / "annotations.json").classes)
    clips = json.loads((smoke / "clips/index.json").read_text())
    assert len(clips["classes"]) == SMOKE.num_clip_classes
    assert not set(clips["classes"]) & targets, "ACP classes must differ from the target classes"
    assert len(clips["clips"]) == SMOKE.num_clip_classes * SMOKE.clips_per_class
    assert {c["label"] for c in clips["clips"]} == set(clips["classes"])
    frames = decode_video(smoke / clips["clips"][0]["path"])
    assert frames.shape == (SMOKE.clip_frames, SMOKE.frame_size, SMOKE.frame_size, 3)
    images = json.loads((smoke / "images/index.json").read_text())
    assert len(images["classes"]) == SMOKE.num_image_classes
    assert len(images["images"]) == SMOKE.num_image_classes * SMOKE.images_per_class
    assert {i["label"] for i in images["images"]} == set(images["classes"])
    with Image.open(smoke / images["images"][-1]["path"]) as image:
        assert image.size == (SMOKE.frame_size, SMOKE.frame_size) and image.mode == "RGB"


def test_same_seed_same_benchmark(smoke: Path, tmp_path: Path) -> None:
    other = S.generate("smoke", 0, tmp_path / "b", progress=False)
    assert (other / "annotations.json").read_bytes() == (smoke / "annotations.json").read_bytes()
    assert (other / "manifest.json").read_bytes() == (smoke / "manifest.json").read_bytes()
    for vid in ("syn_tr_0000", "syn_te_0005"):
        assert np.array_equal(
            decode_video(other / "videos" / f"{vid}.mp4"), decode_video(smoke / "videos" / f"{vid}.mp4")
        )
    assert np.array_equal(decode_video(other / "clips/c01_0002.mp4"), decode_video(smoke / "clips/c01_0002.mp4"))


def test_other_seed_other_benchmark() -> None:
    a, b = S.make_plan("smoke", 0), S.make_plan("smoke", 1)
    assert [v.segments for v in a.videos] != [v.segments for v in b.videos]


def test_resume_after_deleting_files(smoke: Path, tmp_path: Path) -> None:
    copy = tmp_path / "c"
    shutil.copytree(smoke, copy)
    removed = [
        "videos/syn_tr_0003.mp4",
        "videos/syn_va_0001.mp4",
        "clips/c02_0000.mp4",
        "images/i01_0004.png",
        "manifest.json",
    ]
    for name in removed:
        (copy / name).unlink()
    S.generate("smoke", 0, copy, progress=False)
    assert (copy / "manifest.json").read_bytes() == (smoke / "manifest.json").read_bytes()
    for name in removed[:3]:
        assert np.array_equal(decode_video(copy / name), decode_video(smoke / name)), name
    assert np.array_equal(np.asarray(Image.open(copy / removed[3])), np.asarray(Image.open(smoke / removed[3])))
    assert sorted(_files(copy)) == sorted(_files(smoke))


def test_two_processes_write_the_same_bytes(smoke: Path, tmp_path: Path) -> None:
    out = S.generate("smoke", 0, tmp_path / "p", progress=False, workers=2)
    assert sorted(_files(out)) == sorted(_files(smoke))
    for name in _files(smoke):
        assert (out / name).read_bytes() == (smoke / name).read_bytes(), name


def test_interrupt_leaves_no_partial_files_and_resumes(
    smoke: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.data.video as video

    real_write = video.write_video
    calls = {"n": 0}

    def interrupted(path, frames, fps):  # Ctrl-C while the 6th file is being written
        calls["n"] += 1
        if calls["n"] == 6:
            with open(Path(path).parent / f".{Path(path).name}.x.tmp", "wb") as handle:
                handle.write(b"partial")  # what a SIGKILL'ed writer would leave behind
            raise KeyboardInterrupt
        return real_write(path, frames, fps)

    out = tmp_path / "d"
    monkeypatch.setattr(video, "write_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        S.generate("smoke", 0, out, progress=False)
    assert not (out / "manifest.json").exists()
    assert len(list((out / "videos").glob("*.mp4"))) == 5
    monkeypatch.setattr(video, "write_video", real_write)
    S.generate("smoke", 0, out, progress=False)
    assert not list(out.rglob("*.tmp"))
    assert np.array_equal(decode_video(out / "videos/syn_tr_0005.mp4"), decode_video(smoke / "videos/syn_tr_0005.mp4"))
    assert sorted(_files(out)) == sorted(_files(smoke))


def test_complete_dir_is_left_alone(smoke: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in smoke.rglob("*") if p.is_file()}
    assert main(["-q", "data", "synth", "--profile", "smoke", "--seed", "0", "--out", str(smoke), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in smoke.rglob("*") if p.is_file()} == before


def test_other_profile_or_seed_is_refused(smoke: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LofiError) as err:
        S.generate("smoke", 1, smoke, progress=False)
    message = str(err.value)
    assert str(smoke) in message and "seed 1" in message and "\n" not in message
    partial = tmp_path / "p"
    shutil.copytree(smoke, partial)
    (partial / "manifest.json").unlink()
    with pytest.raises(LofiError, match="profile 'default'"):
        S.generate("default", 0, partial, progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(LofiError, match="not empty"):
        S.generate("smoke", 0, tmp_path / "foreign", progress=False)
    with pytest.raises(LofiError, match="unknown synthetic profile 'huge'"):
        S.generate("huge", 0, tmp_path / "e", progress=False)
    assert main(["-q", "data", "synth", "--profile", "smoke", "--seed", "3", "--out", str(smoke)]) == 2
    assert "choose another --out" in capsys.readouterr().err


def test_structure_follows_the_real_annotations() -> None:
    structure = [np.array([[0.1, 0.3], [0.5, 0.95]])]
    rng = numpy_rng(0, "test")
    segments = S.sample_segments(structure, rng, num_frames=100, fps=10.0, jitter=0.0, min_frames=2)
    assert segments == ((1.0, 3.0), (5.0, 9.5))
    # a too-short real segment is widened to min_frames around its centre, inside the video
    short = S.sample_segments([np.array([[0.999, 1.0]])], rng, num_frames=50, fps=10.0, jitter=0.0, min_frames=2)
    assert short == ((4.8, 5.0),)
    plan = S.make_plan("default", 0)  # no pixels: cheap
    coverage = np.array([sum(e - s for s, e in v.segments) / (v.num_frames / plan.profile.fps) for v in plan.videos])
    counts = np.array([len(v.segments) for v in plan.videos])
    assert (coverage > 0.8).any() and (coverage < 0.2).any()  # long and short actions, as in ActivityNet
    assert (counts == 1).any() and (counts >= 3).any()


def _actor_mask(scene: S.Scene, size: int, radii: float) -> np.ndarray:
    c = (np.arange(size) + 0.5) / size
    a = scene.actor
    return np.hypot(c[None, :] - np.median(a.cx), c[:, None] - np.median(a.cy)) < radii * float(a.radius.mean())


def _silhouette(scene: S.Scene, size: int, supersample: int = 4) -> np.ndarray:
    """(T, size, size) fraction of each pixel covered by the actor (rendered from its shape only)."""
    side = size * supersample
    c = ((np.arange(side) + 0.5) / side).astype(np.float32)
    img = np.zeros((len(scene.t), side, side, 3), dtype=np.float32)
    a = scene.actor
    S._composite(img, S._Object(a.shape, np.ones(3), "flat", a.period, a.cx, a.cy, a.radius, a.angle), c, side)
    img = img[..., 0] / S.TEXTURE_MEAN
    return img.reshape(len(scene.t), size, supersample, size, supersample).mean(axis=(2, 4))


def test_the_action_is_texture_motion_inside_a_fixed_silhouette() -> None:
    """The mechanism: the same scene with the action on or off has the same actor position, outline and mean
    colour in every frame (the weak cue off), while the frame-to-frame change inside the silhouette is much larger
    with the action on. One frame therefore cannot tell; two frames can."""
    import dataclasses

    profile = dataclasses.replace(COLOUR_CUE, cue_fraction=0.0)
    plan = S.make_plan("colour-cue", 0)
    n = 12
    leaks = []
    for k, cls in enumerate(plan.classes):
        on = S.make_scene(numpy_rng(k, "mech"), cls, np.ones(n), profile)
        off = S.make_scene(numpy_rng(k, "mech"), cls, np.zeros(n), profile)
        for name in ("cx", "cy", "radius", "angle"):
            assert np.array_equal(getattr(on.actor, name), getattr(off.actor, name)), name
        f_on = S.render_scene(on, profile).astype(np.float32)
        f_off = S.render_scene(off, profile).astype(np.float32)
        cover = _silhouette(on, profile.frame_size)
        near = cover.copy()  # within one pixel of the silhouette (the renderer anti-aliases over one pixel)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near = np.maximum(near, np.roll(cover, (dy, dx), axis=(1, 2)))
        inner, outer = cover > 0.999, near < 0.001
        assert inner.sum(axis=(1, 2)).min() > 100
        # outline and surroundings: identical pixels; mean colour inside the silhouette: nearly equal
        assert np.array_equal(f_on[outer], f_off[outer]), cls.name
        mean_on = np.stack([f_on[t][inner[t]].mean(axis=0) for t in range(n)])
        mean_off = np.stack([f_off[t][inner[t]].mean(axis=0) for t in range(n)])
        # (a texture with about one period across the silhouette, e.g. rings on a ring, leaks up to ~10 %)
        leaks.append(np.abs(mean_on - mean_off).max() / 255)
        # two frames apart (one snippet's F = 2 frames at stride 2): the texture moved only with the action on
        both = inner[2:] & inner[:-2]
        d_on = np.abs(f_on[2:] - f_on[:-2]).mean(-1)[both].mean()
        d_off = np.abs(f_off[2:] - f_off[:-2]).mean(-1)[both].mean()
        assert d_on > 3.0 * d_off and d_on > 15.0, (cls.name, d_on, d_off)
    assert np.median(leaks) < 0.03 and max(leaks) < 0.11, leaks


def test_the_weak_cue_pales_the_actor_in_some_videos() -> None:
    """The partly reliable single-frame cue: with it, the actor is paler (brighter) inside the action; a fraction
    ``cue_fraction`` of the videos have it."""
    import dataclasses

    profile = dataclasses.replace(COLOUR_CUE, cue_fraction=1.0)
    cls = S.make_plan("colour-cue", 0).classes[0]
    n = 6
    on = S.render_scene(S.make_scene(numpy_rng(1, "cue"), cls, np.ones(n), profile), profile).astype(np.float32)
    scene = S.make_scene(numpy_rng(1, "cue"), cls, np.zeros(n), profile)
    off = S.render_scene(scene, profile).astype(np.float32)
    inner = _silhouette(scene, profile.frame_size) > 0.999
    assert on[inner].mean() > 1.2 * off[inner].mean()
    plan = S.make_plan("colour-cue", 0)
    cued = [np.ndim(S.video_scene(plan, v).actor.whiten) > 0 for v in plan.videos[:200]]
    assert abs(np.mean(cued) - COLOUR_CUE.cue_fraction) < 0.1
    default = S.make_plan("default", 0)  # v4: no single-frame cue in any video
    assert not any(np.ndim(S.video_scene(default, v).actor.whiten) for v in default.videos[:50])


@pytest.mark.parametrize("name", ["colour-cue", "default"])
def test_class_is_visible_in_appearance_alone(name: str) -> None:
    """Same scene, other class: only the actor's pixels change, and clearly, even in a frame without motion.
    The two classes of a pair differ by texture alone (colour-cue) or by colour alone (v4: the flickering checker
    is the same for every class, so the class cannot tell where the action is)."""
    profile = S.PROFILES[name]
    plan = S.make_plan(name, 0)
    names = [c.appearance for c in plan.classes]
    assert len(set(names)) == len(names)
    pair = plan.classes[0], plan.classes[1]
    assert pair[0].appearance.shape == pair[1].appearance.shape
    if name == "colour-cue":
        assert pair[0].appearance.colour == pair[1].appearance.colour
    else:
        assert {c.appearance.texture for c in (*plan.classes, *plan.clip_classes)} == {"flat"}
    still = np.zeros(4)
    for a, b in [pair, (plan.classes[0], plan.classes[2])]:
        scene_a = S.make_scene(numpy_rng(7, "t"), a, still, profile)
        scene_b = S.make_scene(numpy_rng(7, "t"), b, still, profile)
        fa = S.render_scene(scene_a, profile).astype(np.float32)
        fb = S.render_scene(scene_b, profile).astype(np.float32)
        changed = np.abs(fa - fb).mean(axis=(0, 3))
        actor = _actor_mask(scene_a, profile.frame_size, 1.0)
        assert changed[actor].mean() > 8.0, (a.name, b.name)
        assert np.all(changed[~_actor_mask(scene_a, profile.frame_size, 1.6)] < 1.0)


def _inside_stats(frames: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the luminance spread inside the silhouette (one frame), and per frame pair two apart the mean
    absolute change there (two frames: one snippet's F = 2 frames at stride 2)."""
    lum = frames.astype(np.float32).mean(-1)
    spread = np.array([lum[t][inner[t]].std() for t in range(len(lum))])
    both = inner[2:] & inner[:-2]
    change = np.array([np.abs(lum[t + 2] - lum[t])[both[t]].mean() for t in range(len(lum) - 2)])
    return spread, change


def test_v4_one_frame_says_nothing_two_frames_always_do() -> None:
    """v4's mechanism on rendered frames: frames inside and outside the actions have the same distribution of
    the checker's visibility (half on, half off: the spread inside the silhouette), while every pair of frames two
    apart differs inside an action and no pair differs outside one (away from the boundaries)."""
    profile = S.PROFILES["default"]
    cls = S.make_plan("default", 0).classes[0]
    n = 64
    env = S.motion_envelope(((2.0, 5.0),), n, profile.fps, profile.ramp_frames)  # frames 16-39 inside
    inside_spread, outside_spread, inside_change, outside_change = [], [], [], []
    for k in range(12):
        scene = S.make_scene(numpy_rng(k, "v4"), cls, env, profile)
        frames = S.render_scene(scene, profile)
        inner = _silhouette(scene, profile.frame_size) > 0.999
        spread, change = _inside_stats(frames, inner)
        inside_spread += list(spread[18:38])
        outside_spread += list(spread[:14]) + list(spread[42:])
        inside_change += list(change[18:36])
        outside_change += list(change[:12]) + list(change[42:])
    on = lambda xs: np.mean(np.array(xs) > 0.5 * np.max(inside_spread))
    # one frame: the checker is visible in half the frames inside, and in about half the frames outside (each gap
    # holds it on or off with equal chance; 12 scenes x 2 gaps)
    assert abs(on(inside_spread) - 0.5) < 0.05
    assert 0.2 < on(outside_spread) < 0.8
    # two frames: every pair inside changes more than any pair outside (where only the actor's slow wander moves
    # a held checker a fraction of a pixel), and typically far more
    assert min(inside_change) > 1.5 * max(outside_change), (min(inside_change), max(outside_change))
    assert np.median(inside_change) > 5.0 * np.median(outside_change)


def test_v4_flicker_state_and_twitch_are_exact() -> None:
    """The cue's time course: inside an action a square wave of ``flicker_frames`` frames (frames half a period
    apart always differ), outside a held level; the twitch displaces the actor only at the boundaries."""
    rng = numpy_rng(0, "state")
    env = np.zeros(60)
    env[10:30] = 1.0
    env[45:50] = 1.0
    for _ in range(20):
        state = S.flicker_state(env, 4, rng)
        inside = state[10:30]
        assert np.all(inside[2:] != inside[:-2]) and inside.mean() == 0.5
        for gap in (state[:10], state[30:45], state[50:]):
            assert len(set(gap.tolist())) == 1 and gap[0] in (0.0, 1.0)
    dx, dy = S.twitch_offsets(env, rng, 0.08, 2)
    moved = np.flatnonzero(np.hypot(dx, dy) > 0)
    assert moved.tolist() == [9, 10, 29, 30, 44, 45, 49, 50]
    assert np.allclose(np.hypot(dx, dy)[moved], 0.08)


def test_v4_fine_band_vanishes_at_half_resolution_coarse_survives() -> None:
    """S-LoFi's loss by construction: after the sampler's resize to 32^2 (r_s = 2) the frame-to-frame change of a
    flickering fine checker is mostly gone, that of a coarse one mostly kept."""
    import dataclasses

    import torch

    from harness.data.video import resize_frames

    base = S.PROFILES["default"]
    cls = S.make_plan("default", 0).classes[2]
    n = 8
    left = {}
    for band, period in zip(("fine", "coarse"), base.flicker_periods):
        profile = dataclasses.replace(base, flicker_periods=(period, period))
        scene = S.make_scene(numpy_rng(3, "band"), cls, np.ones(n), profile)
        frames = torch.from_numpy(S.render_scene(scene, profile))
        change = []
        for size in (64, 32):
            small = resize_frames(frames, torch.arange(n), (n, 1), size).reshape(n, 3, size, size).mean(1)
            inner = torch.nn.functional.interpolate(
                torch.from_numpy(_silhouette(scene, 64)[:, None]), size=(size, size), mode="area"
            )[:, 0]
            both = ((inner[2:] > 0.999) & (inner[:-2] > 0.999)).float()
            change.append(float(((small[2:] - small[:-2]).abs() * both).sum() / both.sum()))
        left[band] = change[1] / change[0]
    assert left["fine"] < 0.35 and left["coarse"] > 0.7, left


def test_v5_acp_clips_flicker_at_two_scales_and_still_clips_hold() -> None:
    """The `flicker-v5` design profile's ACP source: the ``flicker`` classes' checker flickers in every clip, at each of
    ``clip_flicker_periods`` in some clips (a flicker detector not tied to one checker size); the ``still``
    classes' checker holds on or off for the whole clip."""
    plan = S.make_plan("flicker-v5", 0)
    assert len(plan.profile.clip_flicker_periods) == 2
    periods: set[float] = set()
    for item in plan.clips:
        scene, _ = S.acp_clip_scene(plan, item)
        state = np.broadcast_to(scene.actor.cue_contrast, (plan.profile.clip_frames,))
        if item.label.endswith("-flicker"):
            # frames 6 apart (the pre-training sampler's pair) always differ
            assert np.all(state[6:] != state[:-6]), item.id
            periods.add(scene.actor.cue_period)
        else:
            assert item.label.endswith("-still") and len(set(state.tolist())) == 1, item.id
    assert periods == set(plan.profile.clip_flicker_periods)


def test_flicker_edge_margin_keeps_the_outline_still() -> None:
    """With ``flicker_edge_margin`` (the `flicker-v7` design profile) switching the checker on and off leaves the
    pixels the outline cuts (almost) unchanged and still changes the interior; without it (v4) the outline's pixels
    change too (the leak that survives the r_s = 2 resize: synth_cue_check.py, flicker_left_at_the_edge)."""
    plan = S.make_plan("flicker-v7", 0)
    change = {}
    for margin in (plan.profile.flicker_edge_margin, (0.0, 0.0)):
        profile = dataclasses.replace(plan.profile, flicker_edge_margin=margin)
        on = S.make_scene(numpy_rng(1, "edge"), plan.classes[0], np.ones(4), profile)
        off = S.make_scene(numpy_rng(1, "edge"), plan.classes[0], np.zeros(4), profile)
        diff = np.abs(S.render_scene(on, profile).astype(np.float32) - S.render_scene(off, profile)).max(-1)
        cover = _silhouette(on, profile.frame_size)
        edge, inner = (cover > 0.01) & (cover < 0.99), cover > 0.999
        change[margin] = (float(diff[edge].mean()), float(diff[inner].max()))
    (edge_faded, inner_faded), (edge_v4, inner_v4) = change[plan.profile.flicker_edge_margin], change[(0.0, 0.0)]
    assert inner_faded > 20 and inner_v4 > 20  # the interior flickers either way
    assert edge_faded < 0.05 * edge_v4, change  # the outline: still with the margin, flickering without


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_planned_segments_never_pass_the_video_end(profile: str) -> None:
    """Regression: rounding to centiseconds once put an end 5 ms past a 12.375 s video (default profile, seed 0)."""
    from harness.data.synthetic import PROFILES, make_plan

    for seed in range(3):
        plan = make_plan(PROFILES[profile], seed)
        for v in plan.videos:
            duration = round(v.num_frames / plan.profile.fps, 6)
            for start, end in v.segments:
                assert 0.0 <= start < end <= duration, (seed, v.id, start, end, duration)


def test_flicker_v8_fades_the_fine_band_only() -> None:
    """`flicker-v8`: the fine band's checker fades out towards the outline (nothing of it survives r_s = 2), the
    coarse band's reaches the outline (its edge flicker survives, as a coarse pattern's edge does); the ACP clips'
    finest scale takes the fine band's margin, the coarser the coarse band's."""
    plan = S.make_plan("flicker-v8", 0)
    fine, coarse = plan.profile.flicker_edge_margin
    assert fine > 0 and coarse == 0
    margin_by_band = {
        S.flicker_band(S.video_scene(plan, v), plan.profile): S.video_scene(plan, v).actor.cue_margin
        for v in plan.videos[:12]
    }
    assert margin_by_band == {"fine": fine, "coarse": coarse}
    clip_margin = {}
    for item in plan.clips[:40]:
        scene, _ = S.acp_clip_scene(plan, item)
        clip_margin[scene.actor.cue_period] = scene.actor.cue_margin
    assert clip_margin == dict(zip(plan.profile.clip_flicker_periods, (fine, coarse)))


@pytest.mark.parametrize(
    ("name", "clips"),
    [
        ("flicker-v10", 640),
        ("flicker-v11", 480),
        ("flicker-v12", 640),
        ("flicker-v15", 640),
        ("flicker-v16", 640),
        ("flicker-v17", 384),
        ("flicker-v18", 384),
        ("flicker-v19", 384),
        ("flicker-v20", 640),
        ("flicker-v22", 384),
        ("flicker-v23", 384),
        ("flicker-v24", 384),
        ("flicker-v25", 384),
    ],
)
def test_design_steps_change_only_the_acp_clips(name: str, clips: int) -> None:
    """The design steps that change the ACP clips (their number per class, their checker scale) or only the checker
    sizes (v16 on: a 20 px coarse band; v18 on: a 3 px fine band): the planned target videos and the ACP classes are
    the default's; only the number of clips differs."""
    plan, default = S.make_plan(name, 0), S.make_plan("default", 0)
    assert plan.classes == default.classes and plan.videos == default.videos
    assert plan.clip_classes == default.clip_classes and len(plan.clips) == clips


def test_twin_acp_clips_differ_only_in_the_flicker() -> None:
    """`clip_twins` (the `flicker-v24` design step): a still class's clip is its flicker twin's scene, pixel for pixel,
    on the frames where the twin's checker is in the still clip's held state, and differs on the others; the still
    clip's checker never changes; the flicker clips are v19's byte for byte."""
    plan, v19 = S.make_plan("flicker-v24", 0), S.make_plan("flicker-v19", 0)
    by_id = {c.id: c for c in plan.clips}
    stills = [c for c in plan.clips if c.label.endswith("-still")]
    assert len(stills) == len(plan.clips) // 2
    for still in stills[:3]:
        ci, j = still.id.split("_")
        twin = by_id[f"c{int(ci[1:]) - 1:02d}_{j}"]
        assert twin.label == still.label.removesuffix("-still") + "-flicker"
        scene, _ = S.acp_clip_scene(plan, still)
        assert np.ptp(scene.actor.cue_contrast) == 0  # held for the whole clip
        flicker, held = S.render_acp_clip(plan, twin).astype(int), S.render_acp_clip(plan, still).astype(int)
        twin_state = S.acp_clip_scene(plan, twin)[0].actor.cue_contrast
        same = twin_state == scene.actor.cue_contrast
        assert same.any() and (~same).any()
        assert np.abs(flicker[same] - held[same]).max() == 0
        assert all(np.abs(flicker[t] - held[t]).max() > 20 for t in np.flatnonzero(~same))
        assert np.array_equal(flicker, S.render_acp_clip(v19, twin))


def test_flicker_v9_changes_only_the_acp_classes() -> None:
    """`flicker-v9` (a design step): 8 flicker/still pairs of ACP classes at the same 320 clips; the target videos,
    their classes and segments are v7's."""
    v9, default = S.make_plan("flicker-v9", 0), S.make_plan("flicker-v7", 0)  # v9 is a step from v7
    assert v9.classes == default.classes and v9.videos == default.videos
    names = [c.name for c in v9.clip_classes]
    assert len(names) == 16 and len(v9.clips) == len(default.clips) == 320
    pairs = {n.rsplit("-", 1)[0] for n in names}
    assert len(pairs) == 8 and all(f"{p}-flicker" in names and f"{p}-still" in names for p in pairs)
    assert not pairs & {c.appearance.name for c in v9.classes}  # disjoint from the target classes


def test_two_octave_band_is_the_mean_of_its_two_checkers() -> None:
    """`flicker_octaves` (the `flicker-v13` design profile): a two-octave band's flicker (frame on minus frame off)
    is the mean of the flickers of the single checkers at its period and at twice it, pixel for pixel (up to the
    uint8 rounding), and each of those differs from it: both scales are in the picture."""
    import dataclasses

    base = S.PROFILES["flicker-v13"]
    assert base.flicker_octaves == (1, 2)
    cls = S.make_plan("flicker-v13", 0).classes[1]
    period = base.flicker_periods[1]

    def flicker(periods: tuple[float, float], octaves: tuple[int, int]) -> np.ndarray:
        profile = dataclasses.replace(base, flicker_periods=periods, flicker_octaves=octaves)
        frames = [
            S.render_scene(S.make_scene(numpy_rng(5, "octave"), cls, np.full(4, level), profile), profile)
            for level in (1.0, 0.0)
        ]
        return frames[0].astype(np.float32) - frames[1].astype(np.float32)

    both = flicker((period, period), (2, 2))
    one = flicker((period, period), (1, 1))
    twice = flicker((2 * period, 2 * period), (1, 1))
    assert np.abs(both).max() > 20  # it flickers
    assert np.abs(both - (one + twice) / 2).max() <= 1.5  # rounding of three uint8 renders
    for single in (one, twice):
        assert np.abs(both - single).mean() > 0.2 * np.abs(both).mean()


def test_v13_acp_clips_flicker_in_the_coarse_band_with_its_octaves() -> None:
    """`flicker-v13`: every ACP clip's checker is the coarse band's, both octaves; the target videos are the
    default's plan (only their rendering of the coarse band differs) and there are 80 clips per ACP class."""
    plan, default = S.make_plan("flicker-v13", 0), S.make_plan("default", 0)
    assert plan.classes == default.classes and plan.videos == default.videos and len(plan.clips) == 640
    coarse = plan.profile.flicker_periods[1]
    for item in plan.clips[:40]:
        scene, _ = S.acp_clip_scene(plan, item)
        assert (scene.actor.cue_period, scene.actor.cue_octaves) == (coarse, 2), item.id
    bands = {
        S.flicker_band(S.video_scene(plan, v), plan.profile): S.video_scene(plan, v).actor.cue_octaves
        for v in plan.videos[:12]
    }
    assert bands == {"fine": 1, "coarse": 2}
