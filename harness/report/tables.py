"""Paper-style tables built from the tidy per-run rows (``row.json``), with seeds and significance.

Every number in a table comes from the rows (and from ``harness.report.stats`` comparisons computed on the runs' saved
predictions); provenance (commits, config hashes, MLflow run ids, dates) is taken from the rows as well. A table is
written three ways, each atomically: Markdown (tabulate ``github``), CSV (the numbers, machine-readable) and LaTeX
(tabulate ``latex_booktabs``). Which modes a table shows, in which order, is the caller's ``modes`` argument (the
config's ``sweep.*_modes``); without it, every mode the rows hold. Published numbers (``harness.report.paper_results``)
are put beside measured ones only for the datasets the paper used; for synthetic data they never share a column
with measurements.

Every table with tests states its minimum detectable effect (MDE) under it, and says in words when no difference
is significant. The controls table (``controls_table``) shows what the benchmark can and cannot see: the blind
floor, the positive control (e2e-full), the negative control (ACP on other seeds) and the class oracle.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from harness.errors import LofiError
from harness.fidelity import PAPER_RATIOS, fidelity_shape
from harness.io import atomic_path, write_text_atomic
from harness.pipeline.files import ROW
from harness.report.paper_results import PAPER, PAPER_SETTINGS, canonical_dataset, published
from harness.report.stats import ALPHA, POWER, Comparison, RatioResult, mde_multiplier
from harness.schedule import CYCLE_ORDER

log = logging.getLogger(__name__)

THRESHOLD_COLUMNS: tuple[str, ...] = tuple(f"mAP_{t:.2f}" for t in np.linspace(0.5, 0.95, 10))
SHOWN_METRICS: tuple[tuple[str, str], ...] = (
    ("mAP_0.50", "mAP@0.5"),
    ("mAP_0.75", "mAP@0.75"),
    ("mAP_0.95", "mAP@0.95"),
    ("average_mAP", "Avg"),
)
# The display name of every mode, in the canonical order tables and plots use when not told another (the modes
# are harness.modes.MODES; tests/test_tables.py checks both name the same set). WHICH modes a table shows is
# the caller's choice (the config's sweep.*_modes in `lofi report tables`), never a list here.
MODE_LABELS: dict[str, str] = {
    "blind": "Blind (zeroed features)",
    "icp": "ICP",
    "acp": "ACP",
    "acp+": "ACP+",
    "lofi-S": "S-LoFi",
    "lofi-S+bn": "S-LoFi + BN recal.",
    "lofi-T": "T-LoFi",
    "lofi-ST": "ST-LoFi",
    "lofi-short": "Short C-LoFi",
    "lofi-long": "Long C-LoFi",
    "lofi-custom": "Custom LoFi",
    "e2e-full": "End-to-end (full fidelity)",
}
PAPER_LOFI_LABEL: dict[str, str] = {"lofi-long": "LoFi"}  # the paper's Tables 1 and 6 call Long C-LoFi "LoFi"
BASELINE = "acp"
REFERENCE = "e2e-full"  # the upper reference of the share of the end-to-end gain
NEGATIVE = "acp@control-seeds"  # the controls table's key of ACP on the sweep's control seeds
DAGGER = "†"
SHARE_COLUMN = "Share of e2e gain [95% CI]"
NO_GAIN = "n/a (no end-to-end gain)"
REQUIRED_COLUMNS = ("dataset", "encoder", "head", "mode", "seed", "average_mAP")


class TableError(LofiError):
    """Rows cannot make the requested table (missing file, missing column, mixed datasets)."""


@dataclass(frozen=True)
class Table:
    """A built table: display strings for Markdown/LaTeX, numbers for CSV, notes and provenance lines."""

    name: str  # "ablation", "pretrain", "models", "memory", "controls"
    title: str
    display: pd.DataFrame
    numeric: pd.DataFrame
    notes: tuple[str, ...]
    provenance: tuple[str, ...]


# ----------------------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------------------


def load_rows(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per run from ``row.json`` files (or run folders holding one), plus ``row_path`` and ``row_time``.

    ``predictions`` / ``ground_truth`` / ``proposals`` / ``class_scores`` paths that are relative are made absolute
    against the run folder.
    """
    records = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / ROW
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TableError(
                f"{path}: no row.json; pass run folders that finished (lofi run writes row.json last)"
            ) from None
        except json.JSONDecodeError as exc:
            raise TableError(f"{path}: not valid JSON ({exc}); re-run the run or remove the folder") from None
        if not isinstance(row, dict):
            raise TableError(f"{path}: expected a JSON object (the tidy results row)")
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise TableError(f"{path}: row lacks {', '.join(missing)}; it was not written by `lofi run`")
        for key in ("predictions", "ground_truth", "proposals", "class_scores"):
            value = row.get(key)
            if value and not Path(value).is_absolute():
                row[key] = str((path.parent / value).resolve())
        row["row_path"] = str(path.resolve())
        row["row_time"] = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.UTC).isoformat(timespec="seconds")
        records.append(row)
    if not records:
        raise TableError("no row.json found; check --runs / --runs-glob")
    frame = pd.DataFrame.from_records(records)
    dupes = frame.duplicated(["dataset", "encoder", "head", "mode", "seed"], keep=False)
    if dupes.any():
        first = frame[dupes].iloc[0]
        raise TableError(
            f"{first['row_path']}: {first['mode']} seed {first['seed']} appears more than once; pass each run once"
        )
    return frame


def _check_scale(rows: pd.DataFrame) -> None:
    """Rows hold mAP as fractions (the evaluator's unit); tables show %. A percent in a row would be shown x100."""
    cols = [c for c in ("average_mAP", *THRESHOLD_COLUMNS) if c in rows]
    values = rows[cols].to_numpy(dtype=np.float64)
    if np.nanmax(np.abs(values), initial=0.0) > 1.0:
        bad = rows.loc[(rows[cols].abs() > 1.0).any(axis=1)].iloc[0]
        raise TableError(f"{bad['row_path']}: mAP values above 1; rows must hold fractions as the evaluator returns")


