"""One-shot GPU check: G-TAD and BMN train steps in float32 and under bf16 autocast, at the paper's shape.

    python benchmarks/gpu_check.py                          # on the GPU machine (about 1-2 min with imports)
    python benchmarks/gpu_check.py --device cpu --small     # smoke test of this script on CPU (< 60 s)

Per head (published widths, as ``harness.pipeline.models.build_head`` builds them from the default config: hidden
256, hidden_2d 128, hidden_3d 512, 32 samples, max_duration = L), input (B = 16, 512, L = 100) (512-d features as
TSM-R18's), one step = forward, a scalar loss (a fixed random weighting of all outputs) and backward. Each mode
(fp32, bf16 autocast) gets ``--warmup`` untimed steps (the first one builds the alignment map) and ``--repeats``
timed ones, with ``torch.cuda.synchronize`` around each. One JSON line per check:

- ``fp32`` / ``bf16``: median and minimum step seconds, the first step's seconds, peak memory in MiB
  (``torch.cuda.max_memory_allocated``, reset before each mode; weights included; null on CPU);
- ``out_rel_l2``: per output, ||bf16 − fp32|| / ||fp32||; ``max_rel_out_diff``: max over the outputs of
  max |bf16 − fp32| / max |fp32| (outputs are probabilities, so this is about the max abs difference);
  ``grad_rel_l2``: the same for the input gradient (noisier: ReLU masks flip where a pre-activation is within bf16
  rounding of 0, ~sqrt(2^-8) ≈ 0.06 per ReLU layer, see tests/test_heads_amp.py);
- ``ok``: both modes ran, everything finite, out_rel_l2 < 1e-2 and grad_rel_l2 < 0.35 (the CPU test's bounds);
  ``error``: the exception's last line when a mode failed (e.g. a missing bf16 kernel).

Then, if time allows (``--budget-s``), G-TAD with ``fused_projection=True`` and the encoder + head step in bf16:
``tsm_resnet18`` (pretrained=False) at the T-LoFi shape (paper ratios, 100 snippets × 8 frames × 224² -> L = 25)
feeding G-TAD, batch 16 (halved on out-of-memory; the batch used is reported). Lines go to stdout and, when the
environment variable OUT is set, to ``$OUT/gpu_check.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import heads.gtad as gtad_module  # noqa: E402
from heads import create_head  # noqa: E402

OUT_TOL = 1e-2
GRAD_TOL = 0.35

# The published widths (harness.experiment.HeadConfig defaults); used when the config cannot be imported.
PUBLISHED = dict(max_duration=None, hidden=256, hidden_2d=128, hidden_3d=512)
SAMPLES = {"gtad": "inner_samples", "bmn": "num_sample"}
SMALL_WIDTHS = dict(hidden=64, hidden_2d=16, hidden_3d=32)

_LINES: list[str] = []


def emit(record: dict) -> None:
    record = {"t_s": round(time.perf_counter() - T0, 1), **record}
    line = json.dumps(record, default=str)
    print(line, flush=True)
    _LINES.append(line)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_check.jsonl").write_text("\n".join(_LINES) + "\n")


def error_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def head_kwargs(name: str, small: bool) -> tuple[dict, str]:
    """``create_head`` keywords as build_head gives them for the default config (published widths)."""
    if small:
        return {**SMALL_WIDTHS, "max_duration": None}, "small"
    try:
        from harness.experiment import ExperimentConfig
        from harness.pipeline.models import head_kwargs as config_head_kwargs

        return dict(config_head_kwargs(ExperimentConfig(), name)), "config"
    except Exception as exc:  # another module mid-edit must not cost the GPU run
        kwargs = dict(PUBLISHED)
        if name in SAMPLES:
            kwargs[SAMPLES[name]] = 32
        return kwargs, f"published defaults ({error_line(exc)})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def run_mode(model, x, probe, *, amp: bool, device: torch.device, warmup: int, repeats: int) -> dict:
    """Warm-up + timed steps in one mode; returns timings, peak memory, last outputs and input gradient."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_(True)
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(xg)
        loss = sum((out[k].float() * probe[k]).sum() for k in sorted(out))
        loss.backward()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    timed = times[warmup:] or times
    return {
        "stats": {
            "step_s": round(statistics.median(timed), 4),
            "min_s": round(min(timed), 4),
            "first_s": round(times[0], 3),
            "peak_mib": None if peak is None else round(peak, 1),
            "out_dtype": str(out["iou_map"].dtype).replace("torch.", ""),
        },
        "out": {k: v.detach().float() for k, v in out.items()},
        "grad": xg.grad.detach(),
    }


