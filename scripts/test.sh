#!/usr/bin/env bash
# Install lofi-bench with its test extras and run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -e ".[test]"
python -m pytest -q -n 2 tests
