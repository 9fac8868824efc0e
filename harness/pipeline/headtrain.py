"""Stage 3b: the TAL head trained from scratch on frozen full-fidelity features, the video-level classifier,
inference, post-processing (soft-NMS, class fusion), the predictions files and their evaluation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.data.model import TALDataset, Video
from harness.errors import LofiError
from harness.experiment import ExperimentConfig, OptimConfig
from harness.io import write_json_atomic
from harness.pipeline.distributed import current, wrap
from harness.pipeline.features import load_features
from harness.pipeline.files import METRICS, SCORES, results_file
from harness.pipeline.fit import fit, make_optimizer
from harness.pipeline.models import build_head
from harness.pipeline.plan import Stage
from harness.pipeline.runtime import autocast
from harness.pipeline.stage import StageContext, StageResult
from harness.pipeline.targets import dominant_label, tal_targets
from harness.seeding import torch_generator
from harness.tracking import Tracker

log = logging.getLogger(__name__)


class VideoClassifier(nn.Module):
    """Video-level class scores from pooled snippet features (stands in for the external classifier)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, D, L)
        return self.fc(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))


def _train_classifier(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, optim_cfg: OptimConfig, seed: int, device: torch.device
) -> VideoClassifier:
    model = VideoClassifier(feats.shape[1], num_classes).to(device)
    opt = make_optimizer(model.parameters(), optim_cfg)
    trained = wrap(model, device=device)

    def train_step(epoch: int, step: int, micro: int, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return F.cross_entropy(trained(feats[idx].to(device)), labels[idx].to(device)), {}

    fit(
        opt,
        train_step,
        n_items=len(labels),
        optim=optim_cfg,
        seed=seed,
        order_stream=("classifier-order",),
        stage="classifier",
        modules=(trained,),
    )
    return model.eval()


@torch.no_grad()
def predict(
    cfg: ExperimentConfig,
    head: nn.Module,
    class_scores: np.ndarray,
    feats: torch.Tensor,
    videos: list[Video],
    classes: tuple[str, ...],
    device: torch.device,
) -> tuple[dict, dict]:
    """(detections, proposals) in the official results layout, keyed by video id."""
    from harness.postprocess import fuse_with_classes, soft_nms_bmn, soft_nms_gaussian
    from heads.decode import decode_proposals

    head.eval()
    detections: dict[str, list[dict]] = {}
    proposals: dict[str, list[dict]] = {}
    for i in range(0, len(videos), 32):
        x = feats[i : i + 32].to(device)
        with autocast(device, cfg.runtime.amp):
            out = head(x)
        scores = class_scores[i : i + 32]
        for j, v in enumerate(videos[i : i + 32]):
            props = decode_proposals(
                out["start"][j].float().cpu(), out["end"][j].float().cpu(), out["iou_map"][j].float().cpu(), v.duration
            )
            p = cfg.post
            if p.nms == "gaussian":
                props = soft_nms_gaussian(props, sigma=p.sigma, top_k=p.top_k)
            else:  # proposals are in seconds: BMN's gate takes the picked width as a fraction of the video
                props = soft_nms_bmn(props, alpha=p.alpha, low=p.low, high=p.high, top_k=p.top_k, duration=v.duration)
            proposals[v.id] = [
                {"label": "proposal", "score": float(s), "segment": [float(a), float(b)]} for a, b, s in props
            ]
            detections[v.id] = fuse_with_classes(props, scores[j], list(classes), top_k_classes=p.top_k_classes)
    return detections, proposals


def _results_file(results: dict) -> dict:
    return {"version": "lofi-bench", "results": results, "external_data": {"used": False}}


def absent_classes(ds: TALDataset, subset: str) -> list[str]:
    """The dataset's classes without an instance in ``subset`` (ActivityNet's 10% holdout lacks 4 of 200): the
    head may predict them, they have no AP there (see ``evaluate_split``)."""
    present = {s.label for v in ds.subset(subset) for s in v.segments}
    return [c for c in ds.classes if c not in present]


def evaluate_split(ds: TALDataset, subset: str, detections: dict, proposals: dict) -> dict:
    """Metrics of the pipeline's own predictions on ``subset``: a predicted class without instances in the
    subset has no AP and does not stop the run (``absent_labels="drop"``; a user's file is read strictly)."""
    from harness.evaluation.detection import evaluate_detection, load_ground_truth
    from harness.evaluation.predictions import load_predictions
    from harness.evaluation.proposals import evaluate_proposals

    gt = load_ground_truth(ds, subset=subset)
    det = evaluate_detection(gt, load_predictions(_results_file(detections), gt, absent_labels="drop"))
    ar = evaluate_proposals(gt, _results_file(proposals), max_avg_proposals=100)
    return {
        "tiou_thresholds": [float(t) for t in det.tiou_thresholds],
        "mAP": [float(m) for m in det.mAP],
        "average_mAP": float(det.average_mAP),
        **{k: float(v) for k, v in ar.items()},
    }


def video_class_scores(
    cfg: ExperimentConfig,
    classifier: VideoClassifier | None,
    class_scores: Path | None,
    feats: torch.Tensor,
    videos: list[Video],
    classes: tuple[str, ...],
    device: torch.device,
) -> np.ndarray:
    """(N, C) video-level class scores: from the shared scores file, or the run's own linear probe."""
    if classifier is None:
        from harness.pipeline.classify import load_class_scores

        assert class_scores is not None
        return load_class_scores(class_scores, classes, [v.id for v in videos])
    with torch.no_grad():
        return classifier(feats.to(device)).softmax(dim=1).float().cpu().numpy()


def class_scores_file(cfg: ExperimentConfig, head: Stage) -> Path | None:
    """The video-level class scores a head fuses with: the classifier stage's (``head.class_scores: finetuned``),
    a given file, or None: the run's own linear probe on its features (``head.class_scores: features``)."""
    cls = next((s for s in head.needs if s.kind == "classifier"), None)
    if cls is not None:
        return cls.folder / SCORES
    return None if cfg.head.class_scores == "features" else Path(cfg.head.class_scores)


def run(ctx: StageContext) -> StageResult:
    """The head stage: train ``head.name`` from scratch on the features stage's features, predict the validation
    and test subsets, write the predictions, proposals and ``metrics.json`` (the test split's metrics at the top).

    ``ctx.on_epoch(epoch, validation average mAP)`` is called after every validated epoch (Optuna prunes there)."""
    cfg, device, seed = ctx.cfg, ctx.device, ctx.seed
    features = ctx.input("features")
    class_scores = class_scores_file(cfg, ctx.stage)
    ds = ctx.data.ds
    splits = _feature_splits(cfg, ds, features)
    train, val = splits[cfg.data.train_subset], splits[cfg.data.val_subset]
    x_train = load_features(features, [v.id for v in train])
    L = x_train.shape[2]
    targets = tal_targets(train, L, min(L, cfg.head.max_duration or L))
    hc = cfg.head
    head = build_head(cfg, hc.name, in_features=x_train.shape[1], temporal_length=L).to(device)
    opt = make_optimizer(head.parameters(), hc.optim)
    trained = wrap(head, device=device)  # DDP under torchrun; inference below uses the head itself
    _log_absent_classes(cfg, ds)
    t0 = time.perf_counter()
    classifier = None
    if class_scores is None:  # head.class_scores: features, a linear probe on this run's features
        cidx = ds.class_index()
        labels = torch.tensor([cidx[dominant_label(v)] for v in train])
        classifier = _train_classifier(x_train, labels, len(ds.classes), hc.classifier_optim, seed, device)

    def scores_of(x: torch.Tensor, videos: list[Video]) -> np.ndarray:
        return video_class_scores(cfg, classifier, class_scores, x, videos, ds.classes, device)

    x_val = load_features(features, [v.id for v in val])
    validated: dict[int, tuple[dict, dict, dict]] = {}
    history = _fit_head(
        cfg,
        (head, trained, opt),
        x_train,
        targets,
        validation=(x_val, scores_of(x_val, val), val),
        ds=ds,
        seed=seed,
        device=device,
        tracker=ctx.tracker,
        on_epoch=ctx.on_epoch,
        validated=validated,
    )
    train_time = time.perf_counter() - t0
    evaluated = (
        ("validation", cfg.data.val_subset, val),
        ("testing", cfg.data.test_subset, splits[cfg.data.test_subset]),
    )
    # the last epoch's validation is the trained head's: its predictions are the final ones (issue 18)
    final = validated.get(hc.optim.epochs - 1)
    done = {"validation": final} if final is not None else {}
    metrics, written = _predict_and_evaluate(cfg, head, ds, features, evaluated, scores_of, device, ctx.out, done)
    result = _head_result(metrics, history, train_time, ctx.tracker.run_id, current().size)
    if current().main:
        _publish(ctx.out, result, ctx.tracker)
    return StageResult([*written, ctx.out / METRICS], {"head": hc.name})


def _log_absent_classes(cfg: ExperimentConfig, ds: TALDataset) -> None:
    """Say once per stage (not once per validation) which classes the evaluated subsets lack."""
    for subset in dict.fromkeys((cfg.data.val_subset, cfg.data.test_subset)):
        absent = absent_classes(ds, subset)
        if absent:
            log.info(
                "subset '%s' has no instance of %d of %d classes (%s): they have no AP there, and predictions of "
                "them are left out of its mAP",
                subset,
                len(absent),
                len(ds.classes),
                ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else ""),
            )


