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


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for this test session (tests/pg_cluster.py). Without Debian's postgresql
    package the tests that need it skip with the reason; under CI=true that skip is a failure."""
    import pg_cluster

    why = pg_cluster.available()
    if why is not None:
        if under_ci():
            pytest.fail(f"CI=true and PostgreSQL cannot run: {why}")
        pytest.skip(f"PostgreSQL unavailable: {why}")
    server = pg_cluster.PgCluster().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a fresh registry lives, once per back end: a SQLite file, then a new database on the test server."""
    if request.param == "sqlite":
        return tmp_path / "nested" / "registry.db"
    return request.getfixturevalue("pg_server").new_database()
