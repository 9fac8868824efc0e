"""The stage protocol: what a stage kind declares, what its work receives, and the start/finish steps every stage
shares, done here once.

A stage kind is one ``StageSpec`` (declared in ``harness/pipeline/stages.py``): its name, the CLI option that picks
its variant, how it is planned, and its runner. A runner is the stage's work and nothing else: it gets a
``StageContext`` (config, planned stage, device, data, tracker) and returns a ``StageResult`` (the files it
produced and what ``done.json`` should record). ``execute`` does the rest, in this order: upstream finished? →
reuse check (``stage_done``) → folder and orphans (``start_stage``) → seeds, threads, device (``prepare``) → data →
MLflow child run → the runner → ``done.json`` (``mark_done``, rank 0) → temporaries removed → barrier.

This module imports no torch at import time: the workflow and ``lofi --help`` read declarations without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import LofiError
from harness.io import read_json_object, remove_orphans, write_json_atomic
from harness.pipeline.files import DONE

if TYPE_CHECKING:
    import torch

    from harness.experiment import ExperimentConfig
    from harness.pipeline.data import StageData
    from harness.pipeline.plan import Planner, Stage
    from harness.tracking import Tracker

log = logging.getLogger(__name__)


def slug(name: str) -> str:
    """A file-name-safe spelling of a mode or pre-training name: acp+ -> acpplus."""
    return name.replace("+", "plus")


# ----------------------------------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class StageOption:
    """The command-line option of `lofi stage <kind>` that picks the variant (e.g. ``--mode acp``)."""

    flag: str
    choices: tuple[str, ...]
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class StageContext:
    """What a runner gets: the run's config, its planned stage (folder, key, seed, upstream stages), the device
    (seeded, threads set), the dataset and frame source, and its MLflow child run (a NullTracker when untracked)."""

    cfg: ExperimentConfig
    stage: Stage
    device: torch.device
    data: StageData
    tracker: Tracker
    on_epoch: Callable[[int, float], None] | None = None  # validation score per epoch (Optuna prunes from it)

    @property
    def out(self) -> Path:
        return self.stage.folder

    @property
    def seed(self) -> int:
        return self.stage.seed

    @property
    def key(self) -> str:
        return self.stage.key

    def input(self, kind: str, variant: str | None = None) -> Path:
        """The folder of the upstream stage of ``kind`` this stage reads."""
        return self.stage.need(kind, variant).folder


@dataclass(frozen=True)
class StageResult:
    """What a runner produced: ``outputs`` (files in its folder, fingerprinted in ``done.json``), ``info`` (more
    fields for ``done.json``), ``temporaries`` (removed after ``done.json``: a resume checkpoint, a progress
    marker). ``finished=False``: the work stopped early on purpose; no ``done.json``."""

    outputs: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    temporaries: tuple[Path, ...] = ()
    finished: bool = True


Runner = Callable[[StageContext], StageResult]


def _no_needs(planner: Planner, variant: str, seed: int) -> tuple[Stage, ...]:
    return ()


def _by_kind(stage: Stage) -> str:
    return stage.kind


def _variant(stage: Stage) -> str:
    return stage.variant


@dataclass(frozen=True)
class StageSpec:
    """One stage kind, declared once. ``lofi stage``, ``lofi run`` (``run_all``), the workflow's rules and the
    Optuna objective all derive from it.

    - ``name``: the kind: the folder ``R/<name>/…``, the command ``lofi stage <name>``, the workflow's rule names.
    - ``runner``: ``"module:function"`` (imported when the stage runs, so declaring it imports no torch) or the
      function itself: ``StageContext -> StageResult``.
    - ``output``: its main file in the folder ("" for the folder itself): what ``execute`` returns.
    - ``option``: the CLI option that picks the variant (None: one variant, "").
    - ``plan``: ``(planner, variant, seed) -> Stage | None``; None plans it from ``reads`` and ``needs`` alone
      (``Planner.generic``: folder ``R/<name>[/<variant>]/seed<S>``, key from those sections and needs).
    - ``option_value``: the option's value that plans a given stage (the inverse of ``plan``; the workflow).
    - ``track``: ``(cfg, stage) -> (tag, value)`` names its MLflow child run ``<name>-<value>-seed<S>``; None: none.
    - ``shared``: False for a run's own stage (the head: run by ``lofi run``, which writes the row).
    - ``main_only``: rank 0 alone does the work under torchrun (the others wait).
    - ``read_by_head``: every run's head reads it (puts a generic stage into every run's plan).
    - ``time_column``: the row's ``time_<column>_s`` for its wall time.
    - ``joins_upstream``: inference on the one stage it reads, which a workflow may run in that stage's job, in
      its process, right after it (``sweep.join_stages``; ``lofi stage <kind> … --then``): a process of its own
      costs more start-up (torch, timm: ~5 CPU-s) than the work on a small benchmark.
    - ``unavailable``: the error when ``plan`` returns None (``{cfg}`` is formatted in).
    """

    name: str
    summary: str
    runner: str | Runner
    output: str = ""
    option: StageOption | None = None
    plan: Callable[[Planner, str, int], Stage | None] | None = None
    reads: tuple[str, ...] = ()
    needs: Callable[[Planner, str, int], tuple[Stage, ...]] = _no_needs
    option_value: Callable[[Stage], str] = _variant
    track: Callable[[ExperimentConfig, Stage], tuple[str, str]] | None = None
    shared: bool = True
    main_only: bool = False
    read_by_head: bool = False
    time_column: Callable[[Stage], str] = _by_kind
    joins_upstream: bool = False
    unavailable: str = ""

    def load_runner(self) -> Runner:
        if callable(self.runner):
            return self.runner
        import importlib

        module, _, func = self.runner.partition(":")
        return getattr(importlib.import_module(module), func)

    def cli_args(self, stage: Stage) -> list[str]:
        """The arguments of `lofi stage <name>` (besides config, seed, stages root) that plan ``stage``."""
        return [self.option.flag, self.option_value(stage)] if self.option else []


# -------------------------------------------------------------------------------------------------- stage markers
def _fingerprint(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_done(out: Path, key: str) -> dict[str, Any] | None:
    """The stage's ``done.json`` when ``out`` holds a finished stage made with ``key``, else None.

    A finished stage is never reused for another key, and never when a file it produced is gone or was rewritten
    since (size and mtime recorded at the end of the stage): both stop with a one-line error, so old results are
    not reported under a new config and nothing finished is overwritten silently."""
    p = out / DONE
    info = read_json_object(p, "stage marker", f"delete the folder {out} to recompute the stage")
    if info is None:
        return None
    if not isinstance(info.get("outputs", {}), dict):
        raise LofiError(f"{p}: not a stage marker written by lofi; delete the folder {out} to recompute the stage")
    if info.get("key") != key:
        raise LofiError(
            f"{out}: finished by another configuration (stage key {info.get('key')}, "
            f"wanted {key}); use another --out or delete {out} to recompute it"
        )
    for rel, fp in (info.get("outputs") or {}).items():
        f = out / rel
        if not f.resolve().is_relative_to(out.resolve()):
            raise LofiError(f"{p}: lists {rel!r}, outside the stage folder; delete {out} to recompute the stage")
        if not f.is_file() or _fingerprint(f) != fp:
            raise LofiError(f"{f}: output of a finished stage is missing or changed; delete {out} to recompute it")
    return info


def mark_done(out: Path, info: dict[str, Any], *, key: str, outputs: Iterable[Path] = ()) -> None:
    """Write ``done.json`` last: the stage's key, the files it produced (relative, with size and mtime) and ``info``."""
    files = {str(Path(f).relative_to(out)): _fingerprint(Path(f)) for f in outputs}
    write_json_atomic(
        out / DONE, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "key": key, **info, "outputs": files}
    )


