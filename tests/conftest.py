"""Shared fixtures. Real components only: artifacts are real safetensors files of a real (small) model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_artifact(tmp_path: Path):
    """make_artifact(version=1, seed=0, hidden=(128, 128)) -> ArtifactRef of an untrained digits-shaped MLP."""
    import torch

    from mlci.artifacts import package
    from mlci.model import build_model

    def make(version: int = 1, seed: int = 0, hidden: tuple[int, ...] = (128, 128), root: Path | None = None):
        torch.manual_seed(seed)
        features = [f"px_{r}_{c}" for r in range(8) for c in range(8)]
        model = build_model("mlci.model:mlp", {"hidden": list(hidden)}, len(features), 10)
        gen = torch.Generator().manual_seed(seed)
        smoke = torch.randint(0, 17, (4, len(features)), generator=gen).float().tolist()
        return package(
            root or tmp_path / "artifacts",
            model,
            model_name="digits",
            version=version,
            run_id=f"test-{version}-{seed}",
            factory="mlci.model:mlp",
            params={"hidden": list(hidden)},
            features=features,
            classes=list(range(10)),
            smoke_input=smoke,
            config={},
        )

    return make


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
