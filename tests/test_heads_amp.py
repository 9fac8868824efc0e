"""Every registered head runs forward + backward under bf16 autocast and matches float32, on CPU.

The failure this guards against was seen on CUDA only: G-TAD's sparse alignment matmul under bf16 autocast raised
``"addmm_sparse_cuda" not implemented for 'BFloat16'``. On this CPU build COO ``torch.sparse.mm`` *has* a bf16
kernel (only CSR lacks one: ``"addmm_out_sparse_csr_impl_mkl" not implemented for 'BFloat16'``), so running the
heads on CPU alone would not catch it. The ``sparse_mm_spy`` fixture therefore wraps ``torch.sparse.mm`` and
behaves like the CUDA build: it raises the same NotImplementedError when handed a half-precision operand. It also
records every call, so the tests assert that the sparse product really ran in float32 with autocast off (the fp32
island of ``heads.gtad._apply`` and ``heads.bmn.BMSampler.sample``) and that the path being tested was taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

import heads.gtad as gtad_module
from heads import create_head, list_heads

LENGTH = 16
IN_FEATURES = 32
BATCH = 2
# Narrow widths keep the tests fast; the structure is the published one. Every head takes these keywords.
WIDTHS = dict(hidden=64, hidden_2d=16, hidden_3d=32)

# Tolerances, as relative L2 errors ||bf16 - fp32|| / ||fp32|| (measured at seeds 0-4, L = 16: outputs <= 2.3e-3,
# input gradients 0.016-0.18).
# bf16 keeps 8 significand bits, so each rounding has relative error u <= 2^-8 ≈ 3.9e-3 (~3 significant digits).
# Outputs are sigmoid probabilities, ~10 layers deep with float32 accumulation inside each matmul/conv: errors of a
# few u, so 1e-2 (4× the worst measured).
# Input gradients are much noisier, and not because of the fp32 island (the dense G-TAD path, which has none, and
# seed for seed gives the same errors): ReLU's derivative is a step, so each unit whose pre-activation lies within
# bf16 rounding of 0 switches its gradient on or off. A fraction ~u of the units flip, each with an O(1) gradient
# change, so one ReLU layer alone already gives a relative L2 error of ~sqrt(u) ≈ 0.06 (measured: 6e-2 after BMN's
# first conv + ReLU), and the heads have several. 0.35 is 2× the worst measured and still well below what a real
# defect gives: a branch whose gradient is lost (detached or zeroed in the fp32 island) gives 1.0, wrong weights or
# a bin / channel mix-up errors of order 1.
OUT_TOL = 1e-2
GRAD_TOL = 0.35

# Per head, the code paths to cover. ``dense_max`` overrides heads.gtad._DENSE_MAX, which picks G-TAD's alignment
# storage: at L = 16 the map has 36·16·16 × 32 = 295 k entries, dense by default; -1 forces the sparse COO path.
# A head registered later and not listed here is still tested, with its defaults.
VARIANTS: dict[str, dict[str, dict[str, object]]] = {
    "gtad": {
        "dense": dict(dense_max=10**12, sparse=False),
        "sparse": dict(dense_max=-1, sparse=True),
        "sparse-fused": dict(dense_max=-1, sparse=True, kwargs=dict(fused_projection=True)),
        "dense-fused": dict(dense_max=10**12, sparse=False, kwargs=dict(fused_projection=True)),
    },
    "bmn": {"csr": dict(sparse=True)},  # the boundary-matching layer is always a CSR matmul
}


def _cases() -> list[tuple[str, str]]:
    return [(name, variant) for name in list_heads() for variant in VARIANTS.get(name, {"default": {}})]


@dataclass
class SparseCall:
    operands: tuple[torch.dtype, torch.dtype]
    result: torch.dtype
    autocast_on: bool


@pytest.fixture
def sparse_mm_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SparseCall]]:
    calls: list[SparseCall] = []
    real = torch.sparse.mm

    def spy(mat1: torch.Tensor, mat2: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        autocast_on = torch.is_autocast_enabled(mat2.device.type)
        low = [t.dtype for t in (mat1, mat2) if t.dtype in (torch.bfloat16, torch.float16)]
        if low or autocast_on:  # CUDA has no half-precision sparse kernel; autocast would hand it bf16 operands
            raise NotImplementedError(f'"addmm_sparse_cuda" not implemented for {low or "autocast"} (emulated)')
        out = real(mat1, mat2, *args, **kwargs)
        calls.append(SparseCall((mat1.dtype, mat2.dtype), out.dtype, autocast_on))
        return out

    monkeypatch.setattr(torch.sparse, "mm", spy)
    yield calls


def _rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-12))


def _step(model: torch.nn.Module, x: torch.Tensor, probe: dict[str, torch.Tensor], amp: bool):
    """Outputs, and per output k the input gradient of ``Σ out[k] · probe[k]`` (a fixed random weighting, so each
    output element gets a distinct gradient). Per output, because the iou_map's share of a summed gradient is
    small: a branch whose gradient went missing would hide in the sum's bf16 noise. Backward runs outside
    autocast, as torch recommends (its ops follow the forward's dtypes)."""
    x = x.clone().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    keys = sorted(out)
    grads = {}
    for i, k in enumerate(keys):
        (grads[k],) = torch.autograd.grad((out[k].float() * probe[k]).sum(), x, retain_graph=i < len(keys) - 1)
    return {k: v.detach() for k, v in out.items()}, grads


@pytest.mark.parametrize(("name", "variant"), _cases())
def test_head_bf16_autocast_matches_fp32(
    name: str, variant: str, monkeypatch: pytest.MonkeyPatch, sparse_mm_spy: list[SparseCall]
) -> None:
    spec = VARIANTS.get(name, {}).get(variant, {})
    if "dense_max" in spec:
        monkeypatch.setattr(gtad_module, "_DENSE_MAX", spec["dense_max"])
    torch.manual_seed(0)
    model = create_head(name, in_features=IN_FEATURES, temporal_length=LENGTH, **WIDTHS, **spec.get("kwargs", {}))
    x = torch.randn(BATCH, IN_FEATURES, LENGTH)
    with torch.no_grad():
        shapes = {k: v.shape for k, v in model(x).items()}
    probe = {k: torch.randn(shape) for k, shape in shapes.items()}

    out32, grad32 = _step(model, x, probe, amp=False)
    assert all(v.dtype == torch.float32 for v in out32.values())
    fp32_calls = len(sparse_mm_spy)

    out16, grad16 = _step(model, x, probe, amp=True)
    amp_calls = sparse_mm_spy[fp32_calls:]

    # The path under test was taken, and its sparse product ran in float32 with autocast off.
    if "sparse" in spec:
        assert bool(amp_calls) == spec["sparse"], f"{name}/{variant}: sparse matmul calls {amp_calls}"
    for call in amp_calls:
        assert call.operands == (torch.float32, torch.float32) and call.result == torch.float32, call
        assert not call.autocast_on
    # ... and the rest of the head stayed in autocast (bf16 outputs), so the fp32 island is only that product.
    assert out16["iou_map"].dtype == torch.bfloat16

    assert set(out16) == set(out32)
    for key in sorted(out32):
        assert out16[key].shape == out32[key].shape
        assert torch.isfinite(out16[key].float()).all()
        err = _rel_l2(out16[key], out32[key])
        assert err < OUT_TOL, f"{name}/{variant}: {key} relative L2 error {err:.2e} (bf16 autocast vs fp32)"
        grad = grad16[key]
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
        err = _rel_l2(grad, grad32[key])
        assert err < GRAD_TOL, f"{name}/{variant}: d{key}/dx relative L2 error {err:.2e} (bf16 autocast vs fp32)"


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_gtad_fp32_and_fp64_unchanged_by_the_fp32_island(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without autocast the alignment runs in the input's dtype (float32 or float64), as before the fix."""
    monkeypatch.setattr(gtad_module, "_DENSE_MAX", 10**12 if path == "dense" else -1)
    align = gtad_module.SGAlign(max_duration=None)
    torch.manual_seed(1)
    inner, context = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    ref = align(inner, context)
    assert ref.dtype == torch.float64
    for dtype in (torch.float32, torch.float64):
        matrix, fused = align.matrices(8, torch.device("cpu"), dtype)
        assert matrix.dtype == fused.dtype == dtype and matrix.is_sparse == (path == "sparse")
    out32 = align(inner.float(), context.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, ref.float(), rtol=1e-6, atol=1e-6)
    # Half-precision inputs share the float32 map and get their own dtype back.
    assert align.matrices(8, torch.device("cpu"), torch.bfloat16)[0].dtype == torch.float32
    assert align(inner.bfloat16(), context.bfloat16()).dtype == torch.bfloat16
