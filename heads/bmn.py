"""BMN (Lin et al., ICCV 2019) at any temporal length L.

Modules as in BMN's reference code: base module (two grouped Conv1d k=3 + ReLU), temporal evaluation module
(start / end: grouped Conv1d k=3 + ReLU, Conv1d k=1, sigmoid), proposal evaluation module (Conv1d k=3 + ReLU,
boundary-matching layer, Conv3d (num_sample, 1, 1) → 512 + ReLU, Conv2d stack → 2 channels, sigmoid).

Boundary-matching layer. Map cell [d, s] samples ``num_sample`` points from the feature sequence over the
proposal expanded by ``prop_boundary_ratio`` of its length on both sides. As in BMN's ``_get_interp1d_mask``, the
proposal spans snippet *indices* ``s .. s + d`` (length d + 1), the sampled range is
``[s - r·(d+1), s + d + r·(d+1)]`` with ``num_sample · num_sample_perbin`` evenly spaced points (end points
included), and each of the ``num_sample`` outputs is the mean of its ``num_sample_perbin`` points, each point
linearly interpolated between ``trunc(x)`` and ``ceil(x)`` (BMN uses ``math.modf``). Kept deliberately:
``trunc`` rounds towards zero, so a point in (-1, 0) puts weight 1 on snippet 0 (BMN's left-edge behaviour),
while points in (L-1, L) fade linearly to zero; points at or beyond -1 or L contribute nothing.

Storage and compute (measured at L = D = 100, N = 32, k = 3, float32, torch 2.15 CPU). BMN's dense mask
(L, N·D·L) is 32.0 M floats = 122 MiB. We keep only the valid cells' non-zero weights, coalesced, as one sparse
CSR matrix ``A`` of shape (D·L, N·L), ``A[d·L + s, n·L + t]`` = weight of snippet t in sample n of cell (d, s):
476,827 non-zeros = 5.5 MiB (values + int64 columns + row pointers), 22x smaller. Alternatives measured: the same
matrix as COO 9.1 MiB and 13x slower in ``sparse.mm`` forward + backward (1.63 s vs 0.13 s for 1024 columns);
(index, weight) gather pairs before coalescing 864,327 pairs = 9.9 MiB, and applying them materialises a
(pairs × B·C) gathered tensor (3.5 GB at B·C = 1024), so CSR it is. Built in ~0.13 s.

The Conv3d with kernel (N, 1, 1) and stride N is linear, so it commutes with the (linear) sampling: we first
apply its weight to the 1-D features, ``y[b, o, n, t] = Σ_c W[o, c, n] · x[b, c, t]``, then sample with one
sparse matmul, ``out[b, o, d, s] = Σ_{n,t} A[(d, s), (n, t)] · y[b, o, n, t] + bias[o]``. Same function, same
parameters and state dict as BMN's ``nn.Conv3d``, but BMN's (B, C, N, D, L) tensor (312 MiB per video at
C = 256, L = 100) is never built, and the Conv3d's D·L-fold repeated contraction becomes one 1-D contraction:
0.20 s vs 3.5 s per video forward at L = 100 on 2 CPU threads, equal to 1e-7. The explicit BMN path
(:meth:`BMN.boundary_matching`) is kept for tests and small L. The sparse matmul runs in float32 (float64 when
the input is float64) with autocast disabled.

Temporal length. The weights are built once per (L, D, N, k, ratio, device) and cached. ``forward`` uses the
input's L; the map height is ``D = min(max_duration, L)`` (``L`` when ``max_duration`` is None), see
:func:`heads.common.effective_max_duration` and :meth:`BMN.map_duration`. Invalid cells (s + d + 1 > L) are
computed but carry no signal; losses and decoding mask them.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from heads import register_head
from heads.common import autocast_disabled, effective_max_duration, sparse_compute_dtype

log = logging.getLogger(__name__)

_CACHE_SIZE = 16  # LoFi uses a handful of temporal lengths; bound the cache anyway.


def bm_sampling_entries(
    temporal_length: int,
    max_duration: int,
    num_sample: int,
    num_sample_perbin: int,
    prop_boundary_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-zero sampling weights of all valid map cells as (d, s, n, t, weight) in float64 / int64.

    Returns ``cell`` (E, 2) = (d, s), ``sample`` (E, 2) = (n, t), ``weight`` (E,). Duplicate (cell, sample)
    pairs may occur (two points of one bin on the same snippet); they add up.
    """
    L, D, N, k = temporal_length, max_duration, num_sample, num_sample_perbin
    points = N * k
    if points < 2:
        raise ValueError(f"num_sample * num_sample_perbin must be >= 2, got {N} * {k}")
    d, s = torch.meshgrid(torch.arange(D), torch.arange(L), indexing="ij")
    valid = (s + d) < L
    d, s = d[valid], s[valid]  # (V,)
    length = (d + 1).double()
    lo = s.double() - length * prop_boundary_ratio
    hi = (s + d).double() + length * prop_boundary_ratio
    step = (hi - lo) / (points - 1)
    p = torch.arange(points, dtype=torch.float64)
    x = lo[:, None] + step[:, None] * p[None, :]  # (V, P) sample positions in snippet-index units
    down = torch.trunc(x)  # math.modf semantics: towards zero
    frac = x - down
    up = torch.ceil(x)
    n = (torch.arange(points) // k).expand_as(x)
    cell = torch.stack([d, s], dim=1)[:, None, :].expand(-1, points, -1)

    pieces = []
    for pos, w in ((down, (1.0 - frac) / k), (up, frac / k)):
        keep = (pos >= 0) & (pos <= L - 1) & (w != 0)
        pieces.append((cell[keep], torch.stack([n[keep], pos[keep].long()], dim=1), w[keep]))
    cells = torch.cat([c for c, _, _ in pieces])
    samples = torch.cat([q for _, q, _ in pieces])
    weights = torch.cat([w for _, _, w in pieces])
    return cells, samples, weights


@dataclass(frozen=True, eq=False)  # holds a tensor: identity equality
class BMSampler:
    """Boundary-matching sampling weights for one (L, D, N, k, ratio) on one device.

    ``matrix``: sparse CSR float32 (D·L, N·L), ``matrix[d·L + s, n·L + t]`` = weight of snippet t in sample n of
    cell (d, s). Rows of invalid cells are empty.
    """

    temporal_length: int
    max_duration: int
    num_sample: int
    matrix: torch.Tensor

    @property
    def nbytes(self) -> int:
        m = self.matrix
        return sum(t.numel() * t.element_size() for t in (m.values(), m.col_indices(), m.crow_indices()))

    def to_dense(self) -> torch.Tensor:
        """BMN's dense mask layout (T, N, D, S) as float32 (only for tests and small L)."""
        L, D, N = self.temporal_length, self.max_duration, self.num_sample
        return self.matrix.to_dense().view(D, L, N, L).permute(3, 2, 0, 1).contiguous()

    def sample(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, N, L) per-sample features → (B, C, D, L): ``Σ_{n,t} A[(d,s),(n,t)] · y[b, c, n, t]``."""
        B, C, N, L = y.shape
        # float32 at least: CSR mm has no half-precision kernel on CPU ("addmm_out_sparse_csr_impl_mkl" not
        # implemented for 'BFloat16') and half-precision sparse mm is patchy elsewhere; float64 kept for checks.
        # An fp32 island with autocast off (autocast would otherwise cast both sides to its dtype); the result is
        # cast back to y's dtype so the rest of the head stays in autocast.
        dtype = sparse_compute_dtype(y.dtype)
        matrix = self.matrix if dtype == torch.float32 else self.matrix.to(dtype)
        flat = y.to(dtype).reshape(B * C, N * L).t()  # (N·L, B·C)
        with autocast_disabled(y.device):
            out = torch.sparse.mm(matrix, flat)  # (D·L, B·C)
        return out.t().reshape(B, C, self.max_duration, self.temporal_length).to(y.dtype)


_SAMPLERS: OrderedDict[tuple, BMSampler] = OrderedDict()
_SAMPLERS_LOCK = threading.Lock()


def get_bm_sampler(
    temporal_length: int,
    max_duration: int,
    *,
    num_sample: int = 32,
    num_sample_perbin: int = 3,
    prop_boundary_ratio: float = 0.5,
    device: torch.device | str = "cpu",
) -> BMSampler:
    """The cached :class:`BMSampler` for these settings (built on first use; same object afterwards)."""
    device = torch.device(device)
    key = (temporal_length, max_duration, num_sample, num_sample_perbin, float(prop_boundary_ratio), str(device))
    with _SAMPLERS_LOCK:
        hit = _SAMPLERS.get(key)
        if hit is not None:
            _SAMPLERS.move_to_end(key)
            return hit
    cells, samples, weights = bm_sampling_entries(
        temporal_length, max_duration, num_sample, num_sample_perbin, prop_boundary_ratio
    )
    L = temporal_length
    rows = cells[:, 0] * L + cells[:, 1]
    cols = samples[:, 0] * L + samples[:, 1]
    coo = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), weights, size=(max_duration * L, num_sample * L), check_invariants=True
    ).coalesce()  # sums duplicates in float64, then one rounding to float32
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR mm is what we measured as fastest
        warnings.simplefilter("ignore", UserWarning)
        matrix = coo.to(torch.float32).to_sparse_csr().to(device)
    sampler = BMSampler(temporal_length, max_duration, num_sample, matrix)
    log.debug(
        "built BM sampler L=%d D=%d N=%d: nnz=%d, %.1f MB (dense would be %.1f MB)",
        L,
        max_duration,
        num_sample,
        matrix.values().numel(),
        sampler.nbytes / 2**20,
        4 * L * num_sample * max_duration * L / 2**20,
    )
    with _SAMPLERS_LOCK:
        sampler = _SAMPLERS.setdefault(key, sampler)
        while len(_SAMPLERS) > _CACHE_SIZE:
            _SAMPLERS.popitem(last=False)
    return sampler


def _groups_for(channels: int, groups: int) -> int:
    return groups if channels % groups == 0 else 1


class BMN(nn.Module):
    """BMN head: ``forward(x (B, in_features, L)) -> {start (B, L), end (B, L), iou_map (B, 2, D, L)}``."""

    def __init__(
        self,
        in_features: int,
        temporal_length: int,
        max_duration: int | None = None,
        hidden: int = 256,
        num_sample: int = 32,
        num_sample_perbin: int = 3,
        prop_boundary_ratio: float = 0.5,
        hidden_2d: int = 128,
        hidden_3d: int = 512,
        groups: int = 4,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.temporal_length = temporal_length
        self.max_duration = max_duration
        self.num_sample = num_sample
        self.num_sample_perbin = num_sample_perbin
        self.prop_boundary_ratio = prop_boundary_ratio
        g_in = _groups_for(in_features, groups)  # grouped conv needs divisible channels; fall back to dense
        g_h = _groups_for(hidden, groups)
        if g_in != groups:
            log.info("BMN: in_features=%d not divisible by %d groups; first conv ungrouped", in_features, groups)

        self.base = nn.Sequential(
            nn.Conv1d(in_features, hidden, kernel_size=3, padding=1, groups=g_in),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden, hidden, kernel_size=3, padding=1, groups=g_h),
            nn.ReLU(inplace=True),
        )
        self.start_head = self._tem_branch(hidden, g_h)
        self.end_head = self._tem_branch(hidden, g_h)
        self.pem_1d = nn.Sequential(nn.Conv1d(hidden, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        # Parameters and state-dict layout of BMN's x_3d_p Conv3d; applied fused with the sampling (module doc).
        self.pem_3d = nn.Conv3d(hidden, hidden_3d, kernel_size=(num_sample, 1, 1), stride=(num_sample, 1, 1))
        self.pem_2d = nn.Sequential(
            nn.Conv2d(hidden_3d, hidden_2d, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, hidden_2d, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, hidden_2d, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_2d, 2, kernel_size=1),
            nn.Sigmoid(),
        )

    @staticmethod
    def _tem_branch(hidden: int, groups: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv1d(hidden, hidden, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden, 1, kernel_size=1),
            nn.Sigmoid(),
        )

    def map_duration(self, temporal_length: int) -> int:
        """D of the iou_map at this L (targets must be built with the same D)."""
        return effective_max_duration(self.max_duration, temporal_length)

    def sampler(self, temporal_length: int, device: torch.device | str) -> BMSampler:
        return get_bm_sampler(
            temporal_length,
            self.map_duration(temporal_length),
            num_sample=self.num_sample,
            num_sample_perbin=self.num_sample_perbin,
            prop_boundary_ratio=self.prop_boundary_ratio,
            device=device,
        )

    def boundary_matching(self, features: torch.Tensor) -> torch.Tensor:
        """BMN's explicit BM layer: (B, C, L) → (B, C, N, D, L). Memory-hungry; for tests and small L."""
        B, C, L = features.shape
        dense = self.sampler(L, features.device).to_dense().to(features.dtype)  # (T, N, D, S)
        return torch.einsum("bct,tnds->bcnds", features, dense)

    def _proposal_features(self, features: torch.Tensor) -> torch.Tensor:
        """relu(Conv3d(BM(features))) computed fused: (B, C, L) → (B, hidden_3d, D, L)."""
        B, C, L = features.shape
        weight = self.pem_3d.weight.squeeze(-1).squeeze(-1)  # (O, C, N)
        y = torch.einsum("ocn,bct->bont", weight, features)  # (B, O, N, L)
        out = self.sampler(L, features.device).sample(y)
        return F.relu(out + self.pem_3d.bias.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 3 or x.shape[1] != self.in_features:
            raise ValueError(f"BMN expects (B, {self.in_features}, L), got {tuple(x.shape)}")
        base = self.base(x)
        start = self.start_head(base).squeeze(1)
        end = self.end_head(base).squeeze(1)
        iou_map = self.pem_2d(self._proposal_features(self.pem_1d(base)))
        return {"start": start, "end": end, "iou_map": iou_map}


@register_head
def bmn(**kwargs) -> BMN:
    """BMN head; keyword arguments as :class:`BMN` (``in_features``, ``temporal_length`` required)."""
    return BMN(**kwargs)
