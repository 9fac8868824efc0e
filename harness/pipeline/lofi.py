"""Stage 2: the LoFi stage — encoder + TAL head trained end-to-end with the TAL loss at low fidelity.

The loop reads top to bottom: per epoch set the lr, draw the video order; per mini-batch ask the schedule for
the fidelity, sample clips at that shape, forward, loss, backward, step. All randomness is a function of
(seed, epoch, step), so a run resumed from its last epoch checkpoint ends with the same numbers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm import tqdm

from harness.experiment import ExperimentConfig, config_hash
from harness.fidelity import fidelity_shape
from harness.pipeline.data import VideoFrames, prepare_dataset, tal_targets
from harness.pipeline.models import build_head, load_encoder
from harness.pipeline.runtime import (
    autocast, check_finite, load_torch, make_optimizer, mark_done, save_torch, prepare, set_lr, stage_done,
)
from harness.schedule import fidelity_at
from harness.seeding import numpy_rng, torch_generator
from harness.tracking import start_run

log = logging.getLogger(__name__)


def run_lofi(cfg: ExperimentConfig, *, cycle: str, seed: int, init: Path, out: Path, parent_run_id: str = "",
             stop_after_epoch: int | None = None) -> Path:
    """Train encoder + head at low fidelity from the pre-trained encoder ``init``; write ``out/encoder.pt``.

    ``stop_after_epoch`` ends the process-level work early after that many epochs (tests use it to simulate a kill).
    """
    from heads.losses import tal_loss

    if stage_done(out):
        return out / "encoder.pt"
    out.mkdir(parents=True, exist_ok=True)
    device = prepare(cfg.runtime, seed)
    ds = prepare_dataset(cfg.data)
    frames = VideoFrames(cfg.data)
    videos = frames.usable(ds.subset(cfg.data.train_subset))
    fid, opt_cfg, lc = cfg.fidelity, cfg.lofi.optim, cfg.lofi

    encoder = load_encoder(cfg, init).to(device)
    head = build_head(cfg, lc.head, in_features=encoder.num_features, temporal_length=fid.snippets).to(device)
    opt = make_optimizer(
        [{"params": encoder.parameters(), "lr": opt_cfg.lr * lc.encoder_lr_scale}, {"params": head.parameters()}],
        opt_cfg,
    )
    start_epoch, history = 0, []
    ckpt = out / "checkpoint.pt"
    # A checkpoint is resumed only by the same stage configuration; after a config change it is stale.
    key = config_hash((cfg.data, cfg.fidelity, cfg.encoder, cfg.lofi, cfg.head), cycle, seed, init.resolve())
    state = load_torch(ckpt) if ckpt.is_file() else None
    if state is not None and state.get("key") != key:
        log.warning("LoFi: %s belongs to another configuration; starting from epoch 1", ckpt)
        state = None
    if state is not None:  # resume after a kill: the last finished epoch
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        log.info("LoFi: resuming after epoch %d from %s", start_epoch, ckpt)

    bs = opt_cfg.batch_size
    micro = max(1, bs // opt_cfg.accumulate)
    iters_per_epoch = (len(videos) + bs - 1) // bs
    t_start = time.perf_counter()
    with start_run(cfg.tracking, run_name=f"lofi-{cycle}-seed{seed}", parent_run_id=parent_run_id,
                   tags={"stage": "lofi", "cycle": cycle, "seed": str(seed)}) as tracker:
        for epoch in range(start_epoch, opt_cfg.epochs):
            encoder.train()
            head.train()
            lr = set_lr(opt, epoch, opt_cfg)
            order = numpy_rng(seed, "lofi-order", epoch).permutation(len(videos))
            t0, tot, seen = time.perf_counter(), 0.0, 0
            bar = tqdm(range(iters_per_epoch), desc=f"LoFi[{cycle}] epoch {epoch + 1}/{opt_cfg.epochs}",
                       disable=not cfg.runtime.progress, leave=False)
            for step in bar:
                it = epoch * iters_per_epoch + step
                f = fidelity_at(cycle, epoch=epoch, iteration=it, c_l=lc.c_l, c_s=lc.c_s, custom=(lc.r_t, lc.r_s))
                L, size = fidelity_shape(fid.snippets, fid.size, f.r_t, f.r_s)
                batch = [videos[j] for j in order[step * bs : (step + 1) * bs]]
                opt.zero_grad(set_to_none=True)
                for m in range(0, len(batch), micro):
                    part = batch[m : m + micro]
                    x = frames.batch(part, snippets=L, fid=fid, size=size).to(device)
                    targets = {k: v.to(device) for k, v in tal_targets(part, L, min(L, cfg.head.max_duration or L)).items()}
                    with autocast(device, cfg.runtime.amp):
                        feats = encoder(x)  # (B, L, D)
                        outputs = head(feats.transpose(1, 2))
                    loss, parts = tal_loss({k: v.float() for k, v in outputs.items()}, targets,
                                           generator=torch_generator(seed, "lofi-loss", epoch, step, m))
                    check_finite(loss, stage=f"LoFi[{cycle}]", epoch=epoch, step=step)
                    (loss * len(part) / len(batch)).backward()
                    tot += loss.item() * len(part)
                    seen += len(part)
                opt.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", fid=f"{f.name}:{L}x{size}")
            row = {"loss": tot / max(seen, 1), "lr": lr, "clips_per_s": seen / (time.perf_counter() - t0)}
            history.append(row)
            tracker.log_metrics({f"lofi_{k}": v for k, v in row.items()}, step=epoch)
            log.info("LoFi[%s] epoch %d: loss %.4f (%.1f clips/s)", cycle, epoch + 1, row["loss"], row["clips_per_s"])
            save_torch(ckpt, {"encoder": encoder.state_dict(), "head": head.state_dict(),
                              "optimizer": opt.state_dict(), "epoch": epoch, "history": history, "key": key})
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < opt_cfg.epochs:
                return ckpt  # simulated interruption (tests)
        save_torch(out / "encoder.pt", {"encoder": encoder.cpu().state_dict(), "name": cfg.encoder.name})
        mark_done(out, {"stage": "lofi", "cycle": cycle, "seed": seed, "history": history,
                        "skipped_videos": frames.skipped, "mlflow_run_id": tracker.run_id,
                        "time_s": time.perf_counter() - t_start})
    ckpt.unlink(missing_ok=True)
    return out / "encoder.pt"
