"""The tidy results row of one run (``row.json``): a typed model, built once by ``run_all`` from the run's config,
plan and metrics; every table and plot reads these rows (``harness/report/rows.py`` reads them).

``to_dict`` gives the flat JSON object, key for key and in the order the row has always had: the per-threshold mAPs
(``mAP_0.50`` … ``mAP_0.95``), the proposal metrics (``AR_1`` … ``AR_100``, ``AUC``) and the stage times
(``time_<stage>_s``) are fields of their own in the file, held here as one mapping each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.experiment import ExperimentConfig
from harness.fidelity import fidelity_shape
from harness.pipeline.files import results_file
from harness.pipeline.plan import MODE_PLAN, RunPlan

FLAT = {"flatten": True}  # a mapping field whose items are top-level keys of the row


@dataclass(frozen=True)
class ResultRow:
    dataset: str
    encoder: str
    head: str
    lofi_head: str
    mode: str
    cycle: str  # the LoFi cycle ("" for frozen-encoder modes)
    fidelities: str  # comma-separated names of the fidelities the LoFi stage trains at
    r_t: float | None  # the one fidelity's ratios, L and size; None when the mode trains at several (or none)
    r_s: float | None
    L: int | None
    size: int | None
    full_L: int
    full_size: int
    seed: int
    split: str  # the reported subset
    config: str  # the config file the run was started with
    config_hash: str
    run_key: str
    stage_keys: dict[str, str]
    commit: str
    mlflow_run_id: str
    average_mAP: float
    mAP: dict[str, float] = field(metadata=FLAT)  # mAP_<tIoU> on the reported split
    proposal_metrics: dict[str, float] = field(metadata=FLAT)  # AR_<AN>, AUC
    val_average_mAP: float = 0.0
    activation_bytes: int = 0  # one LoFi step's activations at the mode's fidelities (batch 1), and at full fidelity
    activation_bytes_full: int = 0
    activation_rel: float = 0.0
    times: dict[str, float] = field(default_factory=dict, metadata=FLAT)  # time_<stage>_s
    proposals: str = ""
    class_scores: str | None = None
    predictions: str = ""
    ground_truth: str = ""
    # undecodable videos skipped by a stage (data.skip_corrupt): absent from training or from the predictions
    skipped_videos: list[str] = field(default_factory=list)
    # annotated videos without a file (data.missing: skip = not evaluated, miss = scored as misses)
    missing_videos: dict[str, Any] = field(default_factory=dict)
    # torchrun: the processes, and the items per optimiser step summed over them (the config's batch)
    world_size: int = 1
    global_batch: dict[str, int] = field(default_factory=dict)
    # why the run's training diverged (harness/divergence.py), "" when it did not; every table flags such runs
    diverged: str = ""
    # the tracking store's failure during the run ("" when it logged everything); `lofi track sync RUN` re-logs it
    tracking_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row as written to ``row.json``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("flatten"):
                out.update(value)
            else:
                out[f.name] = value
        return out


def fidelity_columns(cfg: ExperimentConfig, fids: list[tuple[str, float, float]]) -> dict[str, Any]:
    """``fidelities``, ``r_t``, ``r_s``, ``L``, ``size`` of a mode training at ``fids`` [(name, r_t, r_s)]."""
    one = len(fids) == 1
    L, size = fidelity_shape(cfg.fidelity.snippets, cfg.fidelity.size, fids[0][1], fids[0][2]) if one else (None, None)
    return {
        "fidelities": ",".join(f[0] for f in fids),
        "r_t": fids[0][1] if one else None,
        "r_s": fids[0][2] if one else None,
        "L": L,
        "size": size,
    }


def metric_columns(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The row's metric fields from the head stage's metrics (test split, plus its validation average mAP)."""
    return {
        "average_mAP": metrics["average_mAP"],
        "mAP": {f"mAP_{t:.2f}": m for t, m in zip(metrics["tiou_thresholds"], metrics["mAP"])},
        "proposal_metrics": {k.replace("@", "_"): v for k, v in metrics.items() if k.startswith("AR@") or k == "AUC"},
        "val_average_mAP": metrics["validation"]["average_mAP"],
    }


def build_row(
    cfg: ExperimentConfig,
    plan: RunPlan,
    *,
    fids: list[tuple[str, float, float]],
    metrics: Mapping[str, Any],
    memory: Mapping[str, float],
    times: Mapping[str, float],
    scores: Path | None,
    run: Mapping[str, Any],
) -> ResultRow:
    """The row of a finished run. ``run``: what only the running process knows (``config``, ``config_hash``,
    ``commit``, ``mlflow_run_id``, ``skipped_videos``, ``missing_videos``, ``world_size``, ``diverged``,
    ``tracking_error``)."""
    head_dir = plan.head.folder
    return ResultRow(
        dataset=cfg.data.name,
        encoder=cfg.encoder.name,
        head=cfg.head.name,
        lofi_head=cfg.lofi.head,
        mode=plan.mode,
        cycle=MODE_PLAN[plan.mode][1] or "",
        **fidelity_columns(cfg, fids),
        full_L=cfg.fidelity.snippets,
        full_size=cfg.fidelity.size,
        seed=plan.seed,
        split=cfg.data.test_subset,
        config=run["config"],
        config_hash=run["config_hash"],
        run_key=plan.key,
        stage_keys={s.name: s.key for s in plan.stages},
        commit=run["commit"],
        mlflow_run_id=run["mlflow_run_id"],
        **metric_columns(metrics),
        activation_bytes=int(memory["activation_bytes"]),
        activation_bytes_full=int(memory["activation_bytes_full"]),
        activation_rel=memory["activation_rel"],
        times={f"time_{k}_s": v for k, v in times.items()},
        proposals=str((head_dir / results_file("proposals", "testing")).resolve()),
        class_scores=str(scores.resolve()) if scores else None,
        predictions=str((head_dir / results_file("predictions", "testing")).resolve()),
        ground_truth=str(cfg.data.annotations_path().resolve()),
        skipped_videos=list(run["skipped_videos"]),
        missing_videos=dict(run.get("missing_videos") or {}),
        world_size=run["world_size"],
        diverged=str(run.get("diverged") or ""),
        tracking_error=str(run.get("tracking_error") or ""),
        global_batch={
            "pretrain": cfg.pretrain.optim.batch_size,
            "lofi": cfg.lofi.optim.batch_size,
            "head": cfg.head.optim.batch_size,
        },
    )
