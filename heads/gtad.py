"""G-TAD head (Xu et al., CVPR 2020) at any temporal length, in pure PyTorch.

Structure of the published implementation (frostinassiky/gtad, ``gtad_lib/models.py``, ActivityNet settings):

    x (B, D_in, L) ─ Conv1d(D_in→256, k=3, groups=4) ─ ReLU ─ GCNeXt ──► base (B, 256, L)
    base ─ GCNeXt ─ Conv1d(256→1) ─ sigmoid ──► start (B, L)        (idem for end, own GCNeXt)
    base ─ GCNeXt ──► feat ─ SGAlign ──► (B, 256·36, D, L)
         ─ 1×1 512 ─ 1×1 128 ─ k×k 128 ─ k×k 128 ─ 1×1 2 ─ sigmoid ──► iou_map (B, 2, D, L)

The localisation layers' kernel k (``kernel_2d``, padding (k − 1)/2) is the published code's ``kern_2d`` /
``pad_2d``: 1 (padding 0) in its ActivityNet and HACS settings (branches ``anet`` and ``hacs``; the paper's
"1-by-1 2D convolutions"), 3 (padding 1) in its THUMOS-14 settings (branch ``master``). The registered ``gtad``
defaults to 1: 5,563,268 parameters at in_features = 400, the published ActivityNet network. The experiment
config chooses it per dataset (``head.kernel_2d``: 1 in config/activitynet.yaml and config/hacs.yaml, 3 for the
synthetic benchmark and THUMOS-14).

SGAlign aligns two streams over each anchor's *expanded* region [s − r·n, s + d + r·n] (n = d + 1 snippets,
r = 0.5): 32 bins of ``feat`` (the "inner" stream) and 4 bins of the mean of ``feat`` over each snippet's k
semantic neighbours (the context stream). As in the published code both streams span the expanded region; the
32/4 split is the resolution, not a split between proposal and context.

Align1D (G-TAD's CUDA op, an RoIAlign in 1-D) is re-implemented as a sparse linear map from the L snippets to all
D·L·36 aligned samples, built once per (L, D) with vectorised tensor code and cached. Its semantics: a region
[a, b] (snippet index coordinates, snippet i sits at i) is given length max(b − a, 1) and cut into ``resolution``
bins; a bin averages ``g`` points at offsets (j + 0.5)/g of the bin, g = ``sampling_ratio`` or, when 0 (G-TAD's
setting), ceil(length / resolution); a point t outside [−1, L] contributes 0 (still counted in the average), else
t is clamped to [0, L − 1] and linearly interpolated between its two neighbouring snippets.

The output map is already in the contract's (D, L) layout: ``iou_map[:, :, d, s]`` is the proposal starting at
snippet s lasting d + 1 snippets. Cells with s + d + 1 > L are computed from a dummy region [0, 0] exactly as
G-TAD does; the losses and decoding mask them.

At an input length L different from ``temporal_length`` (LoFi changes L between steps) the head uses
D = min(max_duration, L), or D = L when ``max_duration`` is None (``heads.common.effective_max_duration``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from heads import register_head
from heads.common import autocast_disabled, effective_max_duration, sparse_compute_dtype
from heads.graph import GCNeXt, gather_neighbours, knn_indices

log = logging.getLogger(__name__)

__all__ = ["GTAD", "SGAlign", "align1d", "align1d_weights", "gtad", "gtad_anchor_regions"]


def align1d_weights(
    regions: torch.Tensor, *, length: int, resolution: int, sampling_ratio: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align1D as a sparse linear map: (rows, cols, weights) with output[n * resolution + p] = Σ w · input[col].

    ``regions`` (N, 2) float holds [start, end] in snippet-index coordinates; duplicates (row, col) are not merged
    (a sparse tensor's ``coalesce`` sums them). All regions are processed at once: bins whose adaptive sampling
    grid is shorter than the longest one are padded and masked out.
    """
    regions = regions.to(torch.float64)
    n = regions.shape[0]
    start = regions[:, 0]
    span = (regions[:, 1] - start).clamp(min=1.0)  # Align1D forces malformed regions to length 1
    bin_size = span / resolution
    if sampling_ratio > 0:
        grid = torch.full((n,), sampling_ratio, dtype=torch.int64)
    else:
        grid = torch.ceil(span / resolution).to(torch.int64).clamp(min=1)
    g_max = int(grid.max()) if n else 1
    p = torch.arange(resolution, dtype=torch.float64).view(1, -1, 1)
    j = torch.arange(g_max, dtype=torch.float64).view(1, 1, -1)
    g = grid.to(torch.float64).view(-1, 1, 1)
    t = start.view(-1, 1, 1) + p * bin_size.view(-1, 1, 1) + (j + 0.5) * bin_size.view(-1, 1, 1) / g  # (N, P, G)
    used = (j < g) & (t >= -1.0) & (t <= float(length))
    t = t.clamp(min=0.0)
    low = torch.floor(t).to(torch.int64)
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(t), t - low.to(torch.float64))
    rows = (torch.arange(n).view(-1, 1, 1) * resolution + torch.arange(resolution).view(1, -1, 1)).expand_as(t)
    w_low = (1.0 - frac) / g
    w_high = frac / g
    rows = torch.cat((rows[used], rows[used]))
    cols = torch.cat((low[used], high[used]))
    weights = torch.cat((w_low[used], w_high[used]))
    keep = weights != 0  # points sitting exactly on a snippet give a zero-weight partner
    return rows[keep], cols[keep], weights[keep]


