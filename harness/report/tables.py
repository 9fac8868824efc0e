"""Paper-style tables built from the tidy per-run rows (``row.json``), with seeds and significance: the ablation
(paper Table 2), pre-training (Table 1), encoders × heads (Table 6) and memory tables (the controls table:
``harness.report.controls``).

Every number in a table comes from the rows (and from ``harness.report.stats`` comparisons computed on the runs' saved
predictions); provenance (commits, config hashes, MLflow run ids, dates) is taken from the rows as well
(``harness.report.notes``). Which modes a table shows, in which order, is the caller's ``modes`` argument (the
config's ``sweep.*_modes``); without it, every mode the rows hold. Published numbers (``harness.report.paper_results``)
are put beside measured ones only for the datasets the paper used; for synthetic data they never share a column
with measurements. ``harness.report.writers`` writes a built table as Markdown, CSV, LaTeX and HTML.

Every table with tests states its minimum detectable effect (MDE) under it, and says in words when no difference
is significant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from harness.report.cells import (
    comparison_cells,
    comparison_numbers,
    fmt_num,
    fmt_pm,
    metric_stats,
    relative_memory,
    shape_cells,
)
from harness.report.notes import (
    DIVERGED_MARK,
    diverged_runs,
    mde_note,
    paper_mismatch,
    provenance,
    published_note,
    stats_note,
)
from harness.report.paper_results import canonical_dataset, published
from harness.report.rows import (
    BASELINE,
    PAPER_LOFI_LABEL,
    REFERENCE,
    SHOWN_METRICS,
    Table,
    TableError,
    check_scale,
    mode_label,
    order_modes,
    single_value,
)
from harness.report.stats import Comparison, RatioResult

SHARE_COLUMN = "Share of e2e gain [95% CI]"
NO_GAIN = "n/a (no end-to-end gain)"


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
    dataset, encoder, head = (single_value(runs, c) for c in ("dataset", "encoder", "head"))
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
        cells["L"], cells["H×W"] = shape_cells(runs)
        numbers["L"], numbers["HxW"] = cells["L"], cells["H×W"]
    for column, header in metrics:
        mean, sd = metric_stats(runs, column)
        cells[header] = fmt_pm(mean, sd)
        numbers[f"{column}_mean"], numbers[f"{column}_sd"] = mean, sd
    if with_shape:
        rel = relative_memory(runs)
        cells["Act. mem. (rel.)"] = fmt_num(rel)
        numbers["activation_rel"] = rel
    cells.update(
        {"Δ Avg [95% CI]": "(baseline)", "p (Holm)": "", "": ""} if mode == BASELINE else comparison_cells(comp)
    )
    numbers.update(comparison_numbers(comp))
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
    cells["Paper Avg"] = fmt_num(pub_avg)
    cells["Δ paper"] = fmt_num(numbers["average_mAP_mean"] - pub_avg, signed=True) if pub_avg is not None else "–"
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
    return f"{result.estimate:.2f} [{fmt_num(result.ci_low)}, {fmt_num(result.ci_high)}]", result


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
    check_scale(rows)
    dataset, encoder, head = (single_value(rows, c) for c in ("dataset", "encoder", "head"))
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
        stats_note(comparisons, used),
        *([mde_note(comparisons, lambda m: mode_label(m, labels))] if comparisons else []),
        *([_share_note(stats, shares or {})] if with_share else []),
        published_note(rows, sources - {None}),
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
    check_scale(rows)
    dataset = single_value(rows, "dataset")
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
        stats_note(comparisons, used),
        *([mde_note(comparisons, lambda m: mode_label(m, PAPER_LOFI_LABEL))] if comparisons else []),
        published_note(rows, sources - {None}),
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


def _positive_mean(runs: pd.DataFrame, column: str) -> float:
    """The mean of a column's positive values (0: nothing trained end to end, frozen-encoder modes); NaN if none."""
    values = pd.to_numeric(runs[column], errors="coerce") if column in runs else pd.Series(dtype="float64")
    values = values.where(values > 0)
    return float(values.mean()) if values.notna().any() else float("nan")


def _add_bench_cells(
    runs: pd.DataFrame, bench: Mapping[str, Mapping[str, Any]], cells: dict[str, object], numbers: dict[str, object]
) -> None:
    """The step benchmark's measured peak memory, step time and frames/s of a mode's fidelity (a cycle: its
    largest peak; no time for a cycle)."""
    fids = _fidelity_names(runs)
    measured = [bench[f] for f in fids if f in bench]
    peaks = [m["peak_bytes"] for m in measured if m["peak_bytes"]]
    one = measured[0] if len(fids) == 1 and measured else None
    numbers["bench_peak_bytes"] = max(peaks) if peaks else float("nan")
    numbers["bench_step_s"] = one["step_s"] if one else float("nan")
    numbers["bench_frames_per_s"] = one["frames_per_s"] if one and one["frames_per_s"] else float("nan")
    cells["Peak (GiB)"] = fmt_num(numbers["bench_peak_bytes"] / 2**30, 2)
    cells["Step (s)"] = fmt_num(numbers["bench_step_s"], 3)
    cells["Frames/s"] = fmt_num(numbers["bench_frames_per_s"], 0)


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
    dataset = single_value(rows, "dataset")
    time_cols = sorted(c for c in rows.columns if c.startswith("time_") and c.endswith("_s"))
    with_peak = "peak_bytes" in rows and rows["peak_bytes"].notna().any()
    display_rows, numeric_rows = [], []

    for encoder, group in rows.groupby("encoder", sort=True):
        for mode in order_modes(group["mode"], modes):
            runs = group[group["mode"] == mode]
            L, hw = shape_cells(runs)
            act, full = _positive_mean(runs, "activation_bytes"), _positive_mean(runs, "activation_bytes_full")
            rel = relative_memory(runs)
            cells: dict[str, object] = {
                "Encoder": encoder,
                "Config": mode_label(mode),
                "L": L,
                "H×W": hw,
                "Activations (MiB)": fmt_num(act / 2**20, 1),
                "Full fidelity (MiB)": fmt_num(full / 2**20, 1),
                "Rel. to full": fmt_num(rel),
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
                peak = _positive_mean(runs, "peak_bytes")
                cells["Peak (GiB)"], numbers["peak_bytes"] = fmt_num(peak / 2**30, 2), peak
            if bench:
                _add_bench_cells(runs, bench, cells, numbers)
            for col in time_cols:
                numbers[col] = mean = _positive_mean(runs, col)
                cells[f"{col[len('time_') : -len('_s')]} (s)"] = fmt_num(mean, 1)
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
