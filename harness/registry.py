"""A name → factory registry in the style of timm: variants are small registered functions."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from harness.errors import ConfigError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, fn: F) -> F:
        name = fn.__name__
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = fn
        return fn

    def get(self, name: str) -> F:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(self._entries))}"
            raise ConfigError(f"unknown {self.kind} '{name}'; {hint}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))
