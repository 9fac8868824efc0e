"""The config validator: unknown keys, wrong types, values out of range and impossible combinations are rejected
before any work starts, in one line naming the file, the dotted key, the value and the fix — by every path
(`lofi run` via load_experiment, `lofi config check`, the Snakefile via from_dict, copies via evolve)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from harness.cli import main
from harness.config import apply_overrides, evolve, from_dict, load_config, parse_override, to_dict, yaml_load
from harness.errors import ConfigError
from harness.experiment import ExperimentConfig, OptimConfig, load_experiment

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))

# (YAML text, the dotted key the message must name, a fragment of the message: value, problem or fix)
BAD = [
    ("lofi: {r_t: 0}\n", "lofi.r_t", "lofi.r_t = 0: must be >= 1"),
    ("lofi: {r_t: 40}\n", "lofi.r_t", "fewer than one of fidelity.snippets = 16 snippets; use 1 <= lofi.r_t <= 16"),
    ("lofi: {r_s: 100}\n", "lofi.r_s", "gives 0 px frames at fidelity.size = 32, below the 8 px minimum"),
    ("lofi: {optim: {lr: -0.1}}\n", "lofi.optim.lr", "lofi.optim.lr = -0.1: must be > 0; set a positive learning rate"),
    ("lofi: {optim: {lr: .inf}}\n", "lofi.optim.lr", "must be a finite number"),
    ("head: {optim: {epochs: 0}}\n", "head.optim.epochs", "head.optim.epochs = 0: must be >= 1"),
    ("pretrain: {optim: {batch_size: 0}}\n", "pretrain.optim.batch_size", "= 0: must be >= 1"),
    ("pretrain: {finetune: {momentum: 1.5}}\n", "pretrain.finetune.momentum", "= 1.5: must be < 1"),
    ("lofi: {optim: {weight_decay: -1e-4}}\n", "lofi.optim.weight_decay", "= -0.0001: must be >= 0"),
    ("head: {optim: {gamma: 0}}\n", "head.optim.gamma", "= 0: must be > 0"),
    ("head: {optim: {step_size: 0}}\n", "head.optim.step_size", "must be >= 1"),
    ("lofi: {optim: {batch_size: 4, accumulate: 8}}\n", "lofi.optim.accumulate", "use accumulate <= 4"),
    ("runtime: {threads: -1}\n", "runtime.threads", "runtime.threads = -1: must be >= 0"),
    ("data: {val_holdout: 1.0}\n", "data.val_holdout", "data.val_holdout = 1.0: must be < 1"),
    ("data: {val_subset: testing}\n", "data.val_subset", "model selection would read the test split"),
    ("fidelity: {size: 0}\n", "fidelity.size", "fidelity.size = 0: must be >= 1"),
    ("fidelity: {size: 14}\n", "fidelity.size", "the paper's S fidelity (r_s = 2) gives 7 px frames"),
    ("fidelity: {snippets: 3}\n", "fidelity.snippets", "the paper's T fidelity (r_t = 4) would leave fewer than one"),
    ("fidelity: {snippets: 2.5}\n", "fidelity.snippets", "fidelity.snippets = 2.5: expected an integer"),
    ("fidelity: {snippets: many}\n", "fidelity.snippets", "= 'many': expected an integer"),
    ("fidelity: {snippets: '8'}\n", "fidelity.snippets", "= '8': expected an integer"),
    ("lofi: {c_s: true}\n", "lofi.c_s", "= True: expected an integer"),
    ("lofi: {optim: {lr: fast}}\n", "lofi.optim.lr", "= 'fast': expected a number"),
    ("runtime: {amp: 3}\n", "runtime.amp", "runtime.amp = 3: expected true or false"),
    (
        "post: {nms: hard}\n",
        "post.nms",
        "post.nms = 'hard': not one of the allowed values; use one of 'gaussian' or 'bmn'",
    ),
    ("post: {sigma: 0}\n", "post.sigma", "must be > 0"),
    ("post: {top_k: 0}\n", "post.top_k", "must be >= 1"),
    ("post: {low: 0.95}\n", "post.low", "above post.high = 0.9"),
    ("sweep: {n_boot: 0}\n", "sweep.n_boot", "must be >= 1"),
    ("sweep: {ablation_modes: [acp, lofi-X]}\n", "sweep.ablation_modes[1]", "= 'lofi-X': not one of the allowed"),
    ("sweep: {optuna: {trials: 0}}\n", "sweep.optuna.trials", "must be >= 1"),
    ("sweep: {optuna: {r_t: [5, 2]}}\n", "sweep.optuna.r_t", "sweep.optuna.r_t = [5.0, 2.0]: not a (low, high) range"),
    ("sweep: {optuna: {r_t: [0.5, 2]}}\n", "sweep.optuna.r_t[0]", "sweep.optuna.r_t[0] = 0.5: must be >= 1"),
    (
        "sweep: {optuna: {r_t: [1, 32]}}\n",
        "sweep.optuna.r_t",
        "the upper bound leaves fewer than one of fidelity.snippets = 16",
    ),
    ("sweep: {optuna: {r_s: [1, 8]}}\n", "sweep.optuna.r_s", "the upper bound gives 4 px frames"),
    ("sweep: {optuna: {r_t: [1.0]}}\n", "sweep.optuna.r_t", "sweep.optuna.r_t = [1.0]: has no item 1"),
    ("lofi:\n  optim:\n    epoch: 3\n", "lofi.optim.epoch", "unknown key 'epoch'; did you mean 'epochs'?"),
    ("lofi: {optim: 0.1}\n", "lofi.optim", "lofi.optim = 0.1: expected a mapping of keys to values"),
]


@pytest.mark.parametrize("text, key, fragment", BAD, ids=[b[1] + ":" + b[0].strip() for b in BAD])
def test_bad_value_rejected_by_run_and_check_in_one_line(tmp_path, capsys, text, key, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    # what `lofi run` (and every other command) calls first
    with pytest.raises(ConfigError) as err:
        load_experiment(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: {key} = ") and fragment in msg and "\n" not in msg, msg
    # `lofi config check`: the same validator, the same line
    assert main(["config", "check", "--config", str(p)]) == 2
    out = capsys.readouterr()
    assert out.err == f"lofi: error: {msg}\n" and not out.out
    # the Snakefile: from_dict on what Snakemake's YAML loader gives
    with pytest.raises(ConfigError) as err:
        from_dict(ExperimentConfig, yaml.safe_load(text), source="snakemake")
    assert str(err.value) == "snakemake" + msg[len(str(p)) :]


def test_every_error_is_counted(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("lofi: {optim: {lr: 0, epochs: 0, batch_size: 0}}\n")
    with pytest.raises(ConfigError, match=r": lofi\.optim\.lr = 0: must be > 0; .* \(\+2 more\)$"):
        load_experiment(p)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- a\n- b\n", "the top level must be a mapping"),
        ("data: [unclosed\n", "not valid YAML (line 2)"),
    ],
)
def test_unreadable_files(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
        load_experiment(p)
    assert str(err.value).startswith(f"{p}: ")


# ------------------------------------------------------------------------------------------------ YAML 1.2 floats
def test_yaml_reads_floats_as_yaml_1_2_and_keeps_ints_and_strings():
    data = yaml_load("a: 1e-4\nb: 1E5\nc: -2.5e+3\nd: .5\ne: 3\nf: abc\ng: '1e-4'\nh: 1.0\ni: 0x10\n")
    assert data == {"a": 1e-4, "b": 1e5, "c": -2500.0, "d": 0.5, "e": 3, "f": "abc", "g": "1e-4", "h": 1.0, "i": 16}
    assert [type(data[k]) for k in "abcdei"] == [float, float, float, float, int, int]
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}  # YAML 1.1 (PyYAML's default, and Snakemake's): a string


def test_weight_decay_1e_minus_4_is_the_same_float_through_every_path(tmp_path):
    p = tmp_path / "wd.yaml"
    p.write_text("lofi:\n  optim: {weight_decay: 1e-4, lr: 1E-2}\n")
    cfg = load_experiment(p)  # `lofi run`
    assert type(cfg.lofi.optim.weight_decay) is float and cfg.lofi.optim.weight_decay == 1e-4
    assert cfg.lofi.optim.lr == 0.01
    over = load_experiment(ROOT / "config/smoke.yaml", ["lofi.optim.weight_decay=2e-4", "head.optim.lr=5E-3"])
    assert over.lofi.optim.weight_decay == 2e-4 and over.head.optim.lr == 5e-3  # `--set`
    assert parse_override("a.b=1e-4") == (["a", "b"], 1e-4)
    snake = from_dict(ExperimentConfig, yaml.safe_load(p.read_text()), "snakemake")  # the Snakefile's loader
    assert snake == cfg
    # `lofi config check` and `lofi config show` in a fresh process, exactly as a user runs them
    check = subprocess.run(
        [sys.executable, "-m", "harness.cli", "config", "show", "--config", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert check.returncode == 0, check.stderr
    assert yaml.safe_load(check.stdout)["lofi"]["optim"]["weight_decay"] == 1e-4


def test_ints_never_take_floats(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("lofi: {optim: {epochs: 1e1}}\n")  # a float under YAML 1.2
    with pytest.raises(ConfigError, match=r"lofi\.optim\.epochs = 10\.0: expected an integer"):
        load_experiment(p)
    with pytest.raises(ConfigError, match=r"fidelity\.size = 2\.0: expected an integer"):
        load_experiment(ROOT / "config/smoke.yaml", ["fidelity.size=2.0"])


def test_floats_take_ints_and_store_floats():
    cfg = from_dict(ExperimentConfig, {"lofi": {"r_t": 2, "optim": {"lr": 1}}}, "x.yaml")
    assert type(cfg.lofi.r_t) is float and cfg.lofi.r_t == 2.0 and type(cfg.lofi.optim.lr) is float


# ------------------------------------------------------------------------------------------------ defaults, merging
def test_partial_nested_mapping_keeps_the_fields_own_defaults(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("pretrain: {optim: {lr: 0.01}}\n")
    cfg = load_experiment(p)
    assert OptimConfig().lr == 0.1 and OptimConfig().momentum == 0.0  # the class's defaults differ ...
    assert cfg.pretrain.optim.lr == 0.01  # ... the named key is overridden ...
    assert (cfg.pretrain.optim.momentum, cfg.pretrain.optim.epochs, cfg.pretrain.optim.batch_size) == (0.9, 4, 32)
    assert cfg.pretrain.finetune == ExperimentConfig().pretrain.finetune  # ... the rest are the field's defaults
    head = from_dict(ExperimentConfig, {"head": {"optim": {"epochs": 3}}}, "x.yaml").head.optim
    assert (head.optimizer, head.lr, head.gamma, head.epochs) == ("adam", 4e-3, 0.1, 3)


def test_overrides_go_through_the_same_checks(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("fidelity: {snippets: 8}\n")
    cfg = load_experiment(p, ["lofi.r_t=2.5", "head.name=bmn"])
    assert cfg.lofi.r_t == 2.5 and cfg.head.name == "bmn" and cfg.fidelity.snippets == 8
    with pytest.raises(ConfigError, match=r"lofi\.rt = 2: unknown key 'rt'; did you mean 'r_t'\?"):
        load_experiment(p, ["lofi.rt=2"])
    with pytest.raises(ConfigError, match=r"lofi\.r_t = 9\.0: leaves fewer than one of fidelity\.snippets = 8"):
        load_experiment(p, ["lofi.r_t=9.0"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_configs_in_repo_load_and_round_trip():
    assert [c.name for c in CONFIGS] == ["activitynet.yaml", "default.yaml", "hacs.yaml", "smoke.yaml", "thumos14.yaml"]
    for path in CONFIGS:
        cfg = load_config(ExperimentConfig, path)
        plain = to_dict(cfg)
        assert json.loads(json.dumps(plain)) == plain, path  # Path -> str, tuples -> lists
        assert from_dict(ExperimentConfig, plain, str(path)) == cfg, path
        assert from_dict(ExperimentConfig, yaml.safe_load(yaml.safe_dump(plain)), str(path)) == cfg, path
    smoke = load_experiment(ROOT / "config/smoke.yaml")
    assert (smoke.fidelity.snippets, smoke.fidelity.size, smoke.sweep.optuna.r_s) == (8, 16, (1.0, 2.0))
    assert isinstance(smoke.data.root, Path) and to_dict(smoke)["data"]["root"] == "data/synthetic-smoke"
    assert to_dict(smoke)["sweep"]["seeds"] == [0, 1]


# ------------------------------------------------------------------------------------------------ evolve
def test_evolve_validates_and_merges_nested_mappings():
    cfg = load_experiment(ROOT / "config/smoke.yaml")
    moved = evolve(cfg, lofi={"r_t": 2.0})
    assert moved.lofi.r_t == 2.0 and moved.lofi.optim == cfg.lofi.optim and moved.lofi.c_s == cfg.lofi.c_s
    assert evolve(cfg, lofi=evolve(cfg.lofi, r_t=2.0)) == moved
    assert cfg.lofi.r_t == 1.0  # frozen: the original is unchanged
    with pytest.raises(ConfigError, match=r"^evolve\(ExperimentConfig\): lofi\.r_t = 9\.0: leaves fewer than one"):
        evolve(cfg, lofi={"r_t": 9.0})  # valid for LofiConfig alone, not with fidelity.snippets = 8
    with pytest.raises(ConfigError, match=r"^evolve\(OptimConfig\): lr = -1: must be > 0"):
        evolve(cfg.lofi.optim, lr=-1)
    with pytest.raises(ConfigError, match=r"lofi\.optim\.lrr = 1: unknown key 'lrr'; did you mean 'lr'\?"):
        evolve(cfg, lofi={"optim": {"lrr": 1}})
    with pytest.raises(ValidationError, match="frozen"):
        cfg.lofi.r_t = 3.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ the CLI
def test_impossible_fidelity_ratio_is_a_one_line_cli_error_before_any_work(tmp_path, capsys):
    rc = main(
        [
            "run",
            "--config",
            str(ROOT / "config/smoke.yaml"),
            "--mode",
            "lofi-custom",
            "--set",
            "lofi.r_t=0.5",
            "--set",
            "tracking.enabled=false",
            "--set",
            f"data.root={tmp_path}/nodata",
            "--set",
            "data.synthetic_profile=null",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "config/smoke.yaml: lofi.r_t = 0.5: must be >= 1; use a ratio >= 1" in err
    assert not (tmp_path / "run").exists()  # checked before anything is written
