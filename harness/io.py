"""Atomic file writes: a reader never sees a half-written output, and an interrupted write leaves the old file.

A temporary file is named ``.<target>.<host>-<pid>.<random>.tmp`` so that a later start can tell an orphan (its
writer was killed: ``kill -9`` skips the cleanup below) from the live file of a concurrent writer on the same host:
``remove_orphans`` deletes only the former.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import LofiError

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_TMP_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")
FOREIGN_TMP_AGE_S = 24 * 3600  # a temporary file of another host (shared file system) is an orphan after a day


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            # a failed write() names no file, a writer that opened the temporary (PyAV) names that hidden file:
            # name the output the user knows instead (the CLI prints it)
            if exc.filename is None or str(exc.filename) == str(tmp_path):
                raise OSError(exc.errno, exc.strerror, str(target)) from exc
            raise
        # mkstemp creates 0600 files; give outputs the permissions an ordinary file would get
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def loads_json_strict(text: str) -> tuple[Any, str | None]:
    """Parse JSON text; returns (data, the first key written twice in one object or None). Python's json keeps the
    last of two equal keys silently, so a video listed twice would lose its first entry; readers refuse that."""
    duplicates: list[str] = []

    def keep_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                duplicates.append(key)
            obj[key] = value
        return obj

    with gc_paused():
        data = json.loads(text, object_pairs_hook=keep_duplicates)
    return data, (duplicates[0] if duplicates else None)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: building millions of containers (a parsed JSON file) triggers
    collections that each walk every container made so far, which doubles the parse time and frees nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None when there is no file); unreadable or not an object is a one-line error
    naming the file, ``what`` it should be and the ``fix``."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LofiError(f"{path}: unreadable {what}; {fix}") from None
    if not isinstance(obj, dict):
        raise LofiError(f"{path}: not a {what} written by lofi; {fix}")
    return obj


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write ``data`` through Python's file API, so a full disk is an ``OSError`` with its errno and file name."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_orphan(tmp: Path, now: float | None = None) -> bool:
    """Whether a temporary file of ``atomic_path`` was left by a writer that no longer runs."""
    m = _TMP_NAME.match(tmp.name)
    if m and m["host"] == _HOST:
        return not _pid_alive(int(m["pid"]))
    try:
        age = (time.time() if now is None else now) - tmp.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_TMP_AGE_S  # another host's (or an old-style name): only once surely abandoned


def remove_orphans(folder: str | os.PathLike[str]) -> int:
    """Delete the orphaned temporary files under ``folder`` (recursively); returns how many were removed."""
    root = Path(folder)
    if not root.is_dir():
        return 0
    removed = 0
    for tmp in root.rglob(".*.tmp"):
        if tmp.is_file() and is_orphan(tmp):
            tmp.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", root, removed)
    return removed


# ---------------------------------------------------------------------------------------------- names from data
_FORBIDDEN = re.compile(r"[/\\\x00-\x1f\x7f]")
MAX_NAME_BYTES = 200  # file names are at most 255 bytes; room for a suffix such as ".npy" or "-<hash>.npy"


def name_problem(name: object) -> str | None:
    """Why ``name`` (a video id, a class name) cannot become one file name inside a folder, or None if it can.

    No separator (``/``, ``\\``), no control character, no leading dot (``..`` would leave the folder and a
    hidden file is skipped by the ``*.npy`` globs that collect a stage's outputs), not empty, not too long."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a non-empty string"
    if _FORBIDDEN.search(name):
        return f"{name!r} contains a path separator or a control character"
    if name.startswith("."):
        return f"{name!r} starts with a dot (it would name a hidden file or a parent folder)"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"{name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes"
    return None


def child_path(folder: str | os.PathLike[str], name: str, suffix: str = "") -> Path:
    """``folder/<name><suffix>``, refusing a ``name`` that would not stay one file inside ``folder``."""
    problem = name_problem(name)
    if problem is not None:
        from harness.errors import LofiError

        raise LofiError(f"{folder}: cannot use {problem} as a file name; fix the id in the annotation file")
    return Path(folder) / f"{name}{suffix}"
