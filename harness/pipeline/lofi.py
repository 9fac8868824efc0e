"""Stage 2: the LoFi stage — encoder + TAL head trained end-to-end with the TAL loss at low fidelity.

The loop is ``harness.pipeline.fit``; a step asks the schedule for the fidelity of its (epoch, global iteration),
samples clips at that shape, forwards encoder and head and returns the TAL loss. All randomness is a function of
(seed, epoch, step), so a run resumed from its last epoch checkpoint ends with the same numbers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from harness.data.loader import ClipBatch, training_plan
from harness.experiment import ExperimentConfig
from harness.fidelity import fidelity_shape
from harness.pipeline.data import StageData, clip_loader, stage_data, tal_targets
from harness.pipeline.distributed import barrier, current, unwrap, wrap
from harness.pipeline.files import CHECKPOINT, ENCODER
from harness.pipeline.fit import fit
from harness.pipeline.models import build_head, load_encoder
from harness.pipeline.runtime import autocast, load_torch, make_optimizer, mark_done, prepare, save_torch, stage_done
from harness.schedule import fidelity_at
from harness.seeding import torch_generator
from harness.tracking import start_run

log = logging.getLogger(__name__)


def run_lofi(
    cfg: ExperimentConfig,
    *,
    cycle: str,
    seed: int,
    init: Path,
    out: Path,
    key: str,
    data: StageData | None = None,
    parent_run_id: str = "",
    stop_after_epoch: int | None = None,
) -> Path:
    """Train encoder + head at low fidelity from the pre-trained encoder ``init``; write ``out/encoder.pt``.

    ``key``: the stage plan's key; a finished stage is reused only with it, and the epoch checkpoint
    (``out/checkpoint.pt``) is resumed only by it. ``data``: the dataset and frame source (built here when None).
    ``stop_after_epoch`` ends the work early after that many epochs (tests use it to simulate a kill).
    """
    from heads.losses import tal_loss

    if stage_done(out, key) is not None:
        return out / ENCODER
    out.mkdir(parents=True, exist_ok=True)
    device = prepare(cfg.runtime, seed)
    data = stage_data(cfg.data, data, cache_bytes=cfg.runtime.cache_bytes)
    wanted = data.ds.subset(cfg.data.train_subset)
    videos = data.frames.usable(wanted)
    skipped = sorted({v.id for v in wanted} - {v.id for v in videos})
    fid, opt_cfg, lc = cfg.fidelity, cfg.lofi.optim, cfg.lofi

    encoder = load_encoder(cfg, init).to(device)
    head = build_head(cfg, lc.head, in_features=encoder.num_features, temporal_length=fid.snippets).to(device)
    if device.type == "cuda":  # cuDNN's timed algorithm choice: faster convolutions, not bit-reproducible
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
    opt = make_optimizer(
        [{"params": encoder.parameters(), "lr": opt_cfg.lr * lc.encoder_lr_scale}, {"params": head.parameters()}],
        opt_cfg,
    )
    start_epoch, history = 0, []
    ckpt = out / CHECKPOINT
    state = load_torch(ckpt) if ckpt.is_file() else None
    if state is not None and state.get("key") != key:  # written by another configuration: stale
        log.warning("LoFi: %s belongs to another configuration; starting from epoch 1", ckpt)
        state = None
    if state is not None:  # resume after a kill: the last finished epoch
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        log.info("LoFi: resuming after epoch %d from %s", start_epoch, ckpt)

    iters_per_epoch = (len(videos) + opt_cfg.batch_size - 1) // opt_cfg.batch_size
    world = current()
    encoder = wrap(encoder, device=device, sync_bn=cfg.runtime.sync_bn)  # DDP under torchrun
    head = wrap(head, device=device, sync_bn=cfg.runtime.sync_bn)
    # the compiled module shares the encoder's parameters; checkpoints are saved from unwrap(encoder)
    run_encoder = torch.compile(encoder) if cfg.runtime.compile else encoder

    def shape(epoch: int, step: int) -> tuple[int, int]:
        """(L, size) of the step's clips: the cycle's fidelity at (epoch, global iteration)."""
        f = fidelity_at(
            cycle,
            epoch=epoch,
            iteration=epoch * iters_per_epoch + step,
            c_l=lc.c_l,
            c_s=lc.c_s,
            custom=(lc.r_t, lc.r_s),
        )
        return fidelity_shape(fid.snippets, fid.size, f.r_t, f.r_s)

    plan = training_plan(
        len(videos), opt_cfg, seed=seed, stream=("lofi-order",), shape=shape, rank=world.rank, world_size=world.size
    )
    loader = clip_loader(data.frames, videos, fid, plan, cfg.runtime, device)

    def train_step(
        epoch: int, step: int, micro: int, idx: torch.Tensor, batch: ClipBatch
    ) -> tuple[torch.Tensor, dict[str, float]]:
        L = batch.snippets
        part = [videos[j] for j in idx.tolist()]
        x = batch.to_device(device)
        targets = {k: v.to(device) for k, v in tal_targets(part, L, min(L, cfg.head.max_duration or L)).items()}
        with autocast(device, cfg.runtime.amp):
            outputs = head(run_encoder(x).transpose(1, 2))  # encoder: (B, L, D)
        loss, _ = tal_loss(
            {k: v.float() for k, v in outputs.items()},
            targets,
            generator=torch_generator(seed, "lofi-loss", epoch, step, micro),
            pem_low_zero=cfg.head.pem_low_zero,
        )
        return loss, {}

    def save_checkpoint(epoch: int, history: list[dict[str, float]]) -> None:
        if not world.main:
            return
        save_torch(
            ckpt,
            {
                "encoder": unwrap(encoder).state_dict(),
                "head": unwrap(head).state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "history": history,
                "key": key,
            },
        )

    t_start = time.perf_counter()
    with start_run(
        cfg.tracking,
        run_name=f"lofi-{cycle}-seed{seed}",
        parent_run_id=parent_run_id,
        tags={"stage": "lofi", "cycle": cycle, "seed": str(seed)},
    ) as tracker:
        history = fit(
            opt,
            train_step,
            n_items=len(videos),
            optim=opt_cfg,
            seed=seed,
            order_stream=("lofi-order",),
            stage=f"LoFi[{cycle}]",
            modules=(encoder, head),
            start_epoch=start_epoch,
            stop_epoch=stop_after_epoch,
            history=history,
            on_epoch_end=save_checkpoint,
            tracker=tracker,
            metric_prefix="lofi",
            progress=cfg.runtime.progress,
            loader=loader,
        )
        if len(history) < opt_cfg.epochs:
            return ckpt  # stopped early by stop_after_epoch (tests)
        if world.main:
            save_torch(out / ENCODER, {"encoder": unwrap(encoder).cpu().state_dict(), "name": cfg.encoder.name})
            mark_done(
                out,
                {
                    "stage": "lofi",
                    "cycle": cycle,
                    "seed": seed,
                    "history": history,
                    "skipped_videos": skipped,
                    "mlflow_run_id": tracker.run_id,
                    "time_s": time.perf_counter() - t_start,
                    "world_size": world.size,
                },
                key=key,
                outputs=[out / ENCODER],
            )
    if world.main:
        ckpt.unlink(missing_ok=True)
    barrier()  # the other ranks read encoder.pt next
    return out / ENCODER
