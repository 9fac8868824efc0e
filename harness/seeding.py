"""The one place seeds come from: every random stream is derived from (run seed, purpose)."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(seed: int, *purpose: str | int) -> int:
    """A stable 31-bit seed for a named sub-stream, so adding a stream never shifts the others."""
    key = ":".join([str(seed), *map(str, purpose)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def numpy_rng(seed: int, *purpose: str | int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *purpose))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; make torch kernels deterministic where it can."""
    import torch

    random.seed(seed)
    np.random.seed(derive_seed(seed, "numpy-global"))
    torch.manual_seed(seed)
    if deterministic and torch.cuda.is_available():
        # CPU kernels are deterministic already; the switch costs a 3 s import of torch._inductor per process,
        # which matters when a sweep starts hundreds of short jobs
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def torch_generator(seed: int, *purpose: str | int):  # -> torch.Generator
    import torch

    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *purpose))
    return g
