"""`lofi run` (one configuration end to end) and `lofi stage …` (one stage alone, as the Snakefile calls them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.experiment import MODES, load_experiment
from harness.schedule import CYCLES

CONFIG_HELP = "experiment config (YAML, see config/); unknown keys are errors"
SET_HELP = "override a config value, e.g. --set lofi.optim.epochs=2 (repeatable)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help=CONFIG_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--seed", type=int, default=0, help="the run's seed; every random stream derives from it")
    p.add_argument("--parent-run-id", default="", help="MLflow parent run (the sweep's)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="one configuration end to end: pre-train -> LoFi -> features -> head -> metrics",
        description="Chain every stage of one configuration, reusing stages already finished (each stage folder "
        "holds done.json when complete; an interrupted stage resumes from its last epoch checkpoint). Writes "
        "OUT/metrics.json (test split: mAP per tIoU, average_mAP, AR@AN; the validation split under 'validation') "
        "and OUT/row.json, the tidy results row tables are built from.",
        epilog="modes: icp, acp, acp+ (frozen pre-trained encoder); lofi-S, lofi-T, lofi-ST, lofi-long, lofi-short, "
        "lofi-custom (LoFi stage from the ACP encoder); e2e-full (end-to-end at full fidelity)\n\n"
        "examples:\n  lofi run --config config/smoke.yaml --mode lofi-long --seed 0 --out runs/smoke-long\n"
        "  lofi run --config config/default.yaml --mode lofi-custom --set lofi.r_t=3 --set lofi.r_s=1.5 --out runs/c",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("--mode", required=True, choices=MODES, help="pre-training / LoFi mode")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--head", default=None, help="final head (overrides head.name): gtad or bmn")
    for name, what in (("pretrain", "the mode's pre-training"), ("acp", "the ACP pre-training acp+ starts from"),
                       ("acpplus", "the ACP+ model behind the shared class scores"), ("lofi", "the LoFi stage"),
                       ("features", "feature extraction"), ("classifier", "the shared video-level class scores"),
                       ("head", "head training")):
        p.add_argument(f"--{name}-dir", type=Path, default=None, help=f"folder of {what} (default under OUT)")
    p.set_defaults(func=_run)

    st = sub.add_parser("stage", help="run one stage alone (pretrain, lofi, features, head)",
                        description="One stage of the pipeline with explicit inputs and outputs; the Snakefile's "
                        "rules call these so that shared stages are computed once.")
    ss = st.add_subparsers(dest="stage", metavar="STAGE", required=True)
    a = ss.add_parser("pretrain", help="ICP / ACP / ACP+ classification pre-training -> OUT/encoder.pt")
    _common(a)
    a.add_argument("--mode", required=True, choices=("icp", "acp", "acp+"))
    a.add_argument("--init", type=Path, default=None, help="acp+: the ACP encoder.pt to fine-tune")
    a.add_argument("--out", required=True, type=Path)
    a.set_defaults(func=_pretrain)
    b = ss.add_parser("lofi", help="encoder + head end-to-end at low fidelity -> OUT/encoder.pt")
    _common(b)
    b.add_argument("--cycle", required=True, choices=CYCLES)
    b.add_argument("--init", required=True, type=Path, help="pre-trained encoder.pt")
    b.add_argument("--out", required=True, type=Path)
    b.set_defaults(func=_lofi)
    c = ss.add_parser("features", help="frozen encoder -> full-fidelity features (one .npy per video)")
    _common(c)
    c.add_argument("--encoder", required=True, type=Path, help="encoder.pt")
    c.add_argument("--out", required=True, type=Path)
    c.set_defaults(func=_features)
    e = ss.add_parser("classifier", help="video-level class scores from the ACP+ model -> OUT/class_scores.json")
    _common(e)
    e.add_argument("--checkpoint", required=True, type=Path, help="the ACP+ stage's encoder.pt")
    e.add_argument("--out", required=True, type=Path)
    e.set_defaults(func=_classifier)
    d = ss.add_parser("head", help="head from scratch on features -> predictions + metrics.json")
    _common(d)
    d.add_argument("--features", required=True, type=Path)
    d.add_argument("--class-scores", type=Path, default=None, help="shared class_scores.json (default: per head.class_scores)")
    d.add_argument("--head", default=None, help="gtad or bmn (overrides head.name)")
    d.add_argument("--out", required=True, type=Path)
    d.set_defaults(func=_head)


def _cfg(args: argparse.Namespace):
    overrides = list(args.overrides)
    if getattr(args, "head", None):
        overrides.append(f"head.name={args.head}")
    return load_experiment(args.config, overrides)


def _run(args: argparse.Namespace) -> int:
    from harness.pipeline.run import StageDirs, run_all

    cfg = _cfg(args)
    d = StageDirs.under(args.out)
    dirs = StageDirs(args.pretrain_dir or d.pretrain, args.acp_dir or d.acp, args.lofi_dir or d.lofi,
                     args.features_dir or d.features, args.head_dir or d.head,
                     args.acpplus_dir or d.acpplus, args.classifier_dir or d.classifier)
    row = run_all(cfg, mode=args.mode, seed=args.seed, out=args.out, dirs=dirs, parent_run_id=args.parent_run_id,
                  config_path=str(args.config))
    print(json.dumps({"average_mAP": row["average_mAP"], "out": str(args.out)}))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from harness.pipeline.pretrain import run_pretrain

    print(run_pretrain(_cfg(args), mode=args.mode, seed=args.seed, out=args.out, init=args.init, parent_run_id=args.parent_run_id))
    return 0


def _lofi(args: argparse.Namespace) -> int:
    from harness.pipeline.lofi import run_lofi

    print(run_lofi(_cfg(args), cycle=args.cycle, seed=args.seed, init=args.init, out=args.out, parent_run_id=args.parent_run_id))
    return 0


def _features(args: argparse.Namespace) -> int:
    from harness.pipeline.features import run_features

    print(run_features(_cfg(args), encoder_checkpoint=args.encoder, out=args.out, seed=args.seed))
    return 0


def _classifier(args: argparse.Namespace) -> int:
    from harness.pipeline.classify import run_class_scores

    print(run_class_scores(_cfg(args), checkpoint=args.checkpoint, out=args.out, seed=args.seed))
    return 0


def _head(args: argparse.Namespace) -> int:
    from harness.pipeline.headtrain import run_head

    m = run_head(_cfg(args), features=args.features, seed=args.seed, out=args.out, parent_run_id=args.parent_run_id,
                 class_scores=args.class_scores)
    print(json.dumps({"average_mAP": m["average_mAP"]}))
    return 0
