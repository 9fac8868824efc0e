"""Optuna search over (r_t, r_s) (harness.search.study) and its report (harness.search.summary): seeding, resume, stale
trials, pruning, failures, multi-objective, report.

The real chain takes minutes per trial, so all but the last test inject a cheap deterministic objective; the
``slow`` test runs one real trial of the smoke config to prove the wiring with ``run_all``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from harness.config import evolve
from harness.errors import ConfigError, LofiError
from harness.experiment import ExperimentConfig, OptunaConfig, TrackingConfig
from harness.fidelity import fidelity_shape
from harness.pipeline.plan import plan_run
from harness.search import study as S
from harness.search import summary as SR

REPO = Path(__file__).resolve().parents[1]


def _cfg(**optuna_kw: Any) -> ExperimentConfig:
    base = ExperimentConfig(tracking=TrackingConfig(enabled=False))
    return evolve(base, sweep={"optuna": {"trials": 4, "fresh_seeds": (100, 101), **optuna_kw}})


def surface(r_t: float, r_s: float) -> float:
    """A smooth validation-mAP landscape with its peak at (3, 2)."""
    return 0.5 - 0.01 * (r_t - 3.0) ** 2 - 0.05 * (r_s - 2.0) ** 2


def fake_chain(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
    """Deterministic stand-in for run_all: reports 3 head epochs, returns a row (test mAP shifted by the seed)."""
    val = surface(cfg.lofi.r_t, cfg.lofi.r_s)
    if on_epoch is not None:
        for epoch in range(3):
            on_epoch(epoch, val * (epoch + 1) / 3)
    return {
        "val_average_mAP": val,
        "average_mAP": val - 0.1 + spec.seed / 1e4,
        "activation_rel": 1.0 / (cfg.lofi.r_t * cfg.lofi.r_s**2),
    }


def _params(study: optuna.Study) -> list[tuple[int, float, float]]:
    return [(t.number, t.params["r_t"], t.params["r_s"]) for t in study.get_trials(deepcopy=False)]


def test_same_seed_gives_same_trials_and_the_seed_matters(tmp_path: Path) -> None:
    a = S.run_study(_cfg(), tmp_path / "a", 3, objective_fn=fake_chain)
    b = S.run_study(_cfg(), tmp_path / "b", 3, objective_fn=fake_chain)
    c = S.run_study(_cfg(sampler_seed=1), tmp_path / "c", 3, objective_fn=fake_chain)
    assert _params(a.study) == _params(b.study)
    assert [p[1:] for p in _params(a.study)] != [p[1:] for p in _params(c.study)]
    lo_t, hi_t = OptunaConfig().r_t
    lo_s, hi_s = OptunaConfig().r_s
    assert all(lo_t <= rt <= hi_t and lo_s <= rs <= hi_s for _, rt, rs in _params(a.study))
    assert a.storage == str((tmp_path / "a" / "optuna.journal").resolve())


def test_resume_runs_only_the_remainder_and_keeps_the_first_trials(tmp_path: Path) -> None:
    first = S.run_study(_cfg(), tmp_path, 3, objective_fn=fake_chain)
    before = [(t.number, t.params, t.value, t.state) for t in first.study.get_trials()]
    second = S.run_study(_cfg(), tmp_path, 5, objective_fn=fake_chain)
    trials = second.study.get_trials()
    assert (first.ran, second.ran, second.counted) == (3, 2, 5)
    assert len(trials) == 5 and all(S.is_counted(t) for t in trials)
    assert [(t.number, t.params, t.value, t.state) for t in trials[:3]] == before
    # a resumed sampler must not replay the start-up points of the first run
    assert {(t.params["r_t"], t.params["r_s"]) for t in trials[3:]}.isdisjoint(
        {(p["r_t"], p["r_s"]) for _, p, _, _ in before}
    )
    assert S.run_study(_cfg(), tmp_path, 5, objective_fn=fake_chain).ran == 0  # already complete: nothing to do


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trial_killed_mid_run_is_failed_on_resume_and_not_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"  # an RDB storage: Optuna's own heartbeat
    S.run_study(_cfg(), tmp_path, 2, objective_fn=fake_chain, storage=url)
    name = S.study_name(_cfg(), False)
    storage = S.open_storage(url, heartbeat_interval=1, grace_period=1)
    killed = optuna.load_study(study_name=name, storage=storage).ask()  # what a killed process leaves behind:
    storage.record_heartbeat(killed._trial_id)  # a RUNNING trial whose heartbeat stops
    time.sleep(2.5)
    result = S.run_study(
        _cfg(), tmp_path, 4, objective_fn=fake_chain, storage=url, heartbeat_interval=1, grace_period=1
    )
    states = {t.number: t.state for t in result.study.get_trials()}
    assert states[killed.number] == TrialState.FAIL
    assert result.counted == 4 and result.ran == 2 and len(states) == 5


def test_lofi_error_fails_the_trial_with_its_message_and_the_study_goes_on(tmp_path: Path) -> None:
    def flaky(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        if spec.out.name == "1":
            raise LofiError("videos/x.mp4: cannot decode; re-run lofi data synth")
        return fake_chain(cfg, spec, on_epoch)

    result = S.run_study(_cfg(), tmp_path, 3, objective_fn=flaky)
    t1 = result.study.trials[1]
    assert (
        t1.state == TrialState.FAIL and t1.user_attrs["error"] == "videos/x.mp4: cannot decode; re-run lofi data synth"
    )
    assert [t.state for t in result.study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert result.counted == 3  # a genuine failure uses up its place in the budget
    report = SR.write_report(result, _cfg(), tmp_path, objective_fn=fake_chain).read_text()
    assert "trial 1: videos/x.mp4: cannot decode" in report


def test_a_non_finite_score_is_a_counted_failure_not_an_endless_loop(tmp_path: Path) -> None:
    def nan_chain(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        return {"val_average_mAP": float("nan"), "activation_rel": 0.5}

    result = S.run_study(_cfg(), tmp_path, 2, objective_fn=nan_chain)
    assert [t.state for t in result.study.trials] == [TrialState.FAIL] * 2 and result.counted == 2
    assert "val_average_mAP=nan" in result.study.trials[0].user_attrs["error"]


def test_trials_share_one_pretraining_and_get_their_own_folders(tmp_path: Path) -> None:
    seen: list[S.RunSpec] = []

    def record(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        seen.append(spec)
        return fake_chain(cfg, spec, on_epoch)

    configs: list[ExperimentConfig] = []

    def record_cfg(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        configs.append(cfg)
        return record(cfg, spec, on_epoch)

    S.run_study(_cfg(search_seed=7), tmp_path, 2, objective_fn=record_cfg)
    assert [s.out for s in seen] == [tmp_path / "trials" / "0", tmp_path / "trials" / "1"]
    assert {s.stages_root for s in seen} == {tmp_path / "stages"} and {s.seed for s in seen} == {7}
    # the plan puts both trials' ACP pre-training in one folder and each (r_t, r_s) in a LoFi folder of its own
    plans = [
        plan_run(c, mode=S.SEARCH_MODE, seed=7, run_dir=s.out, stages_root=s.stages_root) for c, s in zip(configs, seen)
    ]
    assert {p.get("pretrain", "acp").folder for p in plans} == {tmp_path / "stages" / "pretrain" / "acp" / "seed7"}
    lofi = [p.get("lofi").folder for p in plans]
    assert lofi[0] != lofi[1] and all(f.parent.parent == tmp_path / "stages" / "lofi" for f in lofi)


def test_pruning_stops_trials_that_report_bad_intermediate_values(tmp_path: Path) -> None:
    def bad_after_startup(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        n = int(spec.out.name)
        assert on_epoch is not None
        for epoch in range(4):
            on_epoch(epoch, 0.5 if n < 3 else 0.01)  # from trial 3 on: far below the median
        return {"val_average_mAP": 0.5 if n < 3 else 0.01, "activation_rel": 0.5}

    result = S.run_study(
        _cfg(), tmp_path, 5, objective_fn=bad_after_startup, pruner=S.PrunerOptions(startup_trials=3, warmup_steps=1)
    )
    trials = result.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED] * 2
    assert all(max(t.intermediate_values) == 1 for t in trials[3:])  # pruned right after the warm-up epoch


def test_pruning_off_in_config_lets_bad_trials_finish(tmp_path: Path) -> None:
    def bad(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        assert on_epoch is not None
        for epoch in range(3):
            on_epoch(epoch, 0.5 if int(spec.out.name) < 2 else 0.0)
        return {"val_average_mAP": 0.1, "activation_rel": 0.5}

    result = S.run_study(
        _cfg(pruning=False), tmp_path, 4, objective_fn=bad, pruner=S.PrunerOptions(startup_trials=1, warmup_steps=0)
    )
    assert all(t.state == TrialState.COMPLETE for t in result.study.trials)


def test_multi_objective_returns_a_pareto_front_without_pruning(tmp_path: Path) -> None:
    callbacks: list[object] = []

    def chain(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        callbacks.append(on_epoch)
        return fake_chain(cfg, spec, on_epoch)

    result = S.run_study(_cfg(), tmp_path, 5, objective_fn=chain, multi_objective=True)
    assert result.multi_objective and callbacks == [None] * 5
    study = result.study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    front = study.best_trials
    assert front
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for t in done:  # every front member is dominated by no trial; everything else is dominated by a front member
        dominated = any(
            o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done
        )
        assert dominated == (t.number not in {f.number for f in front})
    for t in done:
        assert t.values[1] == pytest.approx(1.0 / (t.params["r_t"] * t.params["r_s"] ** 2))
    assert S.study_name(_cfg(), True) != S.study_name(_cfg(), False)
    report = SR.write_report(result, _cfg(), tmp_path, objective_fn=fake_chain).read_text()
    assert "Pareto front" in report and all(f"trial {f.number} " in report for f in front)


def test_report_shows_best_trial_fresh_seed_test_result_and_plots(tmp_path: Path) -> None:
    cfg = _cfg()
    result = S.run_study(cfg, tmp_path / "search", 4, objective_fn=fake_chain)
    report_path = SR.write_report(
        result, cfg, tmp_path / "search", tmp_path / "optuna_rt_rs.md", objective_fn=fake_chain
    )
    text = report_path.read_text()
    best = max((t for t in result.study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    L, size = fidelity_shape(cfg.fidelity.snippets, cfg.fidelity.size, best.params["r_t"], best.params["r_s"])
    best_line = next(
        line
        for line in text.splitlines()
        if line.startswith(f"|       {best.number} |") or line.replace(" ", "").startswith(f"|{best.number}|")
    )
    cells = [c.strip() for c in best_line.strip("|").split("|")]
    assert cells[:6] == [
        str(best.number),
        f"{best.params['r_t']:.3f}",
        f"{best.params['r_s']:.3f}",
        str(L),
        str(size),
        f"{best.value:.4f}",
    ]
    # test split of the best ratios re-run with fresh seeds 100 and 101: mean ± sample sd of the fake rows
    tests = [best.value - 0.1 + s / 1e4 for s in (100, 101)]
    mean, sd = sum(tests) / 2, abs(tests[1] - tests[0]) / math.sqrt(2)
    assert f"{mean:.4f} ± {sd:.4f}" in text and "(seeds 100, 101; n=2)" in text
    for kind in ("contour", "importance"):
        png = tmp_path / f"optuna_rt_rs_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.name})" in text
    assert (
        f"study `{result.study_name}`" in text
        and f"storage `{result.storage}`" in text
        and "sampler TPE seed 0" in text
    )
    # fresh-seed runs have their own folders under the search folder and use the seed's shared pre-training
    assert not (tmp_path / "search" / "trials" / "4").exists()


def test_report_with_one_complete_trial_explains_missing_plots(tmp_path: Path) -> None:
    result = S.run_study(_cfg(fresh_seeds=()), tmp_path, 1, objective_fn=fake_chain)
    text = SR.write_report(result, _cfg(fresh_seeds=()), tmp_path, objective_fn=fake_chain).read_text()
    assert "needs at least 2 complete trials (have 1)" in text
    assert not list(tmp_path.glob("*.png"))
    assert "(seeds none; n=0)" in text


def test_identical_trials_draw_no_landscape_and_say_why(tmp_path: Path) -> None:
    def flat(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        row = dict(fake_chain(cfg, spec, on_epoch))
        row["val_average_mAP"] = 0.3 + 1e-14 * cfg.lofi.r_t  # three "different" trials: rounding apart
        return row

    cfg = _cfg(pruning=False)
    result = S.run_study(cfg, tmp_path / "search", 3, objective_fn=flat)
    (tmp_path / "optuna_rt_rs_contour.png").write_bytes(b"stale")  # an older landscape must not survive
    text = SR.write_report(result, cfg, tmp_path / "search", tmp_path / "optuna_rt_rs.md", objective_fn=flat)
    text = text.read_text()
    assert not list(tmp_path.glob("*.png"))
    assert "Contour of validation mAP over (r_t, r_s): not drawn" in text
    assert "below 1e-06 absolute" in text and "no landscape to draw" in text
    assert "Seed noise:" in text and "MDE" in text


def test_trials_closer_than_the_seed_noise_draw_no_landscape(tmp_path: Path) -> None:
    def noisy(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        row = dict(fake_chain(cfg, spec, on_epoch))
        row["val_average_mAP"] = 0.3 + 1e-3 * cfg.lofi.r_t + (0.2 if spec.seed == 101 else 0.0)
        return row

    cfg = _cfg(pruning=False)  # fresh seeds 100 and 101: validation mAP 0.2 apart, sd 0.2 / sqrt(2)
    result = S.run_study(cfg, tmp_path / "search", 3, objective_fn=noisy)
    text = SR.write_report(result, cfg, tmp_path / "search", tmp_path / "r.md", objective_fn=noisy).read_text()
    sd = 0.2 / math.sqrt(2)
    assert f"sd = {sd:.4f}" in text
    assert f"= 3.96 × sd = {3.96204 * sd:.4f}" in text  # (z_0.975 + z_0.80) x sqrt(2) = 2.80159 x 1.41421
    assert "less than the seed-to-seed sd" in text and not list(tmp_path.glob("*.png"))
    assert "their order is not evidence" in text


def test_objective_never_sees_the_test_split(tmp_path: Path) -> None:
    def test_is_great(cfg: ExperimentConfig, spec: S.RunSpec, on_epoch: S.OnEpoch | None) -> Mapping[str, Any]:
        row = dict(fake_chain(cfg, spec, None))
        row["average_mAP"] = 100.0 + cfg.lofi.r_t  # would dominate if the search ever used the test split
        return row

    result = S.run_study(_cfg(pruning=False), tmp_path, 3, objective_fn=test_is_great)
    assert all(t.value == pytest.approx(surface(t.params["r_t"], t.params["r_s"])) for t in result.study.trials)


@pytest.mark.parametrize(
    "kw, message",
    [  # the config rejects them when built, before any trial could start
        ({"r_t": (1.0, 32.0)}, "fidelity.snippets = 16"),
        ({"r_s": (0.5, 2.0)}, "r_s[0] = 0.5"),
        ({"r_t": (4.0, 2.0)}, "r_t = [4.0, 2.0]"),
    ],
)
def test_impossible_ranges_are_one_line_errors(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        S.run_study(_cfg(**kw), tmp_path, 2, objective_fn=fake_chain)
    assert "\n" not in str(info.value)


def test_cli_runs_a_study_and_prints_the_best_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from harness.cli import main

    monkeypatch.setattr(S, "chain_run", fake_chain)  # the CLI's default objective, looked up at call time
    rc = main(
        [
            "search",
            "--config",
            str(REPO / "config" / "smoke.yaml"),
            "--set",
            "tracking.enabled=false",
            "--out",
            str(tmp_path / "s"),
            "--trials",
            "2",
            "--report",
            str(tmp_path / "r.md"),
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["finished_trials"] == 2 and out["report"] == str(tmp_path / "r.md")
    assert out["val_average_mAP"] == pytest.approx(surface(out["r_t"], out["r_s"]))
    assert (
        main(
            [
                "search",
                "--config",
                str(REPO / "config" / "smoke.yaml"),
                "--out",
                str(tmp_path / "s"),
                "--storage",
                "not-a-url",
                "--trials",
                "1",
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_one_real_trial_of_the_smoke_chain(tmp_path: Path) -> None:
    from harness.experiment import load_experiment

    cfg = load_experiment(
        REPO / "config" / "smoke.yaml",
        [
            f"data.root={tmp_path / 'data'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "lofi.optim.epochs=1",
            "head.optim.epochs=1",
            "tracking.enabled=false",
            "sweep.optuna.fresh_seeds=[]",
        ],
    )
    result = S.run_study(cfg, tmp_path / "search", 1)
    (trial,) = result.study.trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    row = __import__("json").loads((tmp_path / "search" / "trials" / "0" / "row.json").read_text())
    assert (row["mode"], row["r_t"], row["r_s"]) == ("lofi-custom", trial.params["r_t"], trial.params["r_s"])
    assert trial.value == row["val_average_mAP"] and trial.user_attrs["activation_rel"] == row["activation_rel"]
    assert set(row["stage_keys"]) >= {"pretrain-acp-seed0", "lofi-custom-seed0"}
    assert (tmp_path / "search" / "stages" / "pretrain" / "acp" / "seed0" / "done.json").is_file()
    assert sorted(p.name for p in (tmp_path / "search" / "trials" / "0").iterdir()) == [
        "config.yaml",
        "head",
        "metrics.json",
        "row.json",
    ]  # the trial's own folder holds its head only
    text = SR.write_report(result, cfg, tmp_path / "search").read_text()
    assert f"{trial.value:.4f}" in text
