"""Fidelity arithmetic: how a (temporal, spatial) reduction ratio maps to the snippet count and frame size."""

from __future__ import annotations

import math
from numbers import Integral, Real

from harness.errors import ConfigError

# ==============================================================================================================
# Fidelity shape: (r_t, r_s) -> (L, size)
# ==============================================================================================================

MIN_SIZE = 8  # smallest frame side we ever sample: below this the encoders' strides leave nothing

# The paper's three low-fidelity settings at roughly equal cost: (r_t, r_s) for spatial-only, temporal-only and
# spatio-temporal reduction.
PAPER_RATIOS: dict[str, tuple[float, float]] = {
    "S": (1.0, 2.0),
    "T": (4.0, 1.0),
    "ST": (2.0, math.sqrt(2)),
}


def _check_ratio(name: str, value: float, upper: int | None) -> None:
    valid = f"1 <= {name} <= {upper}" if upper is not None else f"{name} >= 1"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"impossible fidelity ratio {name}={value!r}: not a finite number; use {valid}")
    if value < 1:
        raise ConfigError(f"impossible fidelity ratio {name}={value}: below 1 would exceed full fidelity; use {valid}")
    if upper is not None and value > upper:
        raise ConfigError(f"impossible fidelity ratio {name}={value}: fewer than one snippet; use {valid}")


def fidelity_shape(full_snippets: int, full_size: int, r_t: float, r_s: float) -> tuple[int, int]:
    """(L, size) = (max(1, round(full_snippets / r_t)), max(8, round(full_size / r_s))).

    Python's ``round`` (half to even) as the contract writes it: (100, 224, 2, sqrt 2) -> (50, 158).
    Raises ``ConfigError`` for r_t or r_s below 1 or not finite, and for r_t > full_snippets.
    """
    for name, full in (("full_snippets", full_snippets), ("full_size", full_size)):
        if isinstance(full, bool) or not isinstance(full, Integral) or full < 1:
            raise ConfigError(f"fidelity: {name}={full!r} is invalid; use an integer >= 1")
    _check_ratio("r_t", r_t, full_snippets)
    _check_ratio("r_s", r_s, None)
    return max(1, round(full_snippets / r_t)), max(MIN_SIZE, round(full_size / r_s))
