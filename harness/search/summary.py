"""The report of an Optuna search over (r_t, r_s) (``harness.search.study``): ranked trials, the best ratios re-run with
fresh seeds on the test split, contour and importance plots, provenance. Every number comes from the study or the
runs' rows.

Trials are single runs on one seed, ranked on validation mAP, whose seed-to-seed noise can be larger than any
difference between ratios. The report therefore states that noise (``seed_noise``: the sd of validation mAP of the
best ratios re-run on the fresh seeds), the minimum detectable difference between two trials beside the ranking,
and draws no contour or importance plot of a landscape flatter than the noise (or than 1e-6 absolute)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import LofiError
from harness.experiment import ExperimentConfig
from harness.fidelity import fidelity_shape
from harness.io import atomic_path, write_text_atomic
from harness.search.study import (
    _PACKAGE_DIR,
    MEMORY_KEY,
    TEST_KEY,
    TOP_K,
    VAL_KEY,
    ChainFn,
    SearchResult,
    _completed,
    counted_trials,
    fresh_seed_runs,
)
from harness.tracking import git_commit, start_run

log = logging.getLogger(__name__)
FLAT = 1e-6  # a spread of trial values below this (absolute mAP) is no landscape at all


# ----------------------------------------------------------------------------------------------------------------
# Reading the study
# ----------------------------------------------------------------------------------------------------------------


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
# Seed noise
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedNoise:
    """Validation mAP of one configuration (the best ratios) over several seeds: how much a trial moves by chance."""

    values: tuple[float, ...]
    seeds: tuple[int, ...]
    with_search_seed: bool  # the best trial's own value is among them (fewer than 2 fresh seeds)

    @property
    def sd(self) -> float:
        """Sample sd (ddof=1) over the seeds; NaN for fewer than two."""
        from harness.report.stats import mean_sd

        return mean_sd(self.values)[1]

    @property
    def mde(self) -> float:
        """Minimum detectable difference between two trials, each one run on one seed, 80% power at two-sided
        alpha = 0.05: (z_0.975 + z_0.80) x sqrt(2) x sd (the difference of two independent single runs has sd
        sqrt(2) x sd)."""
        from harness.report.stats import minimum_detectable_effect

        return minimum_detectable_effect(math.sqrt(2.0) * self.sd)


def seed_noise(study: optuna.Study, cfg: ExperimentConfig, fresh_rows: Sequence[Mapping[str, Any]]) -> SeedNoise:
    """The best ratios' validation mAP on the fresh seeds (their rows carry it too). With fewer than two fresh
    seeds, the best trial's own value (the search seed) is added: it was selected as the maximum, so the sd it
    gives leans high."""
    seeds = tuple(cfg.sweep.optuna.fresh_seeds)
    pairs = [(int(s), float(r[VAL_KEY])) for s, r in zip(seeds, fresh_rows) if r.get(VAL_KEY) is not None]
    with_search = len(pairs) < 2 and bool(_completed(study))
    if with_search:
        pairs.insert(0, (cfg.sweep.optuna.search_seed, float(best_trial(study).values[0])))
    return SeedNoise(values=tuple(v for _, v in pairs), seeds=tuple(s for s, _ in pairs), with_search_seed=with_search)


def trial_spread(study: optuna.Study) -> float:
    """max - min validation mAP over the complete trials (NaN for none)."""
    values = [float(t.values[0]) for t in _completed(study)]
    return max(values) - min(values) if values else float("nan")


def landscape_reason(study: optuna.Study, noise: SeedNoise | None) -> str | None:
    """Why no landscape (contour, importances) may be drawn from these trials, or None when one may."""
    spread = trial_spread(study)
    n = len(_completed(study))
    if math.isnan(spread):
        return None
    if spread < FLAT:
        return (
            f"not drawn: the {n} complete trials' validation mAP spans only {spread:.2g} (below {FLAT:g} absolute), "
            "so there is no landscape to draw, only rounding"
        )
    if noise is not None and not math.isnan(noise.sd) and spread < noise.sd:
        return (
            f"not drawn: the {n} complete trials' validation mAP spans {spread:.4f}, less than the seed-to-seed sd "
            f"{noise.sd:.4f} of a single configuration, so any contour or importance would be drawn from seed noise"
        )
    return None


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


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
            ax = vis.plot_contour(
                study, target=(lambda t: t.values[0]) if multi else None, target_name="validation average mAP"
            )
        else:
            # PED-ANOVA attributes importance to reaching LOW target values when given a target, so the
            # multi-objective case passes minus the validation mAP (the importances themselves are unsigned).
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            ax = vis.plot_param_importances(
                study, target=(lambda t: -t.values[0]) if multi else None, target_name="validation average mAP"
            )
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(
    study: optuna.Study, report: Path, multi: bool, noise: SeedNoise | None = None
) -> dict[str, Path | str]:
    """Contour and importance PNGs beside the report; a reason string instead of a path when not drawn: fewer
    than 2 complete trials, or trial values spread less than ``noise.sd`` or 1e-6 (``landscape_reason``)."""
    n = len(_completed(study))
    stem = report.with_suffix("")
    result: dict[str, Path | str] = {}
    flat = landscape_reason(study, noise)
    for kind in ("contour", "importance"):
        if n < 2:
            result[kind] = f"needs at least 2 complete trials (have {n})"
            continue
        if flat is not None:
            Path(f"{stem}_{kind}.png").unlink(missing_ok=True)  # never leave an older landscape beside the report
            result[kind] = flat
            continue
        try:
            result[kind] = _plot(kind, study, Path(f"{stem}_{kind}.png"), multi)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no variation to attribute importance to
            log.warning("%s plot not drawn: %s", kind, exc)
            result[kind] = f"not drawn ({type(exc).__name__}: {exc})"
    return result


def _small(x: float) -> str:
    """4 decimals, or 3 significant digits for values that 4 decimals would show as 0."""
    return f"{x:.3g}" if x != 0 and abs(x) < 5e-5 else f"{x:.4f}"


def _noise_text(study: optuna.Study, noise: SeedNoise, search_seed: int) -> str:
    """Seed noise, the MDE of a difference between two trials, and what it means for the ranking."""
    if not _completed(study):
        return "Seed noise: not measured (no trial completed)."
    if math.isnan(noise.sd):
        return (
            f"Seed noise: not measured ({len(noise.values)} value(s); re-run the best ratios on at least 2 fresh seeds "
            "with sweep.optuna.fresh_seeds), so no difference between trials can be called real: every trial is one "
            f"run on seed {search_seed}."
        )
    values = ", ".join(f"{_small(v)} (seed {s})" for s, v in zip(noise.seeds, noise.values))
    source = (
        "the best trial's own value on the search seed and the fresh seed(s); the search picked that value as the "
        "maximum, so this sd leans high"
        if noise.with_search_seed
        else "the fresh seeds"
    )
    best = float(best_trial(study).values[0])
    ranked = [val_map(t) for t in ranked_trials(study)]
    within = sum(1 for v in ranked if v is not None and best - v <= noise.mde)
    from harness.report.stats import mde_multiplier

    return (
        f"Seed noise: the best ratios' validation average mAP over {len(noise.values)} seeds ({source}): {values}; "
        f"sd = {_small(noise.sd)}. Every trial is ONE run on seed {search_seed}, so two trials differ by chance with "
        f"sd √2 × {_small(noise.sd)}; MDE (the smallest difference between two trials detected with 80% power at "
        f"two-sided α = 0.05) = (z_0.975 + z_0.80) × √2 × sd = {mde_multiplier() * math.sqrt(2):.2f} × sd = "
        f"{_small(noise.mde)}. {within} of the top {len(ranked)} trials lie within the MDE of the best (validation "
        f"mAP spread over all complete trials: {_small(trial_spread(study))})"
        + (": their order is not evidence that one ratio beats another." if within > 1 else ".")
    )


def _ranked_table(result: SearchResult, fid: Any) -> str:
    """The best trials by validation average mAP (``ranked_trials``) as a Markdown table."""
    from tabulate import tabulate

    rows = []
    for t in ranked_trials(result.study):
        L, size = fidelity_shape(fid.snippets, fid.size, t.params["r_t"], t.params["r_s"])
        mem = t.values[1] if result.multi_objective and t.values else t.user_attrs.get(MEMORY_KEY)
        rows.append(
            [
                t.number,
                _fmt(t.params["r_t"], 3),
                _fmt(t.params["r_s"], 3),
                L,
                size,
                _fmt(val_map(t)),
                _fmt(mem, 3),
                t.state.name,
            ]
        )
    if not rows:
        return "No trial finished with a validation score."
    return tabulate(
        rows,
        headers=["trial", "r_t", "r_s", "L", "size", "val avg mAP", "activation_rel", "state"],
        tablefmt="github",
        disable_numparse=True,
    )


def _best_on_test(study: optuna.Study, cfg: ExperimentConfig, fresh_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's section on the best ratios re-run with fresh seeds on the test split."""
    from tabulate import tabulate

    from harness.report.stats import mean_sd

    o, fid = cfg.sweep.optuna, cfg.fidelity
    b = best_trial(study)
    L, size = fidelity_shape(fid.snippets, fid.size, b.params["r_t"], b.params["r_s"])
    tests = [float(r[TEST_KEY]) for r in fresh_rows]
    m, sd = mean_sd(tests)
    table = tabulate(
        [
            [
                b.number,
                _fmt(b.params["r_t"], 3),
                _fmt(b.params["r_s"], 3),
                L,
                size,
                f"{_fmt(float(b.values[0]))} (seed {o.search_seed})",
                (f"{_fmt(m)} ± {_fmt(sd)}" if tests else "–")
                + f" (seeds {', '.join(map(str, o.fresh_seeds)) or 'none'}; n={len(tests)})",
            ]
        ],
        headers=[
            "trial",
            "r_t",
            "r_s",
            "L",
            "size",
            "val avg mAP (search)",
            f"test avg mAP ({cfg.data.test_subset}), fresh seeds",
        ],
        tablefmt="github",
        disable_numparse=True,
    )
    return [
        "## Best ratios on the test split",
        "",
        table,
        "",
        "The search never saw the test split: trials are ranked on validation mAP only; the test column re-runs "
        "the best ratios with seeds the search did not use (mean ± sample sd).",
        "",
    ]


