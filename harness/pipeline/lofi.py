"""Stage 2: the LoFi stage — encoder + TAL head trained end-to-end with the TAL loss at low fidelity.

The loop is ``harness.pipeline.fit``; a step asks the schedule for the fidelity of its (epoch, global iteration),
samples clips at that shape, forwards encoder and head and returns the TAL loss. All randomness is a function of
(seed, epoch, step), so a run resumed from its last epoch checkpoint ends with the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.data.frames import clip_loader
from harness.data.loader import ClipBatch, ClipLoader, training_plan
from harness.data.model import Video
from harness.experiment import ExperimentConfig
from harness.fidelity import fidelity_shape
from harness.pipeline.data import StageData
from harness.pipeline.distributed import current, unwrap, wrap
from harness.pipeline.files import CHECKPOINT, ENCODER
from harness.pipeline.fit import fit, make_optimizer
from harness.pipeline.models import build_head, load_encoder
from harness.pipeline.runtime import autocast, load_torch, save_torch
from harness.pipeline.stage import StageContext, StageResult
from harness.pipeline.targets import tal_targets
from harness.schedule import fidelity_at
from harness.seeding import torch_generator

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> StageResult:
    """The LoFi stage (variant: the cycle): train encoder + head at low fidelity from the ACP encoder and write
    ``encoder.pt``. An epoch checkpoint (``checkpoint.pt``, written with the stage's key) is resumed only by the
    same key, and removed once the stage is done."""
    cfg, cycle, seed, device = ctx.cfg, ctx.stage.variant, ctx.seed, ctx.device
    wanted = ctx.data.ds.subset(cfg.data.train_subset)
    videos = ctx.data.frames.usable(wanted)
    skipped = sorted({v.id for v in wanted} - {v.id for v in videos})
    encoder, head, opt = _models(cfg, ctx.input("pretrain") / ENCODER, device)
    ckpt = ctx.out / CHECKPOINT
    start_epoch, history = _resume(ckpt, ctx.key, encoder, head, opt)
    world = current()
    encoder = wrap(encoder, device=device, sync_bn=cfg.runtime.sync_bn)  # DDP under torchrun
    head = wrap(head, device=device, sync_bn=cfg.runtime.sync_bn)
    # the compiled module shares the encoder's parameters; checkpoints are saved from unwrap(encoder)
    run_encoder = torch.compile(encoder) if cfg.runtime.compile else encoder
    loader = _loader(cfg, cycle, ctx.data, videos, seed=seed, device=device)
    train_step = _train_step(cfg, seed, videos, lambda x: head(run_encoder(x).transpose(1, 2)), device)

    def save_checkpoint(epoch: int, history: list[dict[str, float]]) -> None:
        if world.main:
            save_torch(ckpt, _checkpoint(encoder, head, opt, epoch=epoch, history=history, key=ctx.key))

    history = fit(
        opt,
        train_step,
        n_items=len(videos),
        optim=cfg.lofi.optim,
        seed=seed,
        order_stream=("lofi-order",),
        stage=f"LoFi[{cycle}]",
        modules=(encoder, head),
        start_epoch=start_epoch,
        history=history,
        on_epoch_end=save_checkpoint,
        tracker=ctx.tracker,
        metric_prefix="lofi",
        progress=cfg.runtime.progress,
        loader=loader,
    )
    if world.main:
        save_torch(ctx.out / ENCODER, {"encoder": unwrap(encoder).cpu().state_dict(), "name": cfg.encoder.name})
    info = {"cycle": cycle, "history": history, "skipped_videos": skipped}
    return StageResult(outputs=[ctx.out / ENCODER], info=info, temporaries=(ckpt,))


def _models(
    cfg: ExperimentConfig, init: Path, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """The encoder (from ``init``), a new ``lofi.head`` at full fidelity's L and their optimiser (the encoder's
    learning rate scaled by ``lofi.encoder_lr_scale``)."""
    lc = cfg.lofi
    encoder = load_encoder(cfg, init).to(device)
    head = build_head(cfg, lc.head, in_features=encoder.num_features, temporal_length=cfg.fidelity.snippets).to(device)
    if device.type == "cuda":  # cuDNN's timed algorithm choice: faster convolutions, not bit-reproducible
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
    opt = make_optimizer(
        [{"params": encoder.parameters(), "lr": lc.optim.lr * lc.encoder_lr_scale}, {"params": head.parameters()}],
        lc.optim,
    )
    return encoder, head, opt


def _resume(
    ckpt: Path, key: str, encoder: nn.Module, head: nn.Module, opt: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    """(first epoch to run, history so far): from the epoch checkpoint when it was written with ``key`` (a kill
    after that epoch), loading the encoder, head and optimiser states; else (0, [])."""
    state = load_torch(ckpt) if ckpt.is_file() else None
    if state is not None and state.get("key") != key:  # written by another configuration: stale
        log.warning("LoFi: %s belongs to another configuration; starting from epoch 1", ckpt)
        state = None
    if state is None:
        return 0, []
    encoder.load_state_dict(state["encoder"])
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["optimizer"])
    log.info("LoFi: resuming after epoch %d from %s", state["epoch"] + 1, ckpt)
    return state["epoch"] + 1, state["history"]


def _checkpoint(
    encoder: nn.Module, head: nn.Module, opt: torch.optim.Optimizer, *, epoch: int, history: list, key: str
) -> dict:
    """What ``_resume`` reads back: the states after ``epoch`` and the key of the configuration that wrote them."""
    return {
        "encoder": unwrap(encoder).state_dict(),
        "head": unwrap(head).state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "history": history,
        "key": key,
    }


def _loader(
    cfg: ExperimentConfig, cycle: str, data: StageData, videos: list[Video], *, seed: int, device: torch.device
) -> ClipLoader:
    """The stage's clips: this rank's share of each step, at the cycle's fidelity of that step."""
    opt_cfg, world = cfg.lofi.optim, current()
    shape = cycle_shape(cfg, cycle, iters_per_epoch=(len(videos) + opt_cfg.batch_size - 1) // opt_cfg.batch_size)
    plan = training_plan(
        len(videos), opt_cfg, seed=seed, stream=("lofi-order",), shape=shape, rank=world.rank, world_size=world.size
    )
    return clip_loader(data.frames, videos, cfg.fidelity, plan, cfg.runtime, device)


def cycle_shape(cfg: ExperimentConfig, cycle: str, *, iters_per_epoch: int) -> Callable[[int, int], tuple[int, int]]:
    """``shape(epoch, step) -> (L, size)``: the clips of a step at the cycle's fidelity for (epoch, global iteration)."""
    fid, lc = cfg.fidelity, cfg.lofi
    # the cycle's own settings only: the others are in no key of this cycle's stage (plan._lofi_view)
    settings: dict[str, Any] = {}
    if cycle == "long":
        settings["c_l"] = lc.c_l
    elif cycle == "short":
        settings["c_s"] = lc.c_s
    elif cycle == "custom":
        settings["custom"] = (lc.r_t, lc.r_s)

    def shape(epoch: int, step: int) -> tuple[int, int]:
        f = fidelity_at(cycle, epoch=epoch, iteration=epoch * iters_per_epoch + step, **settings)
        return fidelity_shape(fid.snippets, fid.size, f.r_t, f.r_s)

    return shape


def _train_step(
    cfg: ExperimentConfig,
    seed: int,
    videos: list[Video],
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    device: torch.device,
) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    """One LoFi micro-batch: the clips to the device, encoder + head (``forward``), the TAL loss on its targets."""
    from heads.losses import tal_loss

    def train_step(
        epoch: int, step: int, micro: int, idx: torch.Tensor, batch: ClipBatch
    ) -> tuple[torch.Tensor, dict[str, float]]:
        L = batch.snippets
        part = [videos[j] for j in idx.tolist()]
        x = batch.to_device(device)
        targets = {k: v.to(device) for k, v in tal_targets(part, L, min(L, cfg.head.max_duration or L)).items()}
        with autocast(device, cfg.runtime.amp):
            outputs = forward(x)  # encoder: (B, L, D) -> head: (B, D, L)
        loss, _ = tal_loss(
            {k: v.float() for k, v in outputs.items()},
            targets,
            generator=torch_generator(seed, "lofi-loss", epoch, step, micro),
            pem_low_zero=cfg.head.pem_low_zero,
        )
        return loss, {}

    return train_step
