"""A stage kind is one runner plus one declaration (harness/pipeline/stage.py, stages.py): a toy stage registered
here is planned into every run, runs through `lofi stage` and `lofi run`, and the workflow's plan makes a job of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def test_then_runs_the_stages_that_read_a_stage_in_its_process_with_the_same_bytes(
    tiny_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lofi stage pretrain … --then features=…` (the workflow's joined job) writes what the stages write run one
    process each: the same markers' keys, the same encoder and feature files, byte for byte."""
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    base = ["--config", str(SMOKE), *sets]
    joined, alone = tmp_path / "joined", tmp_path / "alone"
    then = ["--then", "features=acp", "--then", "features=blind"]
    assert main(["stage", "pretrain", "--mode", "acp", *base, "--stages", str(joined), *then]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["stage"] for p in printed] == ["pretrain-acp-seed0", "features-acp-seed0", "features-blind-seed0"]
    for kind, flag, value in (
        ("pretrain", "--mode", "acp"),
        ("features", "--mode", "acp"),
        ("features", "--mode", "blind"),
    ):
        assert main(["stage", kind, flag, value, *base, "--stages", str(alone)]) == 0
    alone_keys = [json.loads(line)["key"] for line in capsys.readouterr().out.splitlines()]
    assert [p["key"] for p in printed] == alone_keys
    files = sorted(p.relative_to(joined) for p in joined.rglob("*") if p.is_file() and p.name != "done.json")
    assert any(f.suffix == ".npy" for f in files) and (Path("pretrain/acp/seed0/encoder.pt") in files)
    assert files == sorted(p.relative_to(alone) for p in alone.rglob("*") if p.is_file() and p.name != "done.json")
    assert [f for f in files if (joined / f).read_bytes() != (alone / f).read_bytes()] == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("head", "--then head: 'head' is a run's own stage"),
        ("lofi=S", "--then lofi=S: a lofi stage runs in a job of its own; --then takes features, classifier"),
        ("features", "--then features: features needs mode=one of"),
        ("features=nope", "--then features=nope: features needs mode=one of"),
        ("classifier=x", "--then classifier=x: classifier takes no value; write --then classifier"),
        ("nope", "unknown stage kind 'nope'"),
        ("features=lofi-S", "stage lofi-S-seed0, which features-lofi-S-seed0 reads, is not finished; run it first"),
    ],
)
def test_then_names_a_bad_value_in_one_line(
    value: str, message: str, tiny_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    stages = tmp_path / "st"
    args = ["stage", "pretrain", "--mode", "icp", "--config", str(SMOKE), *sets, "--stages", str(stages)]
    assert main([*args, "--then", value]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not stages.exists(), "a bad --then stops the command before any work"


# What a stage may read of the config without it being in its key: how and where it runs, not what it computes
# (docs/architecture.md § The stage plan).
NOT_IN_KEYS = ("runtime", "tracking", "sweep", "head.validate_every", "data.cache_dir")


class _Recorder:
    """The config as a runner sees it, noting every field it reads (``section.field...``; models are descended)."""

    def __init__(self, obj: object, path: str, seen: set[str]) -> None:
        self._obj, self._path, self._seen = obj, path, seen

    def __getattr__(self, name: str) -> object:
        from pydantic import BaseModel

        value = getattr(self._obj, name)
        path = f"{self._path}.{name}" if self._path else name
        if isinstance(value, BaseModel):
            return _Recorder(value, path, self._seen)
        self._seen.add(path)
        return value


def _fields(reads: dict, prefix: str = "") -> Iterator[str]:
    for name, value in reads.items():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict) and name != "videos":
            yield from _fields(value, path)
        else:
            yield path


@pytest.mark.parametrize("mode", ["icp", "lofi-short", "lofi-custom"])
def test_every_runner_reads_only_what_its_key_holds(
    mode: str, tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner gets the whole config (``ctx.cfg``); a field it reads outside its stage's key would let a changed
    value reuse a stale stage. Every built-in kind runs here (pre-training ICP, ACP and ACP+, LoFi, features, the
    classifier, the head) with a config that records what each reads; the LoFi cycles read different keys."""
    import harness.pipeline.plan as plan
    import harness.pipeline.stage as stage_module
    from harness.pipeline.run import run_all

    reads_of_key: dict[str, set[str]] = {}  # stage key -> the fields it hashes
    real_key, real_context = plan._key, stage_module.StageContext

    def key(kind: str, variant: str, seed: int, reads: dict, needs: tuple) -> str:
        k = real_key(kind, variant, seed, reads, needs)
        reads_of_key[k] = set(_fields(json.loads(json.dumps(reads, default=str))))
        return k

    seen: dict[str, tuple[set[str], set[str]]] = {}  # stage name -> (fields read, fields in its key)

    def context(cfg: object, stage: Any, *args: object) -> StageContext:
        read: set[str] = set()
        seen[f"{stage.kind} {stage.variant}".strip()] = (read, reads_of_key[stage.key])
        return real_context(_Recorder(cfg, "", read), stage, *args)

    monkeypatch.setattr(plan, "_key", key)
    monkeypatch.setattr(stage_module, "StageContext", context)
    cfg = load_experiment(SMOKE, [*tiny_overrides, "lofi.r_t=2", "lofi.r_s=1.0"])
    run_all(cfg, mode=mode, seed=0, out=tmp_path / "run", stages_root=tmp_path / "st")

    kinds = {name.split()[0] for name in seen}
    assert kinds == {"pretrain", "features", "classifier", "head"} | ({"lofi"} if mode.startswith("lofi") else set())
    for name, (read, in_key) in seen.items():
        outside = sorted(
            f
            for f in read
            if not f.startswith(NOT_IN_KEYS)
            and not any(f == r or f.startswith(f"{r}.") or r.startswith(f"{f}.") for r in in_key)
        )
        assert not outside, f"stage {name} reads {outside}, which its key does not hold (harness/pipeline/plan.py)"


def test_a_stage_alone_does_not_generate_data(
    tiny_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Data is prepared by commands (`lofi data synth`, the workflow's data job, `lofi run` before its first stage),
    never inside a stage: `lofi stage` on a data root without the benchmark stops with the command to run."""
    empty = tmp_path / "no-data"
    sets = [a for o in [*tiny_overrides, f"data.root={empty}"] for a in ("--set", o)]
    args = ["stage", "pretrain", "--mode", "acp", "--config", str(SMOKE), *sets, "--stages", str(tmp_path / "st")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a stage does not generate data" in err and f"lofi data synth --profile smoke --seed 0 --out {empty}" in err
    assert not empty.exists() and not (tmp_path / "st/pretrain/acp/seed0/done.json").exists()
