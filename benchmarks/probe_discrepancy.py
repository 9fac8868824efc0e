"""Does an encoder's single-snippet feature say "inside an action" / "at a boundary"? A linear-probe check of the
synthetic benchmark's task discrepancy, far cheaper than whole runs (docs/synthetic.md).

    # features a run already extracted (OUT/features/videos/*.npy), no model needed:
    PYTHONPATH=. python benchmarks/probe_discrepancy.py --config C --features OUT/features [--features OUT2/features]
    # or extract them here from an encoder checkpoint (full fidelity, training + validation videos only):
    PYTHONPATH=. python benchmarks/probe_discrepancy.py --config C --encoder OUT/pretrain/encoder.pt

A logistic regression (standardised features) is fitted on the snippets of the ``training`` videos and scored on
the ``validation`` videos (never ``testing``): ROC AUC for

- ``inside``: the snippet's centre lies inside an annotated segment;
- ``boundary``: the snippet's centre lies within one snippet span of a start or an end;

each on the raw features and on features minus their video's mean ("demeaned": what is left once the video's
class and scene are taken out, i.e. what a head can use to place boundaries inside one video). "zeros" (the
blind control) gives 0.5 by construction; an encoder worth localising with is clearly above it.

On the synthetic benchmark the probes are also fitted and scored separately by stratum: for the default (v4)
profiles by the flicker's band (``fine_*``: a checker the r_s = 2 resize erases; ``coarse_*``: one every reduction
keeps); for the ``colour-cue`` profile on the videos *without* the single-frame paleness (``main_*``: only the
texture scroll marks the action) and *with* it (``weak_*``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def snippet_labels(video, num_snippets: int, fps: float, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside, boundary) booleans per snippet, from the snippet centre frames the sampler uses."""
    from harness.data.video import snippet_frame_indices

    centre = snippet_frame_indices(num_frames, num_snippets, 1, 1)[:, 0]
    t = (centre + 0.5) / fps
    seg = video.segment_array().reshape(-1, 2)
    inside = ((t[:, None] >= seg[None, :, 0]) & (t[:, None] <= seg[None, :, 1])).any(axis=1)
    span = num_frames / fps / num_snippets
    ends = seg.reshape(-1)
    boundary = (np.abs(t[:, None] - ends[None, :]) <= span).any(axis=1)
    return inside, boundary


def extract(cfg, checkpoint: Path, videos) -> dict[str, np.ndarray]:
    import torch

    from harness.data.frames import VideoFrames
    from harness.pipeline.models import load_encoder

    torch.set_num_threads(max(1, cfg.runtime.threads))
    frames = VideoFrames(cfg.data)
    encoder = load_encoder(cfg, checkpoint).eval()
    fid, out = cfg.fidelity, {}
    with torch.no_grad():
        for i in range(0, len(videos), 8):
            part = videos[i : i + 8]
            feats = encoder(frames.batch(part, snippets=fid.snippets, fid=fid, size=fid.size)).numpy()
            out.update({v.id: f for v, f in zip(part, feats)})
    return out


def probe(feats: dict[str, np.ndarray], train, val, fps_of, frames_of) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    def table(videos, demean: bool):
        xs, ins, bds = [], [], []
        for v in videos:
            x = feats[v.id].astype(np.float64)
            if demean:
                x = x - x.mean(axis=0, keepdims=True)
            inside, boundary = snippet_labels(v, len(x), fps_of(v), frames_of(v))
            xs.append(x), ins.append(inside), bds.append(boundary)
        return np.concatenate(xs), np.concatenate(ins), np.concatenate(bds)

    result = {}
    for demean in (False, True):
        xt, it, bt = table(train, demean)
        xv, iv, bv = table(val, demean)
        scaler = StandardScaler().fit(xt)
        xt, xv = scaler.transform(xt), scaler.transform(xv)
        for name, yt, yv in (("inside", it, iv), ("boundary", bt, bv)):
            if xt.std() == 0 or len(set(yt)) < 2 or len(set(yv)) < 2:
                auc = 0.5
            else:
                model = LogisticRegression(C=0.1, max_iter=3000).fit(xt, yt)
                auc = float(roc_auc_score(yv, model.decision_function(xv)))
            result[f"{name}{'_demeaned' if demean else ''}_auc"] = round(auc, 4)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--features", type=Path, action="append", default=[], help="a features stage folder (repeatable)")
    ap.add_argument("--encoder", type=Path, action="append", default=[], help="an encoder checkpoint (repeatable)")
    ap.add_argument("--max-train", type=int, default=0, help="use at most this many training videos (0: all)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    from harness.errors import LofiError
    from harness.experiment import load_experiment
    from harness.pipeline.data import prepare_dataset

    try:
        cfg = load_experiment(args.config)
    except LofiError as exc:
        print(f"probe_discrepancy: {exc}", file=sys.stderr)
        return 2
    if cfg.data.val_subset == cfg.data.train_subset:  # a design run's config (validation curve on training videos)
        print(
            f"probe_discrepancy: {args.config}: data.val_subset = {cfg.data.val_subset!r} is data.train_subset, the "
            "videos the probe is fitted on, so its AUC would be in-sample; use a config whose val_subset is another "
            "subset (e.g. validation, with test_subset: testing)",
            file=sys.stderr,
        )
        return 2
    ds = prepare_dataset(cfg.data)
    train = list(ds.subset(cfg.data.train_subset))
    if args.max_train:
        train = train[: args.max_train]
    val = list(ds.subset(cfg.data.val_subset))
    fps_of = lambda v: float(v.fps or 8.0)
    frames_of = lambda v: int(round(v.duration * fps_of(v)))
    groups = {"": (train, val)}
    if cfg.data.synthetic_profile:
        from harness.data import synthetic as S

        plan = S.make_plan(cfg.data.synthetic_profile, cfg.data.synthetic_seed)
        by_id = {v.id: v for v in plan.videos}
        if plan.profile.cue == "flicker":  # v4: by the flicker's band (fine: erased at r_s = 2; coarse: kept)
            band = {v.id: S.flicker_band(S.video_scene(plan, by_id[v.id]), plan.profile) for v in (*train, *val)}
            for name in ("fine", "coarse"):
                groups[f"{name}_"] = ([v for v in train if band[v.id] == name], [v for v in val if band[v.id] == name])
        else:  # colour-cue: videos without / with the single-frame paleness
            cued = {v.id: np.ndim(S.video_scene(plan, by_id[v.id]).actor.whiten) > 0 for v in (*train, *val)}
            groups["main_"] = ([v for v in train if not cued[v.id]], [v for v in val if not cued[v.id]])
            groups["weak_"] = ([v for v in train if cued[v.id]], [v for v in val if cued[v.id]])

    def probe_all(feats):
        out = {}
        for prefix, (tr, va) in groups.items():
            out.update({prefix + k: v for k, v in probe(feats, tr, va, fps_of, frames_of).items()})
        return out

    results = {}
    sources = [(str(p), "features", p) for p in args.features] + [(str(p), "encoder", p) for p in args.encoder]
    for name, kind, path in sources:
        t0 = time.perf_counter()
        if kind == "features":
            feats = {v.id: np.load(path / "videos" / f"{v.id}.npy") for v in (*train, *val)}
        else:
            feats = extract(cfg, path, [*train, *val])
        results[name] = probe_all(feats)
        if name == sources[0][0]:  # the blind control once: the same probe on all-zero features
            zeros = {k: np.zeros_like(f) for k, f in feats.items()}
            results["zeros"] = probe(zeros, train, val, fps_of, frames_of)
        results[name]["time_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: results[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
