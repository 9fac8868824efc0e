#!/usr/bin/env python
"""Write harness/data/anet_structure.json: the temporal structure of ActivityNet-1.3's training videos.

The synthetic benchmark samples how many actions a video has and where they lie from this file, so the package
needs no copy of ActivityNet at run time. Per training video it keeps its segments as [start, end] fractions of
the duration, rounded to 4 decimals, in time order. Segments are clipped to the video (the official file has
small overruns); zero-length segments (also after rounding) are dropped, and so are videos left with none.

usage: python scripts/make_anet_structure.py [--source activity_net_v1-3_gt.json] [--out harness/data/...]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from harness.data.annotations import STRUCTURE_FILE, read_activitynet_json
from harness.data.model import TALDataset
from harness.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "activitynet" / "activity_net_v1-3_gt.json"
DEFAULT_OUT = ROOT / "harness" / "data" / STRUCTURE_FILE
DECIMALS = 4

log = logging.getLogger("make_anet_structure")


def relative_segments(dataset: TALDataset, subset: str = "training") -> list[list[list[float]]]:
    """Per video of ``subset`` (file order): its non-empty segments as rounded [start, end] fractions."""
    structure = []
    for video in dataset.subset(subset):
        pairs = sorted(
            (round(s.start / video.duration, DECIMALS), round(s.end / video.duration, DECIMALS)) for s in video.segments
        )
        kept = [[a, b] for a, b in pairs if b > a]
        if kept:
            structure.append(kept)
    return structure


def structure_document(source: Path, structure: list[list[list[float]]], videos_in_subset: int) -> dict[str, Any]:
    return {
        "source": source.name,
        "subset": "training",
        "decimals": DECIMALS,
        "videos_in_subset": videos_in_subset,
        "num_videos": len(structure),
        "num_segments": sum(len(v) for v in structure),
        "videos": structure,
    }


def to_text(document: dict[str, Any]) -> str:
    """Compact JSON: metadata first, one video per line so diffs stay readable."""
    head = {k: v for k, v in document.items() if k != "videos"}
    lines = [json.dumps(v, separators=(",", ":")) for v in document["videos"]]
    body = json.dumps(head, separators=(", ", ": "))[:-1]
    return body + ', "videos": [\n' + ",\n".join(lines) + "\n]}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="official ActivityNet-1.3 JSON")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = read_activitynet_json(args.source, clip_segments=True)
    structure = relative_segments(dataset)
    document = structure_document(args.source, structure, len(dataset.subset("training")))
    write_text_atomic(args.out, to_text(document))
    log.info(
        "%s: %d videos, %d segments, %d bytes",
        args.out,
        document["num_videos"],
        document["num_segments"],
        args.out.stat().st_size,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
