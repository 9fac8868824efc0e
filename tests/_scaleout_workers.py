"""Worker processes for tests/test_scaleout.py (run as ``python tests/_scaleout_workers.py KIND ...``).

``track URI K``: three MLflow runs through ``harness.tracking.start_run`` (params, a 5-step curve, a final metric).
``search ARGS...``: ``lofi search ARGS`` with a cheap deterministic objective in place of the real chain (the same
stand-in tests/test_search.py uses), so several workers can share one study in seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any


def track(uri: str, k: int) -> int:
    from harness.experiment import TrackingConfig
    from harness.tracking import start_run

    cfg = TrackingConfig(uri=uri, experiment="parallel-writers")
    for i in range(3):
        with start_run(cfg, run_name=f"worker{k}-run{i}", tags={"worker": str(k)}) as run:
            run.log_params({"worker": k, "run": i})
            for step in range(5):
                run.log_metrics({"loss": 1.0 / (1 + step)}, step=step)
            run.log_metrics({"final": 10 * k + i})
    return 0


def cheap_chain(cfg: Any, spec: Any, on_epoch: Any) -> Mapping[str, Any]:
    """A smooth validation-mAP surface peaking at (3, 2); a short sleep so the workers' trials overlap."""
    time.sleep(0.2)
    r_t, r_s = cfg.lofi.r_t, cfg.lofi.r_s
    val = 0.5 - 0.01 * (r_t - 3.0) ** 2 - 0.05 * (r_s - 2.0) ** 2
    return {"val_average_mAP": val, "average_mAP": val - 0.1, "activation_rel": 1.0 / (r_t * r_s**2)}


def search(argv: list[str]) -> int:
    import harness.search.study as S
    from harness.cli import main

    S.chain_run = cheap_chain  # the CLI's default objective, looked up at call time
    return main(["search", *argv])


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    sys.exit(track(rest[0], int(rest[1])) if kind == "track" else search(rest))
