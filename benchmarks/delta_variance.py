"""Split the width of each Δ vs ACP into its video and seed parts: a wrapper around ``harness.report.power``.

Kept for the commands quoted in docs/synthetic.md; it is `lofi report power` (same arguments), e.g.
    python benchmarks/delta_variance.py results/ [--halfwidth 1.0 | --effect 0.5] [--n-boot 1000]
RESULTS holds <dataset>/<encoder>/<head>/<mode>/seed<S>/row.json (a sweep's `results/`).
"""

from __future__ import annotations

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", "power", *sys.argv[1:]]))
