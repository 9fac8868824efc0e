"""The one training loop (harness/pipeline/fit.py) on toy linear models, and post-processing through ``predict``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from harness.errors import LofiError
from harness.experiment import OptimConfig, PostConfig
from harness.pipeline.fit import fit, make_optimizer
from harness.seeding import numpy_rng

N, DIM = 19, 3  # 19 items: the last batch of 8 is short, so micro-batches of unequal size are exercised


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, DIM, generator=g, dtype=dtype)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.1 * torch.randn(N, generator=g, dtype=dtype)
    return x, y


def _model(dtype=torch.float64) -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(DIM, 1).to(dtype)


def _linear_fit(model, opt, optim, *, calls=None, **kw):
    x, y = _data(next(model.parameters()).dtype)

    def step(epoch, step, micro, idx):
        if calls is not None:
            calls.append((epoch, step, micro, idx.tolist(), opt.param_groups[0]["lr"]))
        return ((model(x[idx]).squeeze(1) - y[idx]) ** 2).mean(), {}

    return fit(
        opt, step, n_items=N, optim=optim, seed=5, order_stream=("toy-order",), stage="toy", modules=(model,), **kw
    )


def _no_time(history):
    return [{k: v for k, v in row.items() if k != "items_per_s"} for row in history]


def test_lr_is_a_step_decay_of_the_epoch_and_order_is_the_named_stream():
    optim = OptimConfig(optimizer="sgd", lr=0.1, epochs=5, step_size=2, gamma=0.5, batch_size=8)
    model = _model()
    opt = make_optimizer([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}], optim)
    calls = []
    history = _linear_fit(model, opt, optim, calls=calls)
    assert [h["lr"] for h in history] == [0.1, 0.1, 0.05, 0.05, 0.025]  # the first param group's
    assert [lr for e, s, m, i, lr in calls if s == 0 and m == 0] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert opt.param_groups[1]["lr"] == pytest.approx(0.01 * 0.25)  # every group decays from its own base
    for epoch in range(5):  # the order of epoch e is numpy_rng(seed, *order_stream, e), in batches of 8
        seen = [i for e, s, m, idx, lr in calls if e == epoch for i in idx]
        assert seen == numpy_rng(5, "toy-order", epoch).permutation(N).tolist()
        assert [s for e, s, m, idx, lr in calls if e == epoch] == [0, 1, 2]


def test_accumulation_equals_one_big_batch():
    big = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, epochs=3, batch_size=8)
    acc = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, epochs=3, batch_size=8, accumulate=4)
    m1, m2 = _model(), _model()
    h1 = _linear_fit(m1, make_optimizer(m1.parameters(), big), big)
    calls = []
    h2 = _linear_fit(m2, make_optimizer(m2.parameters(), acc), acc, calls=calls)
    # micro-batches of 2 at offsets 0, 2, 4, 6 of each step's batch; the last, short batch (3 items) as 2 + 1
    micro = [(m, len(i)) for e, s, m, i, lr in calls if e == 0]
    assert micro == [(0, 2), (2, 2), (4, 2), (6, 2)] * 2 + [(0, 2), (2, 1)]
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    np.testing.assert_allclose([h["loss"] for h in h1], [h["loss"] for h in h2], rtol=1e-12)


def test_resume_from_start_epoch_gives_the_uninterrupted_history():
    optim = OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=4, step_size=1, gamma=0.5, batch_size=4)
    straight = _model(torch.float32)
    h_straight = _linear_fit(straight, make_optimizer(straight.parameters(), optim), optim)

    first = _model(torch.float32)
    opt = make_optimizer(first.parameters(), optim)
    saved = {}
    h_first = _linear_fit(
        first,
        opt,
        optim,
        stop_epoch=2,
        on_epoch_end=lambda e, h: saved.update(
            epoch=e, model=first.state_dict(), opt=opt.state_dict(), history=list(h)
        ),
    )
    assert len(h_first) == 2 and saved["epoch"] == 1
    # a new process: fresh objects, the checkpoint of the last finished epoch loaded into them
    resumed = _model(torch.float32)
    resumed.load_state_dict(saved["model"])
    opt2 = make_optimizer(resumed.parameters(), optim)
    opt2.load_state_dict(saved["opt"])
    h_resumed = _linear_fit(resumed, opt2, optim, start_epoch=2, history=saved["history"])
    assert _no_time(h_resumed) == _no_time(h_straight)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_nan_loss_stops_with_stage_epoch_and_step():
    optim = OptimConfig(optimizer="sgd", lr=0.1, epochs=3, batch_size=8)
    model = _model()
    ended = []

    def step(epoch, step, micro, idx):
        loss = model(torch.ones(len(idx), DIM, dtype=torch.float64)).mean()
        return (loss * float("nan") if (epoch, step) == (1, 2) else loss), {}

    with pytest.raises(LofiError, match=r"^toy\[x\]: loss is nan at epoch 1 step 2; lower the learning rate"):
        fit(
            make_optimizer(model.parameters(), optim),
            step,
            n_items=N,
            optim=optim,
            seed=0,
            order_stream=("o",),
            stage="toy[x]",
            on_epoch_end=lambda e, h: ended.append(e),
        )
    assert ended == [0]


def test_epoch_row_sums_validate_and_tracker():
    optim = OptimConfig(optimizer="sgd", lr=0.1, epochs=2, batch_size=8, accumulate=2)
    model = _model()
    logged, seen_rows = [], []

    class Tracker:
        def log_metrics(self, metrics, step=None):
            logged.append((step, dict(metrics)))

    def step(epoch, step, micro, idx):
        loss = model(torch.zeros(len(idx), DIM, dtype=torch.float64)).sum() * 0
        return loss, {"odd": float(sum(i % 2 for i in idx.tolist()))}

    history = fit(
        make_optimizer(model.parameters(), optim),
        step,
        n_items=N,
        optim=optim,
        seed=0,
        order_stream=("o",),
        stage="toy",
        validate=lambda e: {"val": 10.0 + e},
        on_epoch_end=lambda e, h: seen_rows.append(dict(h[-1])),
        tracker=Tracker(),
        metric_prefix="t",
    )
    assert [h["odd"] for h in history] == [9 / N, 9 / N]  # a per-item sum, reported as its epoch mean
    assert [h["val"] for h in history] == [10.0, 11.0] and seen_rows == history
    assert [s for s, _ in logged] == [0, 1]
    assert set(logged[0][1]) == {"t_loss", "t_odd", "t_lr", "t_items_per_s", "t_val"}


class _FixedHead(nn.Module):
    """A head whose outputs decode (heads/decode.py) into exactly two proposals of a video of duration T:
    A = [0, 7/8 T] scored 1 (map cell d=6, s=0) and B = [0, T] scored 0.8 (cell d=7, s=0): start anchor 0 and end
    anchor 7 are the only candidate boundaries."""

    def forward(self, x):
        B, L = x.shape[0], 8
        start, end = torch.zeros(B, L), torch.zeros(B, L)
        start[:, 0], end[:, L - 1] = 1.0, 1.0
        iou = torch.zeros(B, 2, L, L)
        iou[:, :, 6, 0] = 1.0
        iou[:, 0, 7, 0], iou[:, 1, 7, 0] = 0.8, 1.0
        return {"start": start, "end": end, "iou_map": iou}


@pytest.mark.parametrize("nms", ["bmn", "gaussian"])
def test_predict_applies_soft_nms_in_seconds(nms):
    from harness.data.model import Video
    from harness.pipeline.headtrain import predict

    cfg = SimpleNamespace(
        runtime=SimpleNamespace(amp=False),
        post=PostConfig(nms=nms, sigma=0.8, alpha=0.4, low=0.5, high=0.9, top_k=100, top_k_classes=1),
    )
    video = Video("v1", "testing", 100.0)
    det, prop = predict(
        cfg, _FixedHead(), np.array([[1.0]]), torch.zeros(1, 4, 8), [video], ("a",), torch.device("cpu")
    )
    (a, b) = prop["v1"]
    assert a["segment"] == [0.0, 87.5] and a["score"] == pytest.approx(1.0)
    assert b["segment"] == [0.0, 100.0]
    iou = 87.5 / 100.0  # B lies over A
    if nms == "bmn":
        # BMN decays B only when IoU > low + (high - low) · width(A) / duration = 0.5 + 0.4 · 0.875 = 0.85: it does
        expected = float(np.float32(0.8)) * math.exp(-(iou**2) / 0.4)  # 0.8 · exp(-0.765625 / 0.4) = 0.11799…
    else:
        expected = float(np.float32(0.8)) * math.exp(-(iou**2) / 0.8)
    assert b["score"] == pytest.approx(expected, rel=1e-9)
    assert [d["score"] for d in det["v1"]] == [p["score"] for p in prop["v1"]]  # class score 1
