"""Stage 3a: the frozen encoder's full-fidelity snippet features, one file per video, shared by every head."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from encoders import encoder_num_features
from harness.data.frames import clip_loader
from harness.data.loader import fixed_plan
from harness.data.model import Video
from harness.errors import LofiError
from harness.integrity import IntegrityError, load_array, save_array
from harness.io import child_path, write_json_atomic
from harness.modes import ZEROED_MODES
from harness.pipeline.distributed import barrier, current, shard_bounds
from harness.pipeline.files import ENCODER
from harness.pipeline.models import load_encoder
from harness.pipeline.plan import BN_SUFFIX
from harness.pipeline.runtime import autocast
from harness.pipeline.stage import StageContext, StageResult

log = logging.getLogger(__name__)


def feature_path(out: Path, video_id: str) -> Path:
    return child_path(out / "videos", video_id, ".npy")  # an id such as "../x" never names a file outside


@torch.no_grad()
def recalibrate_batchnorm(encoder: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm layer's running statistics from ``batches``; weights are left untouched.

    Running statistics are reset, then each batch is forwarded in train mode without gradients with
    ``momentum=None`` (PyTorch's cumulative average: the running mean is the average of the batches' means, the
    running variance the average of their unbiased variances), and each layer's momentum and the module's mode are
    restored afterwards. Returns the number of batches; with none (or no BatchNorm layer) nothing changes."""
    layers = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    batches = iter(batches)
    first = next(batches, None)
    if not layers or first is None:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = encoder.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    n = 0
    try:
        for x in (first, *batches):
            encoder(x)
            n += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        encoder.train(was_training)
    return n


IN_PROGRESS = "in_progress.json"  # the key of an unfinished extraction: its files are resumed only by that key


@torch.no_grad()
def run(ctx: StageContext, batch_size: int = 8) -> StageResult:
    """The features stage: (L, D) float32 features of every video of the three subsets into
    ``videos/<id>.npy``, extracted at full fidelity with the upstream stage's encoder.

    An interrupted extraction resumes per video, only with the same key (``in_progress.json``; else every video
    is extracted again). Variants: the blind control (``ZEROED_MODES``) writes all-zero features of the encoder's
    shape (nothing decoded); ``+bn`` first re-estimates the encoder's BatchNorm statistics on the training videos
    at full fidelity (``recalibrate_batchnorm``; every rank on every training video, so all ranks hold the same
    encoder). Under torchrun each rank extracts a contiguous share of the videos still to do into the folder."""
    cfg, out, data = ctx.cfg, ctx.out, ctx.data
    zeroed = ctx.stage.variant in ZEROED_MODES
    bn_recalibrate = ctx.stage.variant.endswith(BN_SUFFIX)
    encoder_checkpoint = ctx.stage.needs[0].folder / ENCODER
    wanted = [
        v
        for s in dict.fromkeys((cfg.data.train_subset, cfg.data.val_subset, cfg.data.test_subset))
        for v in data.ds.subset(s)
    ]
    videos = data.frames.usable(wanted, read=not zeroed)
    marker = _claim(out, ctx.key)
    world = current()
    todo = [v for v in videos if not feature_path(out, v.id).is_file()]
    lo, hi = shard_bounds(len(todo), world)
    todo = todo[lo:hi]
    # zeroed features need only the encoder's width: a declared one spares building the model (and importing timm)
    declared = encoder_num_features(cfg.encoder.name) if zeroed else None
    encoder = load_encoder(cfg, encoder_checkpoint).to(ctx.device).eval() if declared is None else None
    num_features = declared if encoder is None else int(encoder.num_features)
    if bn_recalibrate and not zeroed and todo:
        assert encoder is not None
        _recalibrate(ctx, encoder, batch_size)
    _extract(ctx, todo, None if zeroed else encoder, num_features, batch_size)
    barrier()  # every share written
    info = {
        "videos": len(videos),
        "skipped_videos": sorted({v.id for v in wanted} - {v.id for v in videos}),
        "encoder_checkpoint": str(encoder_checkpoint),
        "num_features": num_features,
        "bn_recalibrate": bool(bn_recalibrate),
    }
    return StageResult([feature_path(out, v.id) for v in videos], info, temporaries=(marker,))


