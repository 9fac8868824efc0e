"""torchrun / DistributedDataParallel on CPU (gloo): the same global order and batch as one process.

What "the same" means, and why (harness/pipeline/distributed.py): with W ranks each rank trains on its contiguous
shard of the global batch, i.e. the micro-batch a single process would run with ``accumulate = W``. The losses
that pool over a batch (the TAL loss's class-balancing normalisers) and BatchNorm's batch statistics are then
computed on the same items in both, so the training losses and the trainable parameters are the same up to the
order of float additions (all-reduce vs sequential accumulation): checked to 1e-6. BatchNorm's *running*
statistics are not: under DDP they are rank 0's shard's (DDP broadcasts rank 0's buffers each forward), in one
process they see every micro-batch, so eval-mode features of a BN encoder differ slightly and are not compared;
the head (no BatchNorm) is compared end to end, predictions and mAP included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness.experiment import OptimConfig
from harness.pipeline.distributed import SINGLE, World, shard_bounds
from harness.pipeline.fit import fit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "smoke.yaml"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 16])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("per_rank", [None, 1, 4])
def test_shards_cover_the_batch_in_order(n: int, size: int, per_rank: int | None) -> None:
    per = per_rank if per_rank is not None else -(-n // size)
    if per * size < n:
        return  # fit always passes per_rank >= ceil(batch / size)
    bounds = [shard_bounds(n, World(rank=r, size=size), per_rank) for r in range(size)]
    assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n))
    assert all(hi - lo <= per for lo, hi in bounds)
    assert shard_bounds(n, SINGLE) == (0, n)


# -- fit() under two gloo processes against one process with accumulate = 2 -------------------------------------

N_ITEMS, BATCH = 11, 4  # 3 steps: 4, 4, 3 items (the last shard sizes 1 and 2)
OPTIM = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, epochs=2, step_size=1, gamma=0.5, batch_size=BATCH)


def _fit_linear(world_size: int, accumulate: int, log: list[list[int]]) -> tuple[nn.Module, list[dict[str, float]]]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.linspace(-1, 1, N_ITEMS * 3).reshape(N_ITEMS, 3)
    y = torch.arange(N_ITEMS) % 2
    ddp = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=OPTIM.lr, momentum=OPTIM.momentum)

    def step(epoch: int, step: int, micro: int, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        log.append([epoch, step, micro, *idx.tolist()])
        out = ddp(x[idx])
        return nn.functional.cross_entropy(out, y[idx]), {"correct": int((out.argmax(1) == y[idx]).sum())}

    cfg = OPTIM.model_copy(update={"accumulate": accumulate})
    history = fit(opt, step, n_items=N_ITEMS, optim=cfg, seed=3, order_stream=("t",), stage="t", modules=(ddp,))
    return model, history


def _worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        log: list[list[int]] = []
        model, history = _fit_linear(2, 1, log)
        torch.save({"state": model.state_dict(), "history": history, "log": log}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fit_on_two_ranks_equals_one_process_with_accumulation(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    log: list[list[int]] = []
    model, history = _fit_linear(1, 2, log)
    # the same items at the same (epoch, step, position in the global batch): rank r's calls are the single
    # process's r-th micro-batch of every step
    assert sorted(c for r in ranks for c in r["log"]) == sorted(log)
    for r in ranks:  # every rank records the global means
        for got, want in zip(r["history"], history):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-9)
            assert got["correct"] == pytest.approx(want["correct"], rel=1e-9)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(r["state"][k], v, rtol=1e-6, atol=1e-7)


# -- torchrun end to end on the smoke benchmark -----------------------------------------------------------------


def _lofi(*args: str, torchrun: bool, tiny: list[str], **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    sets = [x for o in tiny for x in ("--set", o)]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "harness.cli"]
        if torchrun
        else [sys.executable, "-m", "harness.cli"]
    )
    cmd = [*launcher, *args, "--config", str(SMOKE), *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, env=env, **popen)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


ACCUMULATE_2 = ["pretrain.optim.accumulate=2", "pretrain.finetune.accumulate=2", "lofi.optim.accumulate=2"]


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path)["encoder"]
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


def test_torchrun_lofi_stage_and_head_match_one_process(tmp_path: Path, tiny_overrides: list[str]) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    # one process, accumulate = 2 everywhere: every stage of a lofi-S run
    _lofi(
        "run", "--mode", "lofi-S", "--out", str(one / "run"), "--stages", str(one / "st"), torchrun=False,
        tiny=[*tiny_overrides, *ACCUMULATE_2, "head.optim.accumulate=2"],
    )  # fmt: skip
    # the LoFi stage again on 2 ranks (accumulate 1: the same global batch of 4), from the same ACP encoder
    shutil.copytree(one / "st" / "pretrain", two / "st" / "pretrain")  # copy2 keeps the mtimes done.json records
    _lofi(
        "stage", "lofi", "--cycle", "S", "--stages", str(two / "st"), torchrun=True,
        tiny=[*tiny_overrides, *ACCUMULATE_2[:2]],
    )  # fmt: skip
    done_1 = json.loads((one / "st" / "lofi" / "S" / "seed0" / "done.json").read_text())
    done_2 = json.loads((two / "st" / "lofi" / "S" / "seed0" / "done.json").read_text())
    assert done_2["world_size"] == 2
    for a, b in zip(done_1["history"], done_2["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    w1 = _trainable(one / "st" / "lofi" / "S" / "seed0" / "encoder.pt")
    w2 = _trainable(two / "st" / "lofi" / "S" / "seed0" / "encoder.pt")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)

    # the head alone on 2 ranks: every upstream stage is reused (same keys), the head (no BatchNorm) trains on the
    # same features, so its history, predictions and mAP match the single process's
    _lofi(
        "run", "--mode", "lofi-S", "--out", str(two / "run"), "--stages", str(one / "st"), torchrun=True,
        tiny=[*tiny_overrides, *ACCUMULATE_2],
    )  # fmt: skip
    m1 = json.loads((one / "run" / "head" / "metrics.json").read_text())
    m2 = json.loads((two / "run" / "head" / "metrics.json").read_text())
    for a, b in zip(m1["history"], m2["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert m2["average_mAP"] == pytest.approx(m1["average_mAP"], abs=1e-9)
    row = json.loads((two / "run" / "row.json").read_text())
    assert row["world_size"] == 2 and row["global_batch"]["head"] == 4
    assert json.loads((one / "run" / "row.json").read_text())["world_size"] == 1


def test_torchrun_lofi_stage_resumes_after_a_kill(tmp_path: Path, tiny_overrides: list[str]) -> None:
    tiny = [*tiny_overrides, "lofi.optim.epochs=6"]
    _lofi("stage", "pretrain", "--mode", "acp", "--stages", str(tmp_path / "a"), torchrun=False, tiny=tiny)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    _lofi("stage", "lofi", "--cycle", "long", "--stages", str(tmp_path / "a"), torchrun=True, tiny=tiny)

    lofi_dir = tmp_path / "b" / "lofi" / "long" / "seed0"
    proc = _lofi(
        "stage", "lofi", "--cycle", "long", "--stages", str(tmp_path / "b"), torchrun=True, tiny=tiny,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (lofi_dir / "checkpoint.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, mid-epoch
    proc.wait()
    assert (lofi_dir / "checkpoint.pt").is_file() and not (lofi_dir / "done.json").is_file()
    epoch_killed = torch.load(lofi_dir / "checkpoint.pt")["epoch"]
    assert epoch_killed < 5

    _lofi("stage", "lofi", "--cycle", "long", "--stages", str(tmp_path / "b"), torchrun=True, tiny=tiny)
    done_a = json.loads((tmp_path / "a" / "lofi" / "long" / "seed0" / "done.json").read_text())
    done_b = json.loads((lofi_dir / "done.json").read_text())
    assert [h["loss"] for h in done_b["history"]] == [h["loss"] for h in done_a["history"]]
    a = torch.load(tmp_path / "a" / "lofi" / "long" / "seed0" / "encoder.pt")["encoder"]
    b = torch.load(lofi_dir / "encoder.pt")["encoder"]
    for k in a:  # the same world size resumed: bit-identical, BatchNorm buffers included
        assert torch.equal(a[k], b[k]), k
    assert not (lofi_dir / "checkpoint.pt").exists()
