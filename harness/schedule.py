"""Fidelity schedules of the LoFi stage: pure functions of the epoch / iteration.

A schedule never writes derived shapes back into the config; callers ask ``fidelity_at(...)`` each step and
turn the ratios into shapes with ``harness.fidelity.fidelity_shape``.

- ``S`` / ``T`` / ``ST``: one fixed low fidelity (the paper's ratios unless overridden).
- ``long``: C-LoFi long cycle, S → T → ST, switching every ``c_l`` epochs (paper default: 1).
- ``short``: C-LoFi short cycle, S → T → ST, switching every ``c_s`` mini-batches (paper default: 16).
- ``custom``: any (r_t, r_s), e.g. chosen by Optuna.
- ``full``: r_t = r_s = 1, end-to-end at full fidelity (an upper reference where memory allows).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError
from harness.fidelity import PAPER_RATIOS

CYCLES: tuple[str, ...] = ("S", "T", "ST", "long", "short", "custom", "full")
CYCLE_ORDER: tuple[str, ...] = ("S", "T", "ST")  # the order C-LoFi visits the three fidelities


@dataclass(frozen=True)
class Fidelity:
    name: str  # "S", "T", "ST", "custom" or "full"
    r_t: float
    r_s: float

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "r_t": self.r_t, "r_s": self.r_s}


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name}={value}: must be at least 1")


def fidelity_at(
    cycle: str,
    *,
    epoch: int,
    iteration: int,
    c_l: int = 1,
    c_s: int = 16,
    custom: tuple[float, float] = (1.0, 1.0),
) -> Fidelity:
    """The fidelity used at ``epoch`` (0-based) and global ``iteration`` (0-based, counted over all epochs)."""
    if cycle in CYCLE_ORDER:
        return Fidelity(cycle, *PAPER_RATIOS[cycle])
    if cycle == "full":
        return Fidelity("full", 1.0, 1.0)
    if cycle == "custom":
        return Fidelity("custom", float(custom[0]), float(custom[1]))
    if cycle == "long":
        _check_positive("c_l", c_l)
        name = CYCLE_ORDER[(epoch // c_l) % len(CYCLE_ORDER)]
        return Fidelity(name, *PAPER_RATIOS[name])
    if cycle == "short":
        _check_positive("c_s", c_s)
        name = CYCLE_ORDER[(iteration // c_s) % len(CYCLE_ORDER)]
        return Fidelity(name, *PAPER_RATIOS[name])
    raise ConfigError(f"unknown cycle '{cycle}'; use one of {', '.join(CYCLES)}")


def schedule_table(
    cycle: str,
    *,
    epochs: int,
    iterations_per_epoch: int = 1,
    c_l: int = 1,
    c_s: int = 16,
    custom: tuple[float, float] = (1.0, 1.0),
) -> list[Fidelity]:
    """The fidelity per epoch (every cycle but ``short``) or per iteration (``short``)."""
    _check_positive("epochs", epochs)
    _check_positive("iterations_per_epoch", iterations_per_epoch)
    if cycle == "short":
        return [
            fidelity_at(cycle, epoch=i // iterations_per_epoch, iteration=i, c_s=c_s, custom=custom)
            for i in range(epochs * iterations_per_epoch)
        ]
    return [
        fidelity_at(cycle, epoch=e, iteration=e * iterations_per_epoch, c_l=c_l, custom=custom) for e in range(epochs)
    ]