def start_stage(out: Path) -> None:
    """The first step of a stage that will run: its folder exists, and temporary files that a killed run left in it
    (``kill -9`` skips the atomic writers' cleanup) are removed; a concurrent writer's live ones are kept."""
    out.mkdir(parents=True, exist_ok=True)
    remove_orphans(out)


# ------------------------------------------------------------------------------------------------------- execute
def execute(
    spec: StageSpec,
    cfg: ExperimentConfig,
    stage: Stage,
    *,
    data: StageData | None = None,
    parent_run_id: str = "",
    on_epoch: Callable[[int, float], None] | None = None,
) -> Path:
    """Run one planned stage through the shared start/finish steps (reused when finished with its key); returns
    its main output (``spec.output`` in its folder). Its upstream stages must be finished."""
    from harness.pipeline.distributed import barrier, current

    for up in stage.needs:
        if stage_done(up.folder, up.key) is None:
            raise LofiError(f"{up.folder}: stage {up.name} is not finished; run it first (lofi run runs every stage)")
    result_path = stage.folder / spec.output if spec.output else stage.folder
    if stage_done(stage.folder, stage.key) is not None:
        return result_path
    start_stage(stage.folder)
    world = current()
    if spec.main_only and not world.main:  # rank 0 does the work; the others wait for its done.json
        barrier()
        return result_path
    from harness.pipeline.data import stage_data
    from harness.pipeline.runtime import prepare

    device = prepare(cfg.runtime, stage.seed)
    stage_inputs = stage_data(cfg.data, data, cache_bytes=cfg.runtime.cache_bytes)
    with _tracking(spec, cfg, stage, parent_run_id) as tracker:
        ctx = StageContext(cfg, stage, device, stage_inputs, tracker, on_epoch)
        t0 = time.perf_counter()
        result = spec.load_runner()(ctx)
        elapsed = time.perf_counter() - t0
        if result.finished and world.main:
            info = {"stage": spec.name, "variant": stage.variant, "seed": stage.seed, **result.info}
            info.update(time_s=elapsed, world_size=world.size)
            if spec.track is not None:
                info["mlflow_run_id"] = tracker.run_id
            mark_done(stage.folder, info, key=stage.key, outputs=result.outputs)
    if result.finished and world.main:
        for f in result.temporaries:
            f.unlink(missing_ok=True)
    barrier()  # the other ranks read its outputs next
    return result_path


def _tracking(spec: StageSpec, cfg: ExperimentConfig, stage: Stage, parent_run_id: str):  # -> context manager
    """The stage's MLflow child run (``spec.track``), or an untracked one."""
    import contextlib

    from harness.tracking import NullTracker, start_run

    if spec.track is None:
        return contextlib.nullcontext(NullTracker())
    tag, value = spec.track(cfg, stage)
    return start_run(
        cfg.tracking,
        run_name=f"{spec.name}-{value}-seed{stage.seed}",
        parent_run_id=parent_run_id,
        tags={"stage": spec.name, tag: value, "seed": str(stage.seed)},
    )
