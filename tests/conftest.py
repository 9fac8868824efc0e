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
    """config/smoke.yaml made tinier still, so every mode runs in seconds on a CI core."""
    cache = tmp_path_factory.mktemp("frames")
    return [
        f"data.root={smoke_root}", f"data.cache_dir={cache}", "tracking.enabled=false",
        "fidelity.snippets=8", "fidelity.size=16", "fidelity.frames=2",
        "pretrain.optim.epochs=1", "pretrain.finetune.epochs=1",
        "lofi.optim.epochs=2", "lofi.optim.batch_size=4", "lofi.c_s=2",
        "head.optim.epochs=2", "head.hidden=16", "head.hidden_2d=8", "head.hidden_3d=16", "head.samples=4",
        "head.classifier_optim.epochs=5", "runtime.threads=1",
    ]