def _single(rows: pd.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in rows[column].dropna()})
    if len(values) != 1:
        raise TableError(f"rows mix {column} values {values}; build one table per {column}")
    return values[0]


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _pm(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return _num(mean) if math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _metric_stats(runs: pd.DataFrame, column: str) -> tuple[float, float]:
    """Mean and sample sd (ddof=1; NaN for one seed) over seeds, in %."""
    values = runs[column].dropna() * 100.0 if column in runs else pd.Series(dtype="float64")
    return float(values.mean()), float(values.std())


def _relative_memory(runs: pd.DataFrame) -> float:
    """Activation memory of the end-to-end stage relative to full fidelity: the rows' ``activation_rel``, else
    ``activation_bytes / activation_bytes_full`` (NaN for frozen-encoder modes, whose rows hold 0)."""
    rel = pd.Series(np.nan, index=runs.index)
    if "activation_rel" in runs:
        rel = pd.to_numeric(runs["activation_rel"], errors="coerce")
    if "activation_bytes" in runs and "activation_bytes_full" in runs:
        used = pd.to_numeric(runs["activation_bytes"], errors="coerce")
        full = pd.to_numeric(runs["activation_bytes_full"], errors="coerce")
        rel = rel.fillna(used / full.where(full > 0))
    rel = rel.where(rel > 0)
    return float(rel.mean()) if rel.notna().any() else float("nan")


def _shape_cells(runs: pd.DataFrame) -> tuple[str, str]:
    """(L, H×W) the mode's encoder was trained at: one fidelity as the paper writes it, a cycle as the range of its
    fidelities (``8–32``, ``32²–64²``), a frozen-encoder mode as full fidelity (what its features are taken at)."""
    L = runs["L"].dropna().unique() if "L" in runs else []
    size = runs["size"].dropna().unique() if "size" in runs else []
    if len(L) == 1 and len(size) == 1:
        return str(int(L[0])), f"{int(size[0])}²"
    full_L = runs["full_L"].dropna() if "full_L" in runs else pd.Series(dtype=float)
    full_size = runs["full_size"].dropna() if "full_size" in runs else pd.Series(dtype=float)
    if full_L.empty or full_size.empty:
        return "–", "–"
    fids = str(runs["fidelities"].iloc[0]) if "fidelities" in runs and runs["fidelities"].notna().any() else ""
    cycle = str(runs["cycle"].iloc[0]) if "cycle" in runs and runs["cycle"].notna().any() else ""
    names = [n for n in fids.split(",") if n in PAPER_RATIOS] or (
        list(CYCLE_ORDER) if cycle in ("long", "short") else []
    )
    if not names:  # a frozen encoder: the head reads full-fidelity features
        return str(int(full_L.iloc[0])), f"{int(full_size.iloc[0])}²"
    shapes = [fidelity_shape(int(full_L.iloc[0]), int(full_size.iloc[0]), *PAPER_RATIOS[n]) for n in names]
    ls, sizes = sorted({a for a, _ in shapes}), sorted({b for _, b in shapes})
    return (
        f"{ls[0]}–{ls[-1]}" if len(ls) > 1 else str(ls[0]),
        f"{sizes[0]}²–{sizes[-1]}²" if len(sizes) > 1 else f"{sizes[0]}²",
    )


def _comparison_cells(c: Comparison | None) -> dict[str, object]:
    if c is None:
        return {"Δ Avg [95% CI]": "–", "p (Holm)": "–", "": ""}
    return {
        "Δ Avg [95% CI]": f"{100 * c.diff:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]",
        "p (Holm)": _p(c.p_adjusted),
        "": DAGGER if c.p_adjusted < ALPHA else "",
    }


def _comparison_numbers(c: Comparison | None) -> dict[str, float]:
    nan = float("nan")
    if c is None:
        return {
            "delta_avg": nan,
            "delta_ci_low": nan,
            "delta_ci_high": nan,
            "p_value": nan,
            "p_holm": nan,
            "delta_se": nan,
            "mde": nan,
        }
    return {
        "delta_avg": 100 * c.diff,
        "delta_ci_low": 100 * c.ci_low,
        "delta_ci_high": 100 * c.ci_high,
        "p_value": c.p_value,
        "p_holm": c.p_adjusted,
        "delta_se": 100 * c.se,
        "mde": 100 * c.mde,
    }


def _range(values: Sequence[float]) -> str:
    """'a' or 'a–b' (2 decimals) over the finite values; '–' if none."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "–"
    lo, hi = min(finite), max(finite)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"


def mde_note(comparisons: Sequence[Comparison], label: Callable[[str], str] = lambda m: mode_label(m)) -> str:
    """The minimum detectable effect of a table's comparisons (range over them, in points) and, in words, which
    differences are significant; '' without comparisons."""
    if not comparisons:
        return ""
    z = mde_multiplier()
    mdes = _range([100 * c.mde for c in comparisons])
    text = (
        f"MDE (minimum detectable effect: the smallest true Δ the test detects with {POWER:.0%} power at two-sided "
        f"α = {ALPHA}) = (z_0.975 + z_0.80) × SE = {z:.2f} × SE, SE being the bootstrap standard error of Δ (sd "
        f"of its {comparisons[0].n_boot} resamples): {mdes} points, baseline vs each configuration."
    )
    significant = [c for c in comparisons if c.p_adjusted < ALPHA]
    if not significant:
        return text + (
            f" No Δ is significant (p (Holm) ≥ {ALPHA} for all {len(comparisons)} comparison(s)): this table does not "
            f"tell these configurations apart; true differences smaller than about {mdes} points would go unnoticed "
            "more often than 1 time in 5."
        )
    names = ", ".join(f"{label(c.config)} ({100 * c.diff:+.2f})" for c in significant)
    return text + f" Significant (p (Holm) < {ALPHA}): {names}; every other Δ is not distinguishable from 0."


def _stats_note(
    comparisons: Sequence[Comparison], rows: pd.DataFrame, label: Callable[[str], str] | None = None
) -> str:
    seeds = sorted({int(s) for s in rows["seed"]})
    per_config = rows.groupby(["encoder", "head", "mode"])["seed"].nunique()
    seed_txt = (
        f"{per_config.min()}–{per_config.max()}" if per_config.min() != per_config.max() else f"{per_config.min()}"
    )
    text = f"mAP in %, mean ± sd over seeds (ddof=1); {seed_txt} seed(s) per configuration (seeds {', '.join(map(str, seeds))})."
    if not comparisons:
        modes = set(rows["mode"])
        if BASELINE not in modes:
            why = f"the rows hold no {mode_label(BASELINE)} run, the baseline every Δ is measured against"
        elif modes == {BASELINE}:
            why = "the rows hold only the baseline"
        else:
            why = "--no-stats, or no predictions files given"
        return text + f" No significance tests: {why}."
    c = comparisons[0]
    return (
        f"{text} Δ: configuration minus the baseline's seed-mean average mAP, 95% paired bootstrap percentile interval "
        f"({c.n_boot} resamples of the n = {c.n_videos} test videos and of the seeds). p: two-sided paired "
        f"permutation test over videos ({c.n_perm} permutations, the same swaps for every seed pair); p (Holm): "
        f"p Holm-corrected over {len(comparisons)} comparison(s); {DAGGER}: p (Holm) < {ALPHA}."
        + _unpaired_note(comparisons, label)
    )


def _unpaired_note(comparisons: Sequence[Comparison], label: Callable[[str], str] | None = None) -> str:
    unpaired = [c for c in comparisons if not c.paired_seeds]
    if not unpaired:
        return ""
    names = ", ".join((label or mode_label)(c.config) for c in unpaired)
    return (
        f" {names}: other seeds than the baseline's, so paired by video only: the bootstrap resamples the two seed "
        "sets independently and the permutation test averages its per-video swaps over every cross pair of runs."
    )


def paper_mismatch(rows: pd.DataFrame) -> str:
    """How the rows' settings differ from those of the published numbers (``PAPER_SETTINGS``); "" when they match."""
    out = []
    for column, wanted in PAPER_SETTINGS.items():
        have = sorted({str(v) for v in rows[column].dropna()}) if column in rows else []
        if have != [str(wanted)]:
            out.append(f"{column} {', '.join(have) or 'not recorded'} (paper: {wanted})")
    return "; ".join(out)


def _published_note(rows: pd.DataFrame, sources: set[str]) -> str:
    dataset = _single(rows, "dataset")
    if canonical_dataset(dataset) is None:
        return (
            f"Published numbers ({PAPER}) were measured on ActivityNet-v1.3 / HACS and are not comparable with "
            f"dataset '{dataset}'; they are not shown."
        )
    mismatch = paper_mismatch(rows)
    if mismatch:
        return f"Published numbers ({PAPER}) are not shown: these runs' settings are not the paper's ({mismatch})."
    if not sources:
        return f"No published number of {PAPER} matches these configurations."
    return f"Paper: {PAPER}, {', '.join(sorted(sources))}; Δ paper = measured mean minus published value (points)."


def provenance(rows: pd.DataFrame) -> tuple[str, ...]:
    """Where the numbers come from, taken from the rows: commits, config hashes, MLflow run ids, dates."""

    def listing(column: str) -> str:
        if column not in rows:
            return "not recorded"
        values = sorted({str(v) for v in rows[column].dropna() if str(v)})
        return ", ".join(values) if values else "not recorded"

    times = sorted(rows["row_time"].dropna()) if "row_time" in rows else []
    span = f"{times[0]} … {times[-1]}" if times else "unknown"
    generated = _dt.datetime.now(tz=_dt.UTC).isoformat(timespec="seconds")
    skipped = skipped_note(rows)
    missing = missing_note(rows)
    diverged = diverged_note(rows)
    return (
        f"Provenance: {len(rows)} run(s); commit(s): {listing('commit')}; config hash(es): {listing('config_hash')}; "
        f"MLflow run id(s): {listing('mlflow_run_id')}; rows written {span}; table generated {generated}.",
        *([diverged] if diverged else []),
        *([missing] if missing else []),
        *([skipped] if skipped else []),
    )


DIVERGED_MARK = "⚠"  # after a configuration's label when one of its runs diverged


def diverged_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose training diverged (``diverged`` non-empty; rows written before the column: none)."""
    if "diverged" not in rows:
        return rows.iloc[0:0]
    return rows[rows["diverged"].fillna("").astype(str) != ""]


def diverged_note(rows: pd.DataFrame) -> str:
    """Which runs diverged and why (harness/divergence.py), from the rows' ``diverged``; "" if none."""
    bad = diverged_runs(rows)
    if bad.empty:
        return ""
    parts = [f"{r['mode']} seed {r['seed']}: {r['diverged']}" for _, r in bad.sort_values(["mode", "seed"]).iterrows()]
    return (
        f"{DIVERGED_MARK} Diverged runs (kept in the means; runtime.on_divergence=fail refuses them): "
        + "; ".join(parts)
        + "."
    )


def missing_note(rows: pd.DataFrame) -> str:
    """The annotated videos without a file (``data.missing``), from the rows' ``missing_videos``; "" if none."""
    if "missing_videos" not in rows:
        return ""
    seen: dict[tuple[str, int, int], list[str]] = {}
    for _, row in rows.iterrows():
        rec = row["missing_videos"]
        if isinstance(rec, Mapping) and rec.get("count"):
            key = (str(rec.get("policy")), int(rec["count"]), int(rec.get("test") or 0))
            seen.setdefault(key, []).append(str(rec.get("list")))
    parts = []
    for (policy, count, test), lists in sorted(seen.items()):
        fate = (
            "left out of the evaluation (as ActivityNet results are usually reported, e.g. OpenTAD)"
            if policy == "skip"
            else "scored as misses"
        )
        parts.append(
            f"{count} annotated video(s) without a file (data.missing: {policy}; list: {lists[0]}): "
            f"{test} of them in the test split, {fate}; the others left out of training and validation"
        )
    return "Missing videos: " + " | ".join(parts) + "." if parts else ""


SKIPPED_SHOWN = 5  # video ids named in the note; the rows hold all of them


def skipped_note(rows: pd.DataFrame) -> str:
    """Which runs skipped undecodable videos (``data.skip_corrupt``), from the rows' ``skipped_videos``; "" if none."""
    if "skipped_videos" not in rows:
        return ""
    parts = []
    for _, row in rows.sort_values(["mode", "seed"]).iterrows():
        ids = row["skipped_videos"]
        if isinstance(ids, list) and ids:
            more = f" (+{len(ids) - SKIPPED_SHOWN} more)" if len(ids) > SKIPPED_SHOWN else ""
            parts.append(
                f"{row['mode']} seed {row['seed']}: {len(ids)} ({', '.join(map(str, ids[:SKIPPED_SHOWN]))}{more})"
            )
    if not parts:
        return ""
    return (
        "Skipped videos (undecodable, data.skip_corrupt): "
        + "; ".join(parts)
        + ". They are missing from training or from the predictions (scored as misses)."
    )


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def order_modes(present: Iterable[str], modes: Sequence[str] | None = None) -> list[str]:
    """The modes of ``present`` a table shows, in order: those listed in ``modes`` in its order, or (``None``)
    all of them in the canonical order of ``MODE_LABELS`` (unknown modes last, by name)."""
    have = set(present)
    if modes is not None:
        return [m for m in dict.fromkeys(modes) if m in have]
    canonical = list(MODE_LABELS)
    return sorted(have, key=lambda m: (canonical.index(m) if m in canonical else len(canonical), m))


def mode_label(mode: str, overrides: Mapping[str, str] | None = None) -> str:
    return (overrides or {}).get(mode) or MODE_LABELS.get(mode, mode)


def _mode_row(
    runs: pd.DataFrame,
    mode: str,
    label: str,
    comp: Comparison | None,
    *,
    paper_table: str,
    metrics: Sequence[tuple[str, str]],
    with_shape: bool,
    share: tuple[RatioResult | None, bool] | None = None,
    paper: bool = True,
) -> tuple[dict[str, object], dict[str, object], str | None]:
    """Display cells, CSV numbers and the published source (if any; ``paper``: the table's settings match the
    paper's) of one mode's runs (one dataset/encoder/head)."""
    dataset, encoder, head = (_single(runs, c) for c in ("dataset", "encoder", "head"))
    n_diverged = len(diverged_runs(runs))
    cells: dict[str, object] = {"Config": f"{label} {DIVERGED_MARK}{n_diverged}" if n_diverged else label}
    numbers: dict[str, object] = {
        "dataset": dataset,
        "encoder": encoder,
        "head": head,
        "mode": mode,
        "config": label,
        "n_seeds": int(runs["seed"].nunique()),
        "n_diverged": n_diverged,
    }
    if with_shape:
        cells["L"], cells["H×W"] = _shape_cells(runs)
        numbers["L"], numbers["HxW"] = cells["L"], cells["H×W"]
    for column, header in metrics:
        mean, sd = _metric_stats(runs, column)
        cells[header] = _pm(mean, sd)
        numbers[f"{column}_mean"], numbers[f"{column}_sd"] = mean, sd
    if with_shape:
        rel = _relative_memory(runs)
        cells["Act. mem. (rel.)"] = _num(rel)
        numbers["activation_rel"] = rel
    cells.update(
        {"Δ Avg [95% CI]": "(baseline)", "p (Holm)": "", "": ""} if mode == BASELINE else _comparison_cells(comp)
    )
    numbers.update(_comparison_numbers(comp))
    if share is not None:
        cells[SHARE_COLUMN], shown = _share_cell(mode, *share)
        numbers.update(
            {
                "gain_share": shown.estimate if shown else float("nan"),
                "gain_share_ci_low": shown.ci_low if shown else float("nan"),
                "gain_share_ci_high": shown.ci_high if shown else float("nan"),
            }
        )
    if canonical_dataset(dataset) is None or not paper:
        return cells, numbers, None
    pub = published(paper_table, dataset, mode, encoder=encoder, head=head)
    pub_avg = pub.values.get("average_mAP") if pub else None
    cells["Paper Avg"] = _num(pub_avg)
    cells["Δ paper"] = _num(numbers["average_mAP_mean"] - pub_avg, signed=True) if pub_avg is not None else "–"
    for column, _ in metrics:
        numbers[f"paper_{column}"] = pub.values.get(column, float("nan")) if pub else float("nan")
    return cells, numbers, pub.source if pub else None


def _share_cell(mode: str, result: RatioResult | None, gain: bool) -> tuple[str, RatioResult | None]:
    """The share-of-gain cell of one mode and the result it shows (None: nothing numeric shown)."""
    if mode == BASELINE:
        return "0 (ACP)", None
    if mode == REFERENCE:
        return "1 (reference)", None
    if not gain:
        return NO_GAIN, None
    if result is None or math.isnan(result.estimate):
        return "–", None
    return f"{result.estimate:.2f} [{_num(result.ci_low)}, {_num(result.ci_high)}]", result


def _end_to_end_gain(stats: Mapping[str, Comparison] | None) -> bool:
    """Whether e2e-full beats ACP: its Δ interval lies above 0 (a share of a gain that may be 0 means nothing)."""
    c = (stats or {}).get(REFERENCE)
    return c is not None and c.ci_low > 0


def _share_note(stats: Mapping[str, Comparison] | None, shares: Mapping[str, RatioResult]) -> str:
    c = (stats or {}).get(REFERENCE)
    n_boot = next((r.samples.size for r in shares.values()), 0)
    text = (
        f"{SHARE_COLUMN.split(' [')[0]}: (configuration − ACP) / (e2e-full − ACP) of the seed-mean average mAP, "
        f"95% percentile interval over {n_boot} joint resamples (the same videos and seeds for ACP, the "
        "configuration and e2e-full); 1 = the whole end-to-end gain at the configuration's memory."
    )
    if c is None:
        return text + " Not computed: e2e-full has no comparison with ACP."
    if not _end_to_end_gain(stats):
        return text + (
            f" n/a: the end-to-end gain e2e-full − ACP = {100 * c.diff:+.2f} [{100 * c.ci_low:+.2f}, "
            f"{100 * c.ci_high:+.2f}] points is not above 0, so there is no gain to take a share of."
        )
    return text


def _config_table(
    name: str,
    title: str,
    rows: pd.DataFrame,
    stats: Mapping[str, Comparison] | None,
    modes: Sequence[str] | None,
    *,
    paper_table: str,
    with_shape: bool,
    labels: Mapping[str, str] | None = None,
    shares: Mapping[str, RatioResult] | None = None,
) -> Table:
    if rows.empty:
        raise TableError(f"no rows for the {name} table")
    _check_scale(rows)
    dataset, encoder, head = (_single(rows, c) for c in ("dataset", "encoder", "head"))
    shown = order_modes(rows["mode"], modes)
    if not shown:
        raise TableError(f"rows hold none of the {name} table's modes ({', '.join(modes or ())})")
    with_share = shares is not None and REFERENCE in shown and BASELINE in shown
    gain = _end_to_end_gain(stats)
    display_rows, numeric_rows, sources = [], [], set()
    for mode in shown:
        cells, numbers, source = _mode_row(
            rows[rows["mode"] == mode],
            mode,
            mode_label(mode, labels),
            (stats or {}).get(mode),
            paper_table=paper_table,
            metrics=SHOWN_METRICS,
            with_shape=with_shape,
            share=((shares or {}).get(mode), gain) if with_share else None,
            paper=not paper_mismatch(rows),
        )
        display_rows.append(cells)
        numeric_rows.append(numbers)
        sources.add(source)
    used = rows[rows["mode"].isin(shown)]
    comparisons = list((stats or {}).values())
    notes = (
        _stats_note(comparisons, used),
        *([mde_note(comparisons, lambda m: mode_label(m, labels))] if comparisons else []),
        *([_share_note(stats, shares or {})] if with_share else []),
        _published_note(rows, sources - {None}),
    )
    return Table(
        name,
        f"{title} — {dataset}, {encoder}, {head}",
        pd.DataFrame(display_rows),
        pd.DataFrame(numeric_rows),
        notes,
        provenance(used),
    )


def ablation_table(
    rows: pd.DataFrame,
    stats: Mapping[str, Comparison] | None = None,
    *,
    modes: Sequence[str] | None = None,
    shares: Mapping[str, RatioResult] | None = None,
) -> Table:
    """The paper's Table 2: LoFi configurations against ACP (one dataset, encoder and head).

    One row per mode in ``modes`` that the rows hold, in that order (``None``: every mode present, canonical
    order); ``stats`` maps a mode to its comparison with ACP. ``shares`` maps a mode to its share of the
    end-to-end gain (``harness.report.stats.share_of_gain``); the column is shown when e2e-full is among the rows, as
    "n/a (no end-to-end gain)" when e2e-full's Δ interval does not lie above 0."""
    return _config_table(
        "ablation",
        "LoFi configurations (paper Table 2)",
        rows,
        stats,
        modes,
        paper_table="ablation",
        with_shape=True,
        shares=shares,
    )


def pretrain_table(
    rows: pd.DataFrame, stats: Mapping[str, Comparison] | None = None, *, modes: Sequence[str] | None = None
) -> Table:
    """The paper's Table 1: pre-training methods (ICP, ACP, ACP+, LoFi) against ACP; rows as ``ablation_table``."""
    return _config_table(
        "pretrain",
        "Pre-training methods (paper Table 1)",
        rows,
        stats,
        modes,
        paper_table="pretrain",
        with_shape=False,
        labels=PAPER_LOFI_LABEL,
    )


def models_table(
    rows: pd.DataFrame,
    stats: Mapping[str, Mapping[str, Comparison]] | None = None,
    *,
    modes: Sequence[str] | None = None,
) -> Table:
    """Encoders × heads (paper Table 6): per encoder and head, the average mAP of each mode against ACP.

    ``stats`` maps "encoder/head" to {mode: comparison with ACP} (Holm across all of them)."""
    if rows.empty:
        raise TableError("no rows for the models table")
    _check_scale(rows)
    dataset = _single(rows, "dataset")
    display_rows, numeric_rows, sources, comparisons = [], [], set(), []
    for (encoder, head), group in rows.groupby(["encoder", "head"], sort=True):
        comps = (stats or {}).get(f"{encoder}/{head}", {})
        comparisons += list(comps.values())
        for mode in order_modes(group["mode"], modes):
            cells, numbers, source = _mode_row(
                group[group["mode"] == mode],
                mode,
                mode_label(mode, PAPER_LOFI_LABEL),
                comps.get(mode),
                paper_table="models",
                metrics=SHOWN_METRICS[-1:],
                with_shape=False,
                paper=not paper_mismatch(rows),
            )
            display_rows.append({"Encoder": encoder, "Head": head, **cells})
            numeric_rows.append(numbers)
            sources.add(source)
    if not display_rows:
        raise TableError(f"rows hold none of the models table's modes ({', '.join(modes or ())})")
    used = rows[rows["mode"].isin(order_modes(rows["mode"], modes))]
    notes = (
        _stats_note(comparisons, used),
        *([mde_note(comparisons, lambda m: mode_label(m, PAPER_LOFI_LABEL))] if comparisons else []),
        _published_note(rows, sources - {None}),
    )
    return Table(
        "models",
        f"Encoders × heads (paper Table 6) — {dataset}",
        pd.DataFrame(display_rows),
        pd.DataFrame(numeric_rows),
        notes,
        provenance(used),
    )


def step_bench_columns(bench: Sequence[Mapping[str, Any]]) -> tuple[dict[str, dict[str, float]], str]:
    """From ``lofi bench step --json`` rows: per fidelity name (full, S, T, ST) the measured peak device memory,
    step time and frames/s, at one precision (bf16 where measured, else fp32); and the note that says how."""
    ok = [r for r in bench if not r.get("error") and r.get("step_s")]
    if not ok:
        raise TableError("the step benchmark holds no successful row; re-run lofi bench step")
    precision = "bf16" if any(r.get("precision") == "bf16" for r in ok) else str(ok[0].get("precision"))
    by_fid = {
        str(r["fidelity"]): {
            "peak_bytes": r.get("peak_bytes"),
            "step_s": r["step_s"],
            "frames_per_s": r.get("frames_per_s"),
        }
        for r in ok
        if r.get("precision") == precision
    }
    batches = sorted({int(r["batch"]) for r in ok if r.get("precision") == precision})
    note = (
        f"Peak / Step / Frames/s: `lofi bench step` ({precision}, batch {', '.join(map(str, batches))}): device peak "
        "memory, seconds and frames per training step of each fidelity; for a cycle the largest peak of its "
        "fidelities. "
    )
    return by_fid, note


def _fidelity_names(runs: pd.DataFrame) -> list[str]:
    """The fidelities a mode trains at (``fidelities`` in its rows; else from the mode's LoFi cycle)."""
    if "fidelities" in runs and isinstance(runs["fidelities"].iloc[0], str):
        return [f for f in runs["fidelities"].iloc[0].split(",") if f]
    from harness.modes import MODE_PLAN
    from harness.schedule import CYCLE_ORDER

    cycle = MODE_PLAN.get(str(runs["mode"].iloc[0]), (None, None))[1]
    return list(CYCLE_ORDER) if cycle in ("long", "short") else [cycle] if cycle else []


def memory_table(
    rows: pd.DataFrame, *, modes: Sequence[str] | None = None, step_bench: Sequence[Mapping[str, Any]] = ()
) -> Table:
    """Per encoder and mode: activation memory of one LoFi training step (as the rows carry it: bytes at the
    mode's fidelity, at full fidelity, their ratio), device peak only where rows carry ``peak_bytes``, stage times.
    ``step_bench``: ``lofi bench step --json`` rows (a GPU's); they add the measured peak memory, step time and
    frames/s of each mode's fidelity."""
    if rows.empty:
        raise TableError("no rows for the memory table")
    bench, bench_note = step_bench_columns(step_bench) if step_bench else ({}, "")
    dataset = _single(rows, "dataset")
    time_cols = sorted(c for c in rows.columns if c.startswith("time_") and c.endswith("_s"))
    with_peak = "peak_bytes" in rows and rows["peak_bytes"].notna().any()
    display_rows, numeric_rows = [], []

    def mean_of(runs: pd.DataFrame, column: str) -> float:
        values = pd.to_numeric(runs[column], errors="coerce") if column in runs else pd.Series(dtype="float64")
        values = values.where(values > 0)  # 0: nothing trained end to end (frozen-encoder modes)
        return float(values.mean()) if values.notna().any() else float("nan")

    for encoder, group in rows.groupby("encoder", sort=True):
        for mode in order_modes(group["mode"], modes):
            runs = group[group["mode"] == mode]
            L, hw = _shape_cells(runs)
            act, full = mean_of(runs, "activation_bytes"), mean_of(runs, "activation_bytes_full")
            rel = _relative_memory(runs)
            cells: dict[str, object] = {
                "Encoder": encoder,
                "Config": mode_label(mode),
                "L": L,
                "H×W": hw,
                "Activations (MiB)": _num(act / 2**20, 1),
                "Full fidelity (MiB)": _num(full / 2**20, 1),
                "Rel. to full": _num(rel),
            }
            numbers: dict[str, object] = {
                "dataset": dataset,
                "encoder": encoder,
                "mode": mode,
                "L": L,
                "HxW": hw,
                "activation_bytes": act,
                "activation_bytes_full": full,
                "activation_rel": rel,
            }
            if with_peak:
                peak = mean_of(runs, "peak_bytes")
                cells["Peak (GiB)"], numbers["peak_bytes"] = _num(peak / 2**30, 2), peak
            if bench:
                fids = _fidelity_names(runs)
                measured = [bench[f] for f in fids if f in bench]
                peaks = [m["peak_bytes"] for m in measured if m["peak_bytes"]]
                one = measured[0] if len(fids) == 1 and measured else None
                numbers["bench_peak_bytes"] = max(peaks) if peaks else float("nan")
                numbers["bench_step_s"] = one["step_s"] if one else float("nan")
                numbers["bench_frames_per_s"] = one["frames_per_s"] if one and one["frames_per_s"] else float("nan")
                cells["Peak (GiB)"] = _num(numbers["bench_peak_bytes"] / 2**30, 2)
                cells["Step (s)"] = _num(numbers["bench_step_s"], 3)
                cells["Frames/s"] = _num(numbers["bench_frames_per_s"], 0)
            for col in time_cols:
                numbers[col] = mean = mean_of(runs, col)
                cells[f"{col[len('time_') : -len('_s')]} (s)"] = _num(mean, 1)
            display_rows.append(cells)
            numeric_rows.append(numbers)
    if not display_rows:
        raise TableError(f"rows hold none of the memory table's modes ({', '.join(modes or ())})")
    used = rows[rows["mode"].isin([n["mode"] for n in numeric_rows])]
    notes = (
        "Activations: bytes kept for the backward pass of one LoFi training step (batch 1) at the mode's "
        "fidelity (the largest over a cycle; – for modes that train no encoder end to end), and at full "
        "fidelity, counted by the run on the meta device. "
        + ("Peak: device peak memory (CUDA only). " if with_peak else "")
        + bench_note
        + "Times: mean seconds per stage over seeds (stages reused from an earlier run are not timed).",
    )
    return Table(
        "memory",
        f"Memory per fidelity configuration — {dataset}",
        pd.DataFrame(display_rows),
        pd.DataFrame(numeric_rows),
        notes,
        provenance(used),
    )


# ----------------------------------------------------------------------------------------------------------------
# Controls
# ----------------------------------------------------------------------------------------------------------------

CONTROL_ROLES: dict[str, str] = {
    "blind": "floor",
    BASELINE: "reference",
    REFERENCE: "positive control",
    NEGATIVE: "negative control",
}
ORACLE_COLUMN = "oracle_average_mAP"  # per row: average mAP with the ground-truth class (``harness.report.build``)
TOP1_COLUMN = "class_top1"  # per row: the video-level classifier's top-1 accuracy on the test split


def split_control_seeds(rows: pd.DataFrame, control_seeds: Iterable[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every other row, the negative control: ACP runs on ``control_seeds``)."""
    negative = (rows["mode"] == BASELINE) & rows["seed"].astype(int).isin({int(s) for s in control_seeds})
    return rows[~negative], rows[negative]


def _seeds(runs: pd.DataFrame) -> str:
    return ", ".join(str(s) for s in sorted({int(s) for s in runs["seed"]}))


def _control_label(key: str, runs: pd.DataFrame) -> str:
    return f"ACP, seeds {_seeds(runs)}" if key == NEGATIVE else mode_label(key)


def _verdicts(stats: Mapping[str, Comparison], labels: Mapping[str, str], main_seeds: str) -> str:
    """In words: did the positive control register, did the negative control stay quiet, where is the floor."""
    out = []
    pos, neg, floor = stats.get(REFERENCE), stats.get(NEGATIVE), stats.get("blind")

    def delta(c: Comparison) -> str:
        return f"Δ = {100 * c.diff:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}] points"

    if pos is not None:
        seen = pos.p_adjusted < ALPHA and pos.ci_low > 0
        out.append(
            f"Positive control (e2e-full minus ACP): {delta(pos)}, p (Holm) {_p(pos.p_adjusted)}: "
            + (
                "detected: the benchmark can see end-to-end training of the encoder."
                if seen
                else "NOT detected: at this size the benchmark cannot tell full end-to-end training from the frozen "
                "ACP encoder, so no LoFi row can be told from ACP either."
            )
        )
    if neg is not None:
        flagged = neg.p_value < ALPHA or neg.ci_low > 0 or neg.ci_high < 0
        out.append(
            f"Negative control ({labels.get(NEGATIVE, NEGATIVE)} minus ACP on seeds {main_seeds}: the same "
            f"configuration): {delta(neg)}, p {_p(neg.p_value)} unadjusted, {_p(neg.p_adjusted)} Holm: "
            + (
                "not flagged, as it must not be."
                if not flagged
                else "FLAGGED (unadjusted p < 0.05 or an interval without 0): the tests see seed-to-seed noise as an "
                "effect; treat every significant Δ with suspicion."
            )
        )
    if floor is not None:
        out.append(
            f"Floor (blind minus ACP): {delta(floor)}: what the temporal prior of the segments and the video-level "
            "classifier give without any visual feature."
        )
    return " ".join(out)


def controls_table(
    rows: pd.DataFrame,
    stats: Mapping[str, Comparison] | None = None,
    *,
    modes: Sequence[str] | None = None,
    control_seeds: Iterable[int] = (),
) -> Table:
    """What the benchmark can see (one dataset, encoder and head): a row per mode in ``modes`` (the config's
    ``sweep.control_modes``: blind, acp, e2e-full) on the sweep's seeds, plus the negative control, ACP on
    ``control_seeds``. ``stats`` maps "blind", "e2e-full" and ``NEGATIVE`` to their comparison with ACP (Holm
    across them). Rows carrying ``oracle_average_mAP`` / ``class_top1`` (``harness.report.build`` adds them from each
    run's proposals and class scores) fill the class-oracle columns."""
    if rows.empty:
        raise TableError("no rows for the controls table")
    _check_scale(rows)
    dataset, encoder, head = (_single(rows, c) for c in ("dataset", "encoder", "head"))
    main, negative = split_control_seeds(rows, control_seeds)
    shown = order_modes(main["mode"], modes)
    if BASELINE not in shown:
        raise TableError("the controls table needs ACP runs on the sweep's seeds (its reference)")
    entries = [(m, main[main["mode"] == m]) for m in shown]
    if not negative.empty:
        entries.append((NEGATIVE, negative))
    stats = dict(stats or {})
    labels = {key: _control_label(key, runs) for key, runs in entries}
    display_rows, numeric_rows = [], []
    for key, runs in entries:
        c = stats.get(key)
        mean, sd = _metric_stats(runs, "average_mAP")
        o_mean, o_sd = _metric_stats(runs, ORACLE_COLUMN)
        t_mean, t_sd = _metric_stats(runs, TOP1_COLUMN)
        cells: dict[str, object] = {
            "Control": CONTROL_ROLES.get(key, "other"),
            "Config": labels[key],
            "Seeds": _seeds(runs),
            "Avg": _pm(mean, sd),
        }
        if key == BASELINE:
            cells.update({"Δ Avg vs ACP [95% CI]": "(baseline)", "p": "", "p (Holm)": "", "": ""})
        else:
            cmp = _comparison_cells(c)
            cells.update(
                {
                    "Δ Avg vs ACP [95% CI]": cmp["Δ Avg [95% CI]"],
                    "p": _p(c.p_value) if c else "–",
                    "p (Holm)": cmp["p (Holm)"],
                    "": cmp[""],
                }
            )
        cells["Oracle Avg (GT class)"] = _pm(o_mean, o_sd)
        cells["Cls. top-1 (%)"] = _pm(t_mean, t_sd)
        display_rows.append(cells)
        numeric_rows.append(
            {
                "dataset": dataset,
                "encoder": encoder,
                "head": head,
                "control": CONTROL_ROLES.get(key, "other"),
                "mode": BASELINE if key == NEGATIVE else key,
                "config": labels[key],
                "seeds": _seeds(runs),
                "n_seeds": int(runs["seed"].nunique()),
                "average_mAP_mean": mean,
                "average_mAP_sd": sd,
                **_comparison_numbers(c),
                "oracle_average_mAP_mean": o_mean,
                "oracle_average_mAP_sd": o_sd,
                "oracle_gap": o_mean - mean,
                "class_top1_mean": t_mean,
                "class_top1_sd": t_sd,
            }
        )
    comparisons = [stats[k] for k, _ in entries if k in stats]
    used = pd.concat([runs for _, runs in entries])
    notes = [
        "Controls: floor = the ACP pipeline with the head trained and tested on all-zero features (what the temporal "
        "prior of the segments and the video-level classifier give alone); positive control = full-fidelity "
        "end-to-end training (e2e-full), which must beat ACP if the benchmark can see encoder training; negative "
        "control = ACP again on other seeds, the same configuration, which the tests must not flag.",
        _stats_note(comparisons, main[main["mode"].isin(shown)], lambda k: labels.get(k, k)),
    ]
    if comparisons:
        notes += [
            mde_note(comparisons, lambda k: labels.get(k, k)),
            _verdicts(stats, labels, _seeds(main[main["mode"] == BASELINE])),
        ]
    notes.append(
        "Oracle Avg (GT class): average mAP (%) of the run's own class-agnostic test proposals labelled with each "
        "test video's ground-truth class (the label covering most of the video; one-hot class scores, top-1 class, "
        "fused as the pipeline fuses the classifier's): the table's ceiling if the classifier were perfect; Oracle − "
        "Avg is what the classifier costs. Cls. top-1: the video-level classifier's top-1 accuracy (%) on the test "
        "videos against the same ground-truth class. –: not computed (no proposals / class scores recorded, or "
        "--no-stats)."
    )
    return Table(
        "controls",
        f"Controls: what the benchmark can see — {dataset}, {encoder}, {head}",
        pd.DataFrame(display_rows),
        pd.DataFrame(numeric_rows),
        tuple(n for n in notes if n),
        provenance(used),
    )


# ----------------------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------------------


def to_markdown(table: Table) -> str:
    body = tabulate(table.display, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
    lines = [f"### {table.title}", "", body, ""]
    lines += [f"{n}" for n in table.notes]
    lines += [""] + list(table.provenance)
    return "\n".join(lines) + "\n"


# tabulate escapes LaTeX's special characters; these symbols are not special but pdfLaTeX cannot typeset them all.
_LATEX_SYMBOLS = str.maketrans(
    {"±": r"$\pm$", "×": r"$\times$", "²": r"$^2$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "–": "--"}
)
_TEXT_COLUMNS = {"Config", "Encoder", "Head", "Control", "Seeds"}


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (tabulate ``latex_booktabs``) with the title, notes and provenance as comment lines
    around it: put it in your own ``table`` float with your caption."""
    align = ["left" if c in _TEXT_COLUMNS else "right" for c in table.display.columns]
    body = tabulate(
        table.display, headers="keys", tablefmt="latex_booktabs", showindex=False, disable_numparse=True, colalign=align
    ).translate(_LATEX_SYMBOLS)
    head = [table.title, "generated by `lofi report tables`; numbers come from the runs' row.json files"]
    return (
        "\n".join([*(f"% {line}" for line in head), body, *(f"% {n}" for n in (*table.notes, *table.provenance))])
        + "\n"
    )


def to_html(table: Table) -> str:
    """The Markdown table as an HTML fragment (tabulate ``html``: cells escaped): title, table, notes, provenance.
    What `snakemake --report` shows inline."""
    body = tabulate(table.display, headers="keys", tablefmt="html", showindex=False, disable_numparse=True)
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in (*table.notes, *table.provenance) if n)
    return f"<h3>{html.escape(table.title)}</h3>\n{body}\n{notes}\n"


_HTML_PAGE = (
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>'
    "body{{font-family:sans-serif;font-size:14px}} table{{border-collapse:collapse}}"
    " td,th{{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}} p{{max-width:70em}}"
    "</style></head><body>\n{body}</body></html>\n"
)


def write_tables(tables: Sequence[Table], out: str | os.PathLike[str], stem: str) -> list[Path]:
    """Write ``stem``.md / .csv / .tex / .html (one section per table, one CSV for all), each atomically."""
    if not tables:
        raise TableError(f"nothing to write for {stem}")
    out = Path(out)
    md = write_text_atomic(out / f"{stem}.md", "\n".join(to_markdown(t) for t in tables))
    tex = write_text_atomic(out / f"{stem}.tex", "\n".join(to_latex(t) for t in tables))
    page = _HTML_PAGE.format(title=html.escape(tables[0].title), body="".join(to_html(t) for t in tables))
    html_file = write_text_atomic(out / f"{stem}.html", page)
    numeric = pd.concat([t.numeric for t in tables], ignore_index=True)
    csv = out / f"{stem}.csv"
    with atomic_path(csv) as tmp:
        numeric.to_csv(tmp, index=False)
    log.info("wrote %s, %s, %s, %s", md, csv, tex, html_file)
    return [md, csv, tex, html_file]
