"""What MLflow tracking costs one sweep job: CPU of a fresh process that opens and closes one tracked run in a
SQLite store ("on", live), that records it for a later `lofi track flush` ("defer", ``tracking.defer``), and with
tracking off (the baseline); the three arms run alternately in the same command.

Every pre-training, LoFi and head-run job of the default sweep (60 of the main job's 100) is its own `lofi` process
and logs one run (a stage's or a configuration's); the difference below, times those jobs, is what tracking adds to
the main job.

    PYTHONPATH=. python benchmarks/bench_tracking.py --repeats 5 [--store results/mlflow.db]

``--store`` copies an existing store first (a sweep's, with its runs: opening it costs what it costs a job); by
default a fresh store is made once before the timed processes. Writes nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# One job's tracking, as `harness.tracking.start_run` does it for a stage or a configuration; torch is imported
# first in both arms because every job imports it anyway.
_CHILD = """
import json, resource, sys
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
import torch  # noqa: F401
start = cpu()
from harness import tracking
from harness.experiment import TrackingConfig
cfg = TrackingConfig(enabled=sys.argv[1] != "off", defer=sys.argv[1] == "defer", uri=sys.argv[2], experiment="bench-tracking")
with tracking.start_run(cfg, run_name="bench", tags={"mode": "bench"}) as run:
    run.log_params({"lr": 0.05, "mode": "bench"})
    run.log_metrics({"average_mAP": 0.5})
print(json.dumps({"cpu_s": cpu() - start}))
"""


def _child_cpu(arm: str, uri: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, arm, uri], check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cpu_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="processes per arm (default %(default)s)")
    parser.add_argument("--store", type=Path, help="an existing mlflow.db to copy and open (default: a fresh one)")
    parser.add_argument("--jobs", type=int, default=60, help="tracked jobs in the sweep (default: the main job's 60)")
    args = parser.parse_args(argv)
    if args.store is not None and not args.store.is_file():
        parser.error(f"--store {args.store}: not found; pass a sweep's mlflow.db (results/mlflow.db) or leave it out")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mlflow.db"
        if args.store is not None:
            shutil.copyfile(args.store, db)
        uri = f"sqlite:///{db}"
        _child_cpu("on", uri)  # creates the store and the experiment: a sweep's `track_init` job does that once
        samples: dict[str, list[float]] = {"off": [], "on": [], "defer": []}
        for _ in range(args.repeats):
            for arm in samples:  # alternate: the machine's drift hits every arm alike
                samples[arm].append(_child_cpu(arm, uri))
    off, on, defer = (statistics.median(samples[a]) for a in ("off", "on", "defer"))
    for arm, value in (("off", off), ("on", on), ("defer", defer)):
        print(f"tracking {arm:5s}: {value:.2f} CPU-s per process (median of {args.repeats}: {samples[arm]})")
    print(f"live tracking adds {on - off:.2f} CPU-s per job; x {args.jobs} jobs = {(on - off) * args.jobs:.0f} CPU-s")
    print(f"deferred tracking adds {defer - off:.2f} CPU-s per job; x {args.jobs} = {(defer - off) * args.jobs:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
