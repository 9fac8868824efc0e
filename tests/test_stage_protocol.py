"""A stage kind is one runner plus one declaration (harness/pipeline/stage.py, stages.py): a toy stage registered
here is planned into every run, runs through `lofi stage` and `lofi run`, and the workflow's plan makes a job of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import main
from harness.experiment import load_experiment
from harness.pipeline.distributed import current
from harness.pipeline.plan import plan_run, sweep_runs, unique_stages
from harness.pipeline.stage import StageContext, StageResult, StageSpec, stage_done
from harness.pipeline.stages import STAGES, cli_args, register, shared_stages, unregister

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "smoke.yaml"


def toy_run(ctx: StageContext) -> StageResult:
    """The toy stage's work: one file naming the dataset and seed; nothing else (the protocol does the rest)."""
    out = ctx.out / "toy.txt"
    if current().main:
        out.write_text(f"{ctx.cfg.data.name} {ctx.seed} {len(ctx.data.ds.videos)}\n", encoding="utf-8")
    return StageResult([out], {"note": "toy"})


@pytest.fixture
def toy() -> Iterator[StageSpec]:
    spec = register(
        StageSpec(
            name="toy", summary="a toy stage", runner=toy_run, output="toy.txt", reads=("data",), read_by_head=True
        )
    )
    try:
        yield spec
    finally:
        unregister("toy")


def test_builtin_stage_kinds_are_declared_once() -> None:
    assert list(STAGES) == ["pretrain", "lofi", "features", "classifier", "head"]
    assert [s.name for s in shared_stages()] == ["pretrain", "lofi", "features", "classifier"]
    with pytest.raises(ValueError, match="registered twice"):
        register(STAGES["lofi"])


def test_toy_stage_is_planned_into_every_run_and_the_workflow(toy: StageSpec, tiny_overrides: list[str]) -> None:
    cfg = load_experiment(SMOKE, tiny_overrides)
    plan = plan_run(cfg, mode="acp", seed=0, run_dir=Path("/r/run"), stages_root=Path("/r/st"))
    stage = plan.get("toy")
    assert stage is not None and stage.folder == Path("/r/st/toy/seed0") and stage in plan.head.needs
    jobs = [s for _, s in unique_stages(sweep_runs(cfg, ("acp", "lofi-S")))]
    assert [s.kind for s in jobs].count("toy") == 2  # one job per seed of the sweep, shared by both modes
    assert cli_args(stage) == []  # the workflow's `lofi stage toy` needs no option
    # its key follows the sections it declares, and only those
    other_data = load_experiment(SMOKE, [*tiny_overrides, "data.synthetic_seed=1"])
    other_head = load_experiment(SMOKE, [*tiny_overrides, "head.optim.lr=0.001"])
    plan_of = lambda c: plan_run(c, mode="acp", seed=0, run_dir=Path("/r/run"))
    assert plan_of(other_data).get("toy").key != plan_of(cfg).get("toy").key
    assert plan_of(other_head).get("toy").key == plan_of(cfg).get("toy").key


def test_toy_stage_runs_through_lofi_stage_and_lofi_run(
    toy: StageSpec, tiny_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    assert main(["stage", "toy", "--config", str(SMOKE), *sets, "--stages", str(tmp_path / "alone")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stage"] == "toy-seed0" and (tmp_path / "alone/toy/seed0/toy.txt").is_file()
    done = stage_done(tmp_path / "alone/toy/seed0", printed["key"])
    assert done is not None and done["note"] == "toy" and list(done["outputs"]) == ["toy.txt"]

    from harness.pipeline.run import run_all

    cfg = load_experiment(SMOKE, tiny_overrides)
    row = run_all(cfg, mode="acp", seed=0, out=tmp_path / "run", stages_root=tmp_path / "st")
    assert (tmp_path / "st/toy/seed0/toy.txt").read_text() == (tmp_path / "alone/toy/seed0/toy.txt").read_text()
    assert "time_toy_s" in row and row["stage_keys"]["toy-seed0"] == printed["key"]
