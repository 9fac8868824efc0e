"""The tables and plots of finished runs, with significance: what `lofi report tables` does, as a library.

``build_report(rows, kinds=..., out=..., modes=...)`` groups the tidy rows (``harness.report.rows.load_rows``) by
dataset, encoder and head, compares every mode with ACP on the runs' saved predictions (``harness.report.stats``: paired
bootstrap interval and permutation test over videos, Holm within each table) and writes
``table_<kind>.md/.csv/.tex`` plus the plots. Which modes each table shows comes from ``modes`` — in a sweep the
config's ``sweep.*_modes`` (``table_modes``) — or, without it, every mode the rows hold.

The controls table (``kind="controls"``) adds, per run, the class oracle (``oracle_average_map``: the run's own
proposals labelled with the ground-truth video class) and the classifier's top-1 accuracy (``classifier_top1``),
and compares blind, e2e-full and ACP on ``control_seeds`` (the negative control) with ACP. ACP runs on the control
seeds appear in no other table. The ablation table gets each configuration's share of the end-to-end gain
(``harness.report.stats.share_of_gain``) when e2e-full is among its rows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import LofiError
from harness.experiment import SweepConfig
from harness.modes import TABLE_KINDS
from harness.pipeline.files import plot_files
from harness.report.controls import ORACLE_COLUMN, TOP1_COLUMN, controls_table, split_control_seeds
from harness.report.rows import BASELINE, NEGATIVE, REFERENCE, Table, order_modes
from harness.report.stats import (
    Comparison,
    RatioResult,
    compare_to_baseline,
    holm,
    joint_bootstrap,
    share_of_gain,
)
from harness.report.tables import ablation_table, memory_table, models_table, pretrain_table
from harness.report.weighted_ap import weighted_metric
from harness.report.writers import write_tables
from harness.seeding import numpy_rng

log = logging.getLogger(__name__)
KINDS: tuple[str, ...] = TABLE_KINDS
_CONFIG_TABLES: dict[str, Callable[..., Table]] = {"ablation": ablation_table, "pretrain": pretrain_table}


def table_modes(sweep: SweepConfig) -> dict[str, tuple[str, ...]]:
    """The modes of each table, in order, from the config: the memory table shows the ablation's modes."""
    return {
        "ablation": sweep.ablation_modes,
        "pretrain": sweep.pretrain_modes,
        "models": sweep.model_modes,
        "memory": sweep.ablation_modes,
        "controls": sweep.control_modes,
        # the floor first, then every configuration of the ablation and the controls
        "strata": tuple(dict.fromkeys(("blind", *sweep.ablation_modes, *sweep.control_modes))),
    }


def infer_control_seeds(rows: pd.DataFrame) -> tuple[int, ...]:
    """Without a config: the seeds only ACP ran (no other mode ran them), i.e. the negative control's runs."""
    others = {int(s) for s in rows.loc[rows["mode"] != BASELINE, "seed"]}
    if not others:
        return ()
    return tuple(sorted({int(s) for s in rows.loc[rows["mode"] == BASELINE, "seed"]} - others))


