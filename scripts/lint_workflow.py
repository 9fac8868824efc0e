#!/usr/bin/env python
"""`snakemake --lint` over the workflow (scripts/test.sh): fails on every lint except the two this workflow does
not follow on purpose, each with its reason below.

Snakemake 9's command line prints lints as text whatever ``--lint json`` asks for, so the titles are read from the
text (``    * <title>:``). A workflow that does not parse fails here too.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("lint_workflow")

ROOT = Path(__file__).resolve().parents[1]

# lint title -> why this workflow does not follow it
ACCEPTED = {
    "Specify a conda environment or container for each rule.": (
        "one environment for every rule: each calls the installed `lofi` (pip install -e ., pyproject.toml pins the "
        "dependencies); a conda file per rule would be a second, untested copy of them"
    ),
    "Mixed rules and functions in same snakefile.": (
        "the stage, run, table and Optuna-worker rules are generated from the stage plan by factory functions "
        "(one rule per planned stage), next to the fixed rules whose outputs they take"
    ),
}
TITLE = re.compile(r"^    \* (?P<title>.+?):$", re.MULTILINE)
ITEM = re.compile(r"^Lints for (?P<item>.+?):$", re.MULTILINE)


def lint_titles(text: str) -> list[tuple[str, str]]:
    """(linted item, lint title) pairs from ``snakemake --lint``'s text output."""
    out = []
    items = list(ITEM.finditer(text))
    for i, item in enumerate(items):
        end = items[i + 1].start() if i + 1 < len(items) else len(text)
        out.extend((item["item"], t["title"]) for t in TITLE.finditer(text, item.end(), end))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default=None, help="lint with this config (default: the Snakefile's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cmd = [sys.executable, "-m", "snakemake", "--lint", "-s", str(ROOT / "Snakefile"), "--nolock"]
    if args.configfile:
        cmd += ["--configfile", args.configfile]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    found = lint_titles(text)
    if proc.returncode != 0 and not found:  # not a lint: the workflow did not parse
        log.error("%s\nsnakemake --lint failed (exit %d) without a lint: see above", text, proc.returncode)
        return 1
    other = [(item, title) for item, title in found if title not in ACCEPTED]
    for title in sorted({t for _, t in found if t in ACCEPTED}):
        log.info("accepted lint %r: %s", title, ACCEPTED[title])
    if other:
        log.error("\n".join(f"{item}: {title}" for item, title in other))
        log.error("snakemake --lint: %d lint(s) to fix (run `snakemake --lint` for the advice)", len(other))
        return 1
    log.info("snakemake --lint: no other lint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