def finished_metrics(out: Path) -> dict:
    """The metrics of a finished head stage (its ``metrics.json``)."""
    import json

    try:
        return json.loads((out / METRICS).read_text(encoding="utf-8"))
    except ValueError:
        raise LofiError(f"{out / METRICS}: corrupt; delete {out} to train the head again") from None


def _feature_splits(cfg: ExperimentConfig, ds: TALDataset, features: Path) -> dict[str, list[Video]]:
    """The videos of the train, validation and test subsets that have features; an empty subset is an error."""
    have = {p.stem for p in (features / "videos").glob("*.npy")}
    split = {
        s: [v for v in ds.subset(s) if v.id in have]
        for s in (cfg.data.train_subset, cfg.data.val_subset, cfg.data.test_subset)
    }
    for subset, videos in split.items():
        if not videos:  # every video of the split was skipped as undecodable: no metric would mean anything
            raise LofiError(
                f"{features}: no features for any video of subset '{subset}' (all skipped as undecodable?); "
                "fix or replace the videos, then delete the features folder and re-run"
            )
    return split


def _fit_head(
    cfg: ExperimentConfig,
    model: tuple[nn.Module, nn.Module, torch.optim.Optimizer],
    x_train: torch.Tensor,
    targets: dict[str, torch.Tensor],
    *,
    validation: tuple[torch.Tensor, np.ndarray, list[Video]],
    ds: TALDataset,
    seed: int,
    device: torch.device,
    tracker: Tracker,
    on_epoch: Callable[[int, float], None] | None,
    validated: dict[int, tuple[dict, dict, dict]] | None = None,
) -> list[dict[str, float]]:
    """The head's training loop (``fit``): ``model`` = (head, its DDP wrapper, optimiser); validation mAP after every
    ``head.validate_every``-th epoch on ``validation`` = (features, class scores, videos). Returns the history;
    ``validated[epoch]`` receives each validation's (detections, proposals, metrics) (the last epoch's only)."""
    from heads.losses import tal_loss

    head, trained, opt = model
    x_val, s_val, val = validation
    hc = cfg.head

    def train_step(epoch: int, step: int, micro: int, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(device, cfg.runtime.amp):
            outputs = trained(x_train[idx].to(device))
        # the stream of the unaccumulated loop (no micro-batch offset) when a step is one micro-batch
        gen = torch_generator(seed, "head-loss", epoch, step, *((micro,) if micro else ()))
        loss, _ = tal_loss(
            {k: v.float() for k, v in outputs.items()},
            {k: v[idx].to(device) for k, v in targets.items()},
            generator=gen,
            pem_low_zero=hc.pem_low_zero,
        )
        return loss, {}

    def validate(epoch: int) -> dict[str, float]:
        if not hc.validate_every or (epoch + 1) % hc.validate_every:
            return {}
        det, prop = predict(cfg, head, s_val, x_val, val, ds.classes, device)
        metrics = evaluate_split(ds, cfg.data.val_subset, det, prop)
        if validated is not None and epoch == hc.optim.epochs - 1:
            validated[epoch] = (det, prop, metrics)
        return {"val_average_mAP": metrics["average_mAP"]}

    def report(epoch: int, history: list[dict[str, float]]) -> None:
        if on_epoch is not None and "val_average_mAP" in history[-1]:
            on_epoch(epoch, history[-1]["val_average_mAP"])

    return fit(
        opt,
        train_step,
        n_items=len(x_train),
        optim=hc.optim,
        seed=seed,
        order_stream=("head-order",),
        stage=f"head[{hc.name}]",
        modules=(trained,),
        validate=validate,
        on_epoch_end=report,
        tracker=tracker,
        metric_prefix="head",
        progress=cfg.runtime.progress,
    )


def _predict_and_evaluate(
    cfg: ExperimentConfig,
    head: nn.Module,
    ds: TALDataset,
    features: Path,
    evaluated: tuple[tuple[str, str, list[Video]], ...],
    scores_of: Callable[[torch.Tensor, list[Video]], np.ndarray],
    device: torch.device,
    out: Path,
    done: dict[str, tuple[dict, dict, dict]] | None = None,
) -> tuple[dict[str, dict], list[Path]]:
    """Predict every (name, subset, videos) in ``evaluated``, write its predictions and proposals (rank 0) and
    evaluate them: ({name: metrics}, the files written). ``done[name]``: (detections, proposals, metrics) of that
    subset already predicted and evaluated with this head (the last epoch's validation), written as they are."""
    metrics: dict[str, dict] = {}
    written = []
    for name, subset, vids in evaluated:
        if done and name in done:
            det, prop, metrics[name] = done[name]
        else:
            x = load_features(features, [v.id for v in vids])
            det, prop = predict(cfg, head, scores_of(x, vids), x, vids, ds.classes, device)
            metrics[name] = evaluate_split(ds, subset, det, prop)
        for kind, results in (("predictions", det), ("proposals", prop)):
            if current().main:  # every rank predicts the same (its head is the same); one writes
                write_json_atomic(out / results_file(kind, name), _results_file(results), indent=None)
            written.append(out / results_file(kind, name))
    return metrics, written


def _head_result(
    metrics: dict[str, dict], history: list[dict[str, float]], train_time: float, run_id: str, world_size: int
) -> dict:
    """The head stage's ``metrics.json``: the test split's metrics at the top level, both splits in full."""
    test_m = metrics["testing"]
    return {
        "mAP": test_m["mAP"],
        "average_mAP": test_m["average_mAP"],
        "tiou_thresholds": test_m["tiou_thresholds"],
        **{k: v for k, v in test_m.items() if k.startswith("AR@") or k == "AUC"},
        "validation": metrics["validation"],
        "testing": test_m,
        "history": history,
        "time_train_s": train_time,
        "mlflow_run_id": run_id,
        "world_size": world_size,
    }


def _publish(out: Path, result: dict, tracker: Tracker) -> None:
    """Rank 0: write ``metrics.json`` and log the final metrics and files to the stage's MLflow run."""
    write_json_atomic(out / METRICS, result)
    test_m = result["testing"]
    final = {f"mAP_{t:.2f}": m for t, m in zip(test_m["tiou_thresholds"], test_m["mAP"])}
    final.update({"average_mAP": test_m["average_mAP"], "val_average_mAP": result["validation"]["average_mAP"]})
    final.update({k.replace("@", "_"): v for k, v in test_m.items() if k.startswith("AR@") or k == "AUC"})
    tracker.log_metrics(final)
    for f in (METRICS, results_file("predictions", "testing")):
        tracker.log_artifact(out / f)
