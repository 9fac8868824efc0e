"""Pre-training sources: the index of labelled clips (ACP) or images (ICP) the synthetic generator writes, or a
user gives (``data.acp_source`` / ``data.icp_source``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import LofiError
from harness.experiment import DataConfig


@dataclass(frozen=True)
class LabelledItem:
    path: Path
    label: int
    start: float = 0.0  # seconds; used for trimmed segments of long videos (ACP+)
    end: float = -1.0


def read_source_index(cfg: DataConfig, rel: str, key: str) -> tuple[list[str], list[LabelledItem]]:
    """A pre-training source index (``clips/index.json`` or ``images/index.json``)."""
    path = Path(rel) if Path(rel).is_absolute() else cfg.root / rel
    if not path.is_file():
        raise LofiError(
            f"{path}: pre-training source index not found; generate the synthetic benchmark or set "
            f"data.{'acp' if key == 'clips' else 'icp'}_source"
        )
    try:
        index = json.loads(path.read_text())
        classes = [str(c) for c in index["classes"]]
        cidx = {c: i for i, c in enumerate(classes)}
        # entry paths are relative to the dataset root, as the synthetic generator writes them
        items = [LabelledItem(cfg.root / e["path"], cidx[e["label"]]) for e in index[key]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LofiError(
            f"{path}: malformed source index ({exc}); expected {{'classes': [...], '{key}': [{{'path', 'label'}}]}}"
        ) from None
    return classes, items
