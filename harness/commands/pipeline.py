"""`lofi run` (one configuration end to end) and `lofi stage …` (one stage alone, as the Snakefile calls them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness.commands._options import add_config_options
from harness.errors import LofiError
from harness.experiment import load_experiment
from harness.pipeline.plan import MODES

if TYPE_CHECKING:
    from harness.experiment import ExperimentConfig
    from harness.pipeline.data import StageData
    from harness.pipeline.plan import Stage


def _common(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("--seed", type=int, default=0, help="the run's seed; every random stream derives from it")
    p.add_argument("--parent-run-id", default="", help="MLflow parent run (the sweep's)")


STAGES_HELP = (
    "root of the shared stage folders (pretrain/, lofi/, features/, classifier/: see "
    "docs/architecture.md); runs with the same root share finished stages (default: --out)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="one configuration end to end: pre-train -> LoFi -> features -> head -> metrics",
        description="Run every stage of one configuration, reusing stages finished with the same key (a stage's "
        "key is a hash of the config sections and upstream stages it reads; a stage folder finished by another "
        "configuration stops the run with an error naming it, before any work). An interrupted stage resumes from "
        "its last epoch checkpoint. Writes OUT/metrics.json (test split: mAP per tIoU, average_mAP, AR@AN; the "
        "validation split under 'validation') and OUT/row.json, the tidy results row tables are built from.",
        epilog="modes: icp, acp, acp+ (frozen pre-trained encoder); lofi-S, lofi-T, lofi-ST, lofi-long, lofi-short, "
        "lofi-custom (LoFi stage from the ACP encoder); lofi-S+bn (lofi-S, BatchNorm re-estimated at full fidelity "
        "before features); e2e-full (end-to-end at full fidelity)\n\n"
        "examples:\n  lofi run --config config/smoke.yaml --mode lofi-long --seed 0 --out runs/smoke-long\n"
        "  lofi run --config config/smoke.yaml --mode acp --out runs/acp --stages runs/shared   "
        "(a second mode reuses runs/shared)\n"
        "  lofi run --config config/default.yaml --mode lofi-custom --set lofi.r_t=3 --set lofi.r_s=1.5 --out runs/c",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("--mode", required=True, choices=MODES, help="pre-training / LoFi mode")
    p.add_argument("--out", required=True, type=Path, help="the run's folder (row.json, metrics.json, head/)")
    p.add_argument("--head", default=None, help="final head (overrides head.name): gtad or bmn")
    p.add_argument("--stages", type=Path, default=None, help=STAGES_HELP)
    p.set_defaults(func=_run)

    from harness.pipeline.stages import shared_stages

    kinds = shared_stages()
    joinable = ", ".join(k.name for k in kinds if k.joins_upstream)
    st = sub.add_parser(
        "stage",
        help=f"run one shared stage alone ({', '.join(k.name for k in kinds)})",
        description="One stage of the plan (harness/pipeline/plan.py): its folder under --stages and "
        "its key come from the config, its upstream stages must be finished. The workflow's rules "
        "call these so that shared stages are computed once; the final head runs in `lofi run`. "
        "The stage kinds are declared in harness/pipeline/stages.py.",
    )
    ss = st.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for kind in kinds:  # one subcommand per declared stage kind, with the option that picks its variant
        q = ss.add_parser(kind.name, help=kind.summary)
        if kind.option is not None:
            q.add_argument(kind.option.flag, required=True, choices=kind.option.choices, help=kind.option.help or None)
        _common(q)
        q.add_argument("--stages", required=True, type=Path, help=STAGES_HELP.replace(" (default: --out)", ""))
        q.add_argument(
            "--then",
            action="append",
            default=[],
            metavar="KIND[=VALUE]",
            help=f"after this stage, run a stage that reads it in the same process ({joinable}; e.g. "
            "--then features=acp; repeatable): one start-up (torch, timm: ~5 CPU-s) fewer per stage; the "
            "workflow does this under sweep.join_stages",
        )
        q.set_defaults(func=_stage)


def check_registered(cfg, source: str) -> None:
    """Unknown encoder/head names stop the command before any work (not after pre-training has run)."""
    from encoders import ENCODERS
    from heads import HEADS

    for key, registry, name in (
        ("encoder.name", ENCODERS, cfg.encoder.name),
        ("head.name", HEADS, cfg.head.name),
        ("lofi.head", HEADS, cfg.lofi.head),
    ):
        try:
            registry.get(name)
        except LofiError as exc:
            raise LofiError(f"{source}: {key} = {name!r}: {exc}") from None


def _cfg(args: argparse.Namespace):
    overrides = list(args.overrides)
    if getattr(args, "head", None):
        overrides.append(f"head.name={args.head}")
    cfg = load_experiment(args.config, overrides)
    check_registered(cfg, str(args.config))
    return cfg


def _run(args: argparse.Namespace) -> int:
    from harness.pipeline import distributed
    from harness.pipeline.run import run_all

    cfg = _cfg(args)
    world = distributed.init_from_env(cfg.runtime.device)  # under torchrun: one process of N
    try:
        row = run_all(
            cfg,
            mode=args.mode,
            seed=args.seed,
            out=args.out,
            stages_root=args.stages,
            parent_run_id=args.parent_run_id,
            config_path=str(args.config),
        )
    finally:
        distributed.shutdown()
    if world.main:
        print(json.dumps({"average_mAP": row["average_mAP"], "out": str(args.out)}))
    return 0


def _stage(args: argparse.Namespace) -> int:
    from harness.pipeline import distributed
    from harness.pipeline.plan import Planner
    from harness.pipeline.run import run_stage
    from harness.pipeline.stages import parse_then, spec_of

    cfg = _cfg(args)
    planner = Planner(cfg, args.stages)
    stages: list[Stage] = []
    for spec, variant in [(spec_of(args.stage), None), *map(parse_then, args.then)]:
        if variant is None:  # the subcommand's own stage: its option's value
            variant = getattr(args, spec.option.dest) if spec.option is not None else ""
        stage = planner.stage(spec.name, variant, args.seed)
        if stage is None:
            raise LofiError(spec.unavailable.format(cfg=cfg) or f"{spec.name}: no such stage in this config's plan")
        if stages:  # a --then stage (the first one's inputs: execute checks them, as for every stage)
            _check_upstream(stage, stages)
        stages.append(stage)
    world = distributed.init_from_env(cfg.runtime.device)  # under torchrun: one process of N
    try:
        data = _shared_data(cfg, stages)
        for stage in stages:  # in order: a --then stage reads what the stages before it wrote
            run_stage(cfg, stage, data=data, parent_run_id=args.parent_run_id)  # reused when finished with its key
    finally:
        distributed.shutdown()
    if not world.main:
        return 0
    for stage in stages:
        print(json.dumps({"stage": stage.name, "folder": str(stage.folder), "key": stage.key}))
    return 0


def _check_upstream(stage: Stage, before: list[Stage]) -> None:
    """Each stage a --then stage reads is finished or runs before it in this command: checked before any work."""
    from harness.pipeline.stage import stage_done

    planned = {s.folder for s in before}
    for up in stage.needs:
        if up.folder not in planned and stage_done(up.folder, up.key) is None:
            raise LofiError(
                f"{up.folder}: stage {up.name}, which {stage.name} reads, is not finished; run it first, or "
                "before it in this command"
            )


def _shared_data(cfg: ExperimentConfig, stages: list[Stage]) -> StageData | None:
    """The dataset and frame source, read once for several stages of one process (None for one: it reads its
    own, as before; and when every stage is finished, so a rerun of a finished job reads nothing)."""
    from harness.pipeline.data import load_stage_data
    from harness.pipeline.stage import stage_done

    if len(stages) < 2 or all(stage_done(s.folder, s.key) is not None for s in stages):
        return None
    return load_stage_data(cfg.data, cache_bytes=cfg.runtime.cache_bytes, generate=False)