def _apply(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ matrix.T`` for a sparse COO ``matrix`` (out, in) and dense ``rows`` (N, in) -> (N, out), in ``rows``'s
    dtype.

    Written as sparse @ dense, the product torch documents (with autograd for the dense side) on CPU and CUDA.
    Small maps are kept dense (see ``_DENSE_MAX``): a dense matmul is several times faster there, and it has
    half-precision kernels, so under autocast it runs in the autocast dtype. The sparse product has none on CUDA
    (``"addmm_sparse_cuda" not implemented for 'BFloat16'``): it runs in the matrix's dtype (float32, or float64
    for float64 inputs, see ``heads.common.sparse_compute_dtype``) with autocast off, and its result is cast back,
    so the rest of the head stays in autocast. For float32/float64 inputs both casts are no-ops.
    """
    if not matrix.is_sparse:
        return rows @ matrix.t().to(rows.dtype)
    with autocast_disabled(rows.device):
        out = torch.sparse.mm(matrix, rows.to(matrix.dtype).t()).t()
    return out.to(rows.dtype)


# Maps with at most this many entries are stored dense: at the CPU benchmark's L = 32 the fused map is 1 M entries
# (4 MB) and a dense product is ~5× faster than torch.sparse.mm; at L = 100 it is 72 M entries and stays sparse.
_DENSE_MAX = 4_000_000


def _maybe_dense(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.to_dense() if matrix.shape[0] * matrix.shape[1] <= _DENSE_MAX else matrix


def align1d(x: torch.Tensor, regions: torch.Tensor, *, resolution: int, sampling_ratio: int = 0) -> torch.Tensor:
    """Align1D of every region on every sample: x (B, C, L), regions (N, 2) -> (B, C, N, resolution)."""
    b, c, length = x.shape
    n = regions.shape[0]
    rows, cols, weights = align1d_weights(regions, length=length, resolution=resolution, sampling_ratio=sampling_ratio)
    matrix = torch.sparse_coo_tensor(
        torch.stack((rows, cols)),
        weights.to(sparse_compute_dtype(x.dtype)),
        (n * resolution, length),
        device=x.device,
        check_invariants=False,
    ).coalesce()
    return _apply(matrix, x.reshape(b * c, length)).reshape(b, c, n, resolution)


def gtad_anchor_regions(length: int, max_duration: int, context_ratio: float) -> torch.Tensor:
    """Expanded regions (D·L, 2) of all anchors in (d, s) order, float64.

    Anchor (s, d) covers snippets s … s + d (n = d + 1 of them); its region is [s − r·n, s + d + r·n]. Anchors
    running past the end get G-TAD's dummy region [0, 0].
    """
    d = torch.arange(max_duration, dtype=torch.float64).view(-1, 1)
    s = torch.arange(length, dtype=torch.float64).view(1, -1)
    n = d + 1.0
    lo = (s - context_ratio * n).expand(max_duration, length)
    hi = (s + d + context_ratio * n).expand(max_duration, length)
    valid = (s + d + 1.0) <= length
    zero = torch.zeros(1, dtype=torch.float64)
    regions = torch.stack((torch.where(valid, lo, zero), torch.where(valid, hi, zero)), dim=-1)
    return regions.reshape(-1, 2)


class SGAlign(nn.Module):
    """Sub-graph alignment: (B, C, L) inner and context streams -> (B, C·(P_in + P_ctx), D, L).

    Channel ``c * P + p`` holds bin p of channel c (bins 0…P_in−1 from the inner stream, the rest from the context
    stream), G-TAD's order. One sparse matrix per (L, D, device, float32/float64), built on first use and cached.
    """

    _CACHE_SIZE = 8

    def __init__(
        self,
        *,
        max_duration: int | None,
        inner_samples: int = 32,
        context_samples: int = 4,
        context_ratio: float = 0.5,
        sampling_ratio: int = 0,
    ) -> None:
        super().__init__()
        self.max_duration = max_duration
        self.inner_samples = inner_samples
        self.context_samples = context_samples
        self.context_ratio = context_ratio
        self.sampling_ratio = sampling_ratio
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def samples(self) -> int:
        return self.inner_samples + self.context_samples

    def duration(self, length: int) -> int:
        return effective_max_duration(self.max_duration, length)

    def sparse_entries(self, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bin p, anchor a = d·L + s, column j, weight) entries as (p·A + a, j, w); j < L inner, j ≥ L context."""
        d = self.duration(length)
        regions = gtad_anchor_regions(length, d, self.context_ratio)
        a = regions.shape[0]
        parts = []
        for offset, res, col_shift in ((0, self.inner_samples, 0), (self.inner_samples, self.context_samples, length)):
            rows, cols, w = align1d_weights(regions, length=length, resolution=res, sampling_ratio=self.sampling_ratio)
            anchor, p = rows // res, rows % res
            parts.append(((p + offset) * a + anchor, cols + col_shift, w))
        return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]

    def matrices(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached sparse maps for length L: (P·D·L, 2L) for ``forward`` and (D·L, P·2L) for ``project``.

        Stored in float64 for float64 inputs, else float32 (half-precision inputs included: see ``_apply``).
        """
        dtype = sparse_compute_dtype(dtype)
        key = (length, self.duration(length), str(device), dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rows, cols, w = self.sparse_entries(length)
        d = self.duration(length)
        a = d * length
        p, anchor = rows // a, rows % a
        align = torch.sparse_coo_tensor(
            torch.stack((rows, cols)),
            w.to(dtype),
            (self.samples * a, 2 * length),
            device=device,
            check_invariants=False,
        ).coalesce()
        fused = torch.sparse_coo_tensor(
            torch.stack((anchor, p * 2 * length + cols)),
            w.to(dtype),
            (a, self.samples * 2 * length),
            device=device,
            check_invariants=False,
        ).coalesce()
        align, fused = _maybe_dense(align), _maybe_dense(fused)
        self._cache[key] = (align, fused)
        while len(self._cache) > self._CACHE_SIZE:
            self._cache.popitem(last=False)
        log.debug("SGAlign: built alignment for L=%d D=%d (%s)", length, d, "sparse" if align.is_sparse else "dense")
        return align, fused

    def forward(self, inner: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, length = inner.shape
        align, _ = self.matrices(length, inner.device, inner.dtype)
        streams = torch.cat((inner, context), dim=2).reshape(b * c, 2 * length)
        return _apply(align, streams).reshape(b, c * self.samples, self.duration(length), length)

    def project(self, inner: torch.Tensor, context: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """``conv(forward(inner, context))`` for a 1×1 ``conv``, without materialising the aligned map.

        Alignment and a 1×1 conv are both linear, so the conv's weights are applied to the L snippets first
        (per bin) and the sparse map afterwards: same numbers, ~36× less memory for the map.
        """
        b, c, length = inner.shape
        _, fused = self.matrices(length, inner.device, inner.dtype)
        weight = conv.weight.reshape(conv.out_channels, c, self.samples)  # channel c·P + p, G-TAD's order
        streams = torch.stack((inner, context), dim=2)  # (B, C, 2, L): column j = stream·L + l
        per_bin = torch.einsum("ocp,bcsl->bopsl", weight, streams).reshape(b * conv.out_channels, -1)
        out = _apply(fused, per_bin).reshape(b, conv.out_channels, self.duration(length), length)
        if conv.bias is not None:
            out = out + conv.bias.view(1, -1, 1, 1)
        return out


class GTAD(nn.Module):
    """G-TAD: GCNeXt backbone, start/end heads, SGAlign and the proposal map branch (see the module docstring).

    ``fused_projection=True`` computes the first 1×1 conv of the proposal branch through the alignment
    (``SGAlign.project``): identical outputs and parameters, far less memory and time at L = 100; the default
    (False) keeps the published memory/compute profile, which LoFi's cost measurements are about.
    """

    def __init__(
        self,
        in_features: int,
        temporal_length: int,
        max_duration: int | None = None,
        hidden: int = 256,
        k: int = 3,
        groups: int = 32,
        inner_samples: int = 32,
        context_samples: int = 4,
        context_ratio: float = 0.5,
        *,
        hidden_3d: int = 512,
        hidden_2d: int = 128,
        kernel_2d: int = 1,
        fused_projection: bool = False,
    ) -> None:
        super().__init__()
        if in_features % 4 != 0:
            raise ValueError(f"gtad: in_features={in_features} must be divisible by 4 (the first conv has 4 groups)")
        if kernel_2d < 1 or kernel_2d % 2 == 0:
            raise ValueError(f"gtad: kernel_2d={kernel_2d} must be odd and >= 1 (the map keeps its (D, L) size)")
        self.in_features = in_features
        self.temporal_length = temporal_length
        self.max_duration = max_duration
        self.k = k
        self.fused_projection = fused_projection

        def block() -> GCNeXt:
            return GCNeXt(hidden, k=k, groups=groups)

        self.backbone1 = nn.Sequential(
            nn.Conv1d(in_features, hidden, kernel_size=3, padding=1, groups=4), nn.ReLU(inplace=True), block()
        )
        self.start_head = nn.Sequential(block(), nn.Conv1d(hidden, 1, kernel_size=1), nn.Sigmoid())
        self.end_head = nn.Sequential(block(), nn.Conv1d(hidden, 1, kernel_size=1), nn.Sigmoid())
        self.backbone2 = block()
        self.align = SGAlign(
            max_duration=max_duration,
            inner_samples=inner_samples,
            context_samples=context_samples,
            context_ratio=context_ratio,
        )
        pad = (kernel_2d - 1) // 2
        self.proposal = nn.Sequential(
            nn.Conv2d(hidden * self.align.samples, hidden_3d, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_3d, hidden_2d, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, hidden_2d, kernel_size=kernel_2d, padding=pad), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, hidden_2d, kernel_size=kernel_2d, padding=pad), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, 2, kernel_size=1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 3 or x.shape[1] != self.in_features:
            raise ValueError(f"gtad: expected input (B, {self.in_features}, L), got {tuple(x.shape)}")
        base = self.backbone1(x)
        start = self.start_head(base).squeeze(1)
        end = self.end_head(base).squeeze(1)
        feat = self.backbone2(base)
        # Context stream: each snippet's features averaged over its k semantic neighbours (G-TAD goi_style=1).
        context = gather_neighbours(feat, knn_indices(feat, self.k)).mean(dim=-1)
        if self.fused_projection:
            first = self.align.project(feat, context, self.proposal[0])
            iou_map = self.proposal[1:](first)
        else:
            iou_map = self.proposal(self.align(feat, context))
        return {"start": start, "end": end, "iou_map": iou_map}


@register_head
def gtad(**kwargs: Any) -> GTAD:
    """G-TAD with the published ActivityNet settings (5,563,268 parameters at in_features=400; ``kernel_2d=3``:
    the THUMOS-14 settings' localisation layers, 5,825,412); keyword arguments as :class:`GTAD` (``in_features``,
    ``temporal_length`` required)."""
    return GTAD(**kwargs)
