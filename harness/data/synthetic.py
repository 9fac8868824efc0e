"""The built-in synthetic TAL benchmark: videos, ActivityNet-layout annotations and the two pre-training sources.

Design (``docs/synthetic.md``; generator v4, the ``flicker`` profiles): an "actor" whose shape x colour names the
class is visible for the whole video over a drifting background with always-moving distractors. The action is a
*flicker* of a checker on the actor (a fine or a coarse band, one per video): inside an action it switches on and
off every two frames, outside it holds, so one frame says nothing and two frames a snippet apart always differ
inside and never outside (``flicker_state``); the actor twitches at every boundary (``twitch_offsets``). The
segment layout of every video is copied (with jitter) from a real ActivityNet-1.3 training video
(``load_anet_structure``). The ACP source holds trimmed clips of *other* shape x colour classes in flicker/still
pairs (the default: twins that differ only in the flicker, ``clip_twins``), so its classifier needs a flicker
detector; the ICP source holds still images of shape x texture objects. The ``colour-cue`` profile keeps the v3
design (a texture scroll plus a single-frame paleness cue) as a control."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import __version__
from harness.errors import LofiError
from harness.io import atomic_path, write_json_atomic
from harness.report.strata import STRATA_FILE
from harness.seeding import numpy_rng

if TYPE_CHECKING:
    from harness.data.model import TALDataset

log = logging.getLogger(__name__)

# Bump when the rendered content or the plan changes: directories made by an older generator are then refused
# instead of being silently mixed with new files on resume.
GENERATOR_VERSION = 5


# --------------------------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthProfile:
    """Every size of the benchmark. Spatial quantities (``actor_radius``, ``texture_periods``) are fractions of
    the frame side, so the content looks the same at any ``frame_size``."""

    name: str
    num_classes: int  # target action classes
    num_training: int
    num_validation: int
    num_testing: int
    frame_size: int  # H = W, pixels
    fps: float
    min_frames: int  # video length is drawn uniformly from [min_frames, max_frames]
    max_frames: int
    num_clip_classes: int  # ACP source: classes disjoint from the target classes
    clips_per_class: int
    clip_frames: int
    num_image_classes: int  # ICP source
    images_per_class: int
    supersample: int = 2  # render at supersample x the size, then box-average (anti-aliased edges and stripes)
    ramp_frames: float = 2.0  # the scroll speed ramps in/out over this many frames, centred on each boundary
    boundary_jitter: float = 0.01  # sd of the jitter added to the real relative boundaries (fraction of video)
    min_segment_frames: int = 2
    max_distractors: int = 2
    actor_radius: tuple[float, float] = (0.2, 0.28)
    # fine, medium, coarse (3.8 / 5.8 / 9 px at 64^2): r_s = 2 takes the fine one below Nyquist, r_s = sqrt 2 and
    # r_s = 2 thin the medium one; the coarse one survives every reduction of the paper
    texture_periods: tuple[float, float, float] = (0.08, 0.12, 0.18)
    texture_contrast: float = 0.7  # shade = 0.6 + contrast * (t - 1/2): the mean brightness never depends on it
    # the weak appearance cue: in this fraction of videos the actor's colour moves this fraction of the way to
    # white inside the actions (paler, brighter); one frame shows it, the other videos show nothing in one frame
    cue_fraction: float = 0.5
    cue_whiten: float = 0.7
    fidget: float = 0.0  # idle positional jitter, always on, in actor radii (v2: 0.12)
    # Which cue marks the action (docs/synthetic.md): "flicker" (v4, the default profiles) or "scroll" (v3, the
    # `colour-cue` control profile: texture scroll + the single-frame paleness above).
    cue: str = "flicker"
    # v4: a checker on the actor whose contrast switches on and off every flicker_frames / 2 frames inside the
    # actions and holds (on or off, per gap) outside; per video one band: fine (5 px at 64^2: the anti-aliased
    # resize to 32^2 leaves ~1/4 of its flicker) or coarse (14 px: ~0.85 survives every reduction)
    flicker_periods: tuple[float, float] = (0.078125, 0.21875)
    flicker_frames: int = 4
    flicker_contrast: float = 1.0
    # v4: at every annotated boundary the actor twitches (is displaced by this fraction of the side) for
    # twitch_frames frames: a brief event that marks the boundary to the frame
    twitch: float = 0.08
    twitch_frames: int = 2
    # The checker periods of the ACP clips' flicker, one drawn per clip (empty: the coarse band only, as in v4).
    # Kinetics shows motion at many scales; clips at two scales give the frozen encoder a flicker detector that
    # is not tied to one checker size (the `flicker-v5` design profile; docs/synthetic.md, "The next design step").
    clip_flicker_periods: tuple[float, ...] = ()
    # Per band (as flicker_periods; the ACP clips as clip_flicker_periods): the flicker checker fades out towards the
    # actor's outline, full contrast deeper than this fraction of the side (0: up to the outline, as in v4).
    # Switching a checker on and off changes the average of the pixels the outline cuts, which the r_s = 2 resize
    # keeps (synth_cue_check.py, flicker_left_at_the_edge): a band with a margin has nothing left at 32^2.
    flicker_edge_margin: tuple[float, ...] = (0.0, 0.0)
    # Per band (as flicker_periods): how many octaves the flicker checker spans (1: the band's period alone; 2: that
    # period and twice it, each at half the contrast). Natural texture spans scales, so what an encoder learns from
    # a two-octave band at half the resolution still fires on it at full resolution (the `flicker-v13` design).
    # ACP clips drawn at the coarse band's period (clip_flicker_periods empty) take the coarse band's octaves.
    flicker_octaves: tuple[int, ...] = (1, 1)
    # ACP clips in twins (the `flicker-v24` design step): each clip of a still class is its flicker twin's scene
    # (same background, distractors, actor path and colour), only with the checker held on or off. The pair's two
    # classes then differ in nothing but the flicker, so the classifier cannot tell them apart by memorising scenes
    # (what 48 independent clips per class allow: the frozen detector's seed lottery, docs/synthetic.md).
    clip_twins: bool = False
    # The actor's radius in the ACP clips (None: ``actor_radius``, as in the target videos). A larger actor carries
    # more flickering checker past the edge margin: more signal per clip for the classifier's flicker detector.
    clip_actor_radius: tuple[float, float] | None = None


_PROFILES: dict[str, SynthProfile] = {
    "smoke": SynthProfile(
        name="smoke",
        num_classes=4,
        num_training=12,
        num_validation=6,
        num_testing=6,
        frame_size=32,
        fps=8.0,
        min_frames=48,
        max_frames=48,
        num_clip_classes=4,
        clips_per_class=6,
        clip_frames=12,  # pre-training samples 2 frames 6 apart: the flicker always shows
        num_image_classes=4,
        images_per_class=8,
        flicker_periods=(0.125, 0.25),  # 4 / 8 px at 32^2: smoke is for CI, not for measuring
    ),
    # v4b, the default until v7 (docs/synthetic.md: its test run, then the design steps v4c-v8 on validation)
    "flicker-v4": SynthProfile(
        name="flicker-v4",
        num_classes=8,
        num_training=160,
        num_validation=60,
        num_testing=240,
        frame_size=64,
        fps=8.0,
        min_frames=96,
        max_frames=128,
        num_clip_classes=8,
        clips_per_class=40,
        clip_frames=12,  # pre-training samples 2 frames 6 apart: the flicker always shows
        num_image_classes=8,
        images_per_class=100,
    ),
}
# The v3 control benchmark: v4's sizes, a 16-frame ACP clip, the texture scroll and paleness cue.
_PROFILES["colour-cue"] = replace(_PROFILES["flicker-v4"], name="colour-cue", clip_frames=16, cue="scroll")
# v5 (docs/synthetic.md, "The next design step"; validation only): ACP clips that flicker at two checker scales,
# 7 and 14 px at 64^2, one per clip: a flicker detector not tied to one checker size.
_PROFILES["flicker-v5"] = replace(_PROFILES["flicker-v4"], name="flicker-v5", clip_flicker_periods=(0.109375, 0.21875))
# v7: the fine checker at 4 px (2 px at 32^2: the Nyquist limit) and faded out towards the outline over 5 px, so
# that nothing of the fine flicker survives the r_s = 2 resize, edges included; the coarse band faded alike.
_PROFILES["flicker-v7"] = replace(
    _PROFILES["flicker-v5"], name="flicker-v7", flicker_edge_margin=(0.08, 0.08), flicker_periods=(0.0625, 0.21875)
)
# v8 (validation only): v7 with the margin on the fine band only. The coarse checker's outline flicker survives
# r_s = 2 as a coarse pattern's edge does in real video; it gave S-LoFi its foothold in v5/v6, which v7 removed
# from both bands (S then learnt neither).
_PROFILES["flicker-v8"] = replace(_PROFILES["flicker-v7"], name="flicker-v8", flicker_edge_margin=(0.08, 0.0))
# v9 (validation only; docs/synthetic.md, "After the v7 test run"): v7 with 8 flicker/still pairs of ACP classes
# instead of 4, at the same 320 clips. The frozen ACP encoder carried less (+0.5 over the floor vs v7's +2.9).
_PROFILES["flicker-v9"] = replace(_PROFILES["flicker-v7"], name="flicker-v9", num_clip_classes=16, clips_per_class=20)
# v10 / v11 (validation only; docs/synthetic.md, "After the v7 test run"): v7 with 80 / 60 clips per ACP class.
# v10's frozen ACP encoder carries the cue in every seed and both bands (+13 over the floor), and S-LoFi then keeps
# it (S = T); v11: ACP +1.9 and S learns in 2 of 3 seeds anyway.
_PROFILES["flicker-v10"] = replace(_PROFILES["flicker-v7"], name="flicker-v10", clips_per_class=80)
_PROFILES["flicker-v11"] = replace(_PROFILES["flicker-v7"], name="flicker-v11", clips_per_class=60)
# v12 (validation only): v10's 80 clips per class, every one flickering at the coarse 14 px scale (as in v4): the
# frozen ACP encoder carries the coarse band (+11 over the floor), S-LoFi is still a seed lottery.
_PROFILES["flicker-v12"] = replace(
    _PROFILES["flicker-v7"], name="flicker-v12", clips_per_class=80, clip_flicker_periods=(0.21875,)
)
# v13 (validation only): v12's 80 ACP clips per class at the coarse band, and the coarse band spans two octaves
# (14 and 28 px at 64^2, so 7 and 14 px at 32^2): an encoder trained at 32^2 keeps a detector that fires at 64^2.
# The fine band stays one 4 px scale that the r_s = 2 resize erases.
_PROFILES["flicker-v13"] = replace(
    _PROFILES["flicker-v7"], name="flicker-v13", clips_per_class=80, clip_flicker_periods=(), flicker_octaves=(1, 2)
)
# v14 (validation only): v13's target videos (two-octave coarse band), v12's ACP clips (one 14 px checker at full
# contrast, 80 per class): the frozen encoder's 14 px detector meets the coarse band's finer octave at 64^2 and its
# coarser one at 32^2.
_PROFILES["flicker-v14"] = replace(_PROFILES["flicker-v13"], name="flicker-v14", clip_flicker_periods=(0.21875,))
# v15 (validation only): v7's target videos, ACP clips that flicker at the fine 4 px scale only (its margin), 80 per
# class: the frozen encoder carries a fine-band detector, which has nothing to fire on at 32^2.
_PROFILES["flicker-v15"] = replace(
    _PROFILES["flicker-v7"], name="flicker-v15", clips_per_class=80, clip_flicker_periods=(0.0625,)
)
# v16 (validation only): v15 with the coarse band at 20 px (10 px at 32^2: 2.5x the ACP's fine detector, no foothold
# for an encoder trained at 32^2).
_PROFILES["flicker-v16"] = replace(_PROFILES["flicker-v15"], name="flicker-v16", flicker_periods=(0.0625, 0.3125))
# v17 (validation only, after the v16 test run): v16 with 48 ACP clips per class (a weaker frozen fine detector, and
# 0.6x the pre-training cost).
_PROFILES["flicker-v17"] = replace(_PROFILES["flicker-v16"], name="flicker-v17", clips_per_class=48)
# v18 (validation only): v17 with the fine band and the ACP clips at 3 px (1.5 px at 32^2, past the resize's
# Nyquist limit: nothing of it is left for an encoder trained at 32^2 to learn from).
_PROFILES["flicker-v18"] = replace(
    _PROFILES["flicker-v17"], name="flicker-v18", flicker_periods=(0.046875, 0.3125), clip_flicker_periods=(0.046875,)
)
# v19 (validation only, after v18's frozen 3 px detector carried nothing): v18's target videos (fine band at 3 px),
# v17's ACP clips (48 per class at 4 px).
_PROFILES["flicker-v19"] = replace(_PROFILES["flicker-v18"], name="flicker-v19", clip_flicker_periods=(0.0625,))
# v20 (validation only, after the v19 test run's negative control: ACP on seeds 10-12 carried nothing): v19 with
# v16's 80 ACP clips per class.
_PROFILES["flicker-v20"] = replace(_PROFILES["flicker-v19"], name="flicker-v20", clips_per_class=80)
# v22 (validation only): v19's target videos, its 48 ACP clips per class flickering at the coarse band's 20 px
# instead of 4 px (a frozen detector for the coarse band that has nothing to fire on in the 3 px fine band).
_PROFILES["flicker-v22"] = replace(_PROFILES["flicker-v19"], name="flicker-v22", clip_flicker_periods=(0.3125,))
# v23 (validation only): v19's target videos and 48 ACP clips per class, each drawn at 4 or 20 px with equal chance
# (203 and 181 of the 384 at seed 0): v22's coarse detector for the ACP target, a weaker fine start for T.
_PROFILES["flicker-v23"] = replace(_PROFILES["flicker-v19"], name="flicker-v23", clip_flicker_periods=(0.0625, 0.3125))
# v24 (validation only, after the v19 test run): v19 with its ACP clips in twins (``clip_twins``): 48 scenes per
# flicker/still pair, each rendered flickering and held still. Meant to end the frozen detector's seed lottery at
# v19's cost.
_PROFILES["flicker-v24"] = replace(_PROFILES["flicker-v19"], name="flicker-v24", clip_twins=True)
# v25 (validation only): v24 with a larger actor in the ACP clips (radius 0.30-0.38 of the side instead of
# 0.20-0.28: about twice the flickering area inside the edge margin). v24's twin classifier learnt its detector in 1 of
# 6 seeds in 24 epochs (lr 0.1 or batch 16: no better).
_PROFILES["flicker-v25"] = replace(_PROFILES["flicker-v24"], name="flicker-v25", clip_actor_radius=(0.3, 0.38))
# The default benchmark: v25's content (chosen on validation; docs/synthetic.md, "v25 becomes the default"); the
# previous defaults stay available as `flicker-v19`, `flicker-v16` and `flicker-v7`.
_PROFILES["default"] = replace(_PROFILES["flicker-v25"], name="default")
PROFILES: Mapping[str, SynthProfile] = MappingProxyType(_PROFILES)


def get_profile(name: str) -> SynthProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise LofiError(f"unknown synthetic profile '{name}'; use one of: {', '.join(PROFILES)}") from None


# --------------------------------------------------------------------------------------------------------------
# The generative vocabulary
# --------------------------------------------------------------------------------------------------------------

SHAPES = ("disc", "triangle", "square", "hexagon", "ring", "cross", "bar")
COLOURS: Mapping[str, tuple[float, float, float]] = MappingProxyType(
    {
        "red": (0.92, 0.16, 0.14),
        "orange": (0.96, 0.56, 0.10),
        "yellow": (0.95, 0.90, 0.22),
        "green": (0.20, 0.78, 0.26),
        "cyan": (0.16, 0.84, 0.90),
        "blue": (0.20, 0.34, 0.96),
        "purple": (0.62, 0.26, 0.90),
        "white": (0.95, 0.95, 0.95),
    }
)
TEXTURES = ("stripes0", "stripes45", "stripes90", "stripes135", "checker", "rings")
PERIOD_NAMES = ("fine", "medium", "coarse")
# The action: the texture scrolls inside the fixed silhouette (stripes across themselves, checkers along one
# axis, rings outwards or inwards) at this many texture periods per frame. Two frames 2 apart (one snippet's
# F = 2 frames at stride 2) differ by 0.3-0.7 periods: far from a whole period, so the change is always visible.
SCROLL_SPEEDS = (0.15, 0.2, 0.28, 0.35)
TEXTURE_MEAN = 0.6  # mean shade of every texture (and of "flat")


@dataclass(frozen=True)
class Appearance:
    shape: str
    colour: str
    texture: str  # one of TEXTURES, or "flat"
    period: str  # one of PERIOD_NAMES

    @property
    def name(self) -> str:
        if self.texture == "flat":  # v4: shape x colour alone name the class
            return f"{self.colour}-{self.shape}"
        return f"{self.colour}-{self.shape}-{self.texture}-{self.period}"


@dataclass(frozen=True)
class Motion:
    """The class's action: its texture scrolls at ``speed`` texture periods per frame (the sign is the direction)."""

    speed: float


