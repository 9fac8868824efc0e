"""Stage 1: classification pre-training of the encoder.

- ICP: still images (the ImageNet-like source), each shown as a static clip.
- ACP: trimmed clips of other action classes (the Kinetics-like source).
- ACP+: ACP, then classification fine-tuning on the target dataset's trimmed training segments.
On real data ICP/ACP may instead start from weights (timm ImageNet by name, or a local/TSM K400 checkpoint):
leave ``data.icp_source`` / ``data.acp_source`` empty and set ``encoder.pretrained`` / ``encoder.checkpoint``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from harness.data.frames import VideoFrames, video_file
from harness.data.sources import LabelledItem, read_source_index
from harness.errors import LofiError
from harness.experiment import ExperimentConfig, OptimConfig
from harness.pipeline.data import StageData
from harness.pipeline.distributed import current, wrap
from harness.pipeline.files import ENCODER
from harness.pipeline.fit import fit, make_optimizer
from harness.pipeline.models import build_encoder, load_encoder
from harness.pipeline.runtime import save_torch
from harness.pipeline.stage import StageContext, StageResult

log = logging.getLogger(__name__)


def _image_clip(path: Path, frames: int, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        img = np.array(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise LofiError(
            f"{path}: cannot read image ({exc}); regenerate the source or remove it from the index"
        ) from None
    t = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)[None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.expand(frames, -1, -1, -1)[None]  # (L=1, F, 3, S, S): a still image as a static clip


def _video_clip(
    frames_src: VideoFrames,
    path: Path,
    frames: int,
    size: int,
    start: float = 0.0,
    end: float = -1.0,
    fps: float | None = None,
    n: int = 1,
) -> torch.Tensor:
    """(n, F, 3, S, S): n clips of F frames spread uniformly over the video or over [start, end] seconds."""
    from harness.data.video import resize_frames, select_snippet_frames, snippet_frame_indices

    total = frames_src.num_frames(path)
    a, b = 0, total
    if end > start and fps:
        a, b = int(start * fps), max(int(start * fps) + 1, int(np.ceil(end * fps)))
        a, b = (a, min(b, total)) if a < total else (total - 1, total)
    stride = max(1, (b - a) // (frames * n))
    unique, inverse = select_snippet_frames(a + snippet_frame_indices(b - a, n, frames, stride))
    selected = torch.from_numpy(np.ascontiguousarray(frames_src.fetch(path, unique)))
    return resize_frames(selected, torch.from_numpy(inverse), (n, frames), size)


def _load_items(cfg: ExperimentConfig, mode: str, data: StageData) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """All pre-training inputs as one tensor (N, 1, F, 3, S, S); the synthetic sources are small."""
    size, nf = cfg.fidelity.size, cfg.pretrain.clip_frames
    frames_src = data.frames
    if mode == "icp":
        classes, items = read_source_index(cfg.data, cfg.data.icp_source, "images")
        clips = [_image_clip(it.path, nf, size) for it in tqdm(items, desc="load images", leave=False)]
    elif mode == "acp":
        classes, items = read_source_index(cfg.data, cfg.data.acp_source, "clips")
        clips = [_video_clip(frames_src, it.path, nf, size) for it in tqdm(items, desc="load clips", leave=False)]
    else:  # acp+: the target's trimmed training segments
        ds = data.ds
        classes = list(ds.classes)
        cidx = ds.class_index()
        vids = frames_src.usable(ds.subset(cfg.data.train_subset))
        items, clips = [], []
        for v in vids:
            fps = v.fps or (frames_src.num_frames(video_file(cfg.data, v)) / max(v.duration, 1e-9))
            for s in v.segments:
                # several clips per segment: the target's training set is small and one clip each overfits
                for clip in _video_clip(
                    frames_src, video_file(cfg.data, v), nf, size, s.start, s.end, fps, n=cfg.pretrain.clips_per_segment
                ):
                    items.append(LabelledItem(video_file(cfg.data, v), cidx[s.label], s.start, s.end))
                    clips.append(clip[None])
    labels = torch.tensor([it.label for it in items], dtype=torch.long)
    return classes, torch.stack(clips), labels


def train_classification(
    encoder: nn.Module,
    clips: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    optim_cfg: OptimConfig,
    *,
    seed: int,
    stage: str,
    device: torch.device,
    progress: bool,
    tracker,
    sync_bn: bool = False,
) -> tuple[list[dict[str, float]], nn.Module]:
    """Cross-entropy training of encoder + a linear classifier (both trained in place; under torchrun through
    DistributedDataParallel wrappers); returns (per-epoch history, classifier)."""
    classifier = nn.Linear(encoder.num_features, num_classes).to(device)
    encoder.to(device)
    opt = make_optimizer(list(encoder.parameters()) + list(classifier.parameters()), optim_cfg)
    trained, head = wrap(encoder, device=device, sync_bn=sync_bn), wrap(classifier, device=device)

    def train_step(epoch: int, step: int, micro: int, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = clips[idx].to(device), labels[idx].to(device)
        logits = head(trained(x).mean(dim=1))
        return F.cross_entropy(logits, y), {"accuracy": int((logits.argmax(1) == y).sum())}

    history = fit(
        opt,
        train_step,
        n_items=len(labels),
        optim=optim_cfg,
        seed=seed,
        order_stream=(stage, "order"),
        stage=stage,
        modules=(trained, head),
        tracker=tracker,
        metric_prefix=stage,
        progress=progress,
    )
    return history, classifier


def run(ctx: StageContext) -> StageResult:
    """The pretrain stage (variant icp | acp | acp+): train the encoder, or load published weights, and write
    ``encoder.pt`` (with the classifier and its classes when one was trained). For acp+ the ACP stage's encoder is
    fine-tuned; the synthetic benchmark's pre-training sources come with the data."""
    mode = ctx.stage.variant
    encoder, classifier, classes, history = _train(ctx, mode)
    out = ctx.out / ENCODER
    if current().main:
        state = {"encoder": encoder.cpu().state_dict(), "name": ctx.cfg.encoder.name}
        if classifier is not None:  # kept so the ACP+ model can serve as the video-level classifier
            state.update(classifier=classifier.cpu().state_dict(), classes=list(classes))
        save_torch(out, state)
    return StageResult(outputs=[out], info={"mode": mode, "history": history})


def _train(ctx: StageContext, mode: str) -> tuple[nn.Module, nn.Module | None, list[str], list[dict[str, float]]]:
    """(encoder, classifier or None, its classes, history): ACP+ fine-tunes the ACP encoder on the target's
    segments; ICP/ACP train from scratch on their source, or start from published weights when it is empty."""
    cfg = ctx.cfg
    source = cfg.data.icp_source if mode == "icp" else cfg.data.acp_source
    if mode == "acp+":
        encoder, optim = load_encoder(cfg, ctx.input("pretrain", "acp") / ENCODER), cfg.pretrain.finetune
    elif not source:  # real data: start from published weights instead of training
        return build_encoder(cfg, from_weights=True, mode=mode), None, [], []
    else:
        encoder, optim = build_encoder(cfg, from_weights=False), cfg.pretrain.optim
    classes, clips, labels = _load_items(cfg, mode, ctx.data)
    history, classifier = train_classification(
        encoder,
        clips,
        labels,
        len(classes),
        optim,
        seed=ctx.seed,
        stage=mode,
        device=ctx.device,
        progress=cfg.runtime.progress,
        tracker=ctx.tracker,
        sync_bn=cfg.runtime.sync_bn,
    )
    return encoder, classifier, classes, history
