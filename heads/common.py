"""Building blocks shared by the heads, labels, losses and decoding.

Map layout (BMN, see docs/contracts.md): a map cell ``[d, s]`` is the proposal that starts at snippet ``s`` and
lasts ``d + 1`` snippets, i.e. covers the fractions ``[s / L, (s + d + 1) / L]`` of the video. A cell is *valid*
when the proposal ends inside the video: ``s + d + 1 <= L``.
"""

from __future__ import annotations

import contextlib

import torch


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device``'s type, for ops without a low-precision kernel.

    Sparse matmuls run in such an fp32 island: CUDA has no BFloat16 ``addmm_sparse_cuda`` (COO) and CPU no
    BFloat16 ``addmm_out_sparse_csr_impl_mkl`` (CSR). Device types without autocast (``meta``) get a no-op.
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # "unsupported scalarType": autocast does not exist for this device type
        return contextlib.nullcontext()


def sparse_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a sparse matmul runs in for inputs of ``dtype``: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def valid_map_mask(max_duration: int, temporal_length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool (D, L): True where the proposal (start s, duration d + 1) ends inside the video (s + d + 1 <= L)."""
    d = torch.arange(max_duration, device=device).unsqueeze(1)
    s = torch.arange(temporal_length, device=device).unsqueeze(0)
    return (s + d + 1) <= temporal_length


def effective_max_duration(max_duration: int | None, temporal_length: int) -> int:
    """D used at temporal length L: the configured maximum clipped to L, or L when none is configured.

    Clipping keeps the map free of rows that can never hold a valid cell when LoFi shortens L.
    """
    if max_duration is None:
        return temporal_length
    return max(1, min(int(max_duration), temporal_length))


def interval_iou(
    a_start: torch.Tensor, a_end: torch.Tensor, b_start: torch.Tensor, b_end: torch.Tensor
) -> torch.Tensor:
    """Elementwise (broadcast) temporal IoU of [a_start, a_end] and [b_start, b_end]; 0 where the union is empty."""
    inter = (torch.minimum(a_end, b_end) - torch.maximum(a_start, b_start)).clamp(min=0)
    union = (a_end - a_start) + (b_end - b_start) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def interval_ioa(
    a_start: torch.Tensor, a_end: torch.Tensor, b_start: torch.Tensor, b_end: torch.Tensor
) -> torch.Tensor:
    """Elementwise intersection of [a_start, a_end] with [b_start, b_end] over the length of a (BMN's ioa)."""
    inter = (torch.minimum(a_end, b_end) - torch.maximum(a_start, b_start)).clamp(min=0)
    length = a_end - a_start
    return torch.where(length > 0, inter / length.clamp(min=1e-12), torch.zeros_like(inter))
