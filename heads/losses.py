"""BMN's three-term loss, shared by the BMN-layout heads: TEM + 10 · PEM regression + PEM classification.

All terms pool the whole batch (as BMN). Only valid map cells (s + d + 1 <= L) take part.

- TEM: for start and end, class-balanced BCE with positives ``gt > 0.5``. BMN's ``bi_loss`` weights positives by
  ``0.5 · N / P`` and negatives by ``0.5 · N / (N - P)`` before taking the mean over the N entries, which is
  ``-(0.5 · mean_pos log p + 0.5 · mean_neg log(1 - p))``; written that way here with P and N - P clamped to
  >= 1, so a batch without positives (or without negatives) stays finite.
- PEM regression: cells with IoU > 0.7 (high) all count; medium (0.3 < IoU <= 0.7) and low (IoU <= 0.3, valid)
  cells are each kept with probability ``min(1, #high / #medium)`` and ``min(1, #high / #low)``, so each group
  contributes about as many cells as the high group. Loss ``0.5 · Σ w (p - g)² / Σ w`` (BMN's value of
  ``0.5 · sum(mse_loss(p·w, g·w)) / sum(w)``). No high cells → no sampled cells → 0.
  The low group's lower end is a switch, ``pem_low_zero``. The published code of both heads (BMN's
  ``pem_reg_loss_func`` and G-TAD's, every branch) takes ``0 < IoU <= 0.3``: a cell that does not overlap the
  action at all is never sampled. ``pem_low_zero=True`` (the default, and ``head.pem_low_zero``'s default: the
  synthetic benchmark's tables were measured so) also samples IoU = 0 cells (6–11 % of this term, as measured
  in issue 19). It was written as "G-TAD's" rule by mistake (from the G-TAD paper's "< 0.3"); the real-data
  configs set ``head.pem_low_zero: false``, the published rule.
- PEM classification: balanced BCE as TEM with positives IoU > 0.9 and negatives the other valid cells.

Random sampling uses ``generator`` when given (a CPU ``torch.Generator``, e.g.
``harness.seeding.torch_generator(seed, "pem-sampling")``), else torch's global RNG, which
``harness.seeding.seed_everything`` seeds: either way the loss is reproducible from the run seed.
"""

from __future__ import annotations

import torch

from heads.common import valid_map_mask

EPS = 1e-6  # inside the logs, as BMN
HIGH_IOU = 0.7
LOW_IOU = 0.3
POSITIVE_IOU = 0.9
TEM_POSITIVE = 0.5
PEM_REG_WEIGHT = 10.0


def balanced_bce(pred: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``-(0.5 · mean_{positive} log p + 0.5 · mean_{negative} log(1 - p))``; empty groups contribute 0."""
    pos = positive.to(pred.dtype)
    neg = negative.to(pred.dtype)
    loss_pos = (torch.log(pred + EPS) * pos).sum() / pos.sum().clamp(min=1.0)
    loss_neg = (torch.log(1.0 - pred + EPS) * neg).sum() / neg.sum().clamp(min=1.0)
    return -0.5 * (loss_pos + loss_neg)


def tem_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """BMN's ``bi_loss`` for one boundary type; pred and gt (B, L)."""
    positive = gt > TEM_POSITIVE
    return balanced_bce(pred, positive, ~positive)


def _bernoulli_keep(
    prob: torch.Tensor, shape: torch.Size, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    if generator is None:
        u = torch.rand(shape, device=device)
    else:
        u = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return u < prob


def pem_sample_mask(
    gt: torch.Tensor, valid: torch.Tensor, *, generator: torch.Generator | None = None, low_zero: bool = True
) -> torch.Tensor:
    """Bool like ``gt`` (B, D, L): all high cells, medium and low cells sampled to about the high count.

    ``low_zero``: the low group is IoU <= 0.3 (True) or 0 < IoU <= 0.3 (False, the published BMN and G-TAD code).
    The random draws are the same either way."""
    high = (gt > HIGH_IOU) & valid
    medium = (gt > LOW_IOU) & (gt <= HIGH_IOU) & valid
    low = (gt <= LOW_IOU) & valid
    if not low_zero:
        low &= gt > 0
    num_h = high.sum().double()
    r_m = (num_h / medium.sum().clamp(min=1)).clamp(max=1.0)
    r_l = (num_h / low.sum().clamp(min=1)).clamp(max=1.0)
    keep_m = medium & _bernoulli_keep(r_m, gt.shape, gt.device, generator)
    keep_l = low & _bernoulli_keep(r_l, gt.shape, gt.device, generator)
    return high | keep_m | keep_l


def pem_reg_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    low_zero: bool = True,
) -> torch.Tensor:
    """Balanced-sampling MSE ``0.5 · Σ w (p - g)² / Σ w``; pred, gt (B, D, L), valid (D, L) bool."""
    gt = gt * valid
    weights = pem_sample_mask(gt, valid, generator=generator, low_zero=low_zero).to(pred.dtype)
    return 0.5 * (weights * (pred - gt) ** 2).sum() / weights.sum().clamp(min=1.0)


def pem_cls_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Balanced BCE on valid cells, positives IoU > 0.9; pred, gt (B, D, L), valid (D, L) bool."""
    positive = (gt > POSITIVE_IOU) & valid
    negative = (gt <= POSITIVE_IOU) & valid
    return balanced_bce(pred, positive, negative)


def tal_loss(
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    *,
    generator: torch.Generator | None = None,
    pem_low_zero: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(TEM + 10 · PEM_reg + PEM_cls, {"tem", "pem_reg", "pem_cls"})`` for a batch.

    outputs: ``start`` (B, L), ``end`` (B, L), ``iou_map`` (B, 2, D, L) (channel 0 regression, 1 classification).
    targets: ``start`` (B, L), ``end`` (B, L), ``iou_map`` (B, D, L) (see heads/labels.py); unbatched targets of
    one video are accepted when B = 1. The parts are graph-attached tensors (call ``.item()`` to log them).
    ``pem_low_zero``: whether the PEM regression's low group includes IoU = 0 cells (see the module docstring).
    """
    t_start, t_end, t_map = targets["start"], targets["end"], targets["iou_map"]
    if t_map.dim() == 2:
        t_start, t_end, t_map = t_start.unsqueeze(0), t_end.unsqueeze(0), t_map.unsqueeze(0)
    pred_map = outputs["iou_map"]
    if pred_map.shape[0] != t_map.shape[0] or pred_map.shape[2:] != t_map.shape[1:]:
        raise ValueError(
            f"iou_map shapes differ: outputs {tuple(pred_map.shape)} vs targets {tuple(t_map.shape)}; "
            "build targets with the head's (L, D)"
        )
    dtype = pred_map.dtype
    t_start, t_end, t_map = t_start.to(dtype), t_end.to(dtype), t_map.to(dtype)
    D, L = t_map.shape[1:]
    valid = valid_map_mask(D, L, device=t_map.device)

    tem = tem_loss(outputs["start"], t_start) + tem_loss(outputs["end"], t_end)
    reg = pem_reg_loss(pred_map[:, 0], t_map, valid, generator=generator, low_zero=pem_low_zero)
    cls = pem_cls_loss(pred_map[:, 1], t_map, valid)
    total = tem + PEM_REG_WEIGHT * reg + cls
    return total, {"tem": tem, "pem_reg": reg, "pem_cls": cls}
