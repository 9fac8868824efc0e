"""User-facing errors: one line that names the file/key/video and says how to fix it."""

from __future__ import annotations

import errno
import json


class LofiError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits with status 2."""


class ConfigError(LofiError):
    """A config file or override is invalid (unknown key, wrong type, impossible value)."""


class AnnotationError(LofiError):
    """An annotation file is malformed."""


class VideoError(LofiError):
    """A video file cannot be decoded (missing, empty, corrupt)."""


class PredictionError(LofiError):
    """A predictions file is malformed."""


# ---------------------------------------------------------------------------------------------------------------
# Exceptions a user causes that are not LofiErrors: the CLI turns them into one line too (see ``user_message``).

_OS_FIXES = {  # the fix; the system's own words (strerror) say what happened
    errno.ENOSPC: "free space (or point --out / data.cache_dir elsewhere) and re-run the same command: finished "
    "stages and epochs are kept",
    errno.EDQUOT: "free space or point --out / data.cache_dir elsewhere, then re-run",
    errno.EFBIG: "the file system or a process limit (ulimit -f) caps the file size; write elsewhere",
    errno.EACCES: "choose a folder you can write (--out, data.cache_dir, tracking.uri) or fix its permissions",
    errno.EPERM: "choose a folder you can write (--out, data.cache_dir, tracking.uri) or fix its permissions",
    errno.EROFS: "choose a writable folder (--out, data.cache_dir, tracking.uri)",
    errno.EISDIR: "a folder is where a file is expected; pass the file's path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter --out or shorter ids",
    errno.EEXIST: "a file may be where a folder is needed; remove it or choose another path",
    errno.ENOTEMPTY: "remove it or choose another path",
}

# Exceptions of the tracking/search stores (raised inside MLflow, SQLAlchemy, sqlite3, Optuna's storages) are
# matched by the module that defines them, so the CLI need not import those libraries to recognise them.
_STORE_MODULES = ("mlflow", "sqlalchemy", "sqlite3", "optuna.exceptions", "optuna.storages")


def is_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from a tracking/search store (MLflow, its database or HTTP client, Optuna's storages)
    or the operating system under it, rather than from our code."""
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.startswith((*_STORE_MODULES, "requests", "urllib3"))


def _os_message(exc: OSError) -> str:
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(names) if names else "(file not named by the system)"
    fix = _OS_FIXES.get(exc.errno or -1)
    reason = exc.strerror or type(exc).__name__
    return f"{where}: {reason}" + (f"; {fix}" if fix else "; check the path, the disk and the permissions")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:400]


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an exception the user can cause, or None for a bug (the CLI shows its traceback).

    Mapped: ``LofiError``; every ``OSError`` (missing file, folder where a file is expected, read-only folder, full
    disk, ...: the file and the fix are named); malformed JSON/YAML and unreadable pickles/archives that escaped a
    reader; errors of the MLflow/Optuna stores; running out of (GPU) memory. Not mapped: every other exception,
    which means the code is wrong, not the input."""
    if isinstance(exc, LofiError):
        return str(exc)
    if isinstance(exc, OSError):
        return _os_message(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return (
            f"out of memory ({_one_line(str(exc))[:160]}); lower the batch size, fidelity.snippets/size or "
            "data.max_side, or turn on encoder.grad_checkpointing"
        )
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"a JSON file is malformed (line {exc.lineno} column {exc.colno}: {exc.msg}); run with -vv to see which "
            "file, then fix or delete it (a stage file is recomputed when its folder is deleted)"
        )
    module = type(exc).__module__ or ""
    if module.startswith("yaml"):
        return f"a YAML file is malformed ({_one_line(str(exc))}); fix its syntax"
    if module.startswith(("pickle", "_pickle", "zipfile")) or type(exc).__name__ in ("UnpicklingError", "BadZipFile"):
        return (
            f"a saved file is corrupt ({type(exc).__name__}: {_one_line(str(exc))}); delete the stage folder that "
            "holds it and re-run"
        )
    if module.startswith(_STORE_MODULES):
        return (
            f"tracking/search store error ({type(exc).__name__}: {_one_line(str(exc))}); check that tracking.uri / "
            "--storage points to a writable, uncorrupted store, or set tracking.enabled=false"
        )
    return None
