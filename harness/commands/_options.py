"""The options several commands share, defined once: ``--config FILE`` and ``--set KEY=VALUE`` (``overrides``).

A private module (leading underscore): `harness.cli` registers every other module here as a command.
"""

from __future__ import annotations

import argparse

CONFIG_HELP = "experiment config (YAML, see config/); unknown keys are errors"
SET_HELP = "override a config value, e.g. --set lofi.optim.epochs=2 (repeatable)"


def add_config(parser: argparse.ArgumentParser, *, required: bool = True, help: str = CONFIG_HELP) -> None:
    """``--config FILE`` as ``args.config`` (the path as typed; None when optional and not given)."""
    parser.add_argument("--config", required=required, default=None, metavar="FILE", help=help)


def add_set(parser: argparse.ArgumentParser, *, help: str = SET_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable) as the list ``args.overrides``, applied on top of ``--config``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_options(
    parser: argparse.ArgumentParser, *, required: bool = True, config_help: str = CONFIG_HELP, set_help: str = SET_HELP
) -> None:
    """``--config`` and ``--set`` together, the pair most commands take."""
    add_config(parser, required=required, help=config_help)
    add_set(parser, help=set_help)
