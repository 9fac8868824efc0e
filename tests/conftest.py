"""Shared fixtures: the smoke synthetic benchmark is generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "smoke"
    generate("smoke", 0, root)
    return root


@pytest.fixture(scope="session")
def tiny_overrides(smoke_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """config/smoke.yaml on the session's smoke data, tracking off (tests that need MLflow turn it on)."""
    cache = tmp_path_factory.mktemp("frames")
    return [f"data.root={smoke_root}", f"data.cache_dir={cache}", "tracking.enabled=false", "runtime.threads=1"]