def check_head(name: str, variant: str, extra: dict, args, device: torch.device) -> None:
    record: dict = {
        "check": "head",
        "head": name,
        "variant": variant,
        "L": args.length,
        "batch": args.batch,
        "in_features": args.in_features,
    }
    try:
        kwargs, source = head_kwargs(name, args.small)
        kwargs.update(extra)
        record["kwargs"], record["kwargs_source"] = kwargs, source
        torch.manual_seed(0)
        model = create_head(name, in_features=args.in_features, temporal_length=args.length, **kwargs).to(device)
        model.train()
        record["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
        x = torch.randn(args.batch, args.in_features, args.length, device=device)
        with torch.no_grad():
            probe = {k: torch.randn(v.shape, device=device) for k, v in model(x).items()}
        if name == "gtad":
            align_map = model.align.matrices(args.length, device, x.dtype)[0]
            record["alignment"] = "sparse" if align_map.is_sparse else "dense"
        runs = {}
        for mode in ("fp32", "bf16"):
            try:
                runs[mode] = run_mode(
                    model, x, probe, amp=mode == "bf16", device=device, warmup=args.warmup, repeats=args.repeats
                )
                record[mode] = runs[mode]["stats"]
            except Exception as exc:
                record[mode] = {"error": error_line(exc)}
                record.setdefault("error", f"{mode}: {error_line(exc)}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if len(runs) == 2:
            o32, o16 = runs["fp32"]["out"], runs["bf16"]["out"]
            record["out_rel_l2"] = {k: float(f"{rel_l2(o16[k], o32[k]):.3e}") for k in sorted(o32)}
            worst = max(float((o16[k] - o32[k]).abs().max() / o32[k].abs().max()) for k in o32)
            record["max_rel_out_diff"] = float(f"{worst:.3e}")
            record["grad_rel_l2"] = float(f"{rel_l2(runs['bf16']['grad'], runs['fp32']['grad']):.3e}")
            record["speedup_bf16"] = round(record["fp32"]["step_s"] / record["bf16"]["step_s"], 2)
            finite = all(torch.isfinite(t).all() for r in runs.values() for t in (*r["out"].values(), r["grad"]))
            record["ok"] = bool(
                finite and max(record["out_rel_l2"].values()) < OUT_TOL and record["grad_rel_l2"] < GRAD_TOL
            )
        else:
            record["ok"] = False
    except Exception as exc:
        record["ok"], record["error"] = False, error_line(exc)
        traceback.print_exc(file=sys.stderr)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit(record)


def check_encoder(args, device: torch.device) -> None:
    """bf16 train step of encoder + G-TAD at the T-LoFi shape; halves the batch on out-of-memory."""
    from encoders import create_encoder
    from harness.fidelity import PAPER_RATIOS, fidelity_shape

    if args.small:
        encoder_name, snippets, frames, size, batch = "tsm_resnet_tiny", 8, 2, 32, 2
    else:
        encoder_name, snippets, frames, size, batch = "tsm_resnet18", 100, 8, 224, args.batch
    length, size = fidelity_shape(snippets, size, *PAPER_RATIOS["T"])
    record: dict = {
        "check": "encoder+head",
        "encoder": encoder_name,
        "head": "gtad",
        "fidelity": "T",
        "L": length,
        "frames": frames,
        "size": size,
        "mode": "bf16",
    }
    try:
        torch.manual_seed(0)
        encoder = create_encoder(encoder_name, pretrained=False).to(device).train()
        kwargs, _ = head_kwargs("gtad", args.small)
        head = create_head("gtad", in_features=encoder.num_features, temporal_length=length, **kwargs).to(device)
        params = [*encoder.parameters(), *head.parameters()]
        while True:
            record["batch"] = batch
            try:
                sync(device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                x = torch.rand(batch, length, frames, 3, size, size, device=device)
                times = []
                for _ in range(1 + args.encoder_repeats):
                    for p in params:
                        p.grad = None
                    sync(device)
                    start = time.perf_counter()
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                        out = head(encoder(x).transpose(1, 2))
                    loss = sum(v.float().mean() for v in out.values())
                    loss.backward()
                    sync(device)
                    times.append(time.perf_counter() - start)
                break
            except torch.cuda.OutOfMemoryError as exc:
                x = out = loss = None
                for p in params:
                    p.grad = None
                torch.cuda.empty_cache()
                record.setdefault("oom_at_batch", []).append(batch)
                if batch == 1:
                    raise exc
                batch //= 2
        record["step_s"] = round(statistics.median(times[1:]), 4)
        record["first_s"] = round(times[0], 3)
        record["peak_mib"] = None
        if device.type == "cuda":
            record["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        grads_finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
        record["ok"] = bool(torch.isfinite(loss).item() and grads_finite)
    except Exception as exc:
        record["ok"], record["error"] = False, error_line(exc)
        traceback.print_exc(file=sys.stderr)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test of this script)")
    parser.add_argument("--length", type=int, default=None, help="L (default 100; 16 with --small)")
    parser.add_argument("--batch", type=int, default=None, help="B (default 16; 2 with --small)")
    parser.add_argument("--in-features", type=int, default=None, help="D_in (default 512; 32 with --small)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode (default 2; 1 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per mode (default 10; 3 with --small)")
    parser.add_argument("--encoder-repeats", type=int, default=None, help="timed encoder steps (default 5; 2 small)")
    parser.add_argument("--budget-s", type=float, default=150.0, help="skip the optional checks past this many s")
    args = parser.parse_args(argv)
    small = args.small
    for field, full, tiny in (
        ("length", 100, 16),
        ("batch", 16, 2),
        ("in_features", 512, 32),
        ("warmup", 2, 1),
        ("repeats", 10, 3),
        ("encoder_repeats", 5, 2),
    ):
        if getattr(args, field) is None:
            setattr(args, field, tiny if small else full)
    device = torch.device(args.device)
    if small:
        # L = 16 keeps G-TAD's alignment map dense; force the sparse one, the path this check is about.
        gtad_module._DENSE_MAX = -1
    env = {
        "check": "env",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "small": small,
        "import_s": round(time.perf_counter() - T0, 1),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    emit(env)

    check_head("gtad", "default", {}, args, device)
    check_head("bmn", "default", {}, args, device)
    optional = [
        (
            "gtad fused_projection",
            lambda: check_head("gtad", "fused_projection", {"fused_projection": True}, args, device),
        ),
        ("encoder+head", lambda: check_encoder(args, device)),
    ]
    for label, fn in optional:
        elapsed = time.perf_counter() - T0
        if elapsed > args.budget_s:
            emit({"check": label, "skipped": f"elapsed {elapsed:.0f} s > budget {args.budget_s:.0f} s"})
            continue
        fn()
    emit({"check": "done", "total_s": round(time.perf_counter() - T0, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
