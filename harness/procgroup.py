"""Run a server as one process group and stop all of it: the server, its children and theirs.

``mlflow server`` is a tree (mlflow → uvicorn + a job runner → several huey consumers, ≈ 1.9 GB). Signalling its
top process alone left the consumers orphaned (SIGTERM in its first seconds: 7 processes, ≈ 1.3 GB, until they
timed out) or the whole tree up for ~15 s (SIGINT). ``run_group`` starts the command in a new session (its own
process group, which every descendant inherits unless it makes its own), stays in the foreground as a small
supervisor, and on SIGTERM, SIGINT or SIGHUP — at any moment, during start-up too — sends SIGTERM to the whole
group, waits up to ``grace_s`` for it to go, then SIGKILLs whatever is left, and returns once no process of the
group remains (zombies excepted: they hold no memory and their new parent reaps them). When the command exits
on its own, stragglers in its group are stopped the same way.

Limits: a descendant that starts its own session (``setsid``) leaves the group and is not seen; a supervisor
killed with SIGKILL cannot stop anything (use SIGTERM/SIGINT, as schedulers and Ctrl-C do).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 5.0  # from SIGTERM to SIGKILL
_POLL_S = 0.05


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after its last ')'
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing left
        os.killpg(pgid, sig)


def _wait_empty(pgid: int, timeout: float, reap: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if reap is not None:
            reap.poll()  # our own child would otherwise stay a zombie of ours
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def stop_group(pgid: int, *, grace_s: float = GRACE_S, reap: subprocess.Popen | None = None) -> None:
    """SIGTERM to every process of group ``pgid``, SIGKILL to those left after ``grace_s``; returns when none is."""
    _signal_group(pgid, signal.SIGTERM)
    if _wait_empty(pgid, grace_s, reap):
        return
    log.warning(
        "process group %d: %d process(es) still running after %.0f s; killing them",
        pgid,
        len(group_members(pgid)),
        grace_s,
    )
    while not _wait_empty(pgid, 1.0, reap):
        _signal_group(pgid, signal.SIGKILL)


def run_group(cmd: Sequence[str], *, grace_s: float = GRACE_S) -> int:
    """Run ``cmd`` in its own process group until it exits or this process gets a stop signal; either way no
    process of the group is left on return. Returns the command's exit status (128 + signal when stopped)."""
    stopped: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:  # before the start: a signal during start-up is caught too
        signal.signal(sig, stop)
    try:
        proc = subprocess.Popen(list(cmd), start_new_session=True)
        log.info("started %s as process group %d (SIGTERM/SIGINT stop all of it)", Path(cmd[0]).name, proc.pid)
        while proc.poll() is None and not stopped:
            time.sleep(_POLL_S)
        stop_group(proc.pid, grace_s=grace_s, reap=proc)
        proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + stopped[0] if stopped else int(proc.returncode)