@dataclass(frozen=True)
class ActionClass:
    name: str
    appearance: Appearance
    motion: Motion


@dataclass(frozen=True)
class ImageClass:
    name: str
    shape: str
    texture: str
    period: str


@dataclass(frozen=True)
class PlannedVideo:
    id: str
    subset: str
    label: str
    num_frames: int
    segments: tuple[tuple[float, float], ...]  # seconds, sorted, as written to annotations.json


@dataclass(frozen=True)
class PlannedItem:
    """One ACP clip or ICP image."""

    id: str
    path: str  # relative to the output folder
    label: str


@dataclass(frozen=True)
class SynthPlan:
    profile: SynthProfile
    seed: int
    classes: tuple[ActionClass, ...]
    clip_classes: tuple[ActionClass, ...]
    image_classes: tuple[ImageClass, ...]
    videos: tuple[PlannedVideo, ...]
    clips: tuple[PlannedItem, ...]
    images: tuple[PlannedItem, ...]
    class_by_name: Mapping[str, ActionClass] = field(repr=False, default_factory=dict)


def _draw_motion(rng: np.random.Generator) -> Motion:
    speed = SCROLL_SPEEDS[int(rng.integers(len(SCROLL_SPEEDS)))]
    return Motion(speed=speed if rng.random() < 0.5 else -speed)


