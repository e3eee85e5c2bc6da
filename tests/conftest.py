"""Shared fixtures. Real components only: artifacts are real safetensors files of a real (small) model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_artifact(tmp_path: Path):
    """make_artifact(version=1, seed=0, hidden=(128, 128)) -> ArtifactRef of an untrained digits-shaped MLP
    (other keywords: build_artifact's, e.g. classes=...)."""
    from artifact_factory import build_artifact

    def make(
        version: int = 1, seed: int = 0, hidden: tuple[int, ...] = (128, 128), root: Path | None = None, **kw: Any
    ):
        return build_artifact(root or tmp_path / "artifacts", version=version, seed=seed, hidden=hidden, **kw)

    return make


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
