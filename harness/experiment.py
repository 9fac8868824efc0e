"""The experiment config: frozen pydantic models, parsed once from YAML (+ ``key=value`` overrides).

``config/*.yaml`` are instances of ``ExperimentConfig``; an unknown key, a wrong type, a value out of its range or
an impossible combination (a fidelity below one snippet or the minimum frame size) is an error naming the file,
the key, the value and the fix — raised when the config is loaded, before any work starts. Mode and seed are not
config: they come from the command line (``lofi run --mode --seed``) so that one config file describes a whole
sweep.

Types are strict: an int field rejects ``2.5``, ``"2"`` and ``true``; a float field takes ints and, besides
numbers, only a string that YAML 1.2 reads as a float (``"1e-4"``: PyYAML's YAML 1.1 loader, which Snakemake uses,
leaves it a string; ``harness.config`` loads YAML with YAML 1.2 floats). Copies go through
``harness.config.evolve``, which validates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Ge, MinLen
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness.config import YAML12_FLOAT, load_config, to_dict, yaml_load
from harness.fidelity import MIN_SIZE, PAPER_RATIOS
from harness.modes import MODES


# ---------------------------------------------------------------------------------------------- field types
def _number(value: Any) -> Any:
    if isinstance(value, str) and YAML12_FLOAT.fullmatch(value.strip()):
        return float(yaml_load(value))
    return value


Int = Annotated[int, Strict()]  # no floats (2.5, 2.0), strings or booleans
Float = Annotated[float, Strict(), AllowInfNan(False), BeforeValidator(_number)]  # ints welcome, no bools
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Name = Annotated[str, Strict(), MinLen(1)]
# Names that become file/folder names, MLflow names and command-line arguments of the workflow's shell commands
# (encoder, head, dataset, subset names): plain words only, so no config value can leave a folder or reach a shell
# as code, whatever quoting a rule uses.
IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
Ident = Annotated[str, Strict(), MinLen(1), StringConstraints(pattern=IDENT_PATTERN)]
# A folder of the sweep (sweep.results): a path, but without spaces, quotes or shell metacharacters ($ ` ; | & ...).
SAFE_PATH_PATTERN = r"^[A-Za-z0-9_./+@=,:~-]+$"
SafePath = Annotated[str, Strict(), MinLen(1), StringConstraints(pattern=SAFE_PATH_PATTERN)]
Seed = Annotated[int, Strict(), Ge(0)]
Ratio = Annotated[float, Strict(), AllowInfNan(False), Ge(1), BeforeValidator(_number)]  # Ge first: schema
Mode = Literal[MODES]  # type: ignore[valid-type]


def invalid(key: str, value: Any, problem: str, fix: str) -> PydanticCustomError:
    """A model validator's error; ``key`` is dotted, relative to the model that raises it."""
    return PydanticCustomError(
        "config_invalid",
        "{key} = {value}: {problem}; {fix}",
        {"key": key, "value": value, "problem": problem, "fix": fix},
    )


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else v
    return out


