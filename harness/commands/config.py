"""`lofi config schema|show|check`: the experiment config's JSON schema, the resolved config, a validity check."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from harness.commands._options import add_config_options

EPILOG = """\
examples:
  lofi config schema --out config/schema.json        regenerate the committed schema (a test compares them)
  lofi config show --config config/smoke.yaml --set lofi.optim.epochs=1
  lofi config check --config config/default.yaml
  lofi config check --config config/activitynet.yaml --against-machine   data, labels, files, weights, GPU
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="experiment configs: JSON schema, resolved view, check",
        description="Inspect and check experiment configs (config/*.yaml).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    csub.required = True
    s = csub.add_parser(
        "schema",
        help="print (or write) the JSON schema generated from harness/experiment.py",
        description="The JSON schema (draft 2020-12) of ExperimentConfig: types, enums, closed "
        "objects, ranges, defaults. config/schema.json is this output, for editors and tools; "
        "`lofi config check` validates with the models themselves.",
    )
    s.add_argument("--out", type=Path, default=None, metavar="FILE", help="write here (atomically) instead of stdout")
    s.set_defaults(func=_schema)
    for name, helptext, func in (
        ("show", "print the resolved config (every default filled in) as YAML", _show),
        ("check", "check a config: types, ranges and cross-field rules (what `lofi run` checks)", _check),
    ):
        c = csub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        add_config_options(c)
        if name == "check":
            c.add_argument(
                "--against-machine",
                action="store_true",
                help="also check what a run reads on this machine, before any training: the annotation file, "
                "labels in the validation and test subsets, the video files (data.missing), the weights, the device",
            )
            c.add_argument(
                "--no-device",
                action="store_true",
                help="with --against-machine: leave the device out (a CPU job checking for GPU jobs: the workflow)",
            )
        c.set_defaults(func=func)


def _schema(args: argparse.Namespace) -> int:
    from harness.schema import schema_text

    text = schema_text()
    if args.out is None:
        print(text, end="")
    else:
        from harness.io import write_text_atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, text)
        print(args.out)
    return 0


def _show(args: argparse.Namespace) -> int:
    from harness.config import to_dict
    from harness.experiment import load_experiment

    cfg = load_experiment(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def check_config(path: str | Path, overrides: list[str] | None = None) -> None:
    """Raise ConfigError (one line, naming the file and key) unless ``path`` is a valid experiment config.

    The same validator ``lofi run`` and the Snakefile use (harness.config.from_dict): types, ranges, cross-field
    rules.
    """
    from harness.experiment import load_experiment

    load_experiment(path, overrides)


def _check(args: argparse.Namespace) -> int:
    check_config(args.config, args.overrides)
    if args.against_machine:
        from harness.experiment import load_experiment
        from harness.pipeline.preflight import check_before_training

        cfg = load_experiment(args.config, args.overrides)
        for line in check_before_training(cfg, machine=not args.no_device):
            print(f"ok: {line}")
    print(f"ok: {args.config}")
    return 0
