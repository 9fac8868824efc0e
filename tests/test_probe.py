"""benchmarks/probe_discrepancy.py refuses a config whose probe would be scored on the videos it is fitted on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def _probe_main():
    spec = importlib.util.spec_from_file_location("probe_discrepancy", ROOT / "benchmarks/probe_discrepancy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(("change", "needle"), [({"val_subset": "training"}, "in-sample"), ({"nope": 1}, "nope")])
def test_probe_refuses_in_sample_and_bad_configs(tmp_path: Path, capsys, change: dict, needle: str) -> None:
    """A design run's config (data.val_subset = training, the training videos the probe is fitted on) made the
    probe score in-sample without a word (issue 17, v16); now it stops with one line, as it does on a bad key,
    before any data is read or generated."""
    cfg = yaml.safe_load((ROOT / "config/smoke.yaml").read_text(encoding="utf-8"))
    cfg["data"].update(change)
    cfg["data"]["root"] = str(tmp_path / "data")
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert _probe_main()(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "data").exists()
