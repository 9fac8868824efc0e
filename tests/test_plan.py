"""The stage plan: which stages a change reruns, where they live, and that a finished stage is never reused for
another key (harness/pipeline/plan.py, harness/pipeline/runtime.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import LofiError
from harness.experiment import load_experiment
from harness.pipeline.plan import MODE_PLAN, MODES, job_stages, plan_run, stage_users, sweep_runs, unique_stages
from harness.pipeline.stage import mark_done, stage_done

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "smoke.yaml"


def keys(*overrides: str, mode: str = "lofi-long") -> dict[str, str]:
    """Stage name -> key of one run of the smoke config with ``overrides``."""
    cfg = load_experiment(SMOKE, list(overrides))
    return {s.name: s.key for s in plan_run(cfg, mode=mode, seed=0, run_dir=Path("/r")).stages}


def changed(*overrides: str, mode: str = "lofi-long") -> set[str]:
    base, new = keys(mode=mode), keys(*overrides, mode=mode)
    assert base.keys() == new.keys()
    return {k for k in base if base[k] != new[k]}


def test_lofi_stage_reads_the_head_widths_but_not_the_final_heads_optimiser() -> None:
    assert changed("head.hidden=12") == {"lofi-long-seed0", "features-lofi-long-seed0", "head-seed0"}
    assert changed("head.optim.epochs=7") == {"head-seed0"}
    assert changed("post.sigma=0.5") == {"head-seed0"}
    # the LoFi stage trains a G-TAD head with the same localisation kernel and PEM loss as the final head
    lofi_and_after = {"lofi-long-seed0", "features-lofi-long-seed0", "head-seed0"}
    assert changed("head.kernel_2d=1") == lofi_and_after
    assert changed("head.pem_low_zero=false") == lofi_and_after


def test_each_section_reruns_only_what_reads_it() -> None:
    everything = set(keys())
    assert changed("pretrain.optim.lr=0.02") == everything  # ACP feeds every stage
    assert changed("lofi.optim.lr=0.05") == {"lofi-long-seed0", "features-lofi-long-seed0", "head-seed0"}
    assert changed("lofi.c_s=3") == set()  # the long cycle does not read the short cycle's period
    assert changed("lofi.c_s=3", mode="lofi-short") == {"lofi-short-seed0", "features-lofi-short-seed0", "head-seed0"}
    assert changed("lofi.r_t=2") == set() and changed("lofi.r_t=2", mode="lofi-custom")
    assert changed("runtime.threads=2") == set() and changed("tracking.enabled=false") == set()
    assert changed("data.cache_dir=/elsewhere") == set()


def test_modes_plan_the_stages_they_need() -> None:
    cfg = load_experiment(SMOKE)
    names = {m: [s.name for s in plan_run(cfg, mode=m, seed=1, run_dir=Path("/r")).stages] for m in MODES}
    assert names["icp"] == [
        "pretrain-icp-seed1",
        "features-icp-seed1",
        "pretrain-acp-seed1",
        "pretrain-acpplus-seed1",
        "classifier-seed1",
        "head-seed1",
    ]
    assert names["e2e-full"][:3] == ["pretrain-acp-seed1", "lofi-full-seed1", "features-lofi-full-seed1"]
    assert "lofi" not in " ".join(names["acp+"])
    for mode, (_, cycle) in MODE_PLAN.items():
        assert (f"lofi-{cycle}-seed1" in names[mode]) == (cycle is not None), mode


def test_custom_ratios_get_folders_of_their_own_under_one_root() -> None:
    a = load_experiment(SMOKE, ["lofi.r_t=2"])
    b = load_experiment(SMOKE, ["lofi.r_t=3"])
    pa = plan_run(a, mode="lofi-custom", seed=0, run_dir=Path("/t/0"), stages_root=Path("/s"))
    pb = plan_run(b, mode="lofi-custom", seed=0, run_dir=Path("/t/1"), stages_root=Path("/s"))
    assert pa.get("pretrain", "acp").folder == pb.get("pretrain", "acp").folder == Path("/s/pretrain/acp/seed0")
    assert pa.get("lofi").folder != pb.get("lofi").folder
    assert pa.get("lofi").folder.name == "seed0" and pa.get("lofi").folder.parent.name.startswith("custom-")


def test_the_sweep_plans_each_shared_stage_once() -> None:
    cfg = load_experiment(SMOKE)
    runs = sweep_runs(cfg, ("acp", "lofi-S", "lofi-long"))
    assert len(runs) == len(cfg.sweep.encoders) * len(cfg.sweep.heads) * 3 * len(cfg.sweep.seeds)
    stages = [s for _, s in unique_stages(runs)]
    folders = [s.folder for s in stages]
    assert len(folders) == len(set(folders))
    # the two heads share every stage but their own: per seed acp, acp+, classifier, 2 lofi, 3 features
    assert len(stages) == len(cfg.sweep.seeds) * (3 + 2 + 3)


def test_joined_jobs_hold_each_inference_stage_after_the_encoder_it_reads() -> None:
    """sweep.join_stages: features and classifier run in the job of the one stage they read; training stages keep
    jobs of their own; every stage is in exactly one job, after what it reads."""
    cfg = load_experiment(SMOKE)
    stages = unique_stages(sweep_runs(cfg, ("blind", "acp", "lofi-S", "lofi-S+bn", "lofi-long")))
    alone = job_stages(stages, join=False)
    assert [group for _, group in alone] == [(s,) for _, s in stages]
    joined = job_stages(stages, join=True)
    flat = [s for _, group in joined for s in group]
    assert sorted(map(str, (s.folder for s in flat))) == sorted(str(s.folder) for _, s in stages)
    # worked out by hand, per seed: ACP pretrain + blind and ACP features; ACP+ pretrain + the classifier; lofi-S
    # + its features with and without BatchNorm re-estimated; lofi-long + its features
    by_root = {(g[0].kind, g[0].variant): [(s.kind, s.variant) for s in g[1:]] for _, g in joined if g[0].seed == 0}
    assert by_root == {
        ("pretrain", "acp"): [("features", "blind"), ("features", "acp")],
        ("pretrain", "acp+"): [("classifier", "")],
        ("lofi", "S"): [("features", "lofi-S"), ("features", "lofi-S+bn")],
        ("lofi", "long"): [("features", "lofi-long")],
    }
    assert len(joined) == 4 * len(cfg.sweep.seeds)
    for _, group in joined:
        assert all(s.needs == (group[0],) for s in group[1:])
    # an inference stage whose encoder is not one of the jobs (finished elsewhere) keeps a job of its own
    without_encoders = [(r, s) for r, s in stages if s.kind != "lofi"]
    lone = [g for _, g in job_stages(without_encoders, join=True) if g[0].kind == "features"]
    assert len(lone) == 3 * len(cfg.sweep.seeds) and all(len(g) == 1 for g in lone)


def test_a_stage_joins_only_where_every_target_reading_its_encoder_reads_it() -> None:
    """Two targets: "main" reads blind, ACP and lofi-S; "pre" reads ACP and ACP+. By hand: the ACP encoder is read
    by both, its features by both (joined), the blind zeros by "main" only (a job of their own, or making "pre"
    would compute them); ACP+ by both (every run's classifier), its classifier by both (joined), its features by
    "pre" only (alone); lofi-S and its features by "main" only (joined)."""
    cfg = load_experiment(SMOKE)
    targets = {"main": sweep_runs(cfg, ("blind", "acp", "lofi-S")), "pre": sweep_runs(cfg, ("acp", "acp+"))}
    users = stage_users(targets)
    stages = unique_stages([r for runs in targets.values() for r in runs])
    joined = job_stages(stages, join=True, users=users)
    by_root = {(g[0].kind, g[0].variant): [(s.kind, s.variant) for s in g[1:]] for _, g in joined if g[0].seed == 0}
    assert by_root == {
        ("pretrain", "acp"): [("features", "acp")],
        ("features", "blind"): [],
        ("pretrain", "acp+"): [("classifier", "")],
        ("features", "acpplus"): [],  # a features stage's variant is its folder's name
        ("lofi", "S"): [("features", "lofi-S")],
    }
    assert users[stages[0][1].folder] == {"main", "pre"}  # the ACP encoder, upstream of everything


def test_stage_marker_refuses_another_key_and_notices_a_missing_output(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    out.mkdir()
    (out / "a.npy").write_bytes(b"x")
    assert stage_done(out, "k1") is None
    mark_done(out, {"stage": "test"}, key="k1", outputs=[out / "a.npy"])
    assert stage_done(out, "k1")["outputs"] == {"a.npy": {"bytes": 1, "mtime_ns": (out / "a.npy").stat().st_mtime_ns}}
    with pytest.raises(LofiError, match=r"finished by another configuration .*k1.*k2"):
        stage_done(out, "k2")
    (out / "a.npy").unlink()
    with pytest.raises(LofiError, match=r"a.npy: output of a finished stage is missing"):
        stage_done(out, "k1")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_lofi_run_into_an_existing_folder_never_reports_old_metrics(tmp_path: Path, tiny_overrides) -> None:
    from harness.pipeline.run import run_all

    cfg = load_experiment(SMOKE, list(tiny_overrides))
    out = tmp_path / "run"
    row = run_all(cfg, mode="acp", seed=0, out=out)
    assert run_all(cfg, mode="acp", seed=0, out=out) == row  # same config: reused as it is
    before = (out / "row.json").read_bytes()
    sets = [f"--set={o}" for o in tiny_overrides]
    cmd = ["run", "--config", str(SMOKE), *sets, "--mode", "acp", "--seed", "0", "--out", str(out)]
    res = _run_cli(*cmd, "--set", "head.optim.epochs=3", "--set", "lofi.optim.lr=0.5")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "finished by another configuration" in res.stderr and str(out / "head") in res.stderr
    assert (out / "row.json").read_bytes() == before  # nothing written over the old results
    # a deleted feature file is noticed instead of the video dropping out of the predictions
    feats = sorted((out / "features").rglob("*.npy"))
    feats[0].unlink()
    res = _run_cli(*cmd)
    assert res.returncode == 2 and "missing or changed" in res.stderr and feats[0].name in res.stderr
    assert json.loads((out / "row.json").read_text())["run_key"] == row["run_key"]
