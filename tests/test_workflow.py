"""The Snakefile, the config schema and the `lofi config` / `lofi track` commands.

Dry runs (`snakemake -n`) parse the real Snakefile with the smoke config moved to a temporary results folder; the
slow test runs the smoke workflow end to end into a temporary working directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness.config import load_yaml
from harness.experiment import load_experiment
from harness.pipeline.plan import MODE_PLAN
from harness.schema import experiment_schema

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))


def lofi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, capture_output=True, text=True)


def snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--nolock", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def smoke_copy(tmp_path: Path, **sweep: object) -> tuple[Path, Path]:
    """config/smoke.yaml with its results (and optionally more sweep keys) under tmp_path."""
    data = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
    results = tmp_path / "results"
    data["sweep"].update({"results": str(results), **sweep})
    data["data"]["root"] = str(tmp_path / "data")  # never the checkout's data/ (a run there would change the plan)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, results


STAGE_RULES = ("pretrain", "lofi", "features", "classifier", "run")


def job_counts(output: str) -> Counter:
    """The 'Job stats' table of a (dry) run: rule -> count (without the total); the workflow has one rule per
    stage and run (e.g. ``lofi_tsm_resnet_tiny_lofi_long_seed0``), counted here by kind (``lofi``)."""
    block = output.split("Job stats:", 1)[1]
    counts = Counter()
    for line in block.splitlines()[3:]:
        m = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            kind = next((k for k in STAGE_RULES if m.group(1).startswith(k + "_")), m.group(1))
            counts[kind] += int(m.group(2))
    return counts


def ablation_runs(cfg) -> set[tuple[str, int]]:
    """(mode, seed) of every run behind the ablation and controls tables."""
    sweep = cfg.sweep
    runs = {(m, s) for m in (*sweep.ablation_modes, *sweep.control_modes) for s in sweep.seeds}
    return runs | {("acp", s) for s in sweep.control_seeds}  # the negative control: ACP on other seeds


def expected_ablation_jobs(config: Path) -> Counter:
    """Jobs for table_ablation.md (which also builds the controls table) worked out from the config and MODE_PLAN
    (not from the plan module or the workflow)."""
    cfg = load_experiment(config)
    runs = ablation_runs(cfg)
    seeds = {s for _, s in runs}
    pretrain, lofi, features = set(), set(), set()
    for mode, seed in runs:
        pre, cycle = MODE_PLAN[mode]
        pretrain.add((pre, seed))
        if cycle:
            pretrain.add(("acp", seed))
            lofi.add((cycle, seed))
        # a LoFi encoder with BatchNorm re-estimated at full fidelity (the "+bn" row, or lofi.bn_recalibrate for
        # every LoFi row) is a features job of its own
        recal = bool(cycle) and (cfg.lofi.bn_recalibrate or mode.endswith("+bn"))
        source = mode if mode == "blind" else f"lofi-{cycle}" if cycle else pre
        features.add((source + ("+bn" if recal else ""), seed))
    shared_classifier = cfg.head.class_scores == "finetuned"
    if shared_classifier:  # the ACP+ model (from ACP) scores every video once per seed
        pretrain |= {(p, s) for s in seeds for p in ("acp", "acp+")}
    counts = Counter(
        {
            "data": 1,
            "frames": 1,  # every video decoded once before the training jobs
            "track_init": 1,
            "pretrain": len(pretrain),
            "lofi": len(lofi),
            "features": len(features),
            "run": len(runs),
            "table_ablation": 1,
        }
    )
    if shared_classifier:
        counts["classifier"] = len(seeds)
    if cfg.sweep.join_stages:
        # features and classifier run in the job of the encoder they read, except the blind control's zeros: only
        # the ablation job's tables read them, while the pretrain, models and memory tables read the ACP encoder
        del counts["classifier"]
        counts["features"] = sum(source == "blind" for source, _ in features)
    return counts


# ------------------------------------------------------------------------------------------------- parse time
@pytest.mark.parametrize("join", [True, False])
def test_dry_run_lists_the_ablation_jobs(tmp_path: Path, join: bool) -> None:
    config, results = smoke_copy(tmp_path, join_stages=join)
    out = snakemake("-n", str(results / "table_ablation.md"), "--configfile", str(config))
    assert out.returncode == 0, out.stderr + out.stdout
    counts = job_counts(out.stdout)
    assert counts == expected_ablation_jobs(config)
    # every job logs and benchmarks under the sweep's results
    assert f"log: {results}/logs/" in out.stdout and f"benchmark: {results}/benchmarks/" in out.stdout


def test_default_config_dry_run_builds_every_table(tmp_path: Path) -> None:
    # the default config with its results under tmp_path: the checkout's results/ may already hold a sweep
    data = yaml.safe_load((ROOT / "config/default.yaml").read_text())
    data["sweep"]["results"] = str(tmp_path / "results")
    data["data"]["root"] = str(tmp_path / "data")
    config = tmp_path / "default.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    out = snakemake("-n", "all", "--configfile", str(config))
    assert out.returncode == 0, out.stderr + out.stdout
    counts = job_counts(out.stdout)
    for rule in ("table_ablation", "table_pretrain", "table_models", "table_memory", "optuna"):
        assert counts[rule] == 1, rule
    cfg = load_experiment(ROOT / "config/default.yaml")
    runs = {
        (e, h, m)
        for e in cfg.sweep.encoders[:1]
        for h in cfg.sweep.heads[:1]
        for m in (*cfg.sweep.ablation_modes, *cfg.sweep.pretrain_modes, *cfg.sweep.control_modes)
    }
    runs |= {(e, h, m) for e in cfg.sweep.encoders for h in cfg.sweep.heads for m in cfg.sweep.model_modes}
    # + the negative control: ACP on the control seeds
    assert counts["run"] == len(runs) * len(cfg.sweep.seeds) + len(cfg.sweep.control_seeds)


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    config, results = smoke_copy(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["lofi"]["epochz"] = 3
    config.write_text(yaml.safe_dump(data))
    out = snakemake("-n", str(results / "table_ablation.md"), "--configfile", str(config))
    assert out.returncode != 0
    line = next(l for l in (out.stdout + out.stderr).splitlines() if "epochz" in l)
    assert str(config) in line and "lofi" in line


def test_config_override_reaches_resolved_config_and_keeps_mtime(tmp_path: Path) -> None:
    config, results = smoke_copy(tmp_path)
    target = str(results / "table_ablation.md")
    assert snakemake("-n", target, "--configfile", str(config)).returncode == 0
    resolved = results / "config.resolved.yaml"
    first = resolved.stat().st_mtime_ns
    assert snakemake("-n", target, "--configfile", str(config)).returncode == 0
    assert resolved.stat().st_mtime_ns == first  # unchanged content: untouched file
    out = snakemake("-n", target, "--configfile", str(config), "--config", "post={top_k: 7}")
    assert out.returncode == 0, out.stderr
    text = resolved.read_text()
    assert yaml.safe_load(text)["post"]["top_k"] == 7
    assert yaml.safe_load(text)["post"]["sigma"] == load_experiment(config).post.sigma  # the rest kept
    # the jobs read the resolved file, and it is a valid config on its own
    assert f"--config {resolved}" in snakemake("-n", "-p", target, "--configfile", str(config)).stdout
    assert lofi("config", "check", "--config", str(resolved)).returncode == 0


# ------------------------------------------------------------------------------------------------- the schema
def test_committed_schema_is_current() -> None:
    out = lofi("config", "schema")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (ROOT / "config/schema.json").read_text(), (
        "regenerate: lofi config schema --out config/schema.json"
    )


def test_schema_is_closed_and_uses_field_defaults() -> None:
    schema = experiment_schema()
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors({"lofi": {"epochz": 3}}))
    assert list(validator.iter_errors({"encoder": {"shift_over": "sideways"}}))  # Literal -> enum
    assert list(validator.iter_errors({"fidelity": {"snippets": 0}}))
    assert list(validator.iter_errors({"sweep": {"optuna": {"r_t": [1.0]}}}))  # a pair
    assert not list(validator.iter_errors({"data": {"synthetic_profile": None}}))
    assert list(validator.iter_errors({"lofi": {"optim": {"lr": -0.1}}}))  # ranges (Field(gt=0)) are stated
    assert list(validator.iter_errors({"sweep": {"optuna": {"r_t": [0.5, 2.0]}}}))
    assert list(validator.iter_errors({"fidelity": {"snippets": 2.5}}))
    # pretrain.optim's default (lr 0.05) differs from OptimConfig()'s (0.1): a validator that fills in defaults
    # must fill in what from_dict uses
    assert schema["$defs"]["PretrainConfig"]["properties"]["optim"]["default"]["lr"] == 0.05
    assert schema["$defs"]["OptimConfig"]["properties"]["lr"]["default"] == 0.1


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_checks(config: Path) -> None:
    out = lofi("config", "check", "--config", str(config))
    assert out.returncode == 0, out.stderr
    validator = jsonschema.Draft202012Validator(experiment_schema())
    assert not list(validator.iter_errors(load_yaml(config)))


def test_config_check_rejects_bad_value_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime: {device: tpu}\n")
    out = lofi("config", "check", "--config", str(bad))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and str(bad) in out.stderr and "runtime.device" in out.stderr


def test_config_show_applies_overrides() -> None:
    out = lofi("config", "show", "--config", "config/smoke.yaml", "--set", "lofi.optim.epochs=7")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["lofi"]["optim"]["epochs"] == 7
    assert shown["head"]["max_duration"] == 0  # defaults filled in


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    out: dict[tuple[str, ...], object] = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.update(_subcommands(child, (*path, name)))
    return out


def test_config_and_set_options_are_the_shared_ones() -> None:
    """--config and --set are defined once (harness/commands/_options.py) and mean the same in every command."""
    from harness.cli import build_parser

    config_in, set_in = set(), set()
    for path, parser in _subcommands(build_parser()).items():
        for action in parser._actions:  # type: ignore[attr-defined]
            if "--config" in action.option_strings:
                assert (action.dest, action.metavar, action.type) == ("config", "FILE", None), path
                config_in.add(path[0])
            if "--set" in action.option_strings:
                assert (action.dest, action.metavar, action.default) == ("overrides", "KEY=VALUE", []), path
                set_in.add(path[0])
    assert config_in == {"bench", "config", "data", "report", "run", "search", "stage", "track"}
    assert set_in == config_in - {"bench"}
    spelled = [p.name for p in (ROOT / "harness" / "commands").glob("*.py") if '"--config"' in p.read_text()]
    assert spelled == ["_options.py"]


def test_workflow_lint_reads_every_lint_title() -> None:
    """scripts/lint_workflow.py (scripts/test.sh) parses `snakemake --lint`'s text; only its accepted titles pass."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lint_workflow", ROOT / "scripts" / "lint_workflow.py")
    lint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lint)  # type: ignore[union-attr]
    text = (
        "Lints for snakefile /w/rules/common.smk:\n    * Path composition with '+' in line 75:\n      advice\n\n"
        "Lints for rule data (line 9, /w/rules/stages.smk):\n"
        "    * Specify a conda environment or container for each rule.:\n      advice\n"
    )
    found = lint.lint_titles(text)
    assert found == [
        ("snakefile /w/rules/common.smk", "Path composition with '+' in line 75"),
        ("rule data (line 9, /w/rules/stages.smk)", "Specify a conda environment or container for each rule."),
    ]
    assert [t for _, t in found if t not in lint.ACCEPTED] == ["Path composition with '+' in line 75"]