def make_classes(
    profile: SynthProfile, seed: int
) -> tuple[tuple[ActionClass, ...], tuple[ActionClass, ...], tuple[ImageClass, ...]]:
    """Target classes, ACP (clip) classes and ICP (image) classes.

    Target classes come in pairs sharing shape and colour and differing in texture, so part of the class
    information sits in fine texture, which lower resolutions blur gradually. Clip classes are other
    (shape, colour, texture) combinations of the same vocabulary; their scroll speeds are drawn from the same list.
    Every class is textured ("flat" has nothing to scroll): the action is visible on every actor.

    With the v4 ``flicker`` cue the class is shape x colour only (the actor is flat; the flickering checker is the
    same for every class): target classes come in pairs sharing the shape, clip classes are other combinations.
    """
    if profile.cue == "flicker":
        return _make_flat_classes(profile, seed)
    rng = numpy_rng(seed, "synthetic", "classes")
    bases = [(s, c) for s in SHAPES for c in COLOURS]
    textures = [(t, p) for t in TEXTURES for p in PERIOD_NAMES]
    n_total = profile.num_classes + profile.num_clip_classes
    if profile.num_classes < 1 or n_total > len(bases) * len(textures):
        raise LofiError(f"profile '{profile.name}': {n_total} classes do not fit the vocabulary; use fewer")
    base_order = rng.permutation(len(bases))
    targets: list[ActionClass] = []
    used: set[Appearance] = set()
    for i in range(profile.num_classes):
        shape, colour = bases[base_order[i // 2]]
        while True:
            texture, period = textures[rng.integers(len(textures))]
            appearance = Appearance(shape, colour, texture, period)
            if appearance not in used:
                break
        used.add(appearance)
        targets.append(ActionClass(appearance.name, appearance, _draw_motion(rng)))
    others: list[ActionClass] = []
    while len(others) < profile.num_clip_classes:
        shape, colour = bases[rng.integers(len(bases))]
        texture, period = textures[rng.integers(len(textures))]
        appearance = Appearance(shape, colour, texture, period)
        if appearance in used:
            continue
        used.add(appearance)
        others.append(ActionClass(appearance.name, appearance, _draw_motion(rng)))
    objects = [(s, t, p) for s in SHAPES for t in (*TEXTURES, "flat") for p in PERIOD_NAMES]
    if profile.num_image_classes > len(objects):
        raise LofiError(f"profile '{profile.name}': num_image_classes > {len(objects)}; use fewer")
    image_classes = tuple(
        ImageClass(f"{s}-{t}-{p}", s, t, p)
        for s, t, p in (objects[j] for j in rng.permutation(len(objects))[: profile.num_image_classes])
    )
    return tuple(targets), tuple(others), image_classes


def _make_flat_classes(
    profile: SynthProfile, seed: int
) -> tuple[tuple[ActionClass, ...], tuple[ActionClass, ...], tuple[ImageClass, ...]]:
    rng = numpy_rng(seed, "synthetic", "classes", "flat")
    colours = list(COLOURS)
    n_total = profile.num_classes + profile.num_clip_classes
    if profile.num_classes < 1 or n_total > len(SHAPES) * len(colours):
        raise LofiError(f"profile '{profile.name}': {n_total} classes do not fit the vocabulary; use fewer")
    shapes = rng.permutation(len(SHAPES))
    used: set[tuple[str, str]] = set()
    targets: list[ActionClass] = []
    for i in range(profile.num_classes):
        shape = SHAPES[shapes[(i // 2) % len(SHAPES)]]
        while (shape, colour := colours[rng.integers(len(colours))]) in used:
            pass
        used.add((shape, colour))
        a = Appearance(shape, colour, "flat", "medium")
        targets.append(ActionClass(a.name, a, Motion(0.0)))
    # ACP (Kinetics-like) classes come in pairs of one shape x colour: one whose coarse checker flickers all clip
    # long, one whose checker holds still. Like Kinetics, where motion tells some classes apart, recognising them
    # needs a motion detector, which the frozen encoder then brings to localisation, for the coarse band only.
    others: list[ActionClass] = []
    while len(others) < profile.num_clip_classes:
        shape, colour = SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))]
        if (shape, colour) in used:
            continue
        used.add((shape, colour))
        a = Appearance(shape, colour, "flat", "medium")
        for flicker in (True, False)[: profile.num_clip_classes - len(others)]:
            others.append(ActionClass(f"{a.name}-{'flicker' if flicker else 'still'}", a, Motion(float(flicker))))
    objects = [(s, t, p) for s in SHAPES for t in (*TEXTURES, "flat") for p in PERIOD_NAMES]
    image_classes = tuple(
        ImageClass(f"{s}-{t}-{p}", s, t, p)
        for s, t, p in (objects[j] for j in rng.permutation(len(objects))[: profile.num_image_classes])
    )
    return tuple(targets), tuple(others), image_classes


# --------------------------------------------------------------------------------------------------------------
# Temporal structure from real ActivityNet annotations
# --------------------------------------------------------------------------------------------------------------


def sample_segments(
    structure: Sequence[np.ndarray],
    rng: np.random.Generator,
    num_frames: int,
    fps: float,
    jitter: float,
    min_frames: int,
) -> tuple[tuple[float, float], ...]:
    """Relative segments of one random real video, jittered, scaled to this video, in seconds (0.01 s grid)."""
    rel = np.array(structure[int(rng.integers(len(structure)))], dtype=np.float64).reshape(-1, 2)
    rel = np.clip(rel + rng.normal(0.0, jitter, rel.shape), 0.0, 1.0)
    rel = np.sort(rel, axis=1)  # jitter may swap the ends of a very short segment
    min_len = min(1.0, min_frames / num_frames)
    short = rel[:, 1] - rel[:, 0] < min_len
    centre = rel[short].mean(axis=1)
    start = np.clip(centre - min_len / 2, 0.0, 1.0 - min_len)
    rel[short] = np.stack([start, start + min_len], axis=1)
    rel = rel[np.lexsort((rel[:, 1], rel[:, 0]))]
    duration = num_frames / fps
    seconds = np.round(rel * duration, 2)
    # rounding to centiseconds must never push an end past the video's end (12.375 s rounds up to 12.38)
    seconds[:, 1] = np.minimum(seconds[:, 1], np.floor(duration * 100) / 100)
    return tuple((float(s), float(e)) for s, e in seconds)


def _video_ids(subset: str, count: int) -> list[str]:
    short = {"training": "tr", "validation": "va", "testing": "te"}[subset]
    return [f"syn_{short}_{i:04d}" for i in range(count)]


def make_plan(profile: SynthProfile | str, seed: int, structure: Sequence[np.ndarray] | None = None) -> SynthPlan:
    """Everything but the pixels: classes, videos (subset, label, length, segments), clips, images."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    if structure is None:
        structure = _load_structure()
    structure = [s for s in structure if len(s) > 0]
    if not structure:
        raise LofiError("the ActivityNet structure file holds no segments; reinstall lofi-bench")
    classes, clip_classes, image_classes = make_classes(profile, seed)
    videos: list[PlannedVideo] = []
    for subset, count in (
        ("training", profile.num_training),
        ("validation", profile.num_validation),
        ("testing", profile.num_testing),
    ):
        rng = numpy_rng(seed, "synthetic", "videos", subset)
        # balanced labels: every class occurs as evenly as the count allows, in random order
        labels = np.resize(np.arange(len(classes)), count)
        labels = labels[rng.permutation(count)]
        for vid, label in zip(_video_ids(subset, count), labels):
            num_frames = int(rng.integers(profile.min_frames, profile.max_frames + 1))
            segments = sample_segments(
                structure, rng, num_frames, profile.fps, profile.boundary_jitter, profile.min_segment_frames
            )
            videos.append(PlannedVideo(vid, subset, classes[int(label)].name, num_frames, segments))
    clips = tuple(
        PlannedItem(f"c{ci:02d}_{j:04d}", f"clips/c{ci:02d}_{j:04d}.mp4", cls.name)
        for ci, cls in enumerate(clip_classes)
        for j in range(profile.clips_per_class)
    )
    images = tuple(
        PlannedItem(f"i{ci:02d}_{j:04d}", f"images/i{ci:02d}_{j:04d}.png", cls.name)
        for ci, cls in enumerate(image_classes)
        for j in range(profile.images_per_class)
    )
    by_name = MappingProxyType({c.name: c for c in (*classes, *clip_classes)})
    return SynthPlan(profile, seed, classes, clip_classes, image_classes, tuple(videos), clips, images, by_name)


def _load_structure() -> list[np.ndarray]:
    from harness.data.annotations import load_anet_structure

    return load_anet_structure()


# --------------------------------------------------------------------------------------------------------------
# Rendering (vectorised over the whole clip: arrays are (T, S, S) or (T, S, S, 3) float32)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: np.ndarray  # (3,)
    texture: str
    period: float  # frame units
    cx: np.ndarray  # (T,) frame units
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray  # radians
    phase: np.ndarray | float = 0.0  # (T,) texture scroll, in texture periods
    contrast: np.ndarray | float = 0.5  # texture contrast
    whiten: np.ndarray | float = 0.0  # (T,) fraction of the way from ``colour`` to white (the weak cue)
    cue_contrast: np.ndarray | float = 0.0  # (T,) contrast of the v4 flicker checker (0: off)
    cue_margin: float = 0.0  # the checker fades out within this distance of the outline (fraction of the side)
    cue_period: float = 0.0625  # frame units
    cue_octaves: int = 1  # the checker at cue_period, 2 cue_period, ... each at 1 / cue_octaves of the contrast


def motion_envelope(
    segments: Sequence[tuple[float, float]], num_frames: int, fps: float, ramp_frames: float
) -> np.ndarray:
    """(T,) amplitude of the class motion in [0, 1]: 1 inside segments, 0 outside, a smoothstep ramp of
    ``ramp_frames`` centred on each boundary (the annotated boundary is the half-amplitude point)."""
    t = (np.arange(num_frames) + 0.5) / fps
    env = np.zeros(num_frames)
    width = max(ramp_frames, 1e-6) / fps

    def step(z: np.ndarray) -> np.ndarray:
        z = np.clip(z, 0.0, 1.0)
        return z * z * (3 - 2 * z)

    for start, end in segments:
        env = np.maximum(env, step((t - start) / width + 0.5) * step((end - t) / width + 0.5))
    return env


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in radii, negative inside) of a unit-radius shape in its local coordinates."""
    if shape == "disc":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.7) - 0.3
    if shape == "bar":
        return np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.45)
    if shape == "cross":
        arm_h = np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.33)
        arm_v = np.maximum(np.abs(u) - 0.33, np.abs(v) - 1.0)
        return np.minimum(arm_h, arm_v)
    sides = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
    apothem = {3: 0.6, 4: 0.8, 6: 0.9}[sides]
    d = None
    for k in range(sides):
        theta = 2 * math.pi * k / sides + math.pi / 2
        h = u * math.cos(theta) + v * math.sin(theta)
        d = h if d is None else np.maximum(d, h)
    return d - apothem


