"""The controls table: what the benchmark can see (the blind floor, the positive control e2e-full, the negative
control ACP on other seeds, the class oracle), with the tests' verdicts in words."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from harness.report.cells import comparison_cells, comparison_numbers, fmt_p, fmt_pm, metric_stats
from harness.report.notes import mde_note, provenance, stats_note
from harness.report.rows import (
    BASELINE,
    NEGATIVE,
    REFERENCE,
    Table,
    TableError,
    check_scale,
    mode_label,
    order_modes,
    single_value,
)
from harness.report.stats import ALPHA, Comparison

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
            f"Positive control (e2e-full minus ACP): {delta(pos)}, p (Holm) {fmt_p(pos.p_adjusted)}: "
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
            f"configuration): {delta(neg)}, p {fmt_p(neg.p_value)} unadjusted, {fmt_p(neg.p_adjusted)} Holm: "
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


CONTROLS_NOTE = (
    "Controls: floor = the ACP pipeline with the head trained and tested on all-zero features (what the temporal "
    "prior of the segments and the video-level classifier give alone); positive control = full-fidelity "
    "end-to-end training (e2e-full), which must beat ACP if the benchmark can see encoder training; negative "
    "control = ACP again on other seeds, the same configuration, which the tests must not flag."
)
ORACLE_NOTE = (
    "Oracle Avg (GT class): average mAP (%) of the run's own class-agnostic test proposals labelled with each "
    "test video's ground-truth class (the label covering most of the video; one-hot class scores, top-1 class, "
    "fused as the pipeline fuses the classifier's): the table's ceiling if the classifier were perfect; Oracle − "
    "Avg is what the classifier costs. Cls. top-1: the video-level classifier's top-1 accuracy (%) on the test "
    "videos against the same ground-truth class. –: not computed (no proposals / class scores recorded, or "
    "--no-stats)."
)


def _control_row(
    key: str, runs: pd.DataFrame, c: Comparison | None, label: str, where: Mapping[str, str]
) -> tuple[dict[str, object], dict[str, object]]:
    """Display cells and CSV numbers of one control (``key``: a mode or ``NEGATIVE``); ``where``: its dataset,
    encoder and head."""
    mean, sd = metric_stats(runs, "average_mAP")
    o_mean, o_sd = metric_stats(runs, ORACLE_COLUMN)
    t_mean, t_sd = metric_stats(runs, TOP1_COLUMN)
    cells: dict[str, object] = {
        "Control": CONTROL_ROLES.get(key, "other"),
        "Config": label,
        "Seeds": _seeds(runs),
        "Avg": fmt_pm(mean, sd),
    }
    if key == BASELINE:
        cells.update({"Δ Avg vs ACP [95% CI]": "(baseline)", "p": "", "p (Holm)": "", "": ""})
    else:
        cmp = comparison_cells(c)
        cells.update(
            {
                "Δ Avg vs ACP [95% CI]": cmp["Δ Avg [95% CI]"],
                "p": fmt_p(c.p_value) if c else "–",
                "p (Holm)": cmp["p (Holm)"],
                "": cmp[""],
            }
        )
    cells["Oracle Avg (GT class)"] = fmt_pm(o_mean, o_sd)
    cells["Cls. top-1 (%)"] = fmt_pm(t_mean, t_sd)
    numbers = {
        **where,
        "control": CONTROL_ROLES.get(key, "other"),
        "mode": BASELINE if key == NEGATIVE else key,
        "config": label,
        "seeds": _seeds(runs),
        "n_seeds": int(runs["seed"].nunique()),
        "average_mAP_mean": mean,
        "average_mAP_sd": sd,
        **comparison_numbers(c),
        "oracle_average_mAP_mean": o_mean,
        "oracle_average_mAP_sd": o_sd,
        "oracle_gap": o_mean - mean,
        "class_top1_mean": t_mean,
        "class_top1_sd": t_sd,
    }
    return cells, numbers


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
    check_scale(rows)
    dataset, encoder, head = (single_value(rows, c) for c in ("dataset", "encoder", "head"))
    main, negative = split_control_seeds(rows, control_seeds)
    shown = order_modes(main["mode"], modes)
    if BASELINE not in shown:
        raise TableError("the controls table needs ACP runs on the sweep's seeds (its reference)")
    entries = [(m, main[main["mode"] == m]) for m in shown]
    if not negative.empty:
        entries.append((NEGATIVE, negative))
    stats = dict(stats or {})
    labels = {key: _control_label(key, runs) for key, runs in entries}
    where = {"dataset": dataset, "encoder": encoder, "head": head}
    made = [_control_row(key, runs, stats.get(key), labels[key], where) for key, runs in entries]
    comparisons = [stats[k] for k, _ in entries if k in stats]
    notes = [CONTROLS_NOTE, stats_note(comparisons, main[main["mode"].isin(shown)], lambda k: labels.get(k, k))]
    if comparisons:
        notes += [
            mde_note(comparisons, lambda k: labels.get(k, k)),
            _verdicts(stats, labels, _seeds(main[main["mode"] == BASELINE])),
        ]
    notes.append(ORACLE_NOTE)
    return Table(
        "controls",
        f"Controls: what the benchmark can see — {dataset}, {encoder}, {head}",
        pd.DataFrame([cells for cells, _ in made]),
        pd.DataFrame([numbers for _, numbers in made]),
        tuple(n for n in notes if n),
        provenance(pd.concat([runs for _, runs in entries])),
    )
