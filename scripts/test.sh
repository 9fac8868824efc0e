#!/usr/bin/env bash
# Install lofi-bench with its test extras, lint (Python: ruff; the workflow: snakefmt and snakemake --lint), and run
# the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -e ".[test]"
python -m ruff check .
python -m ruff format --check .
python -m snakefmt --check Snakefile workflow/rules
python scripts/lint_workflow.py
python -m pytest -q -n 2 tests
