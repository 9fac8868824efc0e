"""Optuna search over the LoFi ratios (r_t, r_s): a seeded, resumable, pruned study and its report.

Each trial runs the full chain in ``lofi-custom`` mode with ``lofi.r_t``/``lofi.r_s`` set, sharing one ACP
pre-training folder across trials, and is scored on the VALIDATION split only (``val_average_mAP``); the test
split is read once, for the re-runs of the best ratios with fresh seeds in the report.

Storage and resume (Optuna 5):
- The study lives in its own SQLite database (default ``OUT/optuna.db``), separate from MLflow's store. SQLite
  (``RDBStorage``) rather than the journal file because only ``RDBStorage`` implements Optuna's heartbeat, the
  mechanism that turns trials left ``RUNNING`` by a killed process into ``FAIL``; every write is a transaction,
  so a kill never leaves a half-written study.
- The heartbeat is recorded every ``heartbeat_interval`` s while a trial runs; a ``RUNNING`` trial whose heartbeat
  is older than ``grace_period`` s is stale and is failed by ``optuna.storages.fail_stale_trials``, which we call
  on resume and Optuna calls again before every trial. A trial killed less than ``grace_period`` s before the
  resume stays ``RUNNING`` until a later trial's check fails it. Either way it is not counted.
- The budget counts finished trials: COMPLETE + PRUNED + FAIL trials that failed with a user error (the
  ``LofiError`` message is kept in the trial's user attribute ``error``). Interrupted trials (killed, stale,
  Ctrl-C) are not counted, so an interrupted study still ends with the requested number of evaluated trials.
- A resumed study re-creates its sampler; seeding it again with ``sampler_seed`` would replay the first random
  start-up points, so a resumed sampler is seeded with ``derive_seed(sampler_seed, "resume", n_trials_so_far)``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import ConfigError, LofiError
from harness.experiment import ExperimentConfig, OptunaConfig, TrackingConfig, config_hash
from harness.fidelity import fidelity_shape
from harness.io import atomic_path, write_text_atomic
from harness.seeding import derive_seed
from harness.tracking import git_commit, start_run

log = logging.getLogger(__name__)
_PACKAGE_DIR = Path(__file__).resolve().parent  # provenance names the code's commit, not the caller's cwd

SEARCH_MODE = "lofi-custom"
VAL_KEY = "val_average_mAP"  # the validation split: the only score the search ever sees
MEMORY_KEY = "activation_rel"
TEST_KEY = "average_mAP"  # the test split: read only for the fresh-seed re-runs in the report
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
TOP_K = 5

OnEpoch = Callable[[int, float], None]


@dataclass(frozen=True)
class RunSpec:
    """Where and how one chain run happens (a trial, or a fresh-seed re-run of the best ratios)."""

    seed: int
    out: Path  # the run's own folder (row.json, head/)
    stages_root: Path  # shared stage folders (harness/pipeline/plan.py): every trial reuses the same ACP stages
    parent_run_id: str = ""


# (config with lofi.r_t/r_s set, where to run, per-head-epoch callback or None) -> the run's row (row.json keys)
ChainFn = Callable[[ExperimentConfig, RunSpec, "OnEpoch | None"], Mapping[str, Any]]


@dataclass(frozen=True)
class PrunerOptions:
    """MedianPruner settings: no pruning before ``startup_trials`` finished trials nor before ``warmup_steps``
    head epochs of a trial."""

    startup_trials: int = 3
    warmup_steps: int = 1


@dataclass(frozen=True)
class SearchResult:
    study: optuna.Study
    study_name: str
    storage: str
    multi_objective: bool
    ran: int  # trials started by this call
    counted: int  # finished trials in the study now (the budget's count)
    parent_run_id: str = ""  # the MLflow "optuna-search" run ("" with tracking off)


# ----------------------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------------------


def chain_run(cfg: ExperimentConfig, spec: RunSpec, on_epoch: OnEpoch | None) -> Mapping[str, Any]:
    """The real objective: the whole ``lofi-custom`` chain (shared stages are reused from ``spec.stages_root``)."""
    from harness.pipeline.data import prepare_dataset
    from harness.pipeline.run import run_all

    # Generates the synthetic benchmark when configured (a no-op once complete): ACP pre-training reads its clip
    # index before any stage would otherwise create it.
    prepare_dataset(cfg.data)
    return run_all(cfg, mode=SEARCH_MODE, seed=spec.seed, out=spec.out, stages_root=spec.stages_root,
                   parent_run_id=spec.parent_run_id, on_epoch=on_epoch)


def with_ratios(cfg: ExperimentConfig, r_t: float, r_s: float) -> ExperimentConfig:
    return replace(cfg, lofi=replace(cfg.lofi, r_t=float(r_t), r_s=float(r_s)))


def stages_root(out: Path) -> Path:
    """The search's shared stage folders: ACP pre-training and the classifier once per seed, one LoFi stage per
    distinct (r_t, r_s) (the plan names custom LoFi folders by their key)."""
    return out / "stages"


def check_ranges(cfg: ExperimentConfig) -> None:
    """Reject search ranges that would give impossible fidelities before any trial starts."""
    o = cfg.sweep.optuna
    for name, (lo, hi) in (("r_t", o.r_t), ("r_s", o.r_s)):
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 1 or hi < lo:
            raise ConfigError(f"sweep.optuna.{name}=[{lo}, {hi}] is not a range of ratios; use 1 <= low <= high")
    if o.r_t[1] > cfg.fidelity.snippets:
        raise ConfigError(f"sweep.optuna.r_t upper bound {o.r_t[1]} leaves fewer than one of "
                          f"fidelity.snippets={cfg.fidelity.snippets} snippets; use at most {cfg.fidelity.snippets}")


def study_name(cfg: ExperimentConfig, multi_objective: bool) -> str:
    """Stable per search definition: the trial budget and tracking settings do not change the study."""
    o = replace(cfg.sweep.optuna, trials=0, multi_objective=multi_objective)
    key = replace(cfg, sweep=replace(cfg.sweep, optuna=o), tracking=TrackingConfig())
    return f"lofi-rt-rs-{config_hash(key, 'optuna-search')}"


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'optuna.db').resolve()}"


def open_storage(url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
                 grace_period: int = GRACE_PERIOD_S) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (so stale RUNNING trials can be failed on resume)."""
    if "://" not in url:
        raise ConfigError(f"--storage {url!r} is not a database URL; use e.g. sqlite:///path/optuna.db")
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but the only stale-trial check
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL
        raise ConfigError(f"--storage {url!r}: cannot open ({type(exc).__name__}: {exc}); "
                          "use a SQLAlchemy URL such as sqlite:///path/optuna.db") from None