def _claim(out: Path, key: str) -> Path:
    """The folder's progress marker for ``key``: feature files of another key's unfinished extraction are removed
    first (rank 0); every rank then sees the same files still to do."""
    marker = out / IN_PROGRESS
    if current().main:
        resumable = marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key
        stale = [] if resumable else sorted((out / "videos").glob("*.npy"))
        if stale:  # the head takes every file in the folder: none may survive from another configuration
            log.warning(
                "features: %s holds %d files of another configuration; extracting every video again", out, len(stale)
            )
            for f in stale:
                f.unlink()
        write_json_atomic(marker, {"key": key})
    barrier()
    return marker


def _recalibrate(ctx: StageContext, encoder: torch.nn.Module, batch_size: int) -> None:
    """Re-estimate the encoder's BatchNorm statistics on the training videos at full fidelity, then eval mode."""
    cfg, fid, frames = ctx.cfg, ctx.cfg.fidelity, ctx.data.frames
    train = frames.usable(ctx.data.ds.subset(cfg.data.train_subset))
    t_bn = time.perf_counter()
    recal_plan = fixed_plan(len(train), batch_size, snippets=fid.snippets, size=fid.size)
    loader = clip_loader(frames, train, fid, recal_plan, cfg.runtime, ctx.device).epoch(0)
    with autocast(ctx.device, cfg.runtime.amp):
        n = recalibrate_batchnorm(encoder, (b.to_device(ctx.device) for b in loader))
    encoder.eval()
    log.info(
        "features: BatchNorm statistics re-estimated on %d training videos (%d batches) at %d x %d² in %.1f s",
        len(train),
        n,
        fid.snippets,
        fid.size,
        time.perf_counter() - t_bn,
    )


def _extract(
    ctx: StageContext, todo: list[Video], encoder: torch.nn.Module | None, num_features: int, batch_size: int
) -> None:
    """Write this rank's share of features, one ``.npy`` per video (all zeros when ``encoder`` is None)."""
    cfg, fid, device = ctx.cfg, ctx.cfg.fidelity, ctx.device
    plan = fixed_plan(len(todo), batch_size, snippets=fid.snippets, size=fid.size)
    # zeroed features decode nothing: the plan's batches without a loader
    batches = (
        clip_loader(ctx.data.frames, todo, fid, plan, cfg.runtime, device).epoch(0)
        if encoder is not None
        else iter(plan(0))
    )
    n_batches = (len(todo) + batch_size - 1) // batch_size
    for batch in tqdm(
        batches, total=n_batches, desc="features", unit="batch", disable=not cfg.runtime.progress, leave=False
    ):
        if encoder is None:
            part = [todo[r.item] for r in batch]
            feats = np.zeros((len(part), fid.snippets, num_features), dtype=np.float32)
        else:
            part = [todo[i] for i in batch.items.tolist()]
            x = batch.to_device(device)
            with autocast(device, cfg.runtime.amp):
                feats = encoder(x).float().cpu().numpy()
        for v, f in zip(part, feats):
            save_array(feature_path(ctx.out, v.id), f.astype(np.float32))  # sealed: a CRC-32 checked on load


def _load_one(path: Path) -> np.ndarray:
    try:
        arr = load_array(path)  # checked against its checksum (OSErrors go to the CLI's mapping)
    except IntegrityError as exc:
        raise LofiError(
            f"{path}: corrupt feature file ({exc.problem}); delete {path.parent.parent} to extract the features again"
        ) from None
    if arr.ndim != 2:
        raise LofiError(f"{path}: features of shape {arr.shape}, expected (L, D); delete {path.parent.parent}")
    return arr


def load_features(out: Path, video_ids: list[str]) -> torch.Tensor:
    """(N, D, L) float32, the layout heads take."""
    arrays = [_load_one(feature_path(out, v)) for v in video_ids]
    if len({a.shape for a in arrays}) > 1:
        raise LofiError(f"{out}: feature files of different shapes; delete {out} to extract them again")
    return torch.from_numpy(np.stack(arrays)).transpose(1, 2).contiguous()
