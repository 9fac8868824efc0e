"""The synthetic benchmark's cue, checked on rendered pixels (no model): what one frame and what two frames say about
"inside an action", what each fidelity reduction leaves of the cue, and how often sparse snippets see the boundary
twitch. Validation and training videos only (never ``testing``).

    PYTHONPATH=. python benchmarks/synth_cue_check.py --profile default [--seed 0] [--videos 60] [--json OUT]

Checks (docs/synthetic.md § Validation checks), each printed with its target:

- ``single_frame_auc``: a logistic-regression probe on pixel statistics of ONE frame inside the actor's
  silhouette (mean colour, luminance spread, high-pass energy at two scales, position, size), fitted on training
  videos, ROC AUC for "this frame is inside an action" on validation videos. Target <= 0.55.
- ``two_frame_auc``: the same probe given also the difference to the frame 2 later (a snippet's F = 2 frames at
  stride 2): mean absolute difference inside the silhouette, high-pass energy difference, displacement. Target
  >= 0.95.
- ``flicker_left_by_resize``: the flicker's frame-difference energy inside the actor after the sampler's resize
  (bilinear, anti-aliased) to 64 / r_s, relative to its energy at full size, per band: the fine band should vanish
  at r_s = 2 and the coarse band survive.
- ``flicker_left_at_the_edge``: the same per band, r_s = 2, split into the actor's interior and its edge (the pixels
  the silhouette covers only partly), measured on the difference the flicker makes (a scene with the checker
  flickering minus the same scene with it held, so the actor's wander cancels): a flicker that the resize erases
  inside the actor can survive on the edge, where switching the checker changes the edge pixels' average.
- ``twitch_seen``: the share of boundary twitches that at least one sampled frame falls on, for L = 32 (full
  fidelity) and L = 8 (r_t = 4), F = 2 frames at stride 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _silhouette(scene, profile) -> np.ndarray:
    """(T, S, S) actor coverage in [0, 1] at the output resolution."""
    from harness.data import synthetic as S

    size = profile.frame_size
    coords = ((np.arange(size) + 0.5) / size).astype(np.float32)
    a = scene.actor
    dx = coords[None, None, :] - a.cx.astype(np.float32)[:, None, None]
    dy = coords[None, :, None] - a.cy.astype(np.float32)[:, None, None]
    c, s = np.cos(a.angle)[:, None, None], np.sin(a.angle)[:, None, None]
    u, v = dx * c + dy * s, dy * c - dx * s
    r = a.radius[:, None, None]
    return np.clip(0.5 - S._sdf(a.shape, u / r, v / r) * r * size, 0.0, 1.0)


def _highpass(lum: np.ndarray, k: int) -> np.ndarray:
    """|lum - box blur of width k| per pixel, (T, S, S)."""
    from scipy.ndimage import uniform_filter

    return np.abs(lum - uniform_filter(lum, size=(1, k, k), mode="nearest"))


def frame_features(frames: np.ndarray, mask: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray):
    """Per frame: single-frame features (T, 9) and two-frame features to the frame 2 later (T - 2, 4)."""
    x = frames.astype(np.float32) / 255.0
    lum = x.mean(axis=-1)
    inner = (mask > 0.99).astype(np.float32)
    area = inner.sum(axis=(1, 2)) + 1e-6

    def masked_mean(a: np.ndarray, m: np.ndarray) -> np.ndarray:
        return (a * m).sum(axis=(1, 2)) / (m.sum(axis=(1, 2)) + 1e-6)

    mean_rgb = np.stack([masked_mean(x[..., c], inner) for c in range(3)], axis=1)
    spread = np.sqrt(np.maximum(masked_mean(lum**2, inner) - masked_mean(lum, inner) ** 2, 0.0))
    hp_fine, hp_coarse = _highpass(lum, 3), _highpass(lum, 9)
    single = np.column_stack(
        [mean_rgb, spread, masked_mean(hp_fine, inner), masked_mean(hp_coarse, inner), cx, cy, area]
    )
    both = inner[:-2] * inner[2:]
    diff = np.abs(lum[2:] - lum[:-2])
    pair = np.column_stack(
        [
            masked_mean(diff, both),
            np.abs(masked_mean(hp_fine, inner)[2:] - masked_mean(hp_fine, inner)[:-2]),
            np.abs(masked_mean(hp_coarse, inner)[2:] - masked_mean(hp_coarse, inner)[:-2]),
            np.hypot(cx[2:] - cx[:-2], cy[2:] - cy[:-2]),
        ]
    )
    return single, pair


def flicker_energy(frames: np.ndarray, mask: np.ndarray, size: int) -> float:
    """Mean |frame t+2 - frame t| over the actor's interior after resizing to ``size`` (the sampler's resize)."""
    import torch

    from harness.data.video import resize_frames

    t = torch.from_numpy(np.ascontiguousarray(frames))
    inv = torch.arange(len(frames))
    small = resize_frames(t, inv, (len(frames), 1), size).reshape(len(frames), 3, size, size).mean(dim=1).numpy()
    m = torch.nn.functional.interpolate(torch.from_numpy(mask[:, None]).float(), size=(size, size), mode="area")
    m = (m[:, 0].numpy() > 0.99).astype(np.float32)
    both = m[:-2] * m[2:]
    return float((np.abs(small[2:] - small[:-2]) * both).sum() / (both.sum() + 1e-6))


def edge_leak(plan, frames_per_scene: int = 12) -> dict[str, dict[str, float]]:
    """Per band, the flicker's frame-difference energy left after the r_s = 2 resize, relative to full size, in the
    actor's interior and on its edge: one flickering and one held scene per target class (same seeds)."""
    import dataclasses

    import torch

    from harness.data import synthetic as S
    from harness.data.video import resize_frames
    from harness.seeding import numpy_rng

    def diff(frames: np.ndarray, size: int) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(frames))
        n = len(frames)
        small = resize_frames(t, torch.arange(n), (n, 1), size).reshape(n, 3, size, size).mean(dim=1).numpy()
        return np.abs(small[2:] - small[:-2])

    out: dict[str, dict[str, float]] = {}
    for band, period in zip(("fine", "coarse"), plan.profile.flicker_periods):
        p = dataclasses.replace(plan.profile, flicker_periods=(period, period))
        sums = {}  # (size, region) -> summed |diff| the flicker adds, in full-size pixel units
        for k, cls in enumerate(plan.classes):
            on = S.make_scene(numpy_rng(k, "edge-leak"), cls, np.ones(frames_per_scene), p)
            off = S.make_scene(numpy_rng(k, "edge-leak"), cls, np.zeros(frames_per_scene), p)
            f_on, f_off, cover = S.render_scene(on, p), S.render_scene(off, p), _silhouette(on, p)
            for size in (p.frame_size, p.frame_size // 2):
                c = torch.nn.functional.interpolate(torch.from_numpy(cover[:, None]), size=(size, size), mode="area")
                c = c[:, 0].numpy()
                inner = np.minimum(c[2:], c[:-2]) > 0.999
                edge = (np.maximum(c[2:], c[:-2]) > 0.001) & ~inner
                extra = (diff(f_on, size) - diff(f_off, size)) * (p.frame_size / size) ** 2
                for region, m in (("interior", inner), ("edge", edge)):
                    sums[size, region] = sums.get((size, region), 0.0) + float(extra[m].sum())
        full, half = p.frame_size, p.frame_size // 2
        out[band] = {
            "interior_left": round(sums[half, "interior"] / sums[full, "interior"], 3),
            "edge_left": round(sums[half, "edge"] / sums[full, "edge"], 3),
            "edge_share_at_r_s=2": round(sums[half, "edge"] / (sums[half, "edge"] + sums[half, "interior"]), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--videos", type=int, default=60, help="training videos for the probe fit (validation: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from harness.data import synthetic as S
    from harness.data.video import snippet_frame_indices

    plan = S.make_plan(args.profile, args.seed)
    p = plan.profile
    train = [v for v in plan.videos if v.subset == "training"][: args.videos]
    val = [v for v in plan.videos if v.subset == "validation"]
    tables: dict[str, list] = {"training": [], "validation": []}
    energy: dict[str, dict[str, list[float]]] = {}
    seen = {32: [0, 0], 8: [0, 0]}
    for v in (*train, *val):
        scene = S.video_scene(plan, v)
        frames = S.render_scene(scene, p)
        mask = _silhouette(scene, p)
        a = scene.actor
        single, pair = frame_features(frames, mask, a.cx, a.cy, a.radius)
        env = S.motion_envelope(v.segments, v.num_frames, p.fps, p.ramp_frames)
        inside = env >= 0.5
        tables[v.subset].append((single, pair, inside))
        if v.subset == "validation" and p.cue == "flicker":
            band = S.flicker_band(scene, p)
            for rs in (1.0, 2.0**0.5, 2.0):
                size = max(8, round(p.frame_size / rs))
                energy.setdefault(band, {}).setdefault(f"r_s={rs:.2f}", []).append(flicker_energy(frames, mask, size))
        if p.cue == "flicker":
            changes = np.flatnonzero(inside[1:] != inside[:-1]) + 1
            for big_l in seen:
                sampled = set(snippet_frame_indices(v.num_frames, big_l, 2, 2).reshape(-1).tolist())
                for k in changes:
                    twitch = range(max(0, k - p.twitch_frames // 2), k + p.twitch_frames - p.twitch_frames // 2)
                    seen[big_l][0] += any(f in sampled for f in twitch)
                    seen[big_l][1] += 1

    def stack(subset: str, two: bool):
        xs, ys = [], []
        for single, pair, inside in tables[subset]:
            x = np.column_stack([single[:-2], pair]) if two else single
            xs.append(x), ys.append(inside[: len(x)])
        return np.concatenate(xs), np.concatenate(ys)

    result: dict[str, object] = {
        "profile": p.name,
        "seed": args.seed,
        "train_videos": len(train),
        "val_videos": len(val),
    }
    for name, two in (("single_frame_auc", False), ("two_frame_auc", True)):
        xt, yt = stack("training", two)
        xv, yv = stack("validation", two)
        scaler = StandardScaler().fit(xt)
        model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(xt), yt)
        result[name] = round(float(roc_auc_score(yv, model.decision_function(scaler.transform(xv)))), 4)
    if energy:
        result["flicker_left_by_resize"] = {
            band: {k: round(float(np.mean(vals)) / float(np.mean(by["r_s=1.00"])), 3) for k, vals in by.items()}
            for band, by in sorted(energy.items())
        }
        result["flicker_left_at_the_edge"] = edge_leak(plan)
        result["twitch_seen"] = {f"L={big_l}": round(n / max(total, 1), 3) for big_l, (n, total) in seen.items()}
    targets = {"single_frame_auc": "<= 0.55", "two_frame_auc": ">= 0.95"}
    for key, value in result.items():
        print(f"{key:24s} {json.dumps(value)}" + (f"   (target {targets[key]})" if key in targets else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
