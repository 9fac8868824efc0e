"""Where an Optuna study lives, and how many workers share it (``harness.search.study`` runs the trials).

Storage: a journal file by default (``OUT/optuna.journal``, Optuna's ``JournalStorage`` + ``JournalFileBackend``):
the storage Optuna recommends for many processes on a shared filesystem (it appends under a file lock, where SQLite
has one writer at a time), or any SQLAlchemy URL (``sqlite:///…``, ``postgresql://…``, ``mysql://…``), opened as
``RDBStorage`` with Optuna's heartbeat.

Workers. Any number of processes (``lofi search`` calls, Snakemake jobs) may work on one study; each trial records
its worker (``host:pid``) and a heartbeat (a user attribute, refreshed every ``heartbeat_interval`` s by a thread)
because Optuna 5's ``JournalStorage`` has no heartbeat of its own (only ``RDBStorage`` implements ``BaseHeartbeat``).
A RUNNING trial is dead when its worker ran on this host and that pid is gone, or when its heartbeat (or start) is
older than ``grace_period`` s; ``fail_dead_trials`` marks it FAIL through ``study.tell`` so it is not counted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from harness.errors import ConfigError

log = logging.getLogger(__name__)
JOURNAL_SUFFIXES = (".journal", ".log")
WORKER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat"


def default_storage(out: Path) -> str:
    return str((Path(out) / "optuna.journal").resolve())


def is_rdb_url(url: str) -> bool:
    return "://" in url


def open_storage(url: str, *, heartbeat_interval: int, grace_period: int) -> BaseStorage:
    """A journal file (a path ending in .journal or .log) or an RDB storage with heartbeats (a SQLAlchemy URL)."""
    if is_rdb_url(url):
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        except Exception as exc:
            raise ConfigError(
                f"--storage {url!r}: cannot open ({type(exc).__name__}: {exc}); "
                "use a SQLAlchemy URL such as postgresql://host/db or a journal file such as OUT/optuna.journal"
            ) from None
    path = Path(url)
    if path.suffix not in JOURNAL_SUFFIXES:
        raise ConfigError(
            f"--storage {url!r} is neither a database URL nor a journal file; use a path ending in .journal "
            "(e.g. OUT/optuna.journal) or a SQLAlchemy URL such as postgresql://host/db"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_dead(t: FrozenTrial, grace_period: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone (same host and its pid has exited, or no heartbeat for too long)."""
    if t.state != TrialState.RUNNING:
        return False
    host, _, pid = str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return True
    last = t.user_attrs.get(HEARTBEAT_ATTR)
    if last is None and t.datetime_start is not None:
        last = t.datetime_start.timestamp()
    return last is not None and (now if now is not None else time.time()) - float(last) > grace_period


def fail_dead_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """Mark the RUNNING trials of dead workers FAIL (another worker may race to do the same: skip_if_finished)."""
    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if is_dead(t, grace_period)]
    for t in dead:
        log.warning("trial %d: worker %s is gone; marking it FAIL", t.number, t.user_attrs.get(WORKER_ATTR, "?"))
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return [t.number for t in dead]


@contextmanager
def heartbeat(trial: optuna.Trial, interval: float) -> Iterator[None]:
    """Record the trial's worker and refresh its heartbeat every ``interval`` s until the body ends."""
    trial.set_user_attr(WORKER_ATTR, worker_id())
    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            except Exception as exc:  # the storage briefly unreachable: the next beat retries
                log.debug("heartbeat of trial %d: %s", trial.number, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()  # no beat may land after the trial is told finished
