"""One configuration end to end: pre-train → (LoFi) → features → head → metrics, reusing finished stages, and
the tidy results row that every table is built from."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.config import flatten, to_dict
from harness.errors import LofiError
from harness.experiment import MODE_PLAN, MODES, ExperimentConfig, config_hash
from harness.fidelity import fidelity_shape
from harness.io import write_json_atomic, write_text_atomic
from harness.pipeline.runtime import Env, stage_done
from harness.schedule import CYCLE_ORDER, PAPER_RATIOS
from harness.tracking import git_commit, start_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageDirs:
    pretrain: Path
    acp: Path  # the ACP encoder acp+ fine-tunes
    lofi: Path
    features: Path
    head: Path
    acpplus: Path | None = None  # the ACP+ model behind the shared video-level class scores (default: OUT/pretrain-acpplus)
    classifier: Path | None = None  # the shared class scores (default: OUT/classifier)

    @staticmethod
    def under(out: Path) -> "StageDirs":
        return StageDirs(out / "pretrain", out / "pretrain-acp", out / "lofi", out / "features", out / "head",
                         out / "pretrain-acpplus", out / "classifier")


def mode_fidelities(cfg: ExperimentConfig, mode: str) -> list[tuple[str, float, float]]:
    """The (name, r_t, r_s) a mode trains at in the LoFi stage (empty for frozen-encoder modes)."""
    cycle = MODE_PLAN[mode][1]
    if cycle is None:
        return []
    if cycle in ("long", "short"):
        return [(n, *PAPER_RATIOS[n]) for n in CYCLE_ORDER]
    if cycle == "full":
        return [("full", 1.0, 1.0)]
    if cycle == "custom":
        return [("custom", cfg.lofi.r_t, cfg.lofi.r_s)]
    return [(cycle, *PAPER_RATIOS[cycle])]


def check_fidelity(cfg: ExperimentConfig, mode: str) -> None:
    """Fail fast (before any work) on a fidelity the mode cannot use."""
    for _, r_t, r_s in mode_fidelities(cfg, mode):
        fidelity_shape(cfg.fidelity.snippets, cfg.fidelity.size, r_t, r_s)


def _memory(cfg: ExperimentConfig, mode: str) -> dict[str, float]:
    """Activation bytes of one LoFi training step (batch 1) at the mode's fidelities, and at full fidelity.

    Counted on the meta device: shapes only, nothing allocated, so a full-fidelity step that would not fit the
    machine (TSM-R18 at 100 × 8 × 224² keeps ~20 GB per video) is still measured."""
    from harness.memory import measure_step_memory
    from harness.pipeline.models import build_encoder, build_head

    fid = cfg.fidelity
    enc = build_encoder(cfg, from_weights=False)

    def at(r_t: float, r_s: float) -> int:
        L, size = fidelity_shape(fid.snippets, fid.size, r_t, r_s)
        head = build_head(cfg, cfg.lofi.head, in_features=enc.num_features, temporal_length=L)
        return int(measure_step_memory(enc, head, batch=1, snippets=L, frames=fid.frames, size=size,
                                       device="meta").activation_bytes)

    full = at(1.0, 1.0)
    fids = mode_fidelities(cfg, mode)
    used = max((at(r_t, r_s) for _, r_t, r_s in fids), default=0)
    return {"activation_bytes": used, "activation_bytes_full": full, "activation_rel": used / full if full else 0.0}


def _class_scores(cfg: ExperimentConfig, seed: int, out: Path, dirs: StageDirs, pre_mode: str, pid: str) -> Path | None:
    """The shared video-level class scores this run fuses with its proposals (None: the run's own linear probe)."""
    from harness.pipeline.classify import run_class_scores
    from harness.pipeline.pretrain import run_pretrain

    choice = cfg.head.class_scores
    if choice == "features":
        return None
    if choice != "finetuned":
        return Path(choice)
    # where this run's stages already put the ACP and ACP+ models (both are reused when finished)
    acp_dir = dirs.pretrain if pre_mode == "acp" else dirs.acp
    acpplus_dir = dirs.pretrain if pre_mode == "acp+" else (dirs.acpplus or out / "pretrain-acpplus")
    acp = run_pretrain(cfg, mode="acp", seed=seed, out=acp_dir, parent_run_id=pid)
    model = run_pretrain(cfg, mode="acp+", seed=seed, out=acpplus_dir, init=acp, parent_run_id=pid)
    return run_class_scores(cfg, checkpoint=model, out=dirs.classifier or out / "classifier", seed=seed)


def run_all(cfg: ExperimentConfig, *, mode: str, seed: int, out: Path, dirs: StageDirs | None = None,
            parent_run_id: str = "", config_path: str = "",
            on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """Run every stage of ``mode`` (reusing finished ones) and write metrics.json and row.json into ``out``."""
    from harness.pipeline.features import run_features
    from harness.pipeline.headtrain import run_head
    from harness.pipeline.lofi import run_lofi
    from harness.pipeline.pretrain import run_pretrain

    if mode not in MODES:
        raise LofiError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    check_fidelity(cfg, mode)
    dirs = dirs or StageDirs.under(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", __import__("yaml").safe_dump(to_dict(cfg), sort_keys=False))
    pre_mode, cycle = MODE_PLAN[mode]
    times: dict[str, float] = {}
    chash = config_hash(cfg, mode, seed)
    with start_run(cfg.tracking, run_name=f"{cfg.data.name}/{cfg.encoder.name}/{cfg.head.name}/{mode}/seed{seed}",
                   parent_run_id=parent_run_id, tags={"mode": mode, "seed": str(seed), "config_hash": chash}) as parent:
        parent.log_params({**flatten(to_dict(cfg)), "mode": mode, "seed": seed, "commit": git_commit(),
                           **{f"env.{k}": v for k, v in Env.capture().__dict__.items()}})

        def timed(name: str, fn):
            done_before = stage_done(getattr(dirs, name)) is not None
            t0 = time.perf_counter()
            result = fn()
            if not done_before:
                times[name] = time.perf_counter() - t0
            return result

        pid = parent.run_id
        if pre_mode == "acp+":
            acp = timed("acp", lambda: run_pretrain(cfg, mode="acp", seed=seed, out=dirs.acp, parent_run_id=pid))
            encoder = timed("pretrain", lambda: run_pretrain(cfg, mode="acp+", seed=seed, out=dirs.pretrain, init=acp, parent_run_id=pid))
        else:
            encoder = timed("pretrain", lambda: run_pretrain(cfg, mode=pre_mode, seed=seed, out=dirs.pretrain, parent_run_id=pid))
        if cycle is not None:
            encoder = timed("lofi", lambda: run_lofi(cfg, cycle=cycle, seed=seed, init=encoder, out=dirs.lofi, parent_run_id=pid))
        feats = timed("features", lambda: run_features(cfg, encoder_checkpoint=encoder, out=dirs.features, seed=seed))
        scores = _class_scores(cfg, seed, out, dirs, pre_mode, pid)
        metrics = timed("head", lambda: run_head(cfg, features=feats, seed=seed, out=dirs.head, parent_run_id=pid,
                                                 on_epoch=on_epoch, class_scores=scores))
        write_json_atomic(out / "metrics.json", {k: metrics[k] for k in metrics if k != "history"})
        fids = mode_fidelities(cfg, mode)
        L, size = (fidelity_shape(cfg.fidelity.snippets, cfg.fidelity.size, fids[0][1], fids[0][2])
                   if len(fids) == 1 else (None, None))
        row = {
            "dataset": cfg.data.name, "encoder": cfg.encoder.name, "head": cfg.head.name, "lofi_head": cfg.lofi.head,
            "mode": mode, "cycle": cycle or "", "fidelities": ",".join(f[0] for f in fids),
            "r_t": fids[0][1] if len(fids) == 1 else None, "r_s": fids[0][2] if len(fids) == 1 else None,
            "L": L, "size": size, "full_L": cfg.fidelity.snippets, "full_size": cfg.fidelity.size,
            "seed": seed, "split": cfg.data.test_subset, "config": config_path, "config_hash": chash,
            "commit": git_commit(), "mlflow_run_id": parent.run_id,
            "average_mAP": metrics["average_mAP"],
            **{f"mAP_{t:.2f}": m for t, m in zip(metrics["tiou_thresholds"], metrics["mAP"])},
            **{k.replace("@", "_"): v for k, v in metrics.items() if k.startswith("AR@") or k == "AUC"},
            "val_average_mAP": metrics["validation"]["average_mAP"],
            **_memory(cfg, mode),
            **{f"time_{k}_s": v for k, v in times.items()},
            "predictions": str((dirs.head / "predictions_testing.json").resolve()),
            "ground_truth": str(cfg.data.annotations_path().resolve()),
        }
        parent.log_metrics({k: v for k, v in row.items() if k.startswith(("mAP_", "average_mAP", "AR_", "AUC", "activation", "time_"))
                            and isinstance(v, (int, float))})
        write_json_atomic(out / "row.json", row)
    log.info("%s seed %d: test average mAP %.4f (%s)", mode, seed, row["average_mAP"], out)
    return row