class _Matcher:
    """Matches each run's predictions to the ground truth once (cached), for the significance tests."""

    def __init__(self, ground_truth: str | None) -> None:
        self.ground_truth = ground_truth
        self._gt: dict[tuple[str, str, frozenset[str]], Any] = {}
        self._matches: dict[str, Any] = {}

    def __call__(self, row: pd.Series) -> Any:
        from harness.evaluation.detection import load_ground_truth, match_detections
        from harness.evaluation.predictions import load_predictions

        key = str(row["row_path"])
        if key not in self._matches:
            gt_path = self.ground_truth or row.get("ground_truth")
            if not gt_path or (isinstance(gt_path, float) and pd.isna(gt_path)):
                raise LofiError(f"{key}: no ground_truth in the row; pass --ground-truth GT (or --no-stats)")
            subset = str(row.get("split") or "validation")
            excluded = excluded_test_videos(row, subset)
            gt_key = (str(gt_path), subset, excluded)
            if gt_key not in self._gt:
                self._gt[gt_key] = load_ground_truth(gt_path, subset=subset, exclude=excluded)
            pred = row.get("predictions")
            if not pred or not Path(pred).exists():
                raise LofiError(f"{key}: predictions file {pred!r} is missing; re-run the run or pass --no-stats")
            # the pipeline's own predictions: a class without instances in this split has no AP (dropped)
            preds = load_predictions(pred, self._gt[gt_key], absent_labels="drop")
            matches = match_detections(self._gt[gt_key], preds)
            # The tests re-evaluate the saved predictions: they must reproduce the row's own number.
            recomputed = float(weighted_metric(matches, np.ones((1, len(matches.video_ids))))[0])
            if not np.isclose(recomputed, float(row["average_mAP"]), rtol=0, atol=1e-6):
                log.warning(
                    "%s: predictions give average mAP %.6f but the row says %.6f; Δ/p use the predictions",
                    key,
                    recomputed,
                    float(row["average_mAP"]),
                )
            self._matches[key] = matches
        return self._matches[key]


def excluded_test_videos(row: pd.Series, subset: str) -> frozenset[str]:
    """The ``subset`` videos a run left out of its evaluation (``data.missing: skip``: no file), from the list its
    row names; the tests evaluate against the same ground truth as the run did."""
    rec = row.get("missing_videos")
    if not isinstance(rec, Mapping) or rec.get("policy") != "skip" or not rec.get("list"):
        return frozenset()
    try:
        lines = Path(str(rec["list"])).read_text(encoding="utf-8").splitlines()
    except OSError:
        raise LofiError(
            f"{row['row_path']}: the list of missing videos {rec['list']} is gone; re-run the run or pass --no-stats"
        ) from None
    pairs = (line.split("\t", 1) for line in lines if line and not line.startswith("#"))
    return frozenset(vid for s, vid in pairs if s == subset)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def ground_truth_classes(ground_truth: str | Path, subset: str) -> dict[str, str]:
    """Each ``subset`` video's class as the pipeline's classifier learns it: the label covering most of the video
    (``harness.pipeline.targets.dominant_label``; videos without instances have none)."""
    from harness.data.annotations import read_annotations
    from harness.pipeline.targets import dominant_label

    dataset = read_annotations(ground_truth, clip_segments=True)
    return {v.id: dominant_label(v) for v in dataset.subset(subset) if v.segments}


def oracle_average_map(proposals: str | Path | Mapping[str, Any], gt: Any, labels: Mapping[str, str]) -> float:
    """Average mAP of class-agnostic ``proposals`` (official layout) labelled with each video's ground-truth class:
    one-hot class scores fused as the pipeline fuses the classifier's (``fuse_with_classes``, top-1 class), so
    every proposal keeps its score and gets the right label. ``gt``: the ``DetectionGroundTruth`` of the split;
    videos without a ground-truth class get no detection."""
    from harness.evaluation.detection import evaluate_detection
    from harness.evaluation.predictions import load_predictions

    props = load_predictions(proposals, gt, require_label=False)
    return float(evaluate_detection(gt, oracle_predictions(props, gt, labels)).average_mAP)


