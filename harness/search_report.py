"""The report of an Optuna search over (r_t, r_s) (``harness.search``): ranked trials, the best ratios re-run with
fresh seeds on the test split, contour and importance plots, provenance. Every number comes from the study or the
runs' rows."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import LofiError
from harness.experiment import ExperimentConfig
from harness.fidelity import fidelity_shape
from harness.io import atomic_path, write_text_atomic
from harness.search import (
    _PACKAGE_DIR,
    MEMORY_KEY,
    TEST_KEY,
    TOP_K,
    ChainFn,
    SearchResult,
    _completed,
    counted_trials,
    fresh_seed_runs,
)
from harness.tracking import git_commit, start_run

log = logging.getLogger(__name__)


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
    from tabulate import tabulate

    from harness.stats import mean_sd

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
    rows = []
    for t in ranked_trials(study):
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
    lines += [f"## Best trials (top {TOP_K} by validation average mAP)", ""]
    lines += [
        tabulate(
            rows,
            headers=["trial", "r_t", "r_s", "L", "size", "val avg mAP", "activation_rel", "state"],
            tablefmt="github",
            disable_numparse=True,
        )
        if rows
        else "No trial finished with a validation score.",
        "",
    ]
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
        b = best_trial(study)
        L, size = fidelity_shape(fid.snippets, fid.size, b.params["r_t"], b.params["r_s"])
        tests = [float(r[TEST_KEY]) for r in fresh_rows]
        m, sd = mean_sd(tests)
        lines += ["## Best ratios on the test split", ""]
        lines += [
            tabulate(
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
            ),
            "",
        ]
        lines += [
            "The search never saw the test split: trials are ranked on validation mAP only; the test column re-runs "
            "the best ratios with seeds the search did not use (mean ± sample sd).",
            "",
        ]
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
    plots = write_plots(result.study, report, result.multi_objective)
    write_text_atomic(report, render_report(result, cfg, fresh, plots, report))
    log.info("wrote %s", report)
    return report