def _shade(
    texture: str, u: np.ndarray, v: np.ndarray, period: float, phase: np.ndarray | float = 0.0, contrast: float = 0.5
) -> np.ndarray | float:
    """Brightness ``TEXTURE_MEAN + contrast * (t - 1/2)`` of a texture in local coordinates (frame units), t in
    [0, 1] symmetric about 1/2, scrolled by ``phase`` periods ((T, 1, 1) or a scalar). The texture's mean, and so
    the actor's mean colour, depends on neither phase nor contrast."""
    w = np.float32(2 * math.pi / period)
    if texture == "flat":
        return TEXTURE_MEAN
    p = np.float32(2 * math.pi) * np.asarray(phase, dtype=np.float32)
    if texture.startswith("stripes"):
        theta = math.radians(int(texture[len("stripes") :]))
        t = 0.5 + 0.5 * np.sin(w * (u * np.float32(math.cos(theta)) + v * np.float32(math.sin(theta))) - p)
    elif texture == "checker":  # scrolls along one axis (along the diagonal, half a period would look the same)
        t = 0.5 + 0.5 * np.clip(np.sin(w * u - p) * np.sin(w * v) * 1.8, -1.0, 1.0)
    elif texture == "rings":  # rings travel outwards (or inwards)
        t = 0.5 + 0.5 * np.sin(w * np.sqrt(u * u + v * v) - p)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return TEXTURE_MEAN + np.float32(contrast) * (t - np.float32(0.5))


