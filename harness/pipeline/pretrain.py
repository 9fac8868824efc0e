"""Stage 1: classification pre-training of the encoder.

- ICP: still images (the ImageNet-like source), each shown as a static clip.
- ACP: trimmed clips of other action classes (the Kinetics-like source).
- ACP+: ACP, then classification fine-tuning on the target dataset's trimmed training segments.
On real data ICP/ACP may instead start from weights (timm ImageNet by name, or a local/TSM K400 checkpoint):
leave ``data.icp_source`` / ``data.acp_source`` empty and set ``encoder.pretrained`` / ``encoder.checkpoint``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from harness.errors import LofiError
from harness.experiment import ExperimentConfig, OptimConfig
from harness.pipeline.data import LabelledItem, StageData, VideoFrames, read_source_index, stage_data, video_file
from harness.pipeline.distributed import barrier, current, wrap
from harness.pipeline.files import ENCODER
from harness.pipeline.fit import fit
from harness.pipeline.models import build_encoder, load_encoder
from harness.pipeline.runtime import make_optimizer, mark_done, prepare, save_torch, stage_done
from harness.tracking import start_run

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


def run_pretrain(
    cfg: ExperimentConfig,
    *,
    mode: str,
    seed: int,
    out: Path,
    key: str,
    init: Path | None = None,
    data: StageData | None = None,
    parent_run_id: str = "",
) -> Path:
    """Pre-train the encoder (mode icp | acp | acp+) and write ``out/encoder.pt``; reuses a stage finished with
    ``key`` (the stage plan's).

    ``init``: for acp+, the ACP encoder to fine-tune. ``data``: the dataset and frame source (built here when None;
    the synthetic benchmark and its pre-training sources are generated on first use)."""
    if mode not in ("icp", "acp", "acp+"):
        raise LofiError(f"pre-training mode '{mode}' is unknown; use icp, acp or acp+")
    if stage_done(out, key) is not None:
        return out / ENCODER
    if mode == "acp+" and init is None:
        raise LofiError("acp+ needs the ACP encoder: pass --init <acp stage>/encoder.pt (lofi run does this)")
    out.mkdir(parents=True, exist_ok=True)
    device = prepare(cfg.runtime, seed)
    data = stage_data(cfg.data, data, cache_bytes=cfg.runtime.cache_bytes)
    source = cfg.data.icp_source if mode == "icp" else cfg.data.acp_source
    with start_run(
        cfg.tracking,
        run_name=f"pretrain-{mode}-seed{seed}",
        parent_run_id=parent_run_id,
        tags={"stage": "pretrain", "mode": mode, "seed": str(seed)},
    ) as tracker:
        t0 = time.perf_counter()
        if mode == "acp+":
            encoder = load_encoder(cfg, init)
            classes, clips, labels = _load_items(cfg, mode, data)
            history, classifier = train_classification(
                encoder,
                clips,
                labels,
                len(classes),
                cfg.pretrain.finetune,
                seed=seed,
                stage="acp+",
                device=device,
                progress=cfg.runtime.progress,
                tracker=tracker,
                sync_bn=cfg.runtime.sync_bn,
            )
        elif not source:  # real data: start from published weights instead of training
            encoder = build_encoder(cfg, from_weights=True, mode=mode)
            history, classifier, classes = [], None, []
        else:
            encoder = build_encoder(cfg, from_weights=False)
            classes, clips, labels = _load_items(cfg, mode, data)
            history, classifier = train_classification(
                encoder,
                clips,
                labels,
                len(classes),
                cfg.pretrain.optim,
                seed=seed,
                stage=mode,
                device=device,
                progress=cfg.runtime.progress,
                tracker=tracker,
                sync_bn=cfg.runtime.sync_bn,
            )
        if current().main:
            state = {"encoder": encoder.cpu().state_dict(), "name": cfg.encoder.name}
            if classifier is not None:  # kept so the ACP+ model can serve as the video-level classifier
                state.update(classifier=classifier.cpu().state_dict(), classes=list(classes))
            save_torch(out / ENCODER, state)
            mark_done(
                out,
                {
                    "stage": "pretrain",
                    "mode": mode,
                    "seed": seed,
                    "history": history,
                    "time_s": time.perf_counter() - t0,
                    "mlflow_run_id": tracker.run_id,
                    "world_size": current().size,
                },
                key=key,
                outputs=[out / ENCODER],
            )
    barrier()  # the other ranks read encoder.pt next
    return out / ENCODER
