"""Memory of one training step: LoFi's premise is that a low-fidelity step fits the memory budget.

``activation_bytes`` counts the tensors autograd saves for the backward pass (via
``torch.autograd.graph.saved_tensors_hooks``) during one forward of encoder + head + loss: each underlying storage
once (views share storage), parameters and buffers excluded (they are model state, not activations). It is exact,
device independent, and available on CPU, CUDA and the ``meta`` device (which allocates nothing, so even full
fidelity at 100 × 8 × 224² can be measured on a laptop). It grows linearly with the batch (up to small fixed
costs such as BatchNorm's per-channel statistics). With gradient checkpointing it is what is kept from forward to
backward (stage inputs); the stage recomputed during backward shows only in ``peak_bytes``.

``peak_bytes`` is ``torch.cuda.max_memory_allocated`` over the step on CUDA (weights, gradients, activations,
workspace and allocator rounding included), ``None`` elsewhere.

    report = measure_step_memory(encoder, head, batch=1, snippets=100, frames=8, size=224, device="meta")
    reports = measure_fidelities("tsm_resnet18", "gtad", batch=1, snippets=100, frames=8, size=224)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

FIDELITIES: tuple[str, ...] = ("full", "S", "T", "ST")


@dataclass(frozen=True)
class MemoryReport:
    """Memory of one training step at one input shape."""

    activation_bytes: int
    peak_bytes: int | None
    head_activation_bytes: int  # the part first saved by the head and the loss (the rest is the encoder's)
    saved_storages: int
    param_bytes: int
    batch: int
    snippets: int
    frames: int
    size: int
    device: str


class SavedTensorMeter:
    """Counts the bytes of distinct storages that autograd saves, skipping the given (parameter) storages.

    Each storage is attributed to the ``phase`` during which it was first saved (e.g. "encoder", "head").
    """

    def __init__(self, excluded: set[Any]) -> None:
        self.excluded = excluded
        self.phase = "encoder"
        self.storages: dict[Any, tuple[int, str]] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        for part in _dense_parts(tensor):
            key = _storage_key(part)
            if key not in self.excluded and key not in self.storages:
                self.storages[key] = (part.untyped_storage().nbytes(), self.phase)
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def total_bytes(self, phase: str | None = None) -> int:
        return sum(n for n, p in self.storages.values() if phase is None or p == phase)


def _dense_parts(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The strided tensors holding ``tensor``'s memory (a sparse tensor has no storage of its own)."""
    layout = tensor.layout
    if layout == torch.strided:
        return (tensor,)
    if layout == torch.sparse_coo:
        return (tensor._indices(), tensor._values())
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return (tensor.crow_indices(), tensor.col_indices(), tensor.values())
    if layout in (torch.sparse_csc, torch.sparse_bsc):
        return (tensor.ccol_indices(), tensor.row_indices(), tensor.values())
    raise TypeError(f"cannot measure a saved tensor with layout {layout}")


def _storage_key(tensor: torch.Tensor) -> Any:
    # Saved tensors stay alive until backward, so a storage address cannot be reused while we count. Meta tensors
    # have no address (all 0); their storage object's identity distinguishes them instead.
    storage = tensor.untyped_storage()
    if tensor.device.type == "meta":
        return ("meta", storage._cdata)
    return (str(tensor.device), storage.data_ptr())


@contextlib.contextmanager
def track_saved_tensors(*modules: nn.Module) -> Iterator[SavedTensorMeter]:
    """Count what autograd saves inside the block; the parameters and buffers of ``modules`` are not counted.

    with track_saved_tensors(model) as meter:
        loss = model(x).sum()
    meter.total_bytes()
    """
    meter = SavedTensorMeter(excluded=_state_storages(*modules))
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        yield meter


def _state_storages(*modules: nn.Module) -> set[Any]:
    keys = set()
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            keys.add(_storage_key(t))
    return keys


@contextlib.contextmanager
def _buffers_restored(*modules: nn.Module) -> Iterator[None]:
    """Measuring must not change the model: BatchNorm statistics updated on random input are put back."""
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _scalar_loss(outputs: Any) -> torch.Tensor:
    # A plain sum: the loss's own saved tensors are tiny next to the encoder's, and any scalar backpropagates
    # through the whole graph, which is all the measurement needs.
    if isinstance(outputs, torch.Tensor):
        return outputs.float().sum()
    if isinstance(outputs, Mapping):
        return sum((_scalar_loss(v) for v in outputs.values()), torch.zeros((), device=_first_device(outputs)))
    raise TypeError(f"head output must be a tensor or a dict of tensors, got {type(outputs).__name__}")


