"""Every stage kind, declared once (the protocol: ``harness/pipeline/stage.py``).

``lofi stage <kind>`` (its subcommands and options), ``lofi run`` (``run_all``: each planned stage through
``execute``), the workflow's stage rules (``cli_args``) and the planner's generic stages all read this registry.
Adding a stage kind = a module with its runner + one ``register(StageSpec(...))`` here (see docs/architecture.md).
Importing this module imports no torch: runners are named by ``"module:function"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import LofiError
from harness.modes import MODES, PRETRAIN_MODES
from harness.pipeline.files import ENCODER, METRICS, SCORES
from harness.pipeline.stage import StageOption, StageSpec, slug
from harness.schedule import CYCLES

if TYPE_CHECKING:
    from harness.experiment import ExperimentConfig
    from harness.pipeline.plan import Stage

STAGES: dict[str, StageSpec] = {}


def register(spec: StageSpec) -> StageSpec:
    if spec.name in STAGES:
        raise ValueError(f"stage kind '{spec.name}' is registered twice")
    STAGES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a stage kind (tests register toy stages and remove them again)."""
    STAGES.pop(name, None)


def spec_of(kind: str) -> StageSpec:
    try:
        return STAGES[kind]
    except KeyError:
        raise LofiError(f"unknown stage kind '{kind}'; use one of {', '.join(STAGES)}") from None


def shared_stages() -> list[StageSpec]:
    """The kinds `lofi stage` runs alone and the workflow makes one job of each (all but a run's own head)."""
    return [s for s in STAGES.values() if s.shared]


def cli_args(stage: Stage) -> list[str]:
    """`lofi stage <kind>`'s arguments that plan ``stage`` (the workflow's rules pass them)."""
    return spec_of(stage.kind).cli_args(stage)


def then_arg(stage: Stage) -> str:
    """The value of `lofi stage … --then` that plans ``stage`` in the job of the stage it reads: ``kind=VALUE``
    (the value of its kind's option, e.g. ``features=lofi-S``), or ``kind`` alone for a kind without one."""
    spec = spec_of(stage.kind)
    return f"{spec.name}={spec.option_value(stage)}" if spec.option else spec.name


def parse_then(value: str) -> tuple[StageSpec, str]:
    """``kind[=VALUE]`` (a `--then` value) -> the kind's declaration and its variant option's value."""
    name, _, variant = value.partition("=")
    spec = spec_of(name)
    joinable = ", ".join(s.name for s in STAGES.values() if s.joins_upstream)
    if not spec.shared:
        raise LofiError(f"--then {value}: '{name}' is a run's own stage (`lofi run` trains it); use one of {joinable}")
    if not spec.joins_upstream:
        raise LofiError(f"--then {value}: a {name} stage runs in a job of its own; --then takes {joinable}")
    if spec.option is None:
        if variant:
            raise LofiError(f"--then {value}: {name} takes no value; write --then {name}")
        return spec, ""
    if variant not in spec.option.choices:
        raise LofiError(
            f"--then {value}: {name} needs {spec.option.flag.lstrip('-')}=one of {', '.join(spec.option.choices)}, "
            f"e.g. --then {name}={spec.option.choices[0]}"
        )
    return spec, variant


def _features_mode(stage: Stage) -> str:
    from harness.pipeline.plan import features_mode

    return features_mode(stage)


def _head_name(cfg: ExperimentConfig, stage: Stage) -> tuple[str, str]:
    return "head", cfg.head.name


register(
    StageSpec(
        name="pretrain",
        summary="ICP / ACP / ACP+ classification pre-training -> encoder.pt",
        runner="harness.pipeline.pretrain:run",
        output=ENCODER,
        option=StageOption("--mode", PRETRAIN_MODES),
        plan=lambda planner, variant, seed: planner.pretrain(variant, seed),
        track=lambda cfg, stage: ("mode", stage.variant),
        time_column=lambda stage: f"pretrain_{slug(stage.variant)}",
    )
)
register(
    StageSpec(
        name="lofi",
        summary="encoder + head end-to-end at low fidelity, from the ACP encoder -> encoder.pt",
        runner="harness.pipeline.lofi:run",
        output=ENCODER,
        option=StageOption("--cycle", CYCLES),
        plan=lambda planner, variant, seed: planner.lofi(variant, seed),
        track=lambda cfg, stage: ("cycle", stage.variant),
    )
)
register(
    StageSpec(
        name="features",
        summary="a mode's frozen encoder -> full-fidelity features (one .npy per video)",
        runner="harness.pipeline.features:run",
        option=StageOption("--mode", MODES, "the mode whose encoder is used"),
        plan=lambda planner, variant, seed: planner.features(variant, seed),
        option_value=_features_mode,
        joins_upstream=True,
    )
)
register(
    StageSpec(
        name="classifier",
        summary="video-level class scores of every video from the ACP+ model",
        runner="harness.pipeline.classify:run",
        output=SCORES,
        plan=lambda planner, variant, seed: planner.classifier(seed),
        main_only=True,  # one pass of inference: rank 0 scores every video
        joins_upstream=True,
        unavailable="head.class_scores={cfg.head.class_scores!r}: no shared classifier stage to run "
        "(only head.class_scores: finetuned has one)",
    )
)
register(
    StageSpec(
        name="head",
        summary="the final head on frozen features -> predictions, metrics.json",
        runner="harness.pipeline.headtrain:run",
        output=METRICS,
        track=_head_name,
        shared=False,  # a run's own stage: `lofi run` plans it (Planner.run) and writes the row after it
    )
)