def is_counted(t: FrozenTrial) -> bool:
    """Whether a trial uses up the budget: it ended on its own (not killed or interrupted)."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if is_counted(t)]


def make_sampler(seed: int, n_existing: int, *, startup_trials: int = 5) -> optuna.samplers.TPESampler:
    """Seeded TPE (multi-objective TPE too: it handles small budgets better than NSGA-II's population of 50)."""
    s = seed if n_existing == 0 else derive_seed(seed, "resume", n_existing)
    return optuna.samplers.TPESampler(seed=s, n_startup_trials=startup_trials)


# ----------------------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------------------


def _pruning_callback(trial: optuna.Trial, tracker: Any) -> OnEpoch:
    def on_epoch(epoch: int, val_map: float) -> None:
        trial.report(float(val_map), step=epoch)
        tracker.log_metrics({"val_average_mAP_epoch": float(val_map)}, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"head epoch {epoch}: validation average mAP {val_map:.4f} below the median")

    return on_epoch


def _objective(cfg: ExperimentConfig, out: Path, objective_fn: ChainFn, multi: bool, parent_run_id: str,
               name: str) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    o = cfg.sweep.optuna

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        r_t = trial.suggest_float("r_t", o.r_t[0], o.r_t[1])
        r_s = trial.suggest_float("r_s", o.r_s[0], o.r_s[1])
        n = trial.number
        run_out = out / "trials" / str(n)
        with start_run(cfg.tracking, run_name=f"trial-{n}", parent_run_id=parent_run_id,
                       tags={"optuna_study": name, "optuna_trial": str(n)}) as tracker:
            L, size = fidelity_shape(cfg.fidelity.snippets, cfg.fidelity.size, r_t, r_s)
            trial.set_user_attr("L", L)
            trial.set_user_attr("size", size)
            trial.set_user_attr("out", str(run_out))
            tracker.log_params({"r_t": r_t, "r_s": r_s, "trial": n, "L": L, "size": size})
            spec = RunSpec(seed=o.search_seed, out=run_out, stages_root=stages_root(out),
                           parent_run_id=tracker.run_id)
            pruned: optuna.TrialPruned | None = None
            try:
                row = objective_fn(with_ratios(cfg, r_t, r_s), spec, None if multi else _pruning_callback(trial, tracker))
            except optuna.TrialPruned as exc:
                pruned = exc
            except LofiError as exc:
                trial.set_user_attr("error", str(exc))
                tracker.set_tags({"optuna_state": "FAIL", "error": str(exc)[:5000]})
                raise  # the MLflow run ends FAILED; study.optimize(catch=LofiError) records the trial as FAIL
            if pruned is not None:
                tracker.set_tags({"optuna_state": "PRUNED"})
            else:
                val, mem = float(row[VAL_KEY]), float(row[MEMORY_KEY])
                if not (math.isfinite(val) and math.isfinite(mem)):
                    # Optuna would fail such a trial silently; as a LofiError it is counted and its reason kept.
                    msg = f"trial {n} ({run_out}): {VAL_KEY}={val}, {MEMORY_KEY}={mem} are not finite; see the run's log"
                    trial.set_user_attr("error", msg)
                    raise LofiError(msg)
                trial.set_user_attr(MEMORY_KEY, mem)
                tracker.log_metrics({VAL_KEY: val, MEMORY_KEY: mem})
                tracker.set_tags({"optuna_state": "COMPLETE"})
        if pruned is not None:
            raise pruned
        return (val, mem) if multi else val

    return objective


def run_study(
    cfg: ExperimentConfig,
    out: Path,
    trials: int | None = None,
    *,
    objective_fn: ChainFn | None = None,
    multi_objective: bool | None = None,
    storage: str | None = None,
    pruner: PrunerOptions = PrunerOptions(),
    sampler_startup_trials: int = 5,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
) -> SearchResult:
    """Create or resume the study for ``cfg`` and run trials until ``trials`` of them have finished.

    ``trials`` defaults to ``sweep.optuna.trials``; ``multi_objective`` to ``sweep.optuna.multi_objective``.
    ``objective_fn`` runs one configuration and returns its row (None: ``chain_run``, the real chain).
    """
    o: OptunaConfig = cfg.sweep.optuna
    multi = o.multi_objective if multi_objective is None else multi_objective
    cfg = replace(cfg, sweep=replace(cfg.sweep, optuna=replace(o, multi_objective=multi)))
    n_target = o.trials if trials is None else trials
    if n_target < 1:
        raise ConfigError(f"--trials {n_target}: a search needs at least one trial")
    check_ranges(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    name = study_name(cfg, multi)
    rdb = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Load (or create) first to read the history, then re-open with a sampler seeded for that history.
    probe = optuna.create_study(storage=rdb, study_name=name, load_if_exists=True,
                                **({"directions": ["maximize", "minimize"]} if multi else {"direction": "maximize"}))
    if probe.directions != ([optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE] if multi
                            else [optuna.study.StudyDirection.MAXIMIZE]):
        raise ConfigError(f"study {name} in {url} has other objectives; use another --storage or --out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(probe)
    n_existing = len(probe.get_trials(deepcopy=False))
    use_pruner = o.pruning and not multi  # Optuna cannot prune multi-objective trials
    study = optuna.load_study(
        study_name=name, storage=rdb,
        sampler=make_sampler(o.sampler_seed, n_existing, startup_trials=sampler_startup_trials),
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)
                if use_pruner else optuna.pruners.NopPruner()),
    )
    done = len(counted_trials(study))
    log.info("study %s (%s): %d of %d trials finished", name, url, done, n_target)
    ran = 0
    with start_run(cfg.tracking, run_name="optuna-search",
                   tags={"optuna_study": name, "optuna_storage": url, "multi_objective": str(multi)}) as parent:
        parent.log_params({"study": name, "storage": url, "trials": n_target, "sampler_seed": o.sampler_seed,
                           "r_t_range": list(o.r_t), "r_s_range": list(o.r_s), "multi_objective": multi,
                           "pruning": use_pruner, "search_seed": o.search_seed, "commit": git_commit(_PACKAGE_DIR)})
        objective = _objective(cfg, out, objective_fn or chain_run, multi, parent.run_id, name)
        # One trial per call, recounting each time: another worker on the same storage also fills the budget.
        while len(counted_trials(study)) < n_target:
            study.optimize(objective, n_trials=1, catch=(LofiError,))
            ran += 1
        counted = counted_trials(study)
        parent.log_metrics({"trials_finished": len(counted),
                            **({"best_val_average_mAP": float(best_trial(study).values[0])} if _completed(study) else {})})
    return SearchResult(study=study, study_name=name, storage=url, multi_objective=multi, ran=ran, counted=len(counted),
                        parent_run_id=parent.run_id)


# ----------------------------------------------------------------------------------------------------------------
# Reading the study
# ----------------------------------------------------------------------------------------------------------------


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def val_map(t: FrozenTrial) -> float | None:
    """A trial's validation mAP: its value (first objective), or for a pruned trial the last reported epoch."""
    if t.state == TrialState.COMPLETE and t.values:
        return float(t.values[0])
    if t.state == TrialState.PRUNED and t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return None


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The COMPLETE trial with the highest validation mAP (on the Pareto front too when multi-objective)."""
    done = _completed(study)
    if not done:
        raise LofiError(f"study {study.study_name}: no trial completed; see the trials' errors and re-run")
    return max(done, key=lambda t: (float(t.values[0]), -t.number))


def ranked_trials(study: optuna.Study, k: int = TOP_K) -> list[FrozenTrial]:
    """Top ``k`` finished trials by validation mAP (pruned ones by their last reported value)."""
    scored = [t for t in counted_trials(study) if val_map(t) is not None]
    return sorted(scored, key=lambda t: (-(val_map(t) or 0.0), t.number))[:k]


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


def fresh_seed_runs(cfg: ExperimentConfig, out: Path, r_t: float, r_s: float, seeds: Sequence[int], *,
                    objective_fn: ChainFn | None = None, parent_run_id: str = "") -> list[Mapping[str, Any]]:
    """Re-run the chain at (r_t, r_s) with each fresh seed (finished stages are reused on a second call)."""
    rows = []
    key = f"rt{r_t:.6g}-rs{r_s:.6g}"
    for seed in seeds:
        run_out = out / "best" / key / f"seed{seed}"
        spec = RunSpec(seed=seed, out=run_out, stages_root=stages_root(out), parent_run_id=parent_run_id)
        rows.append((objective_fn or chain_run)(with_ratios(cfg, r_t, r_s), spec, None))
    return rows


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _plot(kind: str, study: optuna.Study, path: Path, multi: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: searches run on servers
    import matplotlib.pyplot as plt

    vis = optuna.visualization.matplotlib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "contour":
            ax = vis.plot_contour(study, target=(lambda t: t.values[0]) if multi else None,
                                  target_name="validation average mAP")
        else:
            # PED-ANOVA attributes importance to reaching LOW target values when given a target, so the
            # multi-objective case passes minus the validation mAP (the importances themselves are unsigned).
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            ax = vis.plot_param_importances(study, target=(lambda t: -t.values[0]) if multi else None,
                                            target_name="validation average mAP")
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(study: optuna.Study, report: Path, multi: bool) -> dict[str, Path | str]:
    """Contour and importance PNGs beside the report; a reason string instead of a path when not drawn."""
    n = len(_completed(study))
    stem = report.with_suffix("")
    result: dict[str, Path | str] = {}
    for kind in ("contour", "importance"):
        if n < 2:
            result[kind] = f"needs at least 2 complete trials (have {n})"
            continue
        try:
            result[kind] = _plot(kind, study, Path(f"{stem}_{kind}.png"), multi)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no variation to attribute importance to
            log.warning("%s plot not drawn: %s", kind, exc)
            result[kind] = f"not drawn ({type(exc).__name__}: {exc})"
    return result


def render_report(result: SearchResult, cfg: ExperimentConfig, fresh_rows: Sequence[Mapping[str, Any]],
                  plots: Mapping[str, Path | str], report: Path, *, date: str | None = None,
                  commit: str | None = None) -> str:
    """The Markdown report: every number comes from the study or the rows."""
    from tabulate import tabulate

    from harness.stats import mean_sd

    study, o, fid = result.study, cfg.sweep.optuna, cfg.fidelity
    lines = [f"# Optuna search over (r_t, r_s): {cfg.data.name} / {cfg.encoder.name} / {cfg.head.name}", ""]
    objectives = "validation average mAP ↑, activation memory relative to full fidelity ↓" if result.multi_objective \
        else "validation average mAP ↑"
    states = {s.name: sum(t.state == s for t in study.get_trials(deepcopy=False)) for s in TrialState}
    lines += [f"Objective: {objectives} ({cfg.data.val_subset} split). Search ranges: r_t ∈ [{o.r_t[0]:g}, {o.r_t[1]:g}], "
              f"r_s ∈ [{o.r_s[0]:g}, {o.r_s[1]:g}]; full fidelity L={fid.snippets}, size={fid.size}. "
              f"Trials: {', '.join(f'{v} {k.lower()}' for k, v in states.items() if v)}.", ""]
    rows = []
    for t in ranked_trials(study):
        L, size = fidelity_shape(fid.snippets, fid.size, t.params["r_t"], t.params["r_s"])
        mem = t.values[1] if result.multi_objective and t.values else t.user_attrs.get(MEMORY_KEY)
        rows.append([t.number, _fmt(t.params["r_t"], 3), _fmt(t.params["r_s"], 3), L, size, _fmt(val_map(t)),
                     _fmt(mem, 3), t.state.name])
    lines += [f"## Best trials (top {TOP_K} by validation average mAP)", ""]
    lines += [tabulate(rows, headers=["trial", "r_t", "r_s", "L", "size", "val avg mAP", "activation_rel", "state"],
                       tablefmt="github", disable_numparse=True) if rows else "No trial finished with a validation score.", ""]
    if result.multi_objective:
        front = sorted(study.best_trials, key=lambda t: t.values[1])
        lines += ["Pareto front (validation mAP ↑, activation_rel ↓): " + ", ".join(
            f"trial {t.number} (r_t {t.params['r_t']:.3f}, r_s {t.params['r_s']:.3f}: {t.values[0]:.4f}, {t.values[1]:.3f})"
            for t in front) + ".", ""]
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if "error" in t.user_attrs]
    if failed:
        lines += ["Failed trials: " + "; ".join(f"trial {t.number}: {t.user_attrs['error']}" for t in failed), ""]
    if _completed(study):
        b = best_trial(study)
        L, size = fidelity_shape(fid.snippets, fid.size, b.params["r_t"], b.params["r_s"])
        tests = [float(r[TEST_KEY]) for r in fresh_rows]
        m, sd = mean_sd(tests)
        lines += ["## Best ratios on the test split", ""]
        lines += [tabulate([[b.number, _fmt(b.params["r_t"], 3), _fmt(b.params["r_s"], 3), L, size,
                             f"{_fmt(float(b.values[0]))} (seed {o.search_seed})",
                             (f"{_fmt(m)} ± {_fmt(sd)}" if tests else "–") + f" (seeds {', '.join(map(str, o.fresh_seeds)) or 'none'}; n={len(tests)})"]],
                           headers=["trial", "r_t", "r_s", "L", "size", "val avg mAP (search)", f"test avg mAP ({cfg.data.test_subset}), fresh seeds"],
                           tablefmt="github", disable_numparse=True), ""]
        lines += ["The search never saw the test split: trials are ranked on validation mAP only; the test column re-runs "
                  "the best ratios with seeds the search did not use (mean ± sample sd).", ""]
    lines += ["## Plots", ""]
    for kind, title in (("contour", "Contour of validation mAP over (r_t, r_s)"), ("importance", "Parameter importances")):
        p = plots.get(kind)
        lines.append(f"![{title}]({Path(p).name})" if isinstance(p, Path) else f"- {title}: {p}.")
    lines += ["", f"Provenance: study `{result.study_name}`, storage `{result.storage}`, sampler TPE seed {o.sampler_seed}, "
              f"search seed {o.search_seed}, commit `{commit or git_commit(_PACKAGE_DIR)}`, date {date or time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    return "\n".join(lines)


def write_report(result: SearchResult, cfg: ExperimentConfig, out: Path, report: Path | None = None, *,
                 objective_fn: ChainFn | None = None) -> Path:
    """Run the fresh-seed re-runs of the best ratios, draw the plots and write the Markdown report atomically."""
    report = Path(report or Path(out) / "optuna_rt_rs.md")
    fresh: list[Mapping[str, Any]] = []
    if _completed(result.study):
        b = best_trial(result.study)
        with start_run(cfg.tracking, run_name="optuna-best-fresh-seeds", parent_run_id=result.parent_run_id,
                       tags={"optuna_study": result.study_name}) as tracker:
            tracker.log_params({"r_t": b.params["r_t"], "r_s": b.params["r_s"], "trial": b.number,
                                "fresh_seeds": list(cfg.sweep.optuna.fresh_seeds)})
            fresh = fresh_seed_runs(cfg, Path(out), b.params["r_t"], b.params["r_s"], cfg.sweep.optuna.fresh_seeds,
                                    objective_fn=objective_fn, parent_run_id=tracker.run_id)
            tracker.log_metrics({f"test_average_mAP_seed{s}": float(r[TEST_KEY])
                                 for s, r in zip(cfg.sweep.optuna.fresh_seeds, fresh)})
    plots = write_plots(result.study, report, result.multi_objective)
    write_text_atomic(report, render_report(result, cfg, fresh, plots, report))
    log.info("wrote %s", report)
    return report
