"""What the integrity checks (harness/integrity.py: a CRC-32 written with every frame-store entry, feature file and
checkpoint, checked on every read) cost, as a share of a sweep's CPU.

    python benchmarks/bench_integrity.py [--config config/default.yaml] [--sample-mb 128] [--repeats 5]
    python benchmarks/bench_integrity.py --run lofi-S --config config/smoke.yaml --set data.root=DIR ...

1. **Per byte, against a baseline in the same process**: the CPU time (``time.process_time``) to write and read
   back arrays of the profile's frame-store shape sealed (``save_array``/``load_array``) and plain
   (``np.save``/``np.load``), interleaved, ``--repeats`` rounds on ``--sample-mb`` of arrays in a temporary folder;
   the extra CPU per byte is the median over rounds of (sealed − plain).
2. **The sweep's bytes**: the profile's frame store (every video at ``max_frames`` and every ACP clip: an upper
   bound), written once by the frames job and — the upper bound again — read whole by every job of the sweep
   (each job is its own process; a job reads an entry once, its in-memory LRU serves the rest); features and
   checkpoints are a few MB beside it and counted at the same per-byte cost.
3. **The ratio**: (2) × (1) over the default sweep's CPU (``<results>/table_ablation.md``), estimated from the per-job costs measured on a finished sweep
   (``harness/data/job_cost.json``, ``harness.bench.cost``) and the job counts of a dry run of the real workflow.

``--run MODE``: instead, one whole run (``run_all``: every stage, frames decoded into a fresh cache, loading in
the training process) with every CRC-32 computation of ``harness.integrity`` timed: the checks' CPU over the
run's CPU, both from ``time.process_time`` in this one process.

Nothing here is typed by hand: shapes come from ``harness.data.synthetic.PROFILES``, job counts from Snakemake,
costs from the measured table.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.bench.cost import load_costs, rule_kind
from harness.data.synthetic import PROFILES
from harness.experiment import load_experiment
from harness.integrity import load_array, save_array

ROOT = Path(__file__).resolve().parents[1]


def sweep_jobs(config: Path, work: Path) -> Counter[str]:
    """Jobs by cost kind of the config's default sweep (``snakemake -n <results>/table_ablation.md``, the README's
    command, as job_cost.json measured it) on a copy of the config with its results under ``work``."""
    data = yaml.safe_load(config.read_text())
    data["sweep"]["results"] = str(work / "results")
    copy = work / "config.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    target = str(work / "results" / "table_ablation.md")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", target, "--configfile", str(copy)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    jobs: Counter[str] = Counter()
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
        if not line.strip():  # the table's end (a dry run prints it twice)
            break
        m = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if m and m[1] != "total" and (kind := rule_kind(m[1])) is not None:
            jobs[kind] += int(m[2])
    return jobs


def cpu_per_byte(arrays: list[np.ndarray], folder: Path, repeats: int) -> tuple[float, float, float]:
    """(extra CPU seconds per byte written, per byte read, plain read+write CPU per byte): medians over rounds."""
    nbytes = sum(a.nbytes for a in arrays)
    extra_w, extra_r, plain = [], [], []
    for r in range(repeats):
        times = {}
        for kind in ("plain", "sealed") if r % 2 == 0 else ("sealed", "plain"):  # interleaved: a shared machine
            paths = [folder / f"{kind}-{i}.npy" for i in range(len(arrays))]
            t0 = time.process_time()
            for a, p in zip(arrays, paths):
                if kind == "sealed":
                    save_array(p, a)
                else:
                    with open(p, "wb") as fh:
                        np.save(fh, a)
            t1 = time.process_time()
            for p in paths:
                _ = load_array(p) if kind == "sealed" else np.load(p)
            t2 = time.process_time()
            times[kind] = (t1 - t0, t2 - t1)
            for p in paths:
                p.unlink()
        extra_w.append((times["sealed"][0] - times["plain"][0]) / nbytes)
        extra_r.append((times["sealed"][1] - times["plain"][1]) / nbytes)
        plain.append(sum(times["plain"]) / nbytes)
    return statistics.median(extra_w), statistics.median(extra_r), statistics.median(plain)


class _TimedZlib:
    """``zlib`` with its ``crc32`` timed (CPU seconds and bytes), put in place of ``harness.integrity.zlib``."""

    def __init__(self) -> None:
        import zlib

        self._zlib = zlib
        self.cpu = 0.0
        self.bytes = 0

    def crc32(self, data, value: int = 0) -> int:
        t0 = time.process_time()
        out = self._zlib.crc32(data, value)
        self.cpu += time.process_time() - t0
        self.bytes += memoryview(data).nbytes
        return out


def run_share(config: Path, overrides: list[str], mode: str) -> None:
    """One run of ``mode`` in this process: the CRC-32 CPU over the run's CPU."""
    import harness.integrity as integrity
    from harness.pipeline.run import run_all

    timed = _TimedZlib()
    integrity.zlib = timed  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"data.cache_dir={tmp}/frames", "runtime.workers=0", "tracking.enabled=false"]
        cfg = load_experiment(config, [*overrides, *extra])
        t0 = time.process_time()
        run_all(cfg, mode=mode, seed=0, out=Path(tmp) / "run")
        total = time.process_time() - t0
    print(
        f"{mode} on {config} (one process, fresh frame cache): CRC-32 {timed.cpu:.3f} CPU-s over "
        f"{timed.bytes / 1e6:.0f} MB of {total:.1f} CPU-s for the run = {timed.cpu / total:.2%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "default.yaml")
    parser.add_argument("--sample-mb", type=float, default=128.0, help="arrays written/read per round (MB)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run", metavar="MODE", help="measure one whole run of MODE instead (see above)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.run:
        run_share(args.config, args.overrides, args.run)
        return 0
    cfg = load_experiment(args.config)
    profile = PROFILES[cfg.data.synthetic_profile]
    frame = profile.frame_size * profile.frame_size * 3
    videos = profile.num_training + profile.num_validation + profile.num_testing
    clips = profile.num_clip_classes * profile.clips_per_class
    store_bytes = videos * profile.max_frames * frame + clips * profile.clip_frames * frame
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs = sweep_jobs(args.config, work)
        rng = np.random.default_rng(0)
        n = max(1, int(args.sample_mb * 1e6 // (profile.max_frames * frame)))
        shape = (profile.max_frames, profile.frame_size, profile.frame_size, 3)
        arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
        extra_w, extra_r, plain = cpu_per_byte(arrays, work, args.repeats)
    cost = load_costs()[profile.name]
    sweep_cpu = cost.estimate(jobs)
    n_jobs = sum(jobs.values())
    extra = store_bytes * extra_w + n_jobs * store_bytes * extra_r
    print(f"profile {profile.name}: frame store {store_bytes / 1e6:.0f} MB (upper bound), {n_jobs} jobs")
    print(
        f"per byte, sealed minus plain (median of {args.repeats} rounds on {n} arrays of {shape}): "
        f"write {extra_w * 1e9:.3f} ns, read {extra_r * 1e9:.3f} ns (plain write+read {plain * 1e9:.3f} ns; "
        f"checks / plain I/O: write+read {(extra_w + extra_r) / plain:.1%})"
    )
    print(
        f"sweep: checks ≤ {extra:.1f} CPU-s (store written once, read whole by each of {n_jobs} jobs) of "
        f"{sweep_cpu:.0f} CPU-s estimated ({cost.measured}) = {extra / sweep_cpu:.2%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
