"""One in-memory model of a temporal action localization dataset, whatever layout it was read from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

SUBSETS = ("training", "validation", "testing")


@dataclass(frozen=True)
class Segment:
    """A labelled action instance, times in seconds."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Video:
    id: str  # as the official ActivityNet JSON writes it (no "v_" prefix); THUMOS: "video_validation_0000051"
    subset: str  # one of SUBSETS
    duration: float  # seconds
    segments: tuple[Segment, ...] = ()
    fps: float | None = None
    ambiguous: tuple[Segment, ...] = ()  # THUMOS14 'Ambiguous' spans: ignored by its evaluation protocol
    path: Path | None = None  # the video file, when known

    def segment_array(self) -> np.ndarray:
        """(K, 2) float64 array of [start, end] in seconds."""
        if not self.segments:
            return np.zeros((0, 2), dtype=np.float64)
        return np.array([[s.start, s.end] for s in self.segments], dtype=np.float64)


@dataclass(frozen=True)
class TALDataset:
    name: str
    videos: Mapping[str, Video]
    classes: tuple[str, ...]
    source: str = ""
    meta: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def subset(self, name: str) -> list[Video]:
        return [v for v in self.videos.values() if v.subset == name]

    def subset_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for v in self.videos.values():
            counts[v.subset] = counts.get(v.subset, 0) + 1
        return counts

    def num_instances(self) -> int:
        return sum(len(v.segments) for v in self.videos.values())

    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}