def oracle_predictions(props: Any, gt: Any, labels: Mapping[str, str]) -> Any:
    """The class oracle's predictions as ``load_predictions`` reads the entries ``fuse_with_classes(..., one_hot,
    top_k_classes=1)`` gives per labelled video (videos in ground-truth order, each video's proposals by score,
    descending, ties in file order; the one-hot score multiplies by 1.0, which changes no bit), built from
    ``props``' arrays: building and re-reading those dicts cost several times the evaluation itself. Same arrays,
    same warnings."""
    from harness.evaluation.predictions import DetectionPredictions, check_videos

    video_class = np.array([gt.class_index[labels[v]] if v in labels else -1 for v in gt.video_ids], np.int64)
    video = np.asarray(props.video, dtype=np.int64)
    kept = np.flatnonzero(video >= 0)
    kept = kept[video_class[video[kept]] >= 0]
    order = kept[np.lexsort((-props.score[kept], video[kept]))]  # stable: ties keep file order
    names_idx = np.unique(video[order])
    if not names_idx.size:
        log.warning('<predictions>: "results" is empty, so there is nothing to evaluate (mAP is 0 by definition)')
    check_videos("<predictions>", [gt.video_ids[i] for i in names_idx], names_idx, gt, from_file=False)
    return DetectionPredictions(
        source="<predictions>",
        video=video[order],
        label=video_class[video[order]],
        score=props.score[order],
        segments=props.segments[order],
    )


def classifier_top1(
    labels: Mapping[str, str], class_scores: str | Path | None = None, predictions: str | Path | None = None
) -> float:
    """Top-1 accuracy of the video-level classifier over the videos in ``labels``: the argmax of the shared
    ``class_scores`` JSON (``{"classes": [...], "scores": {video_id: [p_c, ...]}}``), or, for runs that fused
    their own linear probe (no shared file), the label of each video's best-scored prediction (the fused score
    is proposal x class score, so the top entry carries the top class)."""
    import json

    if not labels:
        return float("nan")
    if class_scores is not None:
        data = json.loads(Path(class_scores).read_text(encoding="utf-8"))
        classes, scores = list(data["classes"]), data["scores"]
        missing = [v for v in labels if v not in scores]
        if missing:
            raise LofiError(f"{class_scores}: no class scores for test video {missing[0]} ({len(missing)} missing)")
        top = {v: classes[int(np.argmax(scores[v]))] for v in labels}
    elif predictions is not None:
        results = json.loads(Path(predictions).read_text(encoding="utf-8"))["results"]
        top = {v: max(results[v], key=lambda e: e["score"])["label"] for v in labels if results.get(v)}
    else:
        return float("nan")
    return float(np.mean([top.get(v) == c for v, c in labels.items()]))


class _Oracle:
    """Per run: the class-oracle average mAP and the classifier's top-1 accuracy (ground truth read once)."""

    def __init__(self, ground_truth: str | None) -> None:
        self.ground_truth = ground_truth
        self._gt: dict[tuple[str, str, frozenset[str]], tuple[Any, dict[str, str]]] = {}
        self._top1: dict[tuple[str, str, str], float] = {}

    def _truth(self, row: pd.Series) -> tuple[Any, dict[str, str]]:
        from harness.evaluation.detection import load_ground_truth

        gt_path = self.ground_truth or row.get("ground_truth")
        if _missing(gt_path):
            raise LofiError(f"{row['row_path']}: no ground_truth in the row; pass --ground-truth GT (or --no-stats)")
        subset = str(row.get("split") or "validation")
        key = (str(gt_path), subset, excluded_test_videos(row, subset))
        if key not in self._gt:
            gt = load_ground_truth(key[0], subset=subset, exclude=key[2])
            labels = {v: c for v, c in ground_truth_classes(key[0], subset).items() if v not in key[2]}
            self._gt[key] = (gt, labels)
        return self._gt[key]

    def __call__(self, row: pd.Series) -> tuple[float, float]:
        """(oracle average mAP, top-1 accuracy), NaN where the row records no proposals / class scores."""
        proposals, scores = row.get("proposals"), row.get("class_scores")
        if _missing(proposals) and _missing(scores) and _missing(row.get("predictions")):
            return float("nan"), float("nan")
        gt, labels = self._truth(row)
        oracle = float("nan")
        if not _missing(proposals):
            if not Path(proposals).exists():
                raise LofiError(f"{row['row_path']}: proposals file {proposals!r} is missing; re-run or --no-stats")
            oracle = oracle_average_map(proposals, gt, labels)
        key = (str(scores), str(row.get("predictions")), gt.source + gt.subset)
        if key not in self._top1:
            self._top1[key] = classifier_top1(
                labels,
                None if _missing(scores) else scores,
                None if _missing(row.get("predictions")) else row.get("predictions"),
            )
        return oracle, self._top1[key]

    def annotate(self, rows: pd.DataFrame) -> pd.DataFrame:
        values = [self(r) for _, r in rows.iterrows()]
        return rows.assign(**{ORACLE_COLUMN: [v[0] for v in values], TOP1_COLUMN: [v[1] for v in values]})


