"""The experiment config: frozen dataclasses, parsed once from YAML (+ ``key=value`` overrides).

``config/*.yaml`` are instances of ``ExperimentConfig``; an unknown key or a wrong type is an error naming the
key and the file. Mode and seed are not config: they come from the command line (``lofi run --mode --seed``) so
that one config file describes a whole sweep.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from harness.config import load_config, to_dict

MODES: tuple[str, ...] = (
    "icp", "acp", "acp+", "lofi-S", "lofi-T", "lofi-ST", "lofi-long", "lofi-short", "lofi-custom", "e2e-full",
)  # fmt: skip
PRETRAIN_MODES: tuple[str, ...] = ("icp", "acp", "acp+")
# mode -> (pre-training it starts from, LoFi cycle or None when the encoder stays frozen after pre-training)
MODE_PLAN: dict[str, tuple[str, str | None]] = {
    "icp": ("icp", None),
    "acp": ("acp", None),
    "acp+": ("acp+", None),
    "lofi-S": ("acp", "S"),
    "lofi-T": ("acp", "T"),
    "lofi-ST": ("acp", "ST"),
    "lofi-long": ("acp", "long"),
    "lofi-short": ("acp", "short"),
    "lofi-custom": ("acp", "custom"),
    "e2e-full": ("acp", "full"),
}


@dataclass(frozen=True)
class DataConfig:
    name: str = "synthetic"  # the dataset's name in tables: synthetic | activitynet | hacs | thumos14
    # Synthetic benchmark: generated into `root` on first use when `synthetic_profile` is set.
    synthetic_profile: str | None = "smoke"
    synthetic_seed: int = 0
    root: Path = Path("data/synthetic-smoke")  # folder holding annotations and videos
    annotations: str = "annotations.json"  # relative to root (or absolute)
    layout: str = "auto"  # annotation layout, see `lofi data stats --help`
    video_dir: str = ""  # where video files are, relative to root, when annotations carry no "video" path
    video_ext: str = ".mp4"
    clip_segments: bool = False
    train_subset: str = "training"
    val_subset: str = "validation"  # model selection / Optuna; never the test split
    # > 0: move this fraction of train_subset (chosen by a hash of the video id, so fixed) into a new subset named
    # val_subset. For datasets whose reported split is their validation set (ActivityNet, HACS: test labels are private).
    val_holdout: float = 0.0
    test_subset: str = "testing"  # the split the tables report
    acp_source: str = "clips/index.json"  # trimmed clips of other classes (relative to root); "" = use weights
    icp_source: str = "images/index.json"  # still images (relative to root); "" = use timm ImageNet weights
    cache_dir: Path = Path(".cache/frames")
    max_side: int = 0  # decoded frames are stored with the longer side at most this (0 = as decoded)
    skip_corrupt: bool = False  # skip undecodable videos with a warning (counted) instead of stopping

    def annotations_path(self) -> Path:
        p = Path(self.annotations)
        return p if p.is_absolute() else self.root / p


@dataclass(frozen=True)
class FidelityConfig:
    """Full fidelity: L snippets × F frames (``stride`` apart) × size²."""

    snippets: int = 16
    frames: int = 2
    stride: int = 2
    size: int = 32

    def __post_init__(self) -> None:
        for k in ("snippets", "frames", "stride", "size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)} must be at least 1")


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "tsm_resnet_tiny"
    pretrained: bool = False  # timm ImageNet weights by model name (needs the hub)
    checkpoint: str = ""  # local weights file (timm / plain state dict / TSM K400 layout)
    shift_over: Literal["snippet", "video"] = "video"
    grad_checkpointing: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 1e-4
    epochs: int = 1
    step_size: int = 5  # lr multiplied by `gamma` every `step_size` epochs
    gamma: float = 0.5
    batch_size: int = 16
    accumulate: int = 1  # gradient accumulation steps per optimiser step


@dataclass(frozen=True)
class PretrainConfig:
    optim: OptimConfig = OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=4, batch_size=32, step_size=3)
    clip_frames: int = 4  # frames per trimmed clip (ACP, ACP+)
    clips_per_segment: int = 1  # ACP+: clips drawn from each trimmed training segment
    finetune: OptimConfig = OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, epochs=2, batch_size=32)  # ACP+


@dataclass(frozen=True)
class LofiConfig:
    head: str = "gtad"  # the TAL head trained with the encoder (features are shared by every final head)
    optim: OptimConfig = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=1e-4, epochs=3, batch_size=16)
    c_l: int = 1
    c_s: int = 16
    r_t: float = 1.0  # `lofi-custom` only
    r_s: float = 1.0  # `lofi-custom` only
    encoder_lr_scale: float = 1.0  # encoder lr = optim.lr × this (head at optim.lr)


@dataclass(frozen=True)
class HeadConfig:
    name: str = "gtad"
    max_duration: int = 0  # 0 = L (every anchor 0 <= t_s < t_e <= L)
    # Widths and samples per proposal; the published heads' values are the defaults. The CPU synthetic benchmark
    # uses smaller ones: the published G-TAD costs seconds per step on 2 cores.
    hidden: int = 256
    hidden_2d: int = 128
    hidden_3d: int = 512
    samples: int = 32  # G-TAD SGAlign inner samples / BMN samples per proposal
    # G-TAD only: apply the proposal branch's first 1×1 conv before SGAlign (both linear, so identical outputs and
    # parameters; ~3× faster on CPU, but the activation memory then differs from the published head's)
    fused_projection: bool = False
    # Video-level class scores fused with the proposals: "finetuned" = the ACP+ model, computed once per seed and
    # shared by every mode (as the field's fixed external classifier); "features" = a linear probe trained on each
    # run's own features; or the path of an external scores JSON (see harness/pipeline/classify.py).
    class_scores: str = "finetuned"
    optim: OptimConfig = OptimConfig(optimizer="adam", lr=4e-3, weight_decay=1e-4, epochs=10, step_size=5, gamma=0.1, batch_size=16)
    classifier_optim: OptimConfig = OptimConfig(optimizer="adam", lr=1e-2, weight_decay=1e-4, epochs=30, step_size=20, gamma=0.1, batch_size=32)


@dataclass(frozen=True)
class PostConfig:
    nms: Literal["gaussian", "bmn"] = "gaussian"
    sigma: float = 0.8  # G-TAD: score·exp(−IoU²/sigma)
    alpha: float = 0.4  # BMN
    low: float = 0.5
    high: float = 0.9
    top_k: int = 100
    top_k_classes: int = 2


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str = ""  # "" = $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db
    experiment: str = "lofi-bench"


@dataclass(frozen=True)
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # torch intra-op threads (0 = torch's default). Part of the config on purpose: a different thread count splits
    # float reductions differently, so the same seed gives (slightly) different numbers.
    threads: int = 0
    progress: bool = True
    deterministic: bool = True


@dataclass(frozen=True)
class OptunaConfig:
    trials: int = 12
    sampler_seed: int = 0
    r_t: tuple[float, float] = (1.0, 8.0)  # search ranges (continuous)
    r_s: tuple[float, float] = (1.0, 4.0)
    multi_objective: bool = False  # maximise validation mAP and minimise activation memory
    search_seed: int = 0  # the run seed used inside the search
    fresh_seeds: tuple[int, ...] = (100, 101, 102)  # re-runs of the best (r_t, r_s) for the test-split report
    pruning: bool = True


@dataclass(frozen=True)
class SweepConfig:
    """What the Snakefile sweeps; single-run commands ignore it."""

    results: str = "results"
    encoders: tuple[str, ...] = ("tsm_resnet_tiny",)
    heads: tuple[str, ...] = ("gtad", "bmn")
    ablation_modes: tuple[str, ...] = ("acp", "lofi-S", "lofi-T", "lofi-ST", "lofi-short", "lofi-long")
    pretrain_modes: tuple[str, ...] = ("icp", "acp", "acp+", "lofi-long")
    model_modes: tuple[str, ...] = ("acp", "lofi-long")
    seeds: tuple[int, ...] = (0, 1, 2)
    n_boot: int = 1000
    threads_per_job: int = 1
    gpu_per_job: int = 0  # GPU jobs declare resources: gpu=this (limit with --resources gpu=N)
    optuna: OptunaConfig = field(default_factory=OptunaConfig)


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    lofi: LofiConfig = field(default_factory=LofiConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    post: PostConfig = field(default_factory=PostConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    return load_config(ExperimentConfig, path, overrides)


def config_hash(cfg: object, *parts: object) -> str:
    """A short stable hash of a config (and extra parts such as mode and seed) for provenance."""
    blob = json.dumps([to_dict(cfg), [str(p) for p in parts]], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def with_head(cfg: ExperimentConfig, head: str) -> ExperimentConfig:
    return replace(cfg, head=replace(cfg.head, name=head))