def test_track_ui_points_at_the_sweep_store() -> None:
    out = lofi("track", "ui", "--config", "config/smoke.yaml")
    assert out.returncode == 0, out.stderr
    results = load_experiment(ROOT / "config/smoke.yaml").sweep.results
    assert out.stdout.strip() == f"mlflow ui --backend-store-uri sqlite:///{results}/mlflow.db"


def test_update_readme_replaces_only_between_markers(tmp_path: Path) -> None:
    readme, table = tmp_path / "README.md", tmp_path / "table_ablation.md"
    readme.write_text("intro\n<!-- tables:start -->\nold\n<!-- tables:end -->\noutro\n")
    table.write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    for _ in range(2):  # idempotent
        out = subprocess.run(
            [sys.executable, str(ROOT / "scripts/update_readme.py"), "--readme", str(readme), str(table)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
    text = readme.read_text()
    assert text.startswith("intro\n<!-- tables:start -->\n") and text.endswith("<!-- tables:end -->\noutro\n")
    assert "old" not in text and text.count("| 1 | 2 |") == 1 and "at commit `" in text
    from importlib.metadata import version

    import torch

    # which torch made the numbers, and which of its CPU kernels (another vector ISA trains to other numbers)
    kernels = torch.backends.cpu.get_cpu_capability()
    assert f"with torch {version('torch')} (CPU kernels {kernels}), Python " in text


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_workflow_end_to_end(tmp_path: Path) -> None:
    config, _ = smoke_copy(tmp_path, results="results")
    target = "results/table_ablation.md"
    args = ("--directory", str(tmp_path), target, "--configfile", str(config))
    out = snakemake("--profile", str(ROOT / "profiles/local"), "--cores", "2", *args)  # the local profile
    assert out.returncode == 0, out.stderr[-4000:]
    md = (tmp_path / target).read_text()
    cfg = load_experiment(config)
    from harness.report.rows import MODE_LABELS, SHOWN_METRICS

    labels = MODE_LABELS
    for mode in cfg.sweep.ablation_modes:
        assert labels[mode] in md, mode
    for _, header in SHOWN_METRICS:
        assert header in md, header
    # the Markdown table parses: one row per configuration, as many cells as the header
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header_cells = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert len(body) == len(cfg.sweep.ablation_modes) and all(len(r) == len(header_cells) for r in body)
    import pandas as pd

    csv = pd.read_csv(tmp_path / "results/table_ablation.csv")
    assert len(csv) == len(cfg.sweep.ablation_modes)
    rows = [json.loads(r.read_text()) for r in (tmp_path / "results").rglob("row.json")]
    assert sorted((r["mode"], r["seed"]) for r in rows) == sorted(ablation_runs(cfg))
    # the controls come with the ablation table: floor, positive and negative control, each a parsed row
    controls = pd.read_csv(tmp_path / "results/table_controls.csv")
    shown = " ".join(map(str, controls.to_numpy().ravel()))
    assert list(controls["mode"]) == ["blind", "acp", "e2e-full", "acp"] and "Blind" in shown
    neg = controls[controls["control"] == "negative control"]
    assert len(neg) == 1 and str(neg["seeds"].iloc[0]) == ", ".join(map(str, cfg.sweep.control_seeds))
    assert neg["p_value"].notna().all() and neg["delta_ci_low"].iloc[0] < neg["delta_ci_high"].iloc[0]
    sweep_id = json.loads((tmp_path / "results/mlflow_sweep.json").read_text())["sweep_run_id"]
    # tracking.defer: the jobs recorded their runs, the table job logged them all, each under the sweep's run
    from mlflow.tracking import MlflowClient

    assert cfg.tracking.defer and not list((tmp_path / "results/mlflow_pending").glob("deferred-*.json"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/results/mlflow.db")
    logged = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    configurations = [r for r in logged if r.data.tags.get("kind") == "configuration"]
    assert sorted(r.data.tags["lofi.record"] for r in configurations) == sorted(r["mlflow_run_id"] for r in rows)
    assert all(r.data.tags["mlflow.parentRunId"] == sweep_id for r in configurations)
    assert {r.info.status for r in logged} == {"FINISHED"} and len(logged) > len(configurations) + 1  # + stages
    # Nothing left to do; then one head value changed reruns the runs and the table only, not the stages.
    again = snakemake("-n", *args)
    assert "Nothing to be done" in again.stdout + again.stderr
    changed = snakemake("-n", *args, "--config", "head={optim: {epochs: 1}}")
    assert changed.returncode == 0, changed.stderr
    assert set(job_counts(changed.stdout)) == {"run", "table_ablation"}
    # The LoFi stage builds its head with head.hidden: changing it reruns every LoFi stage and what reads them,
    # and neither the pre-training nor the frozen-encoder features.
    n_seeds, cycles = len(cfg.sweep.seeds), {MODE_PLAN[m][1] for m in cfg.sweep.ablation_modes} - {None}
    wider = job_counts(snakemake("-n", *args, "--config", "head={hidden: 12}").stdout)
    expected = {"lofi": n_seeds * len(cycles), "run": len(ablation_runs(cfg)), "table_ablation": 1}
    if not cfg.sweep.join_stages:  # else each LoFi job extracts its features itself
        expected["features"] = n_seeds * len(cycles)
    assert wider == Counter(expected)

    # The workflow's own report (README § The report): one page holding every table and plot of the job, checked
    # in headless Chromium by scripts/check_report.py where Chromium, its driver and selenium are installed.
    page = tmp_path / "results/report.html"
    out = snakemake(*args, "--report", str(page))
    assert out.returncode == 0, out.stderr[-3000:]
    from harness.pipeline.files import plot_files

    tables = [f"table_{k}.html" for k in ("ablation", "controls", "strata")]  # the ablation job's tables
    plots = [p.name for p in plot_files(Path("."), cfg.data.name, cfg.sweep.encoders[0], cfg.sweep.heads[0])]
    html = page.read_text()
    assert [name for name in tables + plots if name not in html] == []
    if shutil.which("chromedriver") and importlib.util.find_spec("selenium"):
        check = [sys.executable, str(ROOT / "scripts/check_report.py"), str(page), "--results", str(page.parent)]
        done = subprocess.run(check, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr.count(" shown") == len(tables) + len(plots)