@dataclasses.dataclass(frozen=True)
class _Tests:
    """How the comparisons are computed (None of them when ``enabled`` is false)."""

    match: _Matcher
    n_boot: int
    n_perm: int
    seed: int
    enabled: bool

    def _runs(self, rows: pd.DataFrame) -> tuple[list[Any], list[int]]:
        sub = rows.sort_values("seed")
        return [self.match(r) for _, r in sub.iterrows()], [int(s) for s in sub["seed"]]

    def _compare(self, groups: Mapping[str, pd.DataFrame], *purpose: str) -> dict[str, Comparison]:
        runs, seeds = {}, {}
        for key, sub in groups.items():
            runs[key], seeds[key] = self._runs(sub)
        return compare_to_baseline(
            runs, seeds, BASELINE, n_boot=self.n_boot, n_perm=self.n_perm, rng=numpy_rng(self.seed, "report", *purpose)
        )

    def compare(self, rows: pd.DataFrame, modes: Sequence[str], *purpose: str) -> dict[str, Comparison]:
        """Every mode of ``modes`` in ``rows`` against ACP, Holm across them; {} without a baseline or tests."""
        present = order_modes(rows["mode"], modes)
        if not self.enabled or BASELINE not in present or len(present) < 2:
            return {}
        return self._compare({m: rows[rows["mode"] == m] for m in present}, *purpose)

    def compare_pairs(self, rows: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
        """Each (a, b) of ``pairs`` whose modes both ran: b against a (Δ = b − a), Holm across the pairs."""
        present = set(rows["mode"])
        out = []
        for a, b in (p for p in pairs if p[0] in present and p[1] in present):
            groups = {m: rows[rows["mode"] == m] for m in (a, b)}
            runs, seeds = zip(*(self._runs(g) for g in groups.values()))
            rng = numpy_rng(self.seed, "report", "pairs", a, b)
            c = compare_to_baseline(
                dict(zip(groups, runs)), dict(zip(groups, seeds)), a, n_boot=self.n_boot, n_perm=self.n_perm, rng=rng
            )[b]
            out.append(c)
        adjusted = holm([c.p_value for c in out])
        return [dataclasses.replace(c, p_adjusted=float(a)) for c, a in zip(out, adjusted)]

    def compare_controls(
        self, main: pd.DataFrame, negative: pd.DataFrame, modes: Sequence[str], *purpose: str
    ) -> dict[str, Comparison]:
        """The control modes and the negative control (ACP on other seeds) against ACP, Holm across them."""
        present = order_modes(main["mode"], modes)
        if not self.enabled or BASELINE not in present:
            return {}
        groups = {m: main[main["mode"] == m] for m in present}
        if not negative.empty:
            groups[NEGATIVE] = negative
        return self._compare(groups, "controls", *purpose) if len(groups) > 1 else {}

    def shares(self, rows: pd.DataFrame, modes: Sequence[str], *purpose: str) -> dict[str, RatioResult] | None:
        """Each mode's share of the end-to-end gain, (mode - ACP) / (e2e-full - ACP), from ONE joint bootstrap of
        every mode (the same videos and seeds for all); None without ACP, e2e-full or tests."""
        present = order_modes(rows["mode"], modes)
        if not self.enabled or BASELINE not in present or REFERENCE not in present:
            return None
        order = [BASELINE, REFERENCE, *(m for m in present if m not in (BASELINE, REFERENCE))]
        runs = [self._runs(rows[rows["mode"] == m]) for m in order]
        joint = joint_bootstrap(
            [r for r, _ in runs],
            seeds=[s for _, s in runs],
            n_boot=self.n_boot,
            rng=numpy_rng(self.seed, "report", "share", *purpose),
        )
        return {m: share_of_gain(joint, base=0, config=j, reference=1) for j, m in enumerate(order) if j >= 2}

    def compare_models(
        self, rows: pd.DataFrame, modes: Sequence[str], dataset: str
    ) -> dict[str, dict[str, Comparison]]:
        """Per "encoder/head": its modes against its ACP; Holm across every encoder × head × mode comparison."""
        out = {
            f"{e}/{h}": self.compare(sub, modes, "models", dataset, e, h)
            for (e, h), sub in rows.groupby(["encoder", "head"], sort=True)
        }
        flat = [(k, m, c) for k, comps in out.items() for m, c in comps.items()]
        adjusted = holm([c.p_value for _, _, c in flat])
        for (k, m, c), a in zip(flat, adjusted):
            out[k][m] = dataclasses.replace(c, p_adjusted=float(a))
        return out


def _controls(
    main: pd.DataFrame,
    negative: pd.DataFrame,
    tests: _Tests,
    oracle: _Oracle,
    modes: Sequence[str] | None,
    control_seeds: Sequence[int],
) -> Table | None:
    """The controls table of one dataset/encoder/head (None when it has no ACP or nothing to compare it with)."""
    present = order_modes(main["mode"], modes)
    if BASELINE not in present or (len(present) < 2 and negative.empty):
        return None
    used = pd.concat([main[main["mode"].isin(present)], negative])
    if tests.enabled:
        used = oracle.annotate(used)
    first = used.iloc[0]
    comps = tests.compare_controls(
        main, negative, present, str(first["dataset"]), str(first["encoder"]), str(first["head"])
    )
    return controls_table(used, comps, modes=modes, control_seeds=control_seeds)


def _strata(rows: pd.DataFrame, tests: _Tests, modes: Sequence[str], ground_truth: str | None) -> Table:
    """The strata table of one dataset/encoder/head: tIoU ranges always, video strata when the runs' predictions
    can be re-evaluated (not with --no-stats) and the dataset ships ``strata.json``."""
    from harness.report import strata
    from harness.report.rows import mode_label

    used = rows[rows["mode"].isin(modes)]
    annotated, sizes = strata.annotate(used, tests.match if tests.enabled else None, ground_truth)
    pairs = tests.compare_pairs(used, strata.FIDELITY_PAIRS) if tests.enabled else []
    return strata.strata_table(annotated, modes, mode_label, sizes, pairs=pairs)


def _check_request(kinds: Sequence[str], n_boot: int, n_perm: int | None) -> None:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise LofiError(f"unknown table(s) {unknown or '(none)'}; use a subset of {', '.join(KINDS)}")
    if n_boot < 1 or (n_perm is not None and n_perm < 1):
        raise LofiError("--n-boot and --n-perm must be at least 1")


def _draw(sub: pd.DataFrame, out: Path, group: tuple[str, str, str], modes: list[str] | None) -> list[Path]:
    """The two figures of one (dataset, encoder, head) group: mAP vs tIoU, average mAP vs activation memory."""
    from harness.report import plots as figures  # matplotlib: imported only when drawing

    dataset, encoder, head = group
    tiou_png, memory_png = plot_files(out, dataset, encoder, head)
    return [
        figures.plot_map_vs_tiou(sub, tiou_png, modes=modes, title=f"mAP vs tIoU — {dataset}, {encoder}, {head}"),
        figures.plot_map_vs_memory(
            sub, memory_png, modes=modes, title=f"avg mAP vs activation memory — {dataset}, {encoder}, {head}"
        ),
    ]


def build_report(
    rows: pd.DataFrame,
    *,
    out: str | Path,
    kinds: Sequence[str] = KINDS,
    modes: Mapping[str, Sequence[str]] | None = None,
    n_boot: int = 1000,
    n_perm: int | None = None,
    seed: int = 0,
    ground_truth: str | None = None,
    stats: bool = True,
    plots: bool = True,
    control_seeds: Sequence[int] | None = None,
    step_bench: Sequence[Mapping[str, Any]] = (),
) -> list[Path]:
    """Build and write the ``kinds`` tables (and the plots) for every dataset/encoder/head group in ``rows``.

    ``modes`` maps a kind to the modes its table shows, in order (``table_modes(cfg.sweep)``); a kind it does
    not name shows every mode present. ``stats=False`` skips the tests, the gain shares and the class oracle (no
    predictions needed); ``n_perm`` defaults to ``n_boot``; ``ground_truth`` overrides each row's.
    ``control_seeds`` (``cfg.sweep.control_seeds``): the seeds of the negative control, whose ACP runs only the
    controls table shows (None: the seeds only ACP ran, ``infer_control_seeds``). ``step_bench``: ``lofi bench step
    --json`` rows whose peak memory, step time and frames/s the memory table shows. Returns the written paths."""
    _check_request(kinds, n_boot, n_perm)
    modes = dict(modes or {})
    out = Path(out)
    tests = _Tests(_Matcher(ground_truth), n_boot, n_perm or n_boot, seed, stats)
    control_seeds = tuple(control_seeds) if control_seeds is not None else infer_control_seeds(rows)
    oracle = _Oracle(ground_truth)
    per_kind: dict[str, list[Table]] = {k: [] for k in kinds}
    written: list[Path] = []

    def shown(kind: str, sub: pd.DataFrame) -> list[str]:
        return order_modes(sub["mode"], modes.get(kind))

    # the plots show every mode the requested tables show, in their order (None: every mode in the rows)
    plot_modes = list(dict.fromkeys(m for k in kinds for m in modes[k])) if all(k in modes for k in kinds) else None

    for (dataset, encoder, head), group in rows.groupby(["dataset", "encoder", "head"], sort=True):
        # the negative control's ACP runs (ACP on the control seeds) belong to the controls table only
        sub, negative = split_control_seeds(group, control_seeds)
        for kind in (k for k in kinds if k in _CONFIG_TABLES):
            if shown(kind, sub):
                comps = tests.compare(sub, shown(kind, sub), kind, dataset, encoder, head)
                extra = (
                    {"shares": tests.shares(sub, shown(kind, sub), dataset, encoder, head)}
                    if kind == "ablation"
                    else {}
                )
                per_kind[kind].append(_CONFIG_TABLES[kind](sub, comps, modes=modes.get(kind), **extra))
        if "controls" in kinds:
            table = _controls(sub, negative, tests, oracle, modes.get("controls"), control_seeds)
            if table is not None:
                per_kind["controls"].append(table)
        if "strata" in kinds and shown("strata", sub):
            per_kind["strata"].append(_strata(sub, tests, shown("strata", sub), ground_truth))
        if plots:
            written += _draw(sub, out, (dataset, encoder, head), plot_modes)
    for dataset, sub in split_control_seeds(rows, control_seeds)[0].groupby("dataset", sort=True):
        if "models" in kinds and shown("models", sub):
            comps = tests.compare_models(sub, shown("models", sub), str(dataset))
            per_kind["models"].append(models_table(sub, comps, modes=modes.get("models")))
        if "memory" in kinds and shown("memory", sub):
            per_kind["memory"].append(memory_table(sub, modes=modes.get("memory"), step_bench=step_bench))
    for kind in kinds:
        if not per_kind[kind]:
            log.warning("no rows fit the %s table; skipped", kind)
            continue
        written += write_tables(per_kind[kind], out, f"table_{kind}")
    return written
