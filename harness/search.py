"""Optuna search over the LoFi ratios (r_t, r_s): a seeded, resumable, pruned study (its report: ``harness.search_report``).

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
    key["sweep"]["optuna"].update(trials=0, multi_objective=multi_objective)
    key["tracking"] = to_dict(TrackingConfig())
    return f"lofi-rt-rs-{config_hash(key, 'optuna-search')}"


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'optuna.db').resolve()}"


def open_storage(
    url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (so stale RUNNING trials can be failed on resume)."""
    if "://" not in url:
        raise ConfigError(f"--storage {url!r} is not a database URL; use e.g. sqlite:///path/optuna.db")
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but the only stale-trial check
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    except Exception as exc:
        raise ConfigError(
            f"--storage {url!r}: cannot open ({type(exc).__name__}: {exc}); "
            "use a SQLAlchemy URL such as sqlite:///path/optuna.db"
        ) from None


def is_counted(t: FrozenTrial) -> bool:
    """Whether a trial uses up the budget: it ended on its own (not killed or interrupted)."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs
    )


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


def _objective(
    cfg: ExperimentConfig, out: Path, objective_fn: ChainFn, multi: bool, parent_run_id: str, name: str
) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    o = cfg.sweep.optuna

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
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
    cfg = evolve(cfg, sweep=evolve(cfg.sweep, optuna=evolve(o, multi_objective=multi)))
    n_target = o.trials if trials is None else trials
    if n_target < 1:
        raise ConfigError(f"--trials {n_target}: a search needs at least one trial")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    name = study_name(cfg, multi)
    rdb = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Load (or create) first to read the history, then re-open with a sampler seeded for that history.
    probe = optuna.create_study(
        storage=rdb,
        study_name=name,
        load_if_exists=True,
        **({"directions": ["maximize", "minimize"]} if multi else {"direction": "maximize"}),
    )
    if probe.directions != (
        [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
        if multi
        else [optuna.study.StudyDirection.MAXIMIZE]
    ):
        raise ConfigError(f"study {name} in {url} has other objectives; use another --storage or --out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(probe)
    n_existing = len(probe.get_trials(deepcopy=False))
    use_pruner = o.pruning and not multi  # Optuna cannot prune multi-objective trials
    study = optuna.load_study(
        study_name=name,
        storage=rdb,
        sampler=make_sampler(o.sampler_seed, n_existing, startup_trials=sampler_startup_trials),
        pruner=(
            optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)
            if use_pruner
            else optuna.pruners.NopPruner()
        ),
    )
    log.info("study %s (%s): %d of %d trials finished", name, url, len(counted_trials(study)), n_target)
    ran = 0
    with start_run(
        cfg.tracking,
        run_name="optuna-search",
        tags={"optuna_study": name, "optuna_storage": url, "multi_objective": str(multi)},
    ) as parent:
        parent.log_params(
            {
                "study": name,
                "storage": url,
                "trials": n_target,
                "sampler_seed": o.sampler_seed,
                "r_t_range": list(o.r_t),
                "r_s_range": list(o.r_s),
                "multi_objective": multi,
                "pruning": use_pruner,
                "search_seed": o.search_seed,
                "commit": git_commit(_PACKAGE_DIR),
            }
        )
        objective = _objective(cfg, out, objective_fn or chain_run, multi, parent.run_id, name)
        # One trial per call, recounting each time: another worker on the same storage also fills the budget.
        while len(counted_trials(study)) < n_target:
            study.optimize(objective, n_trials=1, catch=(LofiError,))
            ran += 1
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
        ran=ran,
        counted=len(counted),
        parent_run_id=parent.run_id,
    )


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# ----------------------------------------------------------------------------------------------------------------
# Re-runs of the best ratios (for the report, harness.search_report)
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
