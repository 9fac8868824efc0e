"""Optuna search over the LoFi ratios (r_t, r_s): a seeded, resumable, pruned study (its report: ``harness.search.summary``).

Each trial runs the full chain in ``lofi-custom`` mode with ``lofi.r_t``/``lofi.r_s`` set, sharing one ACP
pre-training folder across trials, and is scored on the VALIDATION split only (``val_average_mAP``); the test
split is read once, for the re-runs of the best ratios with fresh seeds in the report.

Storage, workers and resume (Optuna 5; ``harness.search.storage``):
- The study lives in its own storage, separate from MLflow's store: a journal file by default (``OUT/optuna.journal``,
  Optuna's recommendation for many processes on a shared filesystem), or an RDB URL. Any number of processes
  (``lofi search`` calls, Snakemake jobs) may work on one study.
- The budget counts finished trials: COMPLETE + PRUNED + FAIL trials that failed with a user error (the
  ``LofiError`` message is kept in the trial's user attribute ``error``). Interrupted trials (killed, stale,
  Ctrl-C) are not counted, so an interrupted study still ends with the requested number of evaluated trials.
- Exactly ``trials`` trials finish, however many workers: a new trial runs only if fewer than ``trials`` trials
  numbered before it are finished (counted) or still RUNNING on a live worker; otherwise it is a surplus trial,
  recorded FAIL with the user attribute ``surplus`` and no parameters, and not counted. Trial numbers are handed
  out atomically by the storage, so two workers racing for the last slot cannot both take it. A worker that finds
  the remaining slots held by RUNNING trials of other workers waits for them (and takes over a slot whose worker
  died: ``storage.fail_dead_trials``).
- Each trial's randomness is seeded with ``derive_seed(sampler_seed, "trial", number)`` (``TrialSeededSampler``):
  one worker replays the same study for the same seed, a resumed study does not replay its start-up points, and
  parallel workers (distinct trial numbers) never draw the same start-up point. TPE's constant liar keeps parallel
  workers from proposing the point a RUNNING trial is already evaluating.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import evolve, to_dict
from harness.errors import ConfigError, LofiError
from harness.experiment import ExperimentConfig, OptunaConfig, TrackingConfig, config_hash
from harness.fidelity import fidelity_shape
from harness.search.storage import default_storage, fail_dead_trials, heartbeat, open_storage
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
POLL_S = 1.0  # how often a worker waiting for other workers' last trials looks again
SURPLUS_ATTR = "surplus"
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
    return run_all(
        cfg,
        mode=SEARCH_MODE,
        seed=spec.seed,
        out=spec.out,
        stages_root=spec.stages_root,
        parent_run_id=spec.parent_run_id,
        on_epoch=on_epoch,
    )


def with_ratios(cfg: ExperimentConfig, r_t: float, r_s: float) -> ExperimentConfig:
    return evolve(cfg, lofi=evolve(cfg.lofi, r_t=float(r_t), r_s=float(r_s)))


def stages_root(out: Path) -> Path:
    """The search's shared stage folders: ACP pre-training and the classifier once per seed, one LoFi stage per
    distinct (r_t, r_s) (the plan names custom LoFi folders by their key)."""
    return out / "stages"


def study_name(cfg: ExperimentConfig, multi_objective: bool) -> str:
    """Stable per search definition: the trial budget and tracking settings do not change the study."""
    key = to_dict(cfg)  # a hash key, not a config: trials=0 is outside the valid range on purpose
    key["sweep"]["optuna"].update(trials=0, multi_objective=multi_objective, workers=1)
    # how the search's jobs are launched and sized is not what it computes: every worker must find the same study
    for k in ("launcher", "mem_mb_per_job", "runtime_per_job"):
        key["sweep"].pop(k, None)
    key["tracking"] = to_dict(TrackingConfig())
    return f"lofi-rt-rs-{config_hash(key, 'optuna-search')}"


def is_counted(t: FrozenTrial) -> bool:
    """Whether a trial uses up the budget: it ended on its own (not killed or interrupted)."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs
    )


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if is_counted(t)]


