"""The results row (harness/pipeline/row.py): a typed model whose dict is the flat row.json every table reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.experiment import load_experiment
from harness.pipeline.plan import plan_run
from harness.pipeline.row import ResultRow, build_row

ROOT = Path(__file__).resolve().parents[1]


def _row(mode: str, fids: list[tuple[str, float, float]]) -> ResultRow:
    cfg = load_experiment(ROOT / "config" / "smoke.yaml")
    plan = plan_run(cfg, mode=mode, seed=1, run_dir=Path("/r/run"))
    metrics = {
        "average_mAP": 0.3,
        "mAP": [0.5, 0.1],
        "tiou_thresholds": [0.5, 0.95],
        "AR@1": 0.2,
        "AR@100": 0.6,
        "AUC": 0.4,
        "validation": {"average_mAP": 0.25},
        "history": [],
    }
    run = {"config": "c.yaml", "config_hash": "h", "commit": "abc", "mlflow_run_id": "", "skipped_videos": ["v9"]}
    memory = {"activation_bytes": 10, "activation_bytes_full": 40, "activation_rel": 0.25}
    return build_row(
        cfg, plan, fids=fids, metrics=metrics, memory=memory, times={"lofi": 2.0, "head": 1.0}, scores=None,
        run={**run, "world_size": 1},
    )  # fmt: skip


def test_row_flattens_metrics_and_times_in_the_row_order() -> None:
    row = _row("lofi-T", [("T", 4.0, 1.0)]).to_dict()
    keys = list(row)
    assert keys[keys.index("average_mAP") :][:6] == ["average_mAP", "mAP_0.50", "mAP_0.95", "AR_1", "AR_100", "AUC"]
    assert keys[keys.index("activation_rel") + 1 : keys.index("proposals")] == ["time_lofi_s", "time_head_s"]
    assert row["mAP_0.95"] == 0.1 and row["val_average_mAP"] == 0.25 and row["time_head_s"] == 1.0
    assert (row["L"], row["size"], row["r_t"], row["cycle"], row["fidelities"]) == (2, 16, 4.0, "T", "T")
    assert row["predictions"].endswith("run/head/predictions_testing.json") and row["class_scores"] is None
    assert row["global_batch"] == {"pretrain": 16, "lofi": 4, "head": 4}
    assert "mAP" not in row and "times" not in row and "proposal_metrics" not in row


@pytest.mark.parametrize(("mode", "fids"), [("acp", []), ("lofi-long", [("S", 1.0, 2.0), ("T", 4.0, 1.0)])])
def test_row_of_a_mode_without_one_fidelity_has_no_shape(mode: str, fids: list) -> None:
    row = _row(mode, fids).to_dict()
    assert (row["L"], row["size"], row["r_t"], row["r_s"]) == (None, None, None, None)
    assert row["fidelities"] == ",".join(f[0] for f in fids)
