"""One configuration end to end: its stages from the plan, each run (or reused when finished with the same key),
and the tidy results row that every table is built from."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from harness.config import flatten, to_dict
from harness.divergence import act_on_divergence, run_divergence, stage_history
from harness.experiment import ExperimentConfig, config_hash
from harness.fidelity import fidelity_shape
from harness.io import read_json_object, remove_orphans, write_json_atomic, write_text_atomic
from harness.pipeline.distributed import barrier, current
from harness.pipeline.files import DONE, MEMORY_CACHE, METRICS, ROW
from harness.pipeline.plan import MODE_PLAN, RunPlan, Stage, plan_run
from harness.pipeline.row import build_row
from harness.pipeline.runtime import Env
from harness.pipeline.stage import execute, stage_done
from harness.pipeline.stages import spec_of
from harness.schedule import CYCLE_ORDER, PAPER_RATIOS
from harness.tracking import (
    Tracker,
    configuration_tags,
    git_commit,
    row_metrics,
    start_run,
    tracking_failure,
)

if TYPE_CHECKING:
    from harness.pipeline.data import StageData

log = logging.getLogger(__name__)


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


def _memory(cfg: ExperimentConfig, mode: str, cache: Path | None = None) -> dict[str, float]:
    """Activation bytes of one LoFi training step (batch 1) at the mode's fidelities, and at full fidelity.

    Counted on the meta device: shapes only, nothing allocated, so a full-fidelity step that would not fit the
    machine (TSM-R18 at 100 × 8 × 224² keeps ~20 GB per video) is still measured. Each shape's count is kept in
    ``cache`` (a folder; None: none), so that the sweep's head jobs, which share a few shapes, build the encoder
    (and import timm) only for a shape not yet counted (issue 18)."""
    fid = cfg.fidelity
    shapes = {(r_t, r_s): fidelity_shape(fid.snippets, fid.size, r_t, r_s) for r_t, r_s in _memory_points(cfg, mode)}
    counted = _activation_bytes(cfg, sorted(set(shapes.values())), cache)
    full = counted[shapes[(1.0, 1.0)]]
    used = max((counted[shapes[(r_t, r_s)]] for _, r_t, r_s in mode_fidelities(cfg, mode)), default=0)
    return {"activation_bytes": used, "activation_bytes_full": full, "activation_rel": used / full if full else 0.0}


def _memory_points(cfg: ExperimentConfig, mode: str) -> list[tuple[float, float]]:
    """(r_t, r_s) of full fidelity and of every fidelity the mode trains at."""
    return [(1.0, 1.0), *((r_t, r_s) for _, r_t, r_s in mode_fidelities(cfg, mode))]


def _activation_bytes(
    cfg: ExperimentConfig, shapes: list[tuple[int, int]], cache: Path | None
) -> dict[tuple[int, int], int]:
    """{(L, size): activation bytes of one step of the encoder + ``lofi.head`` at that shape}: from ``cache`` where
    a file for exactly these inputs exists, else counted (``measure_step_memory``) and written there."""
    from harness.pipeline.models import head_kwargs

    fid = cfg.fidelity
    inputs = {
        shape: {
            "encoder": to_dict(cfg.encoder),
            "head": cfg.lofi.head,
            "head_kwargs": head_kwargs(cfg, cfg.lofi.head),
            "snippets": shape[0],
            "frames": fid.frames,
            "size": shape[1],
            "code": _memory_code_fingerprint(),
        }
        for shape in shapes
    }
    files = (
        {
            shape: cache / f"{hashlib.sha256(json.dumps(i, sort_keys=True).encode()).hexdigest()[:24]}.json"
            for shape, i in inputs.items()
        }
        if cache is not None
        else {}
    )
    counted = {shape: n for shape in shapes if (n := _cached_bytes(files.get(shape), inputs[shape])) is not None}
    missing = [shape for shape in shapes if shape not in counted]
    if missing:
        from harness.bench.memory import measure_step_memory
        from harness.pipeline.models import build_encoder, build_head

        enc = build_encoder(cfg, from_weights=False)
        for L, size in missing:
            head = build_head(cfg, cfg.lofi.head, in_features=enc.num_features, temporal_length=L)
            report = measure_step_memory(enc, head, batch=1, snippets=L, frames=fid.frames, size=size, device="meta")
            counted[(L, size)] = int(report.activation_bytes)
            if cache is not None:
                write_json_atomic(
                    files[(L, size)], {"inputs": inputs[(L, size)], "activation_bytes": counted[(L, size)]}
                )
    return counted


def _cached_bytes(path: Path | None, inputs: dict) -> int | None:
    """The count a cache file holds for exactly ``inputs`` (None: no such file, or not one we wrote)."""
    if path is None:
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and found.get("inputs") == inputs and type(found.get("activation_bytes")) is int
    return found["activation_bytes"] if ok else None


@functools.cache
def _memory_code_fingerprint() -> str:
    """What a count depends on besides its inputs: the encoder, head and counting code, torch's and timm's
    versions (a changed file or version counts every shape again)."""
    import importlib.metadata
    import importlib.util

    import torch

    digest = hashlib.sha256()
    files: list[Path] = []
    for package in ("encoders", "heads"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            files.extend(sorted(Path(folder).glob("*.py")))
    here = Path(__file__).resolve().parent
    files += [here.parent / "bench" / "memory.py", here / "models.py", here.parent / "fidelity.py"]
    for f in files:  # a file moved away changes the fingerprint too
        digest.update(f.name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"") + b"\0")
    for dist in ("timm", "torchvision"):  # dependencies of the package: installed wherever it is
        digest.update(f"{dist}={importlib.metadata.version(dist)}".encode())
    digest.update(f"torch={torch.__version__}".encode())
    return digest.hexdigest()[:16]


def run_stage(
    cfg: ExperimentConfig,
    stage: Stage,
    *,
    data: StageData | None = None,
    parent_run_id: str = "",
    on_epoch: Callable[[int, float], None] | None = None,
) -> Path:
    """Run one planned stage of any registered kind (reused when finished with its key; its upstream stages must
    be finished) through the protocol's shared steps (``harness.pipeline.stage.execute``); returns its main output."""
    return execute(spec_of(stage.kind), cfg, stage, data=data, parent_run_id=parent_run_id, on_epoch=on_epoch)