def _composite(img: np.ndarray, obj: _Object, coords: np.ndarray, pixels_per_unit: float) -> None:
    """Draw ``obj`` over ``img`` (T, S, S, 3) in place, anti-aliased over one rendered pixel."""
    f32 = np.float32
    dx = coords[None, None, :] - obj.cx.astype(f32)[:, None, None]  # (T, 1, S)
    dy = coords[None, :, None] - obj.cy.astype(f32)[:, None, None]  # (T, S, 1)
    c = np.cos(obj.angle).astype(f32)[:, None, None]
    s = np.sin(obj.angle).astype(f32)[:, None, None]
    u = dx * c + dy * s
    v = dy * c - dx * s
    r = obj.radius.astype(f32)[:, None, None]
    dist = _sdf(obj.shape, u / r, v / r) * r
    alpha = np.clip(f32(0.5) - dist * f32(pixels_per_unit), 0.0, 1.0)
    phase = np.asarray(obj.phase, dtype=f32)
    shade = _shade(obj.texture, u, v, obj.period, phase.reshape(-1, 1, 1) if phase.ndim else phase, obj.contrast)
    cue = np.asarray(obj.cue_contrast, dtype=f32)
    if cue.ndim:  # the v4 flicker: a mean-preserving checker whose contrast switches with time
        # a mean of mean-preserving checkers, one per octave (one octave: the same bits as the checker alone)
        octaves = [_shade("checker", u, v, obj.cue_period * 2**k, 0.0, 1.0) for k in range(obj.cue_octaves)]
        checker = sum(o - f32(TEXTURE_MEAN) for o in octaves) / f32(obj.cue_octaves)
        if obj.cue_margin > 0:  # a smoothstep from the outline to the margin: no sharp step for the resize to keep
            w = np.clip(-dist / f32(obj.cue_margin), 0.0, 1.0)
            checker = checker * (w * w * (f32(3.0) - f32(2.0) * w))
        shade = shade + cue.reshape(-1, 1, 1) * checker
    colour = obj.colour.astype(f32)
    whiten = np.asarray(obj.whiten, dtype=f32)
    if whiten.ndim:
        colour = colour + whiten.reshape(-1, 1, 1, 1) * (f32(1.0) - colour)  # (T, 1, 1, 3)
    alpha = alpha[..., None]
    img *= 1.0 - alpha
    img += alpha * (np.asarray(shade, dtype=f32)[..., None] if np.ndim(shade) else f32(shade)) * colour