class ConfigModel(BaseModel):
    """Frozen, closed (unknown keys are errors); a partial mapping for a nested section keeps that field's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # field name -> the fix printed when the value is out of its range (harness.config formats errors)
    fix_hints: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _partial_sections(cls, data: Any) -> Any:
        # `pretrain: {optim: {lr: 0.01}}` overrides only lr on top of *this field's* default (lr 0.05 → 0.01,
        # momentum 0.9 kept), which may differ from the nested class's own defaults (OptimConfig().lr is 0.1).
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            value = out.get(name)
            if isinstance(value, Mapping):
                default = field.get_default(call_default_factory=True)
                if isinstance(default, BaseModel):
                    out[name] = _merge(default.model_dump(), value)
        return out


# ---------------------------------------------------------------------------------------------- the sections
class DataConfig(ConfigModel):
    name: Ident = "synthetic"  # the dataset's name in tables: synthetic | activitynet | hacs | thumos14
    # Synthetic benchmark: generated into `root` when `synthetic_profile` is set, by `lofi data synth` (the workflow's
    # data job) or by `lofi run` / `lofi search` before their first stage; a stage alone (`lofi stage`) never generates.
    synthetic_profile: Str | None = "smoke"
    synthetic_seed: Seed = 0
    root: Path = Path("data/synthetic-smoke")  # folder holding annotations and videos
    annotations: Name = "annotations.json"  # relative to root (or absolute)
    layout: Name = "auto"  # annotation layout, see `lofi data stats --help`
    # the folder of the video files (relative to root) when annotations carry no "video" path: v_<id>.mp4, the
    # official crawler's name (<id>.mp4 and .mkv/.webm downloads are found too: harness/data/files.py)
    video_dir: Str = ""
    video_ext: Str = ".mp4"  # the extension tried first
    # segments past their video's end are clipped and counted (the official ActivityNet-1.3 file has 215);
    # false = strict: such a segment stops the run (see harness/data/annotations.py)
    clip_segments: Bool = True
    train_subset: Ident = "training"
    val_subset: Ident = "validation"  # model selection / Optuna; never the test split
    # > 0: move this fraction of train_subset (chosen by a hash of the video id, so fixed) into a new subset named
    # val_subset. For datasets whose reported split is their validation set (ActivityNet, HACS: test labels are private).
    val_holdout: Float = Field(0.0, ge=0, lt=1)
    test_subset: Ident = "testing"  # the split the tables report
    acp_source: Str = "clips/index.json"  # trimmed clips of other classes (relative to root); "" = use weights
    icp_source: Str = "images/index.json"  # still images (relative to root); "" = use timm ImageNet weights
    cache_dir: Path = Path(".cache/frames")
    max_side: Int = Field(0, ge=0)  # decoded frames are stored with the longer side at most this (0 = as decoded)
    skip_corrupt: Bool = False  # skip undecodable videos with a warning (counted) instead of stopping
    # Annotated videos without a file (a partial download: ~3% of ActivityNet is gone from YouTube), decided once
    # when the dataset is read: "error" = stop, naming the count, the names looked for and the fix; "skip" = leave
    # them out of every subset (their test instances are not evaluated: how ActivityNet results are usually
    # reported, e.g. OpenTAD's and BMN's 4,728 of 4,926 validation videos); "miss" = leave them out of training and
    # validation, keep their test instances as misses (what a full download would be scored against). Either way
    # the run's row records the count and the list's file, and the tables say it under the table.
    missing: Literal["error", "skip", "miss"] = "error"
    # Where frames come from: "decoded" = each video decoded whole once, kept as uint8 .npy under cache_dir (exact
    # pixels; right for short videos such as the synthetic ones); "prepared" = each video re-encoded once
    # (`lofi data prepare`) to H.264 at max_side under cache_dir/store, and only the frames a batch needs are decoded
    # (lossy, store_crf; right for long videos: a few MB per ActivityNet video instead of ~0.4 GB).
    store: Literal["decoded", "prepared"] = "decoded"
    store_crf: Int = Field(20, ge=0, le=51)  # H.264 constant quality of the prepared store (lower = better)
    store_gop: Int = Field(16, ge=1)  # keyframe interval of the prepared store (shorter = cheaper seeks, bigger)

    fix_hints: ClassVar[dict[str, str]] = {
        "val_holdout": "use a fraction in [0, 1), e.g. 0.1 (0 = no holdout)",
        "max_side": "use 0 (as decoded) or a size in pixels",
        "store_crf": "use an H.264 CRF in [0, 51], e.g. 20",
        "store_gop": "use a keyframe interval >= 1 frame, e.g. 16",
    }

    def annotations_path(self) -> Path:
        p = Path(self.annotations)
        return p if p.is_absolute() else self.root / p

    @model_validator(mode="after")
    def _subsets(self) -> DataConfig:
        if self.val_subset == self.test_subset:
            raise invalid(
                "val_subset",
                self.val_subset,
                "model selection would read the test split (test_subset)",
                "use another subset, e.g. a holdout of train_subset via val_holdout",
            )
        if self.val_holdout > 0 and self.val_subset == self.train_subset:
            raise invalid(
                "val_subset",
                self.val_subset,
                "val_holdout moves videos out of train_subset into val_subset, so they must differ",
                "name the held-out subset, e.g. holdout",
            )
        return self


class FidelityConfig(ConfigModel):
    """Full fidelity: L snippets × F frames (``stride`` apart) × size²."""

    snippets: Int = Field(16, ge=1)
    frames: Int = Field(2, ge=1)
    stride: Int = Field(2, ge=1)
    size: Int = Field(32, ge=1)


class EncoderConfig(ConfigModel):
    name: Ident = "tsm_resnet_tiny"
    pretrained: Bool = False  # timm ImageNet weights by model name (needs the hub)
    checkpoint: Str = ""  # local weights file (timm / plain state dict / TSM K400 layout)
    shift_over: Literal["snippet", "video"] = "video"
    grad_checkpointing: Bool = False
    channels_last: Bool = False


class OptimConfig(ConfigModel):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Float = Field(0.1, gt=0)
    momentum: Float = Field(0.0, ge=0, lt=1)
    weight_decay: Float = Field(1e-4, ge=0)
    epochs: Int = Field(1, ge=1)
    step_size: Int = Field(5, ge=1)  # lr multiplied by `gamma` every `step_size` epochs
    gamma: Float = Field(0.5, gt=0, le=1)
    batch_size: Int = Field(16, ge=1)
    accumulate: Int = Field(1, ge=1)  # gradient accumulation steps per optimiser step

    fix_hints: ClassVar[dict[str, str]] = {
        "lr": "set a positive learning rate",
        "momentum": "use a momentum in [0, 1), e.g. 0.9 (0 = none)",
        "weight_decay": "use 0 (none) or a positive decay such as 1e-4",
        "gamma": "use a decay factor in (0, 1], e.g. 0.1 (1 = constant lr)",
        "step_size": "use a number of epochs >= 1",
        "epochs": "train for at least one epoch",
        "batch_size": "use a batch of at least one sample",
        "accumulate": "use 1 (no accumulation) or more steps",
    }

    @model_validator(mode="after")
    def _accumulate(self) -> OptimConfig:
        if self.accumulate > self.batch_size:
            raise invalid(
                "accumulate",
                self.accumulate,
                f"more accumulation steps than batch_size = {self.batch_size} samples",
                f"use accumulate <= {self.batch_size}",
            )
        return self


class PretrainConfig(ConfigModel):
    optim: OptimConfig = OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=4, batch_size=32, step_size=3)
    clip_frames: Int = Field(4, ge=1)  # frames per trimmed clip (ACP, ACP+)
    clips_per_segment: Int = Field(1, ge=1)  # ACP+: clips drawn from each trimmed training segment
    finetune: OptimConfig = OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, epochs=2, batch_size=32)  # ACP+


class LofiConfig(ConfigModel):
    head: Ident = "gtad"  # the TAL head trained with the encoder (features are shared by every final head)
    optim: OptimConfig = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=1e-4, epochs=3, batch_size=16)
    c_l: Int = Field(1, ge=1)
    c_s: Int = Field(16, ge=1)
    r_t: Ratio = 1.0  # `lofi-custom` only
    r_s: Ratio = 1.0  # `lofi-custom` only
    # encoder lr = optim.lr × this (head at optim.lr); 0 would leave the ACP encoder untouched and report it as LoFi
    encoder_lr_scale: Float = Field(1.0, gt=0)
    # After the LoFi stage, before features: re-estimate the encoder's BatchNorm running statistics at FULL
    # fidelity on the training videos (harness.pipeline.features.recalibrate_batchnorm). Part of the features
    # stage's key, not the LoFi stage's (training is the same). The paper does not do it (docs/architecture.md).
    bn_recalibrate: Bool = False

    fix_hints: ClassVar[dict[str, str]] = {
        "r_t": "use a ratio >= 1 (below 1 would exceed full fidelity)",
        "r_s": "use a ratio >= 1 (below 1 would exceed full fidelity)",
        "c_l": "switch fidelity every c_l >= 1 epochs",
        "c_s": "switch fidelity every c_s >= 1 mini-batches",
        "encoder_lr_scale": "use a positive scale (the frozen ACP encoder is the acp mode, not a LoFi run)",
    }


class HeadConfig(ConfigModel):
    name: Ident = "gtad"
    max_duration: Int = Field(0, ge=0)  # 0 = L (every anchor 0 <= t_s < t_e <= L)
    # Widths and samples per proposal; the published heads' values are the defaults. The CPU synthetic benchmark
    # uses smaller ones: the published G-TAD costs seconds per step on 2 cores.
    hidden: Int = Field(256, ge=1)
    hidden_2d: Int = Field(128, ge=1)
    hidden_3d: Int = Field(512, ge=1)
    samples: Int = Field(32, ge=1)  # G-TAD SGAlign inner samples / BMN samples per proposal
    # G-TAD only: apply the proposal branch's first 1×1 conv before SGAlign (both linear, so identical outputs and
    # parameters; ~3× faster on CPU, but the activation memory then differs from the published head's)
    fused_projection: Bool = False
    # G-TAD only: kernel of the proposal branch's two localisation convs (padding (k - 1) / 2). The published code's
    # kern_2d: 1 on ActivityNet and HACS (config/activitynet.yaml, hacs.yaml), 3 on THUMOS-14. 3 here: every table of
    # the synthetic benchmark (the default sweep) was measured with it; changing it changes those numbers.
    kernel_2d: Int = Field(3, ge=1)
    # PEM regression's low-IoU group (IoU <= 0.3): true keeps IoU = 0 cells in it (this project's synthetic
    # benchmark, whose tables were measured so); false is G-TAD's and BMN's code (0 < IoU <= 0.3), set by the real-data
    # configs. See heads/losses.py.
    pem_low_zero: Bool = True
    # Validation mAP during training (curves in MLflow, Optuna pruning) after every k-th epoch; 0 = only the final
    # validation after training, which is always measured. Each costs about a fifth of a small head's epoch.
    validate_every: Int = Field(1, ge=0)
    # Video-level class scores fused with the proposals: "finetuned" = the ACP+ model, computed once per seed and
    # shared by every mode (as the field's fixed external classifier); "features" = a linear probe trained on each
    # run's own features; or the path of an external scores JSON (see harness/pipeline/classify.py).
    class_scores: Name = "finetuned"
    optim: OptimConfig = OptimConfig(
        optimizer="adam", lr=4e-3, weight_decay=1e-4, epochs=10, step_size=5, gamma=0.1, batch_size=16
    )
    classifier_optim: OptimConfig = OptimConfig(
        optimizer="adam", lr=1e-2, weight_decay=1e-4, epochs=30, step_size=20, gamma=0.1, batch_size=32
    )

    fix_hints: ClassVar[dict[str, str]] = {
        "max_duration": "use 0 (= L) or a number of snippets",
        "kernel_2d": "use an odd kernel: 1 (G-TAD's ActivityNet/HACS code) or 3 (its THUMOS-14 code)",
    }

    @model_validator(mode="after")
    def _odd_kernel(self) -> HeadConfig:
        if self.kernel_2d % 2 == 0:
            raise invalid(
                "kernel_2d", self.kernel_2d, "even (the proposal map would change size)", self.fix_hints["kernel_2d"]
            )
        return self


class PostConfig(ConfigModel):
    nms: Literal["gaussian", "bmn"] = "gaussian"
    sigma: Float = Field(0.8, gt=0)  # G-TAD: score·exp(−IoU²/sigma)
    alpha: Float = Field(0.4, gt=0)  # BMN
    low: Float = Field(0.5, ge=0, le=1)
    high: Float = Field(0.9, ge=0, le=1)
    top_k: Int = Field(100, ge=1)
    top_k_classes: Int = Field(2, ge=1)

    fix_hints: ClassVar[dict[str, str]] = {
        "sigma": "use a positive Gaussian soft-NMS width, e.g. 0.8",
        "alpha": "use a positive BMN soft-NMS width, e.g. 0.4",
        "low": "use an IoU threshold in [0, 1]",
        "high": "use an IoU threshold in [0, 1]",
    }

    @model_validator(mode="after")
    def _thresholds(self) -> PostConfig:
        if self.low > self.high:
            raise invalid("low", self.low, f"above post.high = {self.high}", "use low <= high")
        return self


class TrackingConfig(ConfigModel):
    enabled: Bool = True
    uri: Str = ""  # "" = $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db
    experiment: Ident = "lofi-bench"
    # Record each run beside the SQLite store and log them all in one process later (`lofi track flush`; the
    # workflow's table jobs do it): saves each job MLflow's ~3 CPU-s import, loses live curves (a server is
    # always logged live). harness/tracking_deferred.py.
    defer: Bool = False


class RuntimeConfig(ConfigModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # torch intra-op threads (0 = torch's default). Part of the config on purpose: a different thread count splits
    # float reductions differently, so the same seed gives (slightly) different numbers.
    threads: Int = Field(0, ge=0)
    progress: Bool = True
    deterministic: Bool = True
    # Under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only) instead of each rank's
    # shard. Off, a world of N behaves as one process with accumulate = N (see harness/pipeline/distributed.py).
    sync_bn: Bool = False
    # The input pipeline (harness.data.loader): worker processes that decode and sample clips (0 = in the training
    # process), batches each worker prepares ahead, page-locked batches for asynchronous copies to the GPU. None of
    # them changes a number: a batch is a pure function of (seed, epoch, step).
    workers: Int = Field(0, ge=0)
    prefetch: Int = Field(2, ge=1)
    pin_memory: Bool = True  # only on CUDA
    # In-memory cache of whole decoded videos (data.store = decoded), in bytes, per process (each worker has one)
    cache_bytes: Int = Field(2**30, ge=0)
    # Speed switches for CUDA (kept off by default: see benchmarks/gpu_check.sh for their measured effect)
    cudnn_benchmark: Bool = False  # let cuDNN pick convolution algorithms by timing (not bit-reproducible)
    compile: Bool = False  # torch.compile the encoder (tens of seconds to compile per process)
    # A run whose training diverged (harness/divergence.py: a stage's loss ends well above where it started, or the
    # head's validation mAP collapses): "warn" writes its row flagged (`diverged`) with a one-line warning, "fail"
    # stops the run with a one-line error before its row is written.
    on_divergence: Literal["warn", "fail"] = "warn"

    fix_hints: ClassVar[dict[str, str]] = {
        "threads": "use 0 (torch's default) or a thread count",
        "workers": "use 0 (load in the training process) or a number of worker processes",
        "prefetch": "use >= 1 batches prepared ahead per worker",
        "cache_bytes": "use 0 (no in-memory cache) or a size in bytes, e.g. 1073741824",
    }


class OptunaConfig(ConfigModel):
    trials: Int = Field(12, ge=1)
    sampler_seed: Seed = 0
    r_t: tuple[Ratio, Ratio] = (1.0, 8.0)  # search ranges (continuous)
    r_s: tuple[Ratio, Ratio] = (1.0, 4.0)
    multi_objective: Bool = False  # maximise validation mAP and minimise activation memory
    search_seed: Seed = 0  # the run seed used inside the search
    fresh_seeds: tuple[Seed, ...] = (100, 101, 102)  # re-runs of the best (r_t, r_s) for the test-split report
    pruning: Bool = True
    workers: Int = Field(1, ge=1)  # the workflow's parallel `lofi search` jobs on the one study

    fix_hints: ClassVar[dict[str, str]] = {"trials": "run at least one trial", "workers": "use at least one worker"}

    @model_validator(mode="after")
    def _ranges(self) -> OptunaConfig:
        for name in ("r_t", "r_s"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise invalid(name, [lo, hi], "not a (low, high) range", f"use 1 <= low <= high, e.g. [{hi:g}, {lo:g}]")
        return self


class SweepConfig(ConfigModel):
    """What the Snakefile sweeps; single-run commands ignore it."""

    results: SafePath = "results"
    encoders: tuple[Ident, ...] = Field(("tsm_resnet_tiny",), min_length=1)
    heads: tuple[Ident, ...] = Field(("gtad", "bmn"), min_length=1)
    # e2e-full is the upper reference each LoFi row's share of the end-to-end gain is measured against
    ablation_modes: tuple[Mode, ...] = ("acp", "lofi-S", "lofi-T", "lofi-ST", "lofi-short", "lofi-long", "e2e-full")
    pretrain_modes: tuple[Mode, ...] = ("icp", "acp", "acp+", "lofi-long")
    model_modes: tuple[Mode, ...] = ("acp", "lofi-long")
    # The controls table: blind (head on zeroed features: the temporal prior + classifier alone), the positive
    # control e2e-full, and the negative control: acp on `control_seeds` against acp on `seeds`.
    control_modes: tuple[Mode, ...] = ("blind", "acp", "e2e-full")
    seeds: tuple[Seed, ...] = Field((0, 1, 2), min_length=1)
    control_seeds: tuple[Seed, ...] = Field((10, 11, 12), min_length=1)
    n_boot: Int = Field(1000, ge=1)
    threads_per_job: Int = Field(1, ge=1)
    gpu_per_job: Int = Field(0, ge=0)  # GPU jobs declare resources: gpu=this (limit with --resources gpu=N)
    # What a training job asks a cluster for (Snakemake resources mem_mb and runtime, in MB and minutes).
    mem_mb_per_job: Int = Field(4000, ge=100)
    runtime_per_job: Int = Field(60, ge=1)
    # The command that runs a training job's `lofi` subcommand; {gpus} = gpu_per_job. For one process per GPU:
    # "torchrun --standalone --nproc_per_node {gpus} -m harness.cli"
    launcher: Name = "lofi"
    # On a cluster: a seed's stage and run jobs join the Snakemake group `stages` and go to the scheduler as one job
    # (one submission, one status poll, one Snakefile parse instead of one per stage), inside which they run in
    # order and in parallel up to --cores; `--group-components stages=N` packs N seeds into one job. For sweeps of
    # short jobs; off for hours-long stages. No effect without a cluster executor. Snakemake 9.27 with the SLURM
    # plugin 2.8 cannot submit a group whose job-script name passes 255 bytes (more than ~4 stage rules per seed
    # with this workflow's rule names): the submission hangs (docs/cluster.md); hence off in every shipped config.
    cluster_group: Bool = False
    # Inference stages (features, the classifier's scores) run in the job of the stage they read, in its process,
    # right after it (`lofi stage … --then`): one process start (torch, timm, the config: ~5 CPU-s) fewer per
    # encoder. The cost: a change that touches only such a stage (e.g. lofi.bn_recalibrate, or videos added to the
    # val/test subsets) reruns its encoder's training as well, since Snakemake reruns a job whole. On for the
    # synthetic benchmark, whose jobs are start-up-bound; off by default, for hours-long real stages.
    join_stages: Bool = False
    optuna: OptunaConfig = Field(default_factory=OptunaConfig)

    @model_validator(mode="after")
    def _control_seeds_are_other_seeds(self) -> SweepConfig:
        if set(self.control_seeds) & set(self.seeds):
            raise invalid(
                "control_seeds",
                list(self.control_seeds),
                "shares seeds with sweep.seeds",
                "use seeds the sweep does not run (the negative control compares two sets of seeds)",
            )
        return self

    @model_validator(mode="after")
    def _launcher_template(self) -> SweepConfig:
        try:
            self.launcher.format(gpus=self.gpu_per_job)
        except (KeyError, IndexError, ValueError) as exc:
            raise invalid(
                "launcher",
                self.launcher,
                f"is not a command template ({type(exc).__name__}: {exc})",
                "use e.g. lofi, or torchrun --standalone --nproc_per_node {gpus} -m harness.cli",
            ) from None
        if "\n" in self.launcher:
            raise invalid("launcher", self.launcher, "spans several lines", "write the command on one line")
        return self

    fix_hints: ClassVar[dict[str, str]] = {
        "n_boot": "use at least one bootstrap resample (1000 is usual)",
        "gpu_per_job": "use 0 (CPU jobs) or a GPU count",
        "mem_mb_per_job": "use the memory one training job needs, in MB (e.g. 32000)",
        "runtime_per_job": "use the minutes one training job may run (e.g. 720)",
    }


def _smallest_size(r_s: float) -> int:
    """The smallest full frame size that ``r_s`` reduces to at least MIN_SIZE pixels (Python's round)."""
    size = MIN_SIZE
    while round(size / r_s) < MIN_SIZE:
        size += 1
    return size


class ExperimentConfig(ConfigModel):
    data: DataConfig = Field(default_factory=DataConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    lofi: LofiConfig = Field(default_factory=LofiConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    post: PostConfig = Field(default_factory=PostConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @model_validator(mode="after")
    def _fidelities(self) -> ExperimentConfig:
        """Every fidelity a mode can use has at least one snippet and frames of at least MIN_SIZE pixels.

        harness.fidelity.fidelity_shape rejects r_t > snippets and clamps the size to MIN_SIZE; a clamped size
        would silently train at another r_s than the one recorded, so it is an error here.
        """
        L, size = self.fidelity.snippets, self.fidelity.size
        # the paper's fixed ratios (S/T/ST fidelities and the long/short cycles over them) and full fidelity
        for name, (r_t, r_s) in {**PAPER_RATIOS, "full": (1.0, 1.0)}.items():
            what = f"the paper's {name} fidelity" if name != "full" else "full fidelity"
            if r_t > L:
                raise invalid(
                    "fidelity.snippets",
                    L,
                    f"{what} (r_t = {r_t:g}) would leave fewer than one snippet",
                    f"use fidelity.snippets >= {math.ceil(r_t)}",
                )
            if round(size / r_s) < MIN_SIZE:
                raise invalid(
                    "fidelity.size",
                    size,
                    f"{what} (r_s = {r_s:.3g}) gives {round(size / r_s)} px frames, below the {MIN_SIZE} px minimum",
                    f"use fidelity.size >= {max(_smallest_size(r) for _, r in PAPER_RATIOS.values())}",
                )
        # lofi-custom's ratios
        if self.lofi.r_t > L:
            raise invalid(
                "lofi.r_t",
                self.lofi.r_t,
                f"leaves fewer than one of fidelity.snippets = {L} snippets",
                f"use 1 <= lofi.r_t <= {L}",
            )
        if round(size / self.lofi.r_s) < MIN_SIZE:
            raise invalid(
                "lofi.r_s",
                self.lofi.r_s,
                f"gives {round(size / self.lofi.r_s)} px frames at "
                f"fidelity.size = {size}, below the {MIN_SIZE} px minimum",
                f"use 1 <= lofi.r_s <= {size / MIN_SIZE:g}",
            )
        # the Optuna search samples up to the upper bounds
        o = self.sweep.optuna
        if o.r_t[1] > L:
            raise invalid(
                "sweep.optuna.r_t",
                list(o.r_t),
                f"the upper bound leaves fewer than one of fidelity.snippets = {L} snippets",
                f"use an upper bound <= {L}",
            )
        if round(size / o.r_s[1]) < MIN_SIZE:
            raise invalid(
                "sweep.optuna.r_s",
                list(o.r_s),
                f"the upper bound gives {round(size / o.r_s[1])} px "
                f"frames at fidelity.size = {size}, below the {MIN_SIZE} px minimum",
                f"use an upper bound <= {size / MIN_SIZE:g}",
            )
        return self


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    return load_config(ExperimentConfig, path, overrides)


def config_hash(cfg: object, *parts: object) -> str:
    """A short stable hash of a config (and extra parts such as mode and seed) for provenance."""
    blob = json.dumps([to_dict(cfg), [str(p) for p in parts]], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
