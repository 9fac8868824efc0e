"""Split the width of each mode's Δ average mAP (mode − baseline, paired by seed) into its video and seed parts.

The tables' interval resamples test videos and seeds jointly (harness.stats.joint_bootstrap). Here:
- video-only: 1.96 × the sd of the seed-mean Δ over resamples of the videos, the seeds fixed;
- seed-only: 1.96 × sd(per-seed Δ) / √(seeds), the videos fixed.
Usage: python benchmarks/delta_variance.py RESULTS_ROOT [--baseline acp] [--n-boot 1000]
RESULTS_ROOT holds <dataset>/<encoder>/<head>/<mode>/seed<S>/row.json (a sweep's `results/`).
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
from tabulate import tabulate

from harness.report import _Matcher
from harness.stats import weighted_metric
from harness.tables import load_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--baseline", default="acp")
    p.add_argument("--head", default="gtad", help="the head whose rows are compared (default: gtad)")
    p.add_argument("--n-boot", type=int, default=1000)
    a = p.parse_args()
    rows = load_rows(glob.glob(f"{a.root}/*/*/{a.head}/*/seed*/row.json"))
    match = _Matcher(None)
    rng = np.random.default_rng(0)
    weights: np.ndarray | None = None

    def per_seed(sub) -> tuple[list[int], np.ndarray]:  # (seeds, (1 + n_boot, seeds) metric in %)
        nonlocal weights
        sub = sub.sort_values("seed")
        runs = [match(r) for _, r in sub.iterrows()]
        if weights is None:
            v = len(runs[0].video_ids)
            boot = rng.multinomial(v, np.full(v, 1 / v), size=a.n_boot)
            weights = np.concatenate([np.ones((1, v)), boot])
        return [int(s) for s in sub["seed"]], np.stack([weighted_metric(m, weights) for m in runs], 1) * 100

    seeds_b, base = per_seed(rows[rows["mode"] == a.baseline])  # control seeds too: only common seeds are paired
    table = []
    for mode in sorted(set(rows["mode"]) - {a.baseline}):
        seeds_m, vals = per_seed(rows[rows["mode"] == mode])
        common = [s for s in seeds_m if s in seeds_b]
        if len(common) < 2:
            continue
        d = vals[:, [seeds_m.index(s) for s in common]] - base[:, [seeds_b.index(s) for s in common]]
        per = d[0]
        table.append(
            [
                mode,
                f"{per.mean():+.2f}",
                " / ".join(f"{x:+.2f}" for x in per),
                f"±{1.96 * d[1:].mean(axis=1).std():.2f}",
                f"±{1.96 * per.std(ddof=1) / np.sqrt(len(per)):.2f}",
            ]
        )
    print(tabulate(table, headers=["mode", "Δ", "per seed", "video-only", "seed-only"], tablefmt="github"))


if __name__ == "__main__":
    main()
