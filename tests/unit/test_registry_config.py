"""Which registry a project opens: `[registry] url` (PostgreSQL) or the SQLite `path`; a runner's
MLCI_REGISTRY_URL (set by the ci_runner role) wins and is named in errors; the URL is not part of the run key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlci.config import load_config
from mlci.errors import ConfigError
from mlci.registry import exists, location, open_registry

ROOT = Path(__file__).resolve().parents[2]


def _project(tmp_path: Path, registry: str = "") -> Path:
    (tmp_path / "mlci.toml").write_text(f"[registry]\npath = 'reg/registry.db'\n{registry}")
    return tmp_path / "mlci.toml"


def test_without_a_url_the_project_opens_its_sqlite_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLCI_REGISTRY_URL", raising=False)
    config = load_config(_project(tmp_path))
    assert location(config) == tmp_path / "reg/registry.db" and not exists(config)
    with open_registry(config) as registry:
        assert registry.path == tmp_path / "reg/registry.db"
    assert exists(config)


def test_the_runner_environment_names_the_registry_and_wins_over_mlci_toml(
    tmp_path: Path, monkeypatch, pg_server
) -> None:
    url = pg_server.new_database()
    monkeypatch.setenv("MLCI_REGISTRY_URL", url)
    config = load_config(_project(tmp_path, "url = 'postgresql://other@elsewhere/db'\n"))
    assert config.registry.url == url and location(config) == url and exists(config)
    with open_registry(config) as registry:
        assert registry.path == url and registry.runs() == []
    monkeypatch.setenv("MLCI_REGISTRY_URL", "postgresql://mlci:s3cret@db/registry")
    with pytest.raises(ConfigError, match=r"^\$MLCI_REGISTRY_URL: registry\.url = 'postgresql://mlci:\*\*\*@db/") as e:
        load_config(_project(tmp_path))
    assert "s3cret" not in str(e.value)


def test_where_the_registry_is_does_not_change_the_run_key(tmp_path: Path, monkeypatch) -> None:
    from mlci import data, runkey

    monkeypatch.delenv("MLCI_REGISTRY_URL", raising=False)
    toml = (ROOT / "mlci.toml").read_text()
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "mlci.toml").write_text(toml)
    local = load_config(tmp_path / "mlci.toml")
    monkeypatch.setenv("MLCI_REGISTRY_URL", "postgresql://mlci@db.example/registry")
    shared = load_config(tmp_path / "mlci.toml")
    assert shared.registry.url and not local.registry.url
    files = data.data_files(local)
    assert runkey.compute(local, files).key == runkey.compute(shared, files).key
