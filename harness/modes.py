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
    "lofi-S+bn": ("acp", "S"),  # lofi-S with lofi.bn_recalibrate: BatchNorm statistics re-estimated at full fidelity
    "lofi-T": ("acp", "T"),
    "lofi-ST": ("acp", "ST"),
    "lofi-long": ("acp", "long"),
    "lofi-short": ("acp", "short"),
    "lofi-custom": ("acp", "custom"),
    "e2e-full": ("acp", "full"),
    "blind": ("acp", None),  # a control: the ACP pipeline with every feature zeroed (see ZEROED_MODES)
}
MODES: tuple[str, ...] = tuple(MODE_PLAN)
PRETRAIN_MODES: tuple[str, ...] = ("icp", "acp", "acp+")
# Modes whose head sees all-zero features of their encoder's shape: what the temporal prior of the segment layouts
# and the video-level classifier give alone (the benchmark's floor).
ZEROED_MODES: frozenset[str] = frozenset({"blind"})
# Modes whose LoFi encoder gets its BatchNorm statistics re-estimated at full fidelity before feature extraction,
# whatever lofi.bn_recalibrate says (the resolution-mismatch row of the ablation).
BN_RECALIBRATED_MODES: frozenset[str] = frozenset({"lofi-S+bn"})

# The tables a report can build (`lofi report tables --which`); here, not in harness.report.build, so that the CLI
# lists them without importing pandas and scipy on every command.
TABLE_KINDS: tuple[str, ...] = ("ablation", "pretrain", "models", "memory", "controls", "strata")