def _first_device(outputs: Mapping[str, Any]) -> torch.device:
    for value in outputs.values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def measure_step_memory(
    encoder: nn.Module,
    head: nn.Module,
    *,
    batch: int,
    snippets: int,
    frames: int,
    size: int,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> MemoryReport:
    """Run one training step (forward, scalar loss, backward) on random input (B, L, F, 3, S, S) and measure it.

    ``encoder`` and ``head`` are moved to ``device`` in place and put in training mode; their gradients are
    cleared afterwards and their buffers (BatchNorm statistics) restored, so the step leaves no trace. The head
    gets the encoder features as (B, D, L). ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the forward in autocast;
    the low-precision weight copies autocast saves then count as activations.

    On ``device="meta"`` the encoder runs without allocating; the head runs on CPU on a leaf tensor shaped like the
    features (heads use sparse kernels that meta lacks, and their activations are small), and both are counted.
    """
    dev = torch.device(device)
    if amp_dtype is not None and dev.type == "meta":
        raise ValueError("autocast is not available on the meta device; measure AMP on cpu or cuda")
    head_dev = torch.device("cpu") if dev.type == "meta" else dev
    encoder.to(dev).train()
    head.to(head_dev).train()
    if dev.type == "meta":
        x = torch.empty((batch, snippets, frames, 3, size, size), device=dev)
    else:
        gen = torch.Generator(device=dev).manual_seed(seed)
        x = torch.rand((batch, snippets, frames, 3, size, size), generator=gen, device=dev)
    param_bytes = sum(p.numel() * p.element_size() for m in (encoder, head) for p in m.parameters())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    autocast = (
        torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    with _buffers_restored(encoder, head):
        with autocast, track_saved_tensors(encoder, head) as meter:
            features = encoder(x)  # (B, L, D)
            meter.phase = "head"
            head_input = features.transpose(1, 2)
            if head_dev != dev:
                cpu_gen = torch.Generator().manual_seed(seed)
                head_input = torch.rand(head_input.shape, generator=cpu_gen, dtype=head_input.dtype, requires_grad=True)
            outputs = head(head_input)
            loss = _scalar_loss(outputs)
        loss.backward()
        if head_dev != dev:
            features.backward(torch.ones_like(features))
    peak = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = int(torch.cuda.max_memory_allocated(dev))
    encoder.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    report = MemoryReport(
        activation_bytes=meter.total_bytes(),
        peak_bytes=peak,
        head_activation_bytes=meter.total_bytes("head"),
        saved_storages=len(meter.storages),
        param_bytes=param_bytes,
        batch=batch,
        snippets=snippets,
        frames=frames,
        size=size,
        device=str(dev),
    )
    log.debug("step memory %s", report)
    return report


def fidelity_shapes(*, snippets: int, size: int) -> dict[str, tuple[int, int]]:
    """(L, size) of full fidelity and of the paper's S, T and ST LoFi settings."""
    from harness.fidelity import PAPER_RATIOS, fidelity_shape

    shapes = {"full": (snippets, size)}
    for name in FIDELITIES[1:]:
        r_t, r_s = PAPER_RATIOS[name]
        shapes[name] = fidelity_shape(snippets, size, r_t, r_s)
    return shapes


def measure_fidelities(
    encoder_name: str,
    head_name: str,
    *,
    batch: int,
    snippets: int,
    frames: int,
    size: int,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, MemoryReport]:
    """One training step's memory at full fidelity (``snippets`` × ``size``²) and at the paper's S, T, ST.

    The encoder is built once (random weights; memory does not depend on their values); the head is rebuilt for
    each temporal length L because its proposal map depends on L.
    """
    from encoders import create_encoder
    from heads import create_head

    encoder = create_encoder(encoder_name, **dict(encoder_kwargs or {}))
    reports: dict[str, MemoryReport] = {}
    for name, (length, side) in fidelity_shapes(snippets=snippets, size=size).items():
        head = create_head(
            head_name, in_features=encoder.num_features, temporal_length=length, **dict(head_kwargs or {})
        )
        reports[name] = measure_step_memory(
            encoder,
            head,
            batch=batch,
            snippets=length,
            frames=frames,
            size=side,
            device=device,
            amp_dtype=amp_dtype,
        )
        log.info("%s: L=%d size=%d activation %.1f MiB", name, length, side, reports[name].activation_bytes / 2**20)
    return reports
