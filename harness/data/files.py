"""Where a dataset's video files are: one listing of the video folder, each id looked up under the names real
downloads use.

The documented name is ``<video_dir>/v_<id>.mp4`` (the official ActivityNet crawler's, also OpenTAD's and HACS's
downloaders'); ``<id>.mp4`` and the ``.mkv`` / ``.webm`` files youtube-dl and yt-dlp write when no MP4 was offered
are found too, in this order: ``data.video_ext`` first, then the others, each with and without the ``v_`` prefix.
A video whose annotation names its file (the synthetic benchmark's ``"video"`` key) is looked up at that path only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTS = (".mp4", ".mkv", ".webm")
PREFIXES = ("v_", "")


def candidate_names(video_id: str, ext: str = ".mp4") -> list[str]:
    """The file names tried for ``video_id``, best first."""
    exts = [ext, *(e for e in VIDEO_EXTS if e != ext)]
    return [f"{prefix}{video_id}{e}" for e in exts for prefix in PREFIXES]


def names_tried(ext: str = ".mp4") -> str:
    """The names :func:`candidate_names` tries, for messages: ``v_<id>.mp4, <id>.mp4, v_<id>.mkv, ...``."""
    return ", ".join(candidate_names("<id>", ext))


@dataclass(frozen=True)
class VideoFiles:
    """The outcome of one lookup: the file of each id found, and the ids without one (in the order given)."""

    folder: Path
    found: Mapping[str, Path]
    missing: tuple[str, ...]


def _listing(folder: Path) -> frozenset[str]:
    try:
        with os.scandir(folder) as it:
            return frozenset(e.name for e in it if e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def find_video_files(
    folder: Path, ids: Iterable[str], *, ext: str = ".mp4", named: Mapping[str, Path] | None = None
) -> VideoFiles:
    """Look every id up in ``folder`` (listed once); ``named``: ids whose annotation names their file."""
    named = named or {}
    names = _listing(folder)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for vid in ids:
        if vid in named:
            if Path(named[vid]).is_file():
                found[vid] = Path(named[vid])
            else:
                missing.append(vid)
            continue
        name = next((n for n in candidate_names(vid, ext) if n in names), None)
        if name is None:
            missing.append(vid)
        else:
            found[vid] = folder / name
    return VideoFiles(folder, found, tuple(missing))


def id_set_digest(ids: Iterable[str]) -> str:
    """A short hash of a set of video ids (order-free): what a stage's key records of the videos it read."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