class SurplusTrial(Exception):
    """A trial created after the budget was already held by finished or running trials (see the module docstring)."""


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random stream for trial ``n`` is seeded with ``derive_seed(seed, "trial", n)``: a pure function
    of the study's seed and the trial's number, whichever worker runs it (TPE's model is rebuilt from the study's
    trials at every trial, so a fresh TPE per trial loses nothing)."""

    def __init__(self, seed: int, *, startup_trials: int = 5) -> None:
        self._seed = seed
        self._startup_trials = startup_trials
        self._inner = self._tpe(0)

    def _tpe(self, number: int) -> optuna.samplers.TPESampler:
        with warnings.catch_warnings():  # constant_liar is "experimental" in some Optuna releases
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=derive_seed(self._seed, "trial", number),
                n_startup_trials=self._startup_trials,
                constant_liar=True,
            )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._tpe(trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)


def make_sampler(seed: int, *, startup_trials: int = 5) -> TrialSeededSampler:
    """Seeded TPE (multi-objective TPE too: it handles small budgets better than NSGA-II's population of 50)."""
    return TrialSeededSampler(seed, startup_trials=startup_trials)


def holds_slot(t: FrozenTrial) -> bool:
    """Whether a trial uses up, or may still use up, a slot of the budget: finished and counted, or running."""
    return is_counted(t) or t.state == TrialState.RUNNING


def admitted(trials: Sequence[FrozenTrial], number: int, n_target: int) -> bool:
    """Whether trial ``number`` may run: fewer than ``n_target`` trials before it hold a slot."""
    return sum(1 for t in trials if t.number < number and holds_slot(t)) < n_target


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


def _objective(
    cfg: ExperimentConfig,
    out: Path,
    objective_fn: ChainFn,
    multi: bool,
    parent_run_id: str,
    name: str,
    *,
    n_target: int,
    heartbeat_interval: float,
    admitted_numbers: list[int],
) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    """The study's objective; trials that may run (``admitted``) are appended to ``admitted_numbers``."""
    o = cfg.sweep.optuna

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        if not admitted(trial.study.get_trials(deepcopy=False), trial.number, n_target):
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise SurplusTrial(f"trial {trial.number}: the {n_target} trials are already finished or running")
        admitted_numbers.append(trial.number)
        with heartbeat(trial, heartbeat_interval):
            return run_trial(trial)

    def run_trial(trial: optuna.Trial) -> float | tuple[float, float]:
        r_t = trial.suggest_float("r_t", o.r_t[0], o.r_t[1])
        r_s = trial.suggest_float("r_s", o.r_s[0], o.r_s[1])
        n = trial.number
        run_out = out / "trials" / str(n)
        with start_run(
            cfg.tracking,
            run_name=f"trial-{n}",
            parent_run_id=parent_run_id,
            tags={"optuna_study": name, "optuna_trial": str(n)},
        ) as tracker:
            L, size = fidelity_shape(cfg.fidelity.snippets, cfg.fidelity.size, r_t, r_s)
            trial.set_user_attr("L", L)
            trial.set_user_attr("size", size)
            trial.set_user_attr("out", str(run_out))
            tracker.log_params({"r_t": r_t, "r_s": r_s, "trial": n, "L": L, "size": size})
            spec = RunSpec(seed=o.search_seed, out=run_out, stages_root=stages_root(out), parent_run_id=tracker.run_id)
            pruned: optuna.TrialPruned | None = None
            try:
                row = objective_fn(
                    with_ratios(cfg, r_t, r_s), spec, None if multi else _pruning_callback(trial, tracker)
                )
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
                    msg = (
                        f"trial {n} ({run_out}): {VAL_KEY}={val}, {MEMORY_KEY}={mem} are not finite; see the run's log"
                    )
                    trial.set_user_attr("error", msg)
                    raise LofiError(msg)
                trial.set_user_attr(MEMORY_KEY, mem)
                tracker.log_metrics({VAL_KEY: val, MEMORY_KEY: mem})
                tracker.set_tags({"optuna_state": "COMPLETE"})
        if pruned is not None:
            raise pruned
        return (val, mem) if multi else val

    return objective


def _open_study(
    storage: Any,
    url: str,
    name: str,
    o: OptunaConfig,
    multi: bool,
    pruner: PrunerOptions,
    sampler_startup_trials: int,
) -> optuna.Study:
    """The study ``name``: created by the first worker, loaded by the others (``create_study`` resolves the race
    through the storage); one with other objectives is an error."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        sampler=make_sampler(o.sampler_seed, startup_trials=sampler_startup_trials),
        pruner=(
            optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)
            if o.pruning and not multi  # Optuna cannot prune multi-objective trials
            else optuna.pruners.NopPruner()
        ),
        **({"directions": ["maximize", "minimize"]} if multi else {"direction": "maximize"}),
    )
    if study.directions != (
        [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
        if multi
        else [optuna.study.StudyDirection.MAXIMIZE]
    ):
        raise ConfigError(f"study {name} in {url} has other objectives; use another --storage or --out")
    return study


def _fill_budget(
    study: optuna.Study, objective: Callable[..., Any], n_target: int, *, grace_period: int, poll_interval: float
) -> None:
    """Run trials until ``n_target`` have finished: one trial per call, recounting each time, since other workers on
    the same storage fill the budget too."""
    while True:
        fail_dead_trials(study, grace_period)
        trials = study.get_trials(deepcopy=False)
        finished = sum(1 for t in trials if is_counted(t))
        if finished >= n_target:
            return
        if sum(1 for t in trials if holds_slot(t)) >= n_target:
            time.sleep(poll_interval)  # the last slots are running on other workers
            continue
        study.optimize(objective, n_trials=1, catch=(LofiError, SurplusTrial))


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
    poll_interval: float = POLL_S,
) -> SearchResult:
    """Create or resume the study for ``cfg`` and run trials until ``trials`` of them have finished.

    ``trials`` defaults to ``sweep.optuna.trials``; ``multi_objective`` to ``sweep.optuna.multi_objective``.
    ``objective_fn`` runs one configuration and returns its row (None: ``chain_run``, the real chain).
    """
    o: OptunaConfig = cfg.sweep.optuna
    multi = o.multi_objective if multi_objective is None else multi_objective
    cfg = evolve(cfg, sweep=evolve(cfg.sweep, optuna=evolve(o, multi_objective=multi)))
    n_target = o.trials if trials is None else trials
    if n_target < 1:
        raise ConfigError(f"--trials {n_target}: a search needs at least one trial")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    name = study_name(cfg, multi)
    storage_obj = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = _open_study(storage_obj, url, name, o, multi, pruner, sampler_startup_trials)
    use_pruner = o.pruning and not multi
    log.info("study %s (%s): %d of %d trials finished", name, url, len(counted_trials(study)), n_target)
    admitted_numbers: list[int] = []
    with start_run(
        cfg.tracking,
        run_name="optuna-search",
        tags={"optuna_study": name, "optuna_storage": url, "multi_objective": str(multi)},
    ) as parent:
        parent.log_params(
            {"study": name, "storage": url, "trials": n_target, "sampler_seed": o.sampler_seed}
            | {"r_t_range": list(o.r_t), "r_s_range": list(o.r_s), "multi_objective": multi, "pruning": use_pruner}
            | {"search_seed": o.search_seed, "commit": git_commit(_PACKAGE_DIR)}
        )
        objective = _objective(
            cfg,
            out,
            objective_fn or chain_run,
            multi,
            parent.run_id,
            name,
            n_target=n_target,
            heartbeat_interval=heartbeat_interval,
            admitted_numbers=admitted_numbers,
        )
        _fill_budget(study, objective, n_target, grace_period=grace_period, poll_interval=poll_interval)
        counted, done = counted_trials(study), _completed(study)
        parent.log_metrics(
            {
                "trials_finished": len(counted),
                **({"best_val_average_mAP": max(float(t.values[0]) for t in done)} if done else {}),
            }
        )
    return SearchResult(
        study=study,
        study_name=name,
        storage=url,
        multi_objective=multi,
        ran=len(admitted_numbers),
        counted=len(counted),
        parent_run_id=parent.run_id,
    )


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# ----------------------------------------------------------------------------------------------------------------
# Re-runs of the best ratios (for the report, harness.search.summary)
# ----------------------------------------------------------------------------------------------------------------


def fresh_seed_runs(
    cfg: ExperimentConfig,
    out: Path,
    r_t: float,
    r_s: float,
    seeds: Sequence[int],
    *,
    objective_fn: ChainFn | None = None,
    parent_run_id: str = "",
) -> list[Mapping[str, Any]]:
    """Re-run the chain at (r_t, r_s) with each fresh seed (finished stages are reused on a second call)."""
    rows = []
    key = f"rt{r_t:.6g}-rs{r_s:.6g}"
    for seed in seeds:
        run_out = out / "best" / key / f"seed{seed}"
        spec = RunSpec(seed=seed, out=run_out, stages_root=stages_root(out), parent_run_id=parent_run_id)
        rows.append((objective_fn or chain_run)(with_ratios(cfg, r_t, r_s), spec, None))
    return rows