def _class_scores_path(cfg: ExperimentConfig, plan: RunPlan) -> Path | None:
    """The video-level class scores the head fuses with (None: the run's own linear probe on its features)."""
    from harness.pipeline.headtrain import class_scores_file

    return class_scores_file(cfg, plan.head)


def check_inputs(cfg: ExperimentConfig, plan: RunPlan, todo: list[Stage]) -> None:
    """What the stages to run need from this machine, checked before any stage runs (not after hours): the weights
    a pre-training stage starts from, and the device (the data: ``prepare_dataset``, read next)."""
    from harness.pipeline.preflight import check_device, check_weights

    check_weights(cfg, {s.variant for s in todo if s.kind == "pretrain"})
    if todo:
        check_device(cfg)


def skipped_videos(plan: RunPlan) -> list[str]:
    """The videos a run's stages skipped as undecodable (``data.skip_corrupt``), from their ``done.json``."""
    skipped: set[str] = set()
    for stage in plan.stages:
        if not spec_of(stage.kind).shared:
            continue
        try:
            info = json.loads((stage.folder / DONE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # stage_done has vetted every marker before this point; nothing to add
        if isinstance(info, dict) and isinstance(info.get("skipped_videos"), list):
            skipped.update(str(v) for v in info["skipped_videos"])
    return sorted(skipped)


def missing_videos(cfg: ExperimentConfig, out: Path, data) -> dict:
    """The row's record of the annotated videos without a file (``data.missing``): their count, the test subset's,
    and the file listing them (written into ``out``), not the ids themselves."""
    from harness.pipeline.data import missing_counts, prepare_dataset, write_missing_list

    ds = data.ds if data is not None else prepare_dataset(cfg.data)
    counts = missing_counts(ds)
    listed = out / "missing_videos.txt"
    n = write_missing_list(ds, listed) if current().main else sum(counts.values())
    return {
        "policy": cfg.data.missing,
        "count": n,
        "test": counts.get(cfg.data.test_subset, 0),
        "list": str(listed.resolve()) if n else None,
    }


def _finished_row(out: Path, run_key: str) -> dict | None:
    """The run's row.json when it was written for ``run_key``; a corrupt one is an error naming it."""
    row = read_json_object(out / ROW, "results row", "delete it and re-run (finished stages are kept)")
    return row if row is not None and row.get("run_key") == run_key else None


def run_all(
    cfg: ExperimentConfig,
    *,
    mode: str,
    seed: int,
    out: Path,
    stages_root: Path | None = None,
    parent_run_id: str = "",
    config_path: str = "",
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict:
    """Run every stage of ``mode`` (reusing those finished with the same key) and write metrics.json and row.json
    into ``out``; shared stages live under ``stages_root`` (default ``out``, see harness/pipeline/plan.py)."""
    from harness.pipeline.data import load_stage_data
    from harness.pipeline.headtrain import finished_metrics

    plan = plan_run(cfg, mode=mode, seed=seed, run_dir=out, stages_root=stages_root)
    # Before any work: a finished stage of another configuration in the way stops here, naming its folder.
    todo = [s for s in plan.stages if stage_done(s.folder, s.key) is None]
    check_inputs(cfg, plan, todo)
    if plan.head not in todo:
        row = _finished_row(out, plan.key)
        if row is not None:
            log.info("%s seed %d: already finished (%s)", mode, seed, out)
            act_on_divergence(
                str(row.get("diverged") or ""), policy=cfg.runtime.on_divergence, run=f"{mode} seed {seed} ({out})"
            )
            return row
    # the dataset and frame source, built once for every stage; read before --out is created, so that a bad
    # annotation file leaves no trace
    data = load_stage_data(cfg.data, cache_bytes=cfg.runtime.cache_bytes) if todo else None
    out.mkdir(parents=True, exist_ok=True)
    remove_orphans(out)  # row.json / metrics.json temporaries of a killed run (the stages clean their own)
    chash = config_hash(cfg, mode, seed)
    with start_run(
        cfg.tracking,
        run_name=f"{cfg.data.name}/{cfg.encoder.name}/{cfg.head.name}/{mode}/seed{seed}",
        parent_run_id=parent_run_id,
        tags={"mode": mode, "seed": str(seed), "config_hash": chash},
    ) as parent:
        parent.log_params(_run_params(cfg, mode, seed))
        times = _run_stages(cfg, todo, data=data, parent_run_id=parent.run_id, on_epoch=on_epoch)
        scores = _class_scores_path(cfg, plan)
        metrics = finished_metrics(plan.head.folder)
        world = current()
        # a flagged row, or (runtime.on_divergence=fail) a one-line error before the run's files are written
        diverged = run_divergence({s.name: stage_history(s.folder) for s in plan.stages if s.kind != "head"}, metrics)
        act_on_divergence(diverged, policy=cfg.runtime.on_divergence, run=f"{mode} seed {seed} ({out})")
        if world.main:
            write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
            write_json_atomic(out / METRICS, {k: metrics[k] for k in metrics if k != "history"})
        row = build_row(
            cfg,
            plan,
            fids=mode_fidelities(cfg, mode),
            metrics=metrics,
            memory=_memory(cfg, mode, cache=(stages_root if stages_root is not None else out) / MEMORY_CACHE),
            times=times,
            scores=scores,
            run={
                "config": config_path,
                "config_hash": chash,
                "commit": git_commit(),
                "mlflow_run_id": parent.run_id,
                "skipped_videos": skipped_videos(plan),
                "missing_videos": missing_videos(cfg, out, data),
                "world_size": world.size,
                "diverged": diverged,
                "tracking_error": tracking_failure(),
            },
        ).to_dict()
        _publish_row(parent, out / ROW, row, main=world.main)
    barrier()
    log.info("%s seed %d: test average mAP %.4f (%s)", mode, seed, row["average_mAP"], out)
    return row


def _run_params(cfg: ExperimentConfig, mode: str, seed: int) -> dict:
    """The parameters of a run's MLflow parent: the flattened config, mode, seed, commit and environment."""
    return {
        **flatten(to_dict(cfg)),
        "mode": mode,
        "seed": seed,
        "commit": git_commit(),
        **{f"env.{k}": v for k, v in Env.capture().__dict__.items()},
    }


def _run_stages(
    cfg: ExperimentConfig,
    todo: list[Stage],
    *,
    data: StageData | None,
    parent_run_id: str,
    on_epoch: Callable[[int, float], None] | None,
) -> dict[str, float]:
    """Run a run's unfinished stages, upstream first (the head last); their wall times by the row's column."""
    times: dict[str, float] = {}
    for stage in todo:
        t0 = time.perf_counter()
        run_stage(cfg, stage, data=data, parent_run_id=parent_run_id, on_epoch=on_epoch)
        times[spec_of(stage.kind).time_column(stage)] = time.perf_counter() - t0
    return times


def _publish_row(parent: Tracker, path: Path, row: dict, *, main: bool) -> None:
    """Tag and log the run's MLflow parent from its row, and write ``row.json`` (rank 0)."""
    parent.set_tags(configuration_tags(row))  # the columns and filter of the MLflow compare view
    parent.log_metrics(row_metrics(row))
    if main:
        row["tracking_error"] = tracking_failure()  # the logging above may have been the store's first failure
        write_json_atomic(path, row)
