"""User-facing errors: one line that names the file/key/video and says how to fix it."""

from __future__ import annotations


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
