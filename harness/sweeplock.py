"""One sweep per results folder: ``<results>/.sweep.lock``, held (``fcntl.flock``) for the life of the sweep.

Two ``snakemake`` sweeps started together on one results folder raced past Snakemake's own lock (taken after its
check for incomplete files): the second stopped with ``IncompleteFilesException … rerun with --rerun-incomplete``
about the first's running job, advice that would rerun that job under it. The Snakefile takes this lock while it
is parsed, before Snakemake looks at any file, and keeps it until the process ends; a second sweep is refused in
one line naming the first (pid, host, since when, command). The kernel releases the lock when its holder exits,
however it exits (``kill -9`` included), so there is never a stale lock to remove by hand. On a shared file system
the lock works where the file system supports ``flock`` (NFSv4 and Lustre with ``flock`` mounted do).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from harness.errors import LofiError

LOCK_FILE = ".sweep.lock"
_held: dict[Path, IO[str]] = {}  # the locks this process holds (the Snakefile may be parsed twice in one process)


def holder(results: str | os.PathLike[str]) -> dict[str, object]:
    """What the lock file says about the sweep holding it (empty when unreadable)."""
    try:
        info = json.loads((Path(results) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def acquire(results: str | os.PathLike[str], command: str | None = None) -> IO[str]:
    """Take the results folder's sweep lock, or raise ``LofiError`` naming the sweep that holds it. Keep the
    returned file open for as long as the sweep runs (closing it, or exiting, releases the lock)."""
    folder = Path(results)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    if path.resolve() in _held:
        return _held[path.resolve()]
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the sweep) never truncated before the lock is ours
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        info = holder(folder)
        who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')}"
        raise LofiError(
            f"{folder}: another sweep is running on this results folder ({who}: {info.get('command', '?')}); "
            "wait for it to end or stop it, or give this sweep another sweep.results"
        ) from None
    handle.seek(0)
    handle.truncate()
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else " ".join(sys.argv),
    }
    handle.write(json.dumps(info) + "\n")
    handle.flush()
    _held[path.resolve()] = handle
    return handle
