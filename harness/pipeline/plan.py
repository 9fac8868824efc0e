"""The stage plan: the one place that knows, for every mode, which stages a run needs, each stage's folder, the
config sections and upstream stages each stage reads, and from those its key.

`lofi run`, `lofi stage`, the Snakefile (workflow/rules/*.smk) and the Optuna objective all take folders and keys
from here. A stage's key is a hash of exactly what it reads: its kind, variant and seed, the config sections it
reads (minus keys that cannot change its outputs) and the keys of the stages it reads from. So a changed config
value changes the key of every stage that depends on it and of nothing else, and a finished stage (its
``done.json`` records the key) is never reused for another key (see ``stage.stage_done``).

Not part of any key: ``runtime`` (device, threads, progress: how a stage runs, not what it computes — the thread
count does change float reductions in the last bits, see docs/architecture.md), ``tracking``, ``sweep``,
``head.validate_every`` (the validation curve's cadence) and ``data.cache_dir`` (where decoded frames are cached).
Part of the keys of the stages that read the target's videos, for real data: a digest of the video ids of each
subset they read, after ``data.missing`` (``harness.pipeline.data.video_sets``), so adding videos reruns them.

Layout under a stages root ``R`` (the sweep uses ``results/<dataset>/<encoder>``; ``lofi run`` its ``--stages``,
default ``--out``)::

    R/pretrain/<icp|acp|acpplus>/seed<S>      encoder.pt (+ classifier for acp/acp+)
    R/lofi/<cycle>/seed<S>                    encoder.pt after the LoFi stage (custom: lofi/custom-<key8>)
    R/features/<source>/seed<S>               videos/<id>.npy, full-fidelity features of that encoder
    R/classifier/seed<S>                      class_scores.json from the ACP+ model (head.class_scores: finetuned)
    RUN/head                                  the final head's predictions and metrics; RUN/row.json

where ``RUN`` is a run's own folder (the sweep: ``results/<dataset>/<encoder>/<head>/<mode>/seed<S>``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import evolve, to_dict
from harness.errors import LofiError
from harness.experiment import ExperimentConfig
from harness.modes import BN_RECALIBRATED_MODES, MODE_PLAN, MODES, PRETRAIN_MODES, ZEROED_MODES
from harness.pipeline.files import DONE, ROW
from harness.pipeline.stage import slug
from harness.pipeline.stages import STAGES, spec_of

StageKind = str  # a name in the stage registry (harness/pipeline/stages.py)

BASELINE_MODE = "acp"  # the frozen-encoder pipeline every table compares against
BN_SUFFIX = "+bn"  # a features stage's variant: the LoFi encoder with BatchNorm re-estimated at full fidelity


def check_mode(mode: str) -> None:
    if mode not in MODE_PLAN:
        raise LofiError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")


@dataclass(frozen=True)
class Stage:
    """One unit of work with its folder and key; ``needs`` are the stages whose outputs it reads."""

    kind: StageKind
    variant: str  # pretrain: icp|acp|acp+; lofi: the cycle; features: the encoder's source; classifier/head: ""
    seed: int
    folder: Path
    key: str
    needs: tuple[Stage, ...] = ()

    @property
    def name(self) -> str:
        """e.g. ``pretrain-acpplus-seed0``: for logs and workflow rule names."""
        parts = [self.kind, slug(self.variant)] if self.variant else [self.kind]
        return "-".join([*parts, f"seed{self.seed}"])

    @property
    def done(self) -> Path:
        return self.folder / DONE

    def need(self, kind: StageKind, variant: str | None = None) -> Stage:
        for s in self.needs:
            if s.kind == kind and (variant is None or s.variant == variant):
                return s
        raise KeyError(f"{self.name} reads no {kind} {variant or ''} stage")

    def closure(self) -> Iterator[Stage]:
        """This stage and everything it reads, upstream first, each once."""
        seen: set[Path] = set()

        def walk(s: Stage) -> Iterator[Stage]:
            for n in s.needs:
                yield from walk(n)
            if s.folder not in seen:
                seen.add(s.folder)
                yield s

        return walk(self)


@dataclass(frozen=True)
class RunPlan:
    """Every stage one configuration (mode, seed, final head) needs, and where its row goes."""

    mode: str
    seed: int
    head_name: str
    run_dir: Path
    head: Stage  # the final head; its closure is the whole run
    key: str  # the run's key: its row.json is valid for this key only

    @property
    def stages(self) -> list[Stage]:
        return list(self.head.closure())

    @property
    def row(self) -> Path:
        return self.run_dir / ROW

    @property
    def encoder(self) -> Stage:
        """The stage whose encoder.pt the features are extracted with."""
        return self.head.need("features").needs[0]

    def get(self, kind: StageKind, variant: str | None = None) -> Stage | None:
        for s in self.stages:
            if s.kind == kind and (variant is None or s.variant == variant):
                return s
        return None


# ---------------------------------------------------------------------------------------- what each stage reads
def _sections(cfg: ExperimentConfig, names: tuple[str, ...]) -> dict[str, Any]:
    full = to_dict(cfg)
    out = {n: copy.deepcopy(full[n]) for n in names}
    if "data" in out:
        out["data"].pop("cache_dir", None)
    return out


def _lofi_view(cfg: ExperimentConfig, cycle: str) -> dict[str, Any]:
    """The lofi section as a cycle reads it: c_l only for long, c_s only for short, the ratios only for custom."""
    lofi = to_dict(cfg.lofi)
    drop = {"bn_recalibrate"}  # read by the features stage after training, not by the LoFi stage
    if cycle != "custom":
        drop |= {"r_t", "r_s"}
    if cycle != "long":
        drop.add("c_l")
    if cycle != "short":
        drop.add("c_s")
    return {k: v for k, v in lofi.items() if k not in drop}


def _head_view(cfg: ExperimentConfig, *, final: bool) -> dict[str, Any]:
    """The head section: the LoFi stage builds ``lofi.head`` with these widths but never trains the final head.
    ``validate_every`` is in no key: it only thins the validation curve (tests/test_pipeline.py)."""
    head = to_dict(cfg.head)
    head.pop("validate_every", None)
    if not final:
        for k in ("name", "optim", "classifier_optim", "class_scores"):
            head.pop(k, None)
    return head


# The layout of the files stages write: part of every key, so a change (2: features and checkpoints are sealed
# files, harness/integrity.py) reruns the stages written before it instead of failing on their files.
STAGE_FORMAT = 2


def _key(kind: str, variant: str, seed: int, reads: dict[str, Any], needs: tuple[Stage, ...]) -> str:
    blob = json.dumps(
        {
            "format": STAGE_FORMAT,
            "kind": kind,
            "variant": variant,
            "seed": seed,
            "reads": reads,
            "needs": [n.key for n in needs],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Planner:
    """Builds stages for one config under one stages root; the same (kind, variant, seed) is one Stage object."""

    def __init__(self, cfg: ExperimentConfig, root: Path) -> None:
        from harness.pipeline.data import video_sets

        self.cfg = cfg
        self.root = Path(root)
        self._memo: dict[tuple[str, str, int], Stage] = {}
        self._video_sets = video_sets(cfg.data)  # real data: which videos each subset has (after data.missing)

    def _videos(self, reads: dict[str, Any], *, all_subsets: bool) -> dict[str, Any]:
        """``reads`` plus the digest of the video ids a stage reads (the training subset, or every subset), so that
        adding videos makes it out of date; nothing for the synthetic benchmark (fixed by profile and seed)."""
        if self._video_sets is None:
            return reads
        d = self.cfg.data
        subsets = dict.fromkeys((d.train_subset, d.val_subset, d.test_subset) if all_subsets else (d.train_subset,))
        return {**reads, "videos": {s: self._video_sets[s] for s in subsets}}

    def _stage(
        self,
        kind: StageKind,
        variant: str,
        seed: int,
        folder: Path,
        reads: dict[str, Any],
        needs: tuple[Stage, ...] = (),
    ) -> Stage:
        return Stage(kind, variant, seed, folder, _key(kind, variant, seed, reads, needs), needs)

    def stage(self, kind: str, variant: str, seed: int) -> Stage | None:
        """The stage of ``kind`` (a registered stage kind) for ``variant`` (its CLI option's value) and ``seed``."""
        spec = spec_of(kind)
        return spec.plan(self, variant, seed) if spec.plan is not None else self.generic(kind, variant, seed)

    def generic(self, kind: str, variant: str, seed: int) -> Stage:
        """A stage planned from its declaration alone: ``R/<kind>[/<variant>]/seed<S>``, keyed by the config sections
        it declares (``reads``) and its upstream stages (``needs``)."""
        memo = (kind, variant, seed)
        if memo not in self._memo:
            spec = spec_of(kind)
            folder = self.root / kind / slug(variant) if variant else self.root / kind
            reads = _sections(self.cfg, spec.reads)
            self._memo[memo] = self._stage(
                kind, variant, seed, folder / f"seed{seed}", reads, spec.needs(self, variant, seed)
            )
        return self._memo[memo]

    def pretrain(self, mode: str, seed: int) -> Stage:
        memo = ("pretrain", mode, seed)
        if memo not in self._memo:
            if mode not in PRETRAIN_MODES:
                raise LofiError(f"pre-training mode '{mode}' is unknown; use one of {', '.join(PRETRAIN_MODES)}")
            needs = (self.pretrain("acp", seed),) if mode == "acp+" else ()
            reads = _sections(self.cfg, ("data", "fidelity", "encoder", "pretrain"))
            if mode == "acp+":  # fine-tuned on the target's training segments
                reads = self._videos(reads, all_subsets=False)
            self._memo[memo] = self._stage(
                "pretrain", mode, seed, self.root / "pretrain" / slug(mode) / f"seed{seed}", reads, needs
            )
        return self._memo[memo]

    def lofi(self, cycle: str, seed: int) -> Stage:
        memo = ("lofi", cycle, seed)
        if memo not in self._memo:
            reads = {
                **_sections(self.cfg, ("data", "fidelity", "encoder")),
                "lofi": _lofi_view(self.cfg, cycle),
                "head": _head_view(self.cfg, final=False),
            }
            reads = self._videos(reads, all_subsets=False)
            needs = (self.pretrain("acp", seed),)
            key = _key("lofi", cycle, seed, reads, needs)
            # Optuna trials share one root: each custom (r_t, r_s) gets its own folder
            name = f"custom-{key[:8]}" if cycle == "custom" else cycle
            self._memo[memo] = Stage("lofi", cycle, seed, self.root / "lofi" / name / f"seed{seed}", key, needs)
        return self._memo[memo]

    def encoder(self, mode: str, seed: int) -> Stage:
        """The stage whose encoder a mode extracts features with."""
        check_mode(mode)
        pre, cycle = MODE_PLAN[mode]
        return self.lofi(cycle, seed) if cycle else self.pretrain(pre, seed)

    def features(self, mode: str, seed: int) -> Stage:
        enc = self.encoder(mode, seed)
        if mode in ZEROED_MODES:  # zeros of the encoder's shape: a folder of their own, named by the mode
            source = mode
        elif enc.kind == "pretrain":
            source = slug(enc.variant)
        else:
            source = f"lofi-{enc.variant}"
        recal = enc.kind == "lofi" and (self.cfg.lofi.bn_recalibrate or mode in BN_RECALIBRATED_MODES)
        suffix = BN_SUFFIX if recal else ""
        source += suffix
        memo = ("features", (source if enc.kind == "pretrain" else enc.folder.parent.name) + suffix, seed)
        if memo not in self._memo:
            reads = self._videos(_sections(self.cfg, ("data", "fidelity", "encoder")), all_subsets=True)
            if recal:  # only then: the keys of every other features stage stay what they were
                reads["bn_recalibrate"] = True
            name = f"lofi-{enc.folder.parent.name}" if enc.kind == "lofi" else source
            folder = self.root / "features" / (slug(name + suffix) if recal else name)
            self._memo[memo] = Stage(
                "features", source, seed, folder / f"seed{seed}", _key("features", source, seed, reads, (enc,)), (enc,)
            )
        return self._memo[memo]

    def classifier(self, seed: int) -> Stage | None:
        """The shared video-level class scores (None: the head trains its own probe or reads a scores file)."""
        if self.cfg.head.class_scores != "finetuned":
            return None
        memo = ("classifier", "", seed)
        if memo not in self._memo:
            reads = self._videos(_sections(self.cfg, ("data", "fidelity", "encoder")), all_subsets=True)
            self._memo[memo] = self._stage(
                "classifier", "", seed, self.root / "classifier" / f"seed{seed}", reads, (self.pretrain("acp+", seed),)
            )
        return self._memo[memo]

    def run(self, mode: str, seed: int, run_dir: Path) -> RunPlan:
        check_mode(mode)
        feats = self.features(mode, seed)
        cls = self.classifier(seed)
        reads = {**_sections(self.cfg, ("data", "fidelity", "post")), "head": _head_view(self.cfg, final=True)}
        reads = self._videos(reads, all_subsets=True)
        if self.cfg.head.class_scores not in ("finetuned", "features"):  # an external scores file: its content counts
            reads["class_scores_file"] = _file_identity(Path(self.cfg.head.class_scores))
        needs = (feats,) + ((cls,) if cls is not None else ())
        # generic stages every head reads (none of the built-in kinds: their keys stay as they were)
        needs += tuple(self.generic(s.name, "", seed) for s in STAGES.values() if s.read_by_head)
        head = Stage("head", "", seed, Path(run_dir) / "head", _key("head", mode, seed, reads, needs), needs)
        run_key = _key("run", mode, seed, {"lofi_head": self.cfg.lofi.head}, (head,))
        return RunPlan(mode, seed, self.cfg.head.name, Path(run_dir), head, run_key)


def features_mode(stage: Stage) -> str:
    """A mode whose features are ``stage`` (a features stage): what `lofi stage features --mode` takes."""
    if stage.variant in ZEROED_MODES:
        return stage.variant
    enc = stage.needs[0]
    if enc.kind == "pretrain":
        return enc.variant
    recal = stage.variant.endswith(BN_SUFFIX)
    # with lofi.bn_recalibrate on, the plain mode plans the same stage as its +bn twin
    candidates = [m for m, (_, cycle) in MODE_PLAN.items() if cycle == enc.variant]
    return next((m for m in candidates if (m in BN_RECALIBRATED_MODES) == recal), candidates[0])


def _file_identity(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LofiError(f"{path}: head.class_scores file not found; give a scores JSON, 'finetuned' or 'features'")
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def plan_run(cfg: ExperimentConfig, *, mode: str, seed: int, run_dir: Path, stages_root: Path | None = None) -> RunPlan:
    """The stages of one configuration; shared stages live under ``stages_root`` (default: ``run_dir``)."""
    return Planner(cfg, stages_root if stages_root is not None else run_dir).run(mode, seed, run_dir)


# ------------------------------------------------------------------------------------------------------ the sweep
@dataclass(frozen=True)
class SweepRun:
    encoder: str
    head: str
    plan: RunPlan


def sweep_root(cfg: ExperimentConfig, encoder: str) -> Path:
    return Path(cfg.sweep.results) / cfg.data.name / encoder


def run_dir(cfg: ExperimentConfig, encoder: str, head: str, mode: str, seed: int) -> Path:
    return sweep_root(cfg, encoder) / head / slug(mode) / f"seed{seed}"


def sweep_config(cfg: ExperimentConfig, encoder: str, head: str) -> ExperimentConfig:
    """The config one sweep job runs with: the sweep's encoder and final head filled in."""
    return evolve(cfg, encoder=evolve(cfg.encoder, name=encoder), head=evolve(cfg.head, name=head))


def sweep_runs(
    cfg: ExperimentConfig,
    modes: tuple[str, ...],
    *,
    encoders: tuple[str, ...] | None = None,
    heads: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
) -> list[SweepRun]:
    """Every (encoder, head, mode, seed) run of a sweep table, planned under the sweep's results folder."""
    out = []
    for enc in encoders if encoders is not None else cfg.sweep.encoders:
        for head in heads if heads is not None else cfg.sweep.heads:
            planner = Planner(sweep_config(cfg, enc, head), sweep_root(cfg, enc))
            for mode in modes:
                for seed in seeds if seeds is not None else cfg.sweep.seeds:
                    out.append(SweepRun(enc, head, planner.run(mode, seed, run_dir(cfg, enc, head, mode, seed))))
    return out


def unique_stages(runs: list[SweepRun]) -> list[tuple[SweepRun, Stage]]:
    """Each shared stage once (with a run that needs it, for its config); a folder planned with two keys is a bug."""
    seen: dict[Path, Stage] = {}
    out = []
    for r in runs:
        for s in r.plan.stages:
            if not spec_of(s.kind).shared:
                continue
            if s.folder in seen:
                if seen[s.folder].key != s.key:
                    raise LofiError(f"{s.folder}: planned twice with different keys ({seen[s.folder].key}, {s.key})")
                continue
            seen[s.folder] = s
            out.append((r, s))
    return out


def stage_users(targets: dict[str, list[SweepRun]]) -> dict[Path, frozenset[str]]:
    """Which targets (e.g. the workflow's table jobs, each with its runs) read each stage folder."""
    users: dict[Path, set[str]] = {}
    for name, runs in targets.items():
        for run in runs:
            for stage in run.plan.stages:
                users.setdefault(stage.folder, set()).add(name)
    return {folder: frozenset(names) for folder, names in users.items()}


def job_stages(
    stages: list[tuple[SweepRun, Stage]], *, join: bool, users: dict[Path, frozenset[str]] | None = None
) -> list[tuple[SweepRun, tuple[Stage, ...]]]:
    """The workflow's jobs of shared stages: each stage alone, or (``join``: ``sweep.join_stages``) each stage
    whose kind ``joins_upstream`` and that reads exactly one stage of the list in that stage's job, after it —
    provided every target that reads that stage reads this one too (``users``, from ``stage_users``), so that
    making one target never computes a stage it does not read (e.g. ACP+ features, which only the pretrain table
    reads, stay out of the ACP+ job every table needs for its classifier). ``stages`` comes upstream first
    (``unique_stages``); so do the stages of each job."""
    jobs: list[tuple[SweepRun, list[Stage]]] = []
    job_of: dict[Path, int] = {}
    for run, stage in stages:
        ups = stage.needs
        if (
            join
            and spec_of(stage.kind).joins_upstream
            and len(ups) == 1
            and ups[0].folder in job_of
            and (users is None or users.get(stage.folder, frozenset()) >= users.get(ups[0].folder, frozenset()))
        ):
            i = job_of[ups[0].folder]
            jobs[i][1].append(stage)
        else:
            i = len(jobs)
            jobs.append((run, [stage]))
        job_of[stage.folder] = i
    return [(run, tuple(group)) for run, group in jobs]
