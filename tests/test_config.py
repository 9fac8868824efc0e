"""The typed config: unknown keys, wrong types and impossible values name the key and the file."""

from pathlib import Path

import pytest

from harness.cli import main
from harness.config import apply_overrides, from_dict, load_config
from harness.errors import ConfigError
from harness.experiment import ExperimentConfig, load_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_partial_nested_mapping_keeps_the_fields_own_defaults():
    cfg = from_dict(ExperimentConfig, {"pretrain": {"optim": {"epochs": 7}}}, "x.yaml")
    default = ExperimentConfig().pretrain.optim
    assert cfg.pretrain.optim.epochs == 7
    assert cfg.pretrain.optim.lr == default.lr and cfg.pretrain.optim.momentum == default.momentum


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("lofi:\n  optim:\n    epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(p)
    msg = str(err.value)
    assert str(p) in msg and "lofi.optim" in msg and "'epoch'" in msg and "did you mean 'epochs'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fidelity:\n  snippets: many\n", "expected an integer"),
        ("fidelity:\n  size: 0\n", "size=0 must be at least 1"),
        ("post:\n  nms: hard\n", "not one of"),
        ("runtime:\n  amp: 3\n", "expected true/false"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("data: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_values(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_experiment(p)
    assert str(p) in str(err.value)


def test_overrides_go_through_the_same_checks(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("fidelity: {snippets: 8}\n")
    cfg = load_experiment(p, ["lofi.r_t=2.5", "head.name=bmn"])
    assert cfg.lofi.r_t == 2.5 and cfg.head.name == "bmn" and cfg.fidelity.snippets == 8
    with pytest.raises(ConfigError, match="unknown key 'rt'"):
        load_experiment(p, ["lofi.rt=2"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_configs_in_repo_parse():
    for path in sorted((ROOT / "config").glob("*.yaml")):
        cfg = load_config(ExperimentConfig, path)
        assert cfg.fidelity.snippets >= 1, path


def test_impossible_fidelity_ratio_is_a_one_line_cli_error(tmp_path, capsys):
    rc = main(["run", "--config", str(ROOT / "config/smoke.yaml"), "--mode", "lofi-custom", "--set", "lofi.r_t=0.5",
               "--set", "tracking.enabled=false", "--set", f"data.root={tmp_path}/nodata", "--set", "data.synthetic_profile=null",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "impossible fidelity ratio r_t=0.5" in err and "use 1 <= r_t <= 8" in err
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_fidelity_ratio_checked_before_training(tmp_path):
    from harness.pipeline.run import check_fidelity

    cfg = load_experiment(ROOT / "config/smoke.yaml", ["lofi.r_t=40"])
    with pytest.raises(ConfigError, match=r"r_t=40.*use 1 <= r_t <= 8"):
        check_fidelity(cfg, "lofi-custom")
    check_fidelity(cfg, "lofi-long")  # the custom ratio is not used by other modes