def _background(rng: np.random.Generator, t: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Smooth noise (a sum of slowly drifting low-frequency gratings) mapped onto a per-video 2-colour palette."""
    num = 4
    freq = rng.uniform(0.6, 2.2, num) * rng.choice([-1.0, 1.0], num)
    angle = rng.uniform(0, 2 * math.pi, num)
    phase = rng.uniform(0, 2 * math.pi, num)
    drift = rng.uniform(0.05, 0.25, num) * rng.choice([-1.0, 1.0], num)  # cycles per second
    grey = rng.uniform(0.25, 0.6)
    palette = grey + 0.5 * (rng.uniform(0.0, 1.0, (2, 3)) - grey)  # desaturated towards grey
    y, x = coords[:, None], coords[None, :]
    noise = np.zeros((len(t), len(coords), len(coords)), dtype=np.float32)
    for k in range(num):
        spatial = 2 * math.pi * freq[k] * (x * math.cos(angle[k]) + y * math.sin(angle[k])) + phase[k]
        temporal = 2 * math.pi * drift[k] * t
        # sin(a + b) = sin a cos b + cos a sin b: two outer products instead of a (T, S, S) sine
        noise += np.sin(spatial)[None].astype(np.float32) * np.cos(temporal)[:, None, None].astype(np.float32) + np.cos(
            spatial
        )[None].astype(np.float32) * np.sin(temporal)[:, None, None].astype(np.float32)
    mix = 0.5 + 0.5 * np.tanh(noise * np.float32(0.8))
    pal = palette.astype(np.float32)
    return pal[0] + mix[..., None] * (pal[1] - pal[0])


def _reflect(z: np.ndarray, low: float, high: float) -> np.ndarray:
    """Bounce a coordinate between two walls (a triangle wave)."""
    f = np.mod((z - low) / (high - low), 2.0)
    return low + (high - low) * np.where(f > 1.0, 2.0 - f, f)


def _distractors(rng: np.random.Generator, t: np.ndarray, profile: SynthProfile) -> list[_Object]:
    """Small objects from the vocabulary that move all the time: motion anywhere is not the action cue."""
    objects = []
    for _ in range(int(rng.integers(0, profile.max_distractors + 1))):
        speed = rng.uniform(0.05, 0.15)
        direction = rng.uniform(0, 2 * math.pi)
        texture = "flat" if rng.random() < 0.6 else TEXTURES[rng.integers(len(TEXTURES))]
        objects.append(
            _Object(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=np.array(list(COLOURS.values())[rng.integers(len(COLOURS))]) * rng.uniform(0.6, 0.95),
                texture=texture,
                period=profile.texture_periods[int(rng.integers(3))],
                cx=_reflect(rng.uniform(0.1, 0.9) + speed * math.cos(direction) * t, 0.08, 0.92),
                cy=_reflect(rng.uniform(0.1, 0.9) + speed * math.sin(direction) * t, 0.08, 0.92),
                radius=np.full(len(t), rng.uniform(0.05, 0.09)),
                angle=rng.uniform(0, 2 * math.pi) + rng.uniform(-0.6, 0.6) * t,
            )
        )
    return objects


def _actor(
    rng: np.random.Generator, t: np.ndarray, env: np.ndarray, cls: ActionClass, profile: SynthProfile
) -> _Object:
    """The class's object: always present, wandering slowly and fidgeting a little (always); inside the actions
    (``env`` > 0) its texture scrolls inside the unchanged silhouette. Position, outline and mean colour do not
    depend on ``env``, except that in a ``cue_fraction`` of scenes the actor also turns paler with ``env`` (the weak,
    single-frame cue)."""
    r0 = rng.uniform(*profile.actor_radius)
    cx = rng.uniform(0.32, 0.68) + 0.025 * np.sin(2 * math.pi * rng.uniform(0.03, 0.1) * t + rng.uniform(0, 6.3))
    cy = rng.uniform(0.32, 0.68) + 0.025 * np.sin(2 * math.pi * rng.uniform(0.03, 0.1) * t + rng.uniform(0, 6.3))
    angle = rng.uniform(0, 2 * math.pi) + 0.05 * np.sin(2 * math.pi * rng.uniform(0.03, 0.1) * t)
    # idle fidget, always on: the actor is never perfectly still, so "the texture moves in the frame" is not
    # enough to find the action; the texture moving *relative to the outline* is
    for axis in range(2):
        fidget = profile.fidget * r0 * np.sin(2 * math.pi * rng.uniform(0.2, 0.4) * t + rng.uniform(0, 6.3))
        cx, cy = (cx + fidget, cy) if axis == 0 else (cx, cy + fidget)
    radius = np.full(len(t), r0)
    speed = cls.motion.speed * rng.uniform(0.9, 1.1)
    # the phase is the integral of the speed: it holds still outside the actions and never jumps
    phase = rng.uniform(0, 1) + speed * np.concatenate([[0.0], np.cumsum(env[:-1])])
    cued = rng.random() < profile.cue_fraction
    whiten = profile.cue_whiten * env if cued else 0.0
    a = cls.appearance
    colour = np.clip(np.array(COLOURS[a.colour]) * rng.uniform(0.85, 1.05) + rng.normal(0, 0.03, 3), 0.0, 1.0)
    return _Object(
        a.shape,
        colour,
        a.texture,
        profile.texture_periods[PERIOD_NAMES.index(a.period)],
        cx,
        cy,
        radius,
        angle,
        phase,
        profile.texture_contrast,
        whiten,
    )


def flicker_state(env: np.ndarray, flicker_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T,) in [0, 1]: the v4 checker's contrast (a fraction of full). Inside the actions (``env`` = 1) a square
    wave of ``flicker_frames`` frames (on for half, off for half, random phase per action); outside, a level held
    for the whole gap, on or off with equal chance. So every frame is on with probability 1/2 inside and outside
    the actions (a single frame says nothing), while two frames ``flicker_frames / 2`` apart always differ inside
    and never outside. The ``env`` ramps blend the two over the boundary."""
    n = len(env)
    inside = env >= 0.5
    starts = np.flatnonzero(inside & ~np.concatenate([[False], inside[:-1]]))
    gap = np.cumsum(np.concatenate([[0], (inside[:-1] & ~inside[1:]).astype(int)]))  # gaps passed so far
    held = rng.integers(0, 2, int(gap[-1]) + 1).astype(np.float64)[gap] if n else np.zeros(0)
    run = np.cumsum(np.concatenate([[0], (~inside[:-1] & inside[1:]).astype(int)])) if n else np.zeros(0, int)
    phase = rng.integers(0, flicker_frames, len(starts) + 1)[run]
    half = flicker_frames // 2
    wave = (((np.arange(n) + phase) % flicker_frames) < half).astype(np.float64)
    return (1.0 - env) * held + env * wave


def twitch_offsets(
    env: np.ndarray, rng: np.random.Generator, amplitude: float, frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) per frame: at every boundary (``env`` crosses 1/2 between frames k-1 and k) the actor is displaced by
    ``amplitude`` in a random direction for ``frames`` frames centred on it (k - frames/2 .. k + frames/2 - 1)."""
    n = len(env)
    dx, dy = np.zeros(n), np.zeros(n)
    inside = env >= 0.5
    for k in np.flatnonzero(inside[1:] != inside[:-1]) + 1:
        angle = rng.uniform(0, 2 * math.pi)
        lo, hi = max(0, k - frames // 2), min(n, k + frames - frames // 2)
        dx[lo:hi] += amplitude * math.cos(angle)
        dy[lo:hi] += amplitude * math.sin(angle)
    return dx, dy


def _flicker_actor(
    rng: np.random.Generator, t: np.ndarray, env: np.ndarray, cls: ActionClass, profile: SynthProfile
) -> _Object:
    """v4: the class's flat object, wandering slowly; a checker of one band (fine or coarse, per video) flickers
    on it inside the actions (``flicker_state``), and it twitches at every boundary (``twitch_offsets``)."""
    r0 = rng.uniform(*profile.actor_radius)
    cx = rng.uniform(0.32, 0.68) + 0.025 * np.sin(2 * math.pi * rng.uniform(0.03, 0.1) * t + rng.uniform(0, 6.3))
    cy = rng.uniform(0.32, 0.68) + 0.025 * np.sin(2 * math.pi * rng.uniform(0.03, 0.1) * t + rng.uniform(0, 6.3))
    angle = rng.uniform(0, 2 * math.pi) + 0.05 * np.sin(2 * math.pi * rng.uniform(0.03, 0.1) * t)
    band = int(rng.integers(len(profile.flicker_periods)))
    state = flicker_state(env, profile.flicker_frames, rng)
    dx, dy = twitch_offsets(env, rng, profile.twitch, profile.twitch_frames)
    colour = np.clip(np.array(COLOURS[cls.appearance.colour]) * rng.uniform(0.85, 1.05) + rng.normal(0, 0.03, 3), 0, 1)
    return _Object(
        cls.appearance.shape,
        colour,
        "flat",
        profile.flicker_periods[band],
        cx + dx,
        cy + dy,
        np.full(len(t), r0),
        angle,
        cue_contrast=profile.flicker_contrast * state,
        cue_margin=profile.flicker_edge_margin[band],
        cue_period=profile.flicker_periods[band],
        cue_octaves=profile.flicker_octaves[band],
    )


def flicker_band(scene: Scene, profile: SynthProfile) -> str:
    """ "fine" or "coarse": the band of a v4 scene's flicker checker."""
    return ("fine", "coarse")[profile.flicker_periods.index(scene.actor.cue_period)]


def _to_uint8(img: np.ndarray, supersample: int) -> np.ndarray:
    if supersample > 1:  # box average; summing strided views is much faster than a 6-D mean
        k = supersample
        total = sum(img[:, i::k, j::k] for i in range(k) for j in range(k))
        img = total / np.float32(k * k)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    """Everything random about one clip, drawn before any pixel: rendering is then deterministic."""

    t: np.ndarray  # (T,) seconds (random offset: no shared phase at frame 0)
    background_seed: int
    gain: np.ndarray  # (T,) global lighting
    distractors: tuple[_Object, ...]
    actor: _Object


def make_scene(rng: np.random.Generator, cls: ActionClass, env: np.ndarray, profile: SynthProfile) -> Scene:
    t = np.arange(len(env)) / profile.fps + rng.uniform(0, 100.0)
    background_seed = int(rng.integers(2**31))
    gain = 1.0 + 0.04 * np.sin(2 * math.pi * rng.uniform(0.02, 0.08) * t + rng.uniform(0, 6.3))
    distractors = tuple(_distractors(rng, t, profile))
    actor = (_flicker_actor if profile.cue == "flicker" else _actor)(rng, t, env, cls, profile)
    return Scene(t, background_seed, gain, distractors, actor)


def render_scene(scene: Scene, profile: SynthProfile) -> np.ndarray:
    """uint8 (T, H, W, 3): background, distractors, then the actor, rendered supersampled and box-averaged."""
    size, ss = profile.frame_size, profile.supersample
    side = size * ss
    coords = ((np.arange(side) + 0.5) / side).astype(np.float32)
    # the background is smooth: render it at the output size and repeat it (a quarter of the work at ss = 2)
    coarse = ((np.arange(size) + 0.5) / size).astype(np.float32)
    img = _background(numpy_rng(scene.background_seed, "background"), scene.t, coarse)
    img = np.repeat(np.repeat(img, ss, axis=1), ss, axis=2)
    for obj in (*scene.distractors, scene.actor):
        _composite(img, obj, coords, side)
    img *= scene.gain.astype(np.float32)[:, None, None, None]
    return _to_uint8(img, ss)


def render_clip(rng: np.random.Generator, cls: ActionClass, env: np.ndarray, profile: SynthProfile) -> np.ndarray:
    """uint8 (T, H, W, 3) of a fresh scene whose actor moves with amplitude ``env`` (T,)."""
    return render_scene(make_scene(rng, cls, env, profile), profile)


def video_scene(plan: SynthPlan, video: PlannedVideo) -> Scene:
    """The scene of one planned video, seeded by (seed, video id) only: any order or subset gives the same."""
    p = plan.profile
    env = motion_envelope(video.segments, video.num_frames, p.fps, p.ramp_frames)
    return make_scene(numpy_rng(plan.seed, "synthetic", "video", video.id), plan.class_by_name[video.label], env, p)


def render_video(plan: SynthPlan, video: PlannedVideo) -> np.ndarray:
    """The frames of one planned video (uint8 (T, H, W, 3))."""
    return render_scene(video_scene(plan, video), plan.profile)


def acp_clip_scene(plan: SynthPlan, item: PlannedItem) -> tuple[Scene, SynthProfile]:
    """The scene of one ACP clip (nothing to localise) and the profile it renders with. colour-cue: the texture
    scrolls throughout. v4/v5: the checker flickers throughout (``flicker`` classes) or holds on or off (``still``
    classes), at one of ``clip_flicker_periods`` (v4: the coarse band)."""
    p = plan.profile
    cls = plan.class_by_name[item.label]
    env = np.ones(p.clip_frames)
    if p.cue == "flicker":
        env = env * cls.motion.speed
        # one period per clip, drawn as a video's band is (the same draw: v4 profiles' clips keep their bytes)
        periods = p.clip_flicker_periods or (p.flicker_periods[-1],) * len(p.flicker_periods)
        # the finest clip scale takes the fine band's margin, every other scale the coarse band's
        margins = tuple(p.flicker_edge_margin[min(i, 1)] for i in range(len(periods)))
        # clips at the coarse band's period take its octaves; explicit clip scales are single checkers
        octaves = (p.flicker_octaves[-1] if not p.clip_flicker_periods else 1,) * len(periods)
        p = replace(p, flicker_periods=periods, flicker_edge_margin=margins, flicker_octaves=octaves)
        if p.clip_actor_radius is not None:
            p = replace(p, actor_radius=p.clip_actor_radius)
    if p.cue == "flicker" and p.clip_twins and cls.motion.speed == 0.0:
        return _still_twin(plan, item, cls, p), p
    return make_scene(numpy_rng(plan.seed, "synthetic", "clip", item.id), cls, env, p), p


def _still_twin(plan: SynthPlan, item: PlannedItem, cls: ActionClass, p: SynthProfile) -> Scene:
    """A still class's clip as its flicker twin's scene (the same key draws the same scene) with the checker held
    on or off for the whole clip (``clip_twins``)."""
    twin = plan.class_by_name[cls.name.removesuffix("-still") + "-flicker"]
    twin_id = f"c{plan.clip_classes.index(twin):02d}_{item.id.rsplit('_', 1)[1]}"
    scene = make_scene(numpy_rng(plan.seed, "synthetic", "clip", twin_id), twin, np.ones(p.clip_frames), p)
    held = float(numpy_rng(plan.seed, "synthetic", "clip-twin", item.id).integers(0, 2)) * p.flicker_contrast
    return replace(scene, actor=replace(scene.actor, cue_contrast=np.full(p.clip_frames, held)))


def render_acp_clip(plan: SynthPlan, item: PlannedItem) -> np.ndarray:
    """uint8 (T, H, W, 3) of one ACP clip (``acp_clip_scene``)."""
    return render_scene(*acp_clip_scene(plan, item))


def render_image(plan: SynthPlan, item: PlannedItem) -> np.ndarray:
    """uint8 (H, W, 3): a still ICP object (shape x texture, random colour, pose and scene)."""
    p = plan.profile
    rng = numpy_rng(plan.seed, "synthetic", "image", item.id)
    cls = next(c for c in plan.image_classes if c.name == item.label)
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    as_action = ActionClass(cls.name, Appearance(cls.shape, colour, cls.texture, cls.period), Motion(0.0))
    return render_clip(rng, as_action, np.zeros(1), p)[0]


# --------------------------------------------------------------------------------------------------------------
# Writing the benchmark
# --------------------------------------------------------------------------------------------------------------

STAMP = ".synth.json"  # written first: identifies a partial folder's profile and seed so a resume can check them
STRATA = STRATA_FILE  # the videos of each flicker band (harness.report.strata: the strata table)


def video_strata(plan: SynthPlan) -> dict[str, dict[str, list[str]]]:
    """``{"cue band": {"fine": [ids], "coarse": [ids]}}`` over every planned video (v4 profiles)."""
    bands: dict[str, list[str]] = {"fine": [], "coarse": []}
    for v in plan.videos:
        bands[flicker_band(video_scene(plan, v), plan.profile)].append(v.id)
    return {"cue band": bands}


def _identity(profile: SynthProfile, seed: int) -> dict[str, object]:
    parameters = json.loads(json.dumps(asdict(profile)))
    if all(n == 1 for n in profile.flicker_octaves):  # added later; at its default nothing renders differently, so
        del parameters["flicker_octaves"]  # folders made before it still count as this benchmark
    for name in ("clip_twins", "clip_actor_radius"):  # the same: added later, nothing differs at their defaults
        if not parameters[name]:
            del parameters[name]
    return {"profile": profile.name, "seed": seed, "generator_version": GENERATOR_VERSION, "parameters": parameters}


def _describe(ident: Mapping[str, object]) -> str:
    return f"profile '{ident.get('profile')}' seed {ident.get('seed')} (generator v{ident.get('generator_version')})"


def _check_out(out: Path, ident: dict[str, object]) -> bool:
    """True when ``out`` already holds this exact benchmark; raises if it holds anything else."""
    fix = f"choose another --out or delete {out}"
    for name in ("manifest.json", STAMP):
        path = out / name
        if not path.exists():
            continue
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            found_ident = {k: found.get(k) for k in ident}
        except (OSError, ValueError, AttributeError) as exc:
            raise LofiError(f"{path}: unreadable ({exc}); {fix}") from None
        if found_ident != ident:
            same_name = (found_ident.get("profile"), found_ident.get("seed")) == (ident["profile"], ident["seed"])
            what = "another version or resized profile" if same_name else _describe(found_ident)
            raise LofiError(f"{out}: holds a synthetic benchmark made with {what}, not {_describe(ident)}; {fix}")
        return name == "manifest.json"
    if out.exists() and any(out.iterdir()):
        raise LofiError(f"{out}: exists, is not empty and holds no synthetic benchmark; {fix}")
    return False


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image, mode="RGB").save(tmp, format="PNG")


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of a killed run (SIGKILL skips the atomic writers' cleanup)."""
    for folder in (out, out / "videos", out / "clips", out / "images"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def to_dataset(plan: SynthPlan, out: Path) -> TALDataset:
    """The planned videos as a dataset whose video paths point into ``out``."""
    from harness.data.model import Segment, TALDataset, Video

    videos = {
        v.id: Video(
            id=v.id,
            subset=v.subset,
            duration=round(v.num_frames / plan.profile.fps, 6),
            segments=tuple(Segment(s, e, v.label) for s, e in v.segments),
            fps=plan.profile.fps,
            path=out / "videos" / f"{v.id}.mp4",
        )
        for v in plan.videos
    }
    return TALDataset(
        name=f"synthetic-{plan.profile.name}",
        videos=videos,
        classes=tuple(c.name for c in plan.classes),
        source="harness.data.synthetic",
        meta=MappingProxyType({"profile": plan.profile.name, "seed": plan.seed}),
    )


def _jobs(plan: SynthPlan, out: Path) -> list[tuple[Path, Callable[[], None]]]:
    from harness.data.video import write_video

    fps = plan.profile.fps
    jobs: list[tuple[Path, Callable[[], None]]] = []
    for v in plan.videos:
        path = out / "videos" / f"{v.id}.mp4"
        jobs.append((path, lambda v=v, path=path: write_video(path, render_video(plan, v), fps)))
    for item in plan.clips:
        path = out / item.path
        jobs.append((path, lambda item=item, path=path: write_video(path, render_acp_clip(plan, item), fps)))
    for item in plan.images:
        path = out / item.path
        jobs.append((path, lambda item=item, path=path: _write_png(path, render_image(plan, item))))
    return jobs


_PENDING: list[Callable[[], None]] = []  # the jobs a forked worker runs, by index (closures do not pickle)


def _run_pending(i: int) -> None:
    _PENDING[i]()


def _run_jobs(jobs: list[Callable[[], None]], workers: int, bar: Any) -> None:
    """Run the file jobs, in ``workers`` forked processes when > 1: each file is a pure function of (seed, its
    id), so the files are the same bytes whatever the worker count or order."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            job()
            bar.update()
        return
    import multiprocessing as mp

    _PENDING[:] = jobs
    try:
        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_run_pending, range(len(jobs)), chunksize=4):
                bar.update()
    finally:
        _PENDING.clear()


def generate(profile: str, seed: int, out: Path, *, progress: bool = True, workers: int = 1) -> Path:
    """Write the synthetic benchmark of ``profile`` and ``seed`` into ``out`` (layout: docs/contracts.md).

    Complete folder with the same profile and seed: nothing to do. Partial folder (no ``manifest.json``): resumes,
    keeping finished files (each is written atomically and is a pure function of (seed, its id)). Any other
    content: ``LofiError`` naming the folder. ``workers`` > 1 renders the files in that many processes.
    """
    from tqdm import tqdm

    from harness.data.annotations import write_activitynet_json

    out = Path(out).resolve()
    ident = _identity(get_profile(profile), seed)
    if _check_out(out, ident):  # the identity needs the profile alone: a complete folder costs no plan (issue 18)
        log.info("%s already holds the complete synthetic benchmark (%s); nothing to do", out, _describe(ident))
        return out
    plan = make_plan(profile, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / STAMP, ident)
    _remove_stale_temporaries(out)
    if not (out / "annotations.json").exists():
        write_activitynet_json(to_dataset(plan, out), out / "annotations.json")
    if plan.profile.cue == "flicker" and not (out / STRATA).exists():
        write_json_atomic(out / STRATA, video_strata(plan))
    clip_index = {
        "classes": [c.name for c in plan.clip_classes],
        "clips": [{"path": c.path, "label": c.label} for c in plan.clips],
    }
    image_index = {
        "classes": [c.name for c in plan.image_classes],
        "images": [{"path": i.path, "label": i.label} for i in plan.images],
    }
    for path, index in ((out / "clips" / "index.json", clip_index), (out / "images" / "index.json", image_index)):
        if not path.exists():
            write_json_atomic(path, index)
    todo = [(path, job) for path, job in _jobs(plan, out) if not path.exists()]
    log.info("synthetic benchmark %s -> %s: %d files to write", _describe(ident), out, len(todo))
    with tqdm(total=len(todo), desc=f"synth {plan.profile.name}", unit="file", disable=not progress or None) as bar:
        _run_jobs([job for _path, job in todo], workers, bar)
    manifest = {
        **ident,
        "package_version": __version__,
        "counts": {
            "training": plan.profile.num_training,
            "validation": plan.profile.num_validation,
            "testing": plan.profile.num_testing,
            "clips": len(plan.clips),
            "images": len(plan.images),
        },
        "classes": {c.name: {"appearance": asdict(c.appearance), "motion": asdict(c.motion)} for c in plan.classes},
        "clip_classes": {
            c.name: {"appearance": asdict(c.appearance), "motion": asdict(c.motion)} for c in plan.clip_classes
        },
        "image_classes": {c.name: asdict(c) for c in plan.image_classes},
    }
    write_json_atomic(out / "manifest.json", manifest)
    log.info("synthetic benchmark complete: %s", out)
    return out
