"""The modes a run can have: where its encoder comes from (the rows of the paper's tables).

Kept apart from the config (which validates `sweep.*_modes` against it) and from the stage plan (which turns a
mode into stages), so that both import it and neither spells the list again.
"""

from __future__ import annotations

# mode -> (pre-training it starts from, LoFi cycle or None when the encoder stays frozen after pre-training)
MODE_PLAN: dict[str, tuple[str, str | None]] = {
    "icp": ("icp", None),
    "acp": ("acp", None),
    "acp+": ("acp+", None),
    "lofi-S": ("acp", "S"),
    "lofi-T": ("acp", "T"),
    "lofi-ST": ("acp", "ST"),
    "lofi-long": ("acp", "long"),
    "lofi-short": ("acp", "short"),
    "lofi-custom": ("acp", "custom"),
    "e2e-full": ("acp", "full"),
}
MODES: tuple[str, ...] = tuple(MODE_PLAN)
PRETRAIN_MODES: tuple[str, ...] = ("icp", "acp", "acp+")
