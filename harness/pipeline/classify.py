"""The video-level classifier: class scores for every video, computed once and shared by every configuration.

TAL heads score class-agnostic proposals; the class comes from a video-level classifier, and the field uses one
fixed external classifier for all configurations (LoFi's tables too), so that differences in mAP come from the
proposals. Here that classifier is the ACP+ model (encoder fine-tuned on the target's trimmed training segments,
with its linear layer); its snippet-level softmax, averaged over the full-fidelity snippets of a video, is the
video's class score. On real data an external scores file (e.g. a published ActivityNet classifier's) can be
given instead: ``head.class_scores: path/to/scores.json`` with ``{"classes": [...], "scores": {id: [...]}}``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from harness.data.frames import clip_loader
from harness.data.loader import fixed_plan
from harness.errors import LofiError
from harness.io import write_json_atomic
from harness.pipeline.files import ENCODER, SCORES
from harness.pipeline.models import load_encoder
from harness.pipeline.runtime import autocast, load_torch
from harness.pipeline.stage import StageContext, StageResult

log = logging.getLogger(__name__)


@torch.no_grad()
def run(ctx: StageContext, batch_size: int = 8) -> StageResult:
    """The classifier stage: score every video of the three subsets with the classifier the ACP+ stage saved in
    its ``encoder.pt`` (declared ``main_only``: under torchrun rank 0 alone runs this one pass of inference)."""
    cfg, device = ctx.cfg, ctx.device
    checkpoint = ctx.input("pretrain", "acp+") / ENCODER
    state = load_torch(checkpoint)
    if "classifier" not in state:
        raise LofiError(f"{checkpoint}: holds no classifier; pass the ACP+ stage's encoder.pt")
    ds = ctx.data.ds
    if list(state["classes"]) != list(ds.classes):
        raise LofiError(f"{checkpoint}: its classes differ from the dataset's; re-run the ACP+ stage on this dataset")
    encoder = load_encoder(cfg, checkpoint).to(device).eval()
    classifier = nn.Linear(encoder.num_features, len(ds.classes))
    classifier.load_state_dict(state["classifier"])
    classifier.to(device).eval()
    frames = ctx.data.frames
    videos = frames.usable(
        [
            v
            for s in dict.fromkeys((cfg.data.train_subset, cfg.data.val_subset, cfg.data.test_subset))
            for v in ds.subset(s)
        ]
    )
    fid = cfg.fidelity
    scores: dict[str, list[float]] = {}
    plan = fixed_plan(len(videos), batch_size, snippets=fid.snippets, size=fid.size)
    loader = clip_loader(frames, videos, fid, plan, cfg.runtime, device)
    n_batches = (len(videos) + batch_size - 1) // batch_size
    for batch in tqdm(
        loader.epoch(0), total=n_batches, desc="class scores", disable=not cfg.runtime.progress, leave=False
    ):
        part = [videos[i] for i in batch.items.tolist()]
        x = batch.to_device(device)
        with autocast(device, cfg.runtime.amp):
            probs = classifier(encoder(x)).float().softmax(dim=-1).mean(dim=1)  # (B, C): snippet average
        for v, p in zip(part, probs.cpu().numpy()):
            scores[v.id] = [float(x) for x in p]
    write_json_atomic(ctx.out / SCORES, {"classes": list(ds.classes), "scores": scores}, indent=None)
    return StageResult([ctx.out / SCORES], {"checkpoint": str(checkpoint), "videos": len(scores)})


def load_class_scores(path: Path, classes: tuple[str, ...], video_ids: list[str]) -> np.ndarray:
    """(N, C) scores for ``video_ids`` in the dataset's class order."""
    try:
        data = json.loads(Path(path).read_text())
        order = [data["classes"].index(c) for c in classes]
        return np.array([[data["scores"][v][j] for j in order] for v in video_ids], dtype=np.float64)
    except FileNotFoundError:
        raise LofiError(
            f"{path}: class scores file not found; run the classifier stage or fix head.class_scores"
        ) from None
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise LofiError(
            f"{path}: malformed class scores ({type(exc).__name__}: {exc}); expected "
            "{'classes': [...], 'scores': {video_id: [one score per class]}} covering every video"
        ) from None
