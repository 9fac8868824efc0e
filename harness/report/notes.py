"""The lines under a table: the statistics (seeds, the tests, the MDE in words), the published numbers, the runs
that diverged, skipped or missed videos, and the provenance of every number (commits, config hashes, MLflow run
ids, dates), all taken from the rows."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from harness.report.cells import DAGGER, fmt_range
from harness.report.paper_results import PAPER, PAPER_SETTINGS, canonical_dataset
from harness.report.rows import BASELINE, mode_label, single_value
from harness.report.stats import ALPHA, POWER, Comparison, mde_multiplier
from harness.tracking_deferred import RECORD_PREFIX, RECORD_TAG


def mde_note(comparisons: Sequence[Comparison], label: Callable[[str], str] = lambda m: mode_label(m)) -> str:
    """The minimum detectable effect of a table's comparisons (range over them, in points) and, in words, which
    differences are significant; '' without comparisons."""
    if not comparisons:
        return ""
    z = mde_multiplier()
    mdes = fmt_range([100 * c.mde for c in comparisons])
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


def stats_note(comparisons: Sequence[Comparison], rows: pd.DataFrame, label: Callable[[str], str] | None = None) -> str:
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


def published_note(rows: pd.DataFrame, sources: set[str]) -> str:
    dataset = single_value(rows, "dataset")
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
    ids = listing("mlflow_run_id")
    if RECORD_PREFIX in ids:  # tracking.defer: the row names its record, which its MLflow run carries as a tag
        ids += f" (recorded runs: `lofi track flush` logs each with the tag {RECORD_TAG} = its id)"
    return (
        f"Provenance: {len(rows)} run(s); commit(s): {listing('commit')}; config hash(es): {listing('config_hash')}; "
        f"MLflow run id(s): {ids}; rows written {span}; table generated {generated}.",
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