def render_report(
    result: SearchResult,
    cfg: ExperimentConfig,
    fresh_rows: Sequence[Mapping[str, Any]],
    plots: Mapping[str, Path | str],
    report: Path,
    *,
    date: str | None = None,
    commit: str | None = None,
) -> str:
    """The Markdown report: every number comes from the study or the rows."""
    study, o, fid = result.study, cfg.sweep.optuna, cfg.fidelity
    lines = [f"# Optuna search over (r_t, r_s): {cfg.data.name} / {cfg.encoder.name} / {cfg.head.name}", ""]
    objectives = (
        "validation average mAP ↑, activation memory relative to full fidelity ↓"
        if result.multi_objective
        else "validation average mAP ↑"
    )
    states = {s.name: sum(t.state == s for t in study.get_trials(deepcopy=False)) for s in TrialState}
    lines += [
        f"Objective: {objectives} ({cfg.data.val_subset} split). Search ranges: r_t ∈ [{o.r_t[0]:g}, {o.r_t[1]:g}], "
        f"r_s ∈ [{o.r_s[0]:g}, {o.r_s[1]:g}]; full fidelity L={fid.snippets}, size={fid.size}. "
        f"Trials: {', '.join(f'{v} {k.lower()}' for k, v in states.items() if v)}.",
        "",
    ]
    noise = seed_noise(study, cfg, fresh_rows)
    lines += [f"## Best trials (top {TOP_K} by validation average mAP)", "", _ranked_table(result, fid), ""]
    lines += [_noise_text(study, noise, o.search_seed), ""]
    if result.multi_objective:
        front = sorted(study.best_trials, key=lambda t: t.values[1])
        lines += [
            "Pareto front (validation mAP ↑, activation_rel ↓): "
            + ", ".join(
                f"trial {t.number} (r_t {t.params['r_t']:.3f}, r_s {t.params['r_s']:.3f}: {t.values[0]:.4f}, {t.values[1]:.3f})"
                for t in front
            )
            + ".",
            "",
        ]
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if "error" in t.user_attrs]
    if failed:
        lines += ["Failed trials: " + "; ".join(f"trial {t.number}: {t.user_attrs['error']}" for t in failed), ""]
    if _completed(study):
        lines += _best_on_test(study, cfg, fresh_rows)
    lines += ["## Plots", ""]
    for kind, title in (
        ("contour", "Contour of validation mAP over (r_t, r_s)"),
        ("importance", "Parameter importances"),
    ):
        p = plots.get(kind)
        lines.append(f"![{title}]({Path(p).name})" if isinstance(p, Path) else f"- {title}: {p}.")
    lines += [
        "",
        f"Provenance: study `{result.study_name}`, storage `{result.storage}`, sampler TPE seed {o.sampler_seed}, "
        f"search seed {o.search_seed}, commit `{commit or git_commit(_PACKAGE_DIR)}`, date {date or time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    result: SearchResult,
    cfg: ExperimentConfig,
    out: Path,
    report: Path | None = None,
    *,
    objective_fn: ChainFn | None = None,
) -> Path:
    """Run the fresh-seed re-runs of the best ratios, draw the plots and write the Markdown report atomically."""
    report = Path(report or Path(out) / "optuna_rt_rs.md")
    fresh: list[Mapping[str, Any]] = []
    if _completed(result.study):
        b = best_trial(result.study)
        with start_run(
            cfg.tracking,
            run_name="optuna-best-fresh-seeds",
            parent_run_id=result.parent_run_id,
            tags={"optuna_study": result.study_name},
        ) as tracker:
            tracker.log_params(
                {
                    "r_t": b.params["r_t"],
                    "r_s": b.params["r_s"],
                    "trial": b.number,
                    "fresh_seeds": list(cfg.sweep.optuna.fresh_seeds),
                }
            )
            fresh = fresh_seed_runs(
                cfg,
                Path(out),
                b.params["r_t"],
                b.params["r_s"],
                cfg.sweep.optuna.fresh_seeds,
                objective_fn=objective_fn,
                parent_run_id=tracker.run_id,
            )
            tracker.log_metrics(
                {f"test_average_mAP_seed{s}": float(r[TEST_KEY]) for s, r in zip(cfg.sweep.optuna.fresh_seeds, fresh)}
            )
    plots = write_plots(result.study, report, result.multi_objective, seed_noise(result.study, cfg, fresh))
    write_text_atomic(report, render_report(result, cfg, fresh, plots, report))
    log.info("wrote %s", report)
    return report
