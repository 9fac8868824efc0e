"""Wall time of `lofi data synth` with 1 and N worker processes, same profile, one command (a ratio: machines here
are shared and noisy). Usage: python benchmarks/bench_synth.py --profile default --workers 2 --out /tmp/bench_synth
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from harness.data.synthetic import generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="scratch folder (emptied)")
    a = p.parse_args()
    times = {}
    for n in (1, a.workers):
        shutil.rmtree(a.out, ignore_errors=True)
        t0 = time.perf_counter()
        generate(a.profile, 0, a.out, progress=False, workers=n)
        times[n] = time.perf_counter() - t0
    shutil.rmtree(a.out, ignore_errors=True)
    print(json.dumps({"profile": a.profile, "wall_s": times, "speedup": times[1] / times[a.workers]}))


if __name__ == "__main__":
    main()
