"""`mlci status` against a real `mlci serve` on 127.0.0.1, through a temporary local inventory and registry."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from integration.test_serve_support import serving
from mlci.cli import main
from mlci.deploy.inventory import hosts
from mlci.deploy.status import fetch
from mlci.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
TOKEN_ENV = "MLCI_MANAGEMENT_TOKEN"
TOKEN = "status-test-token"


def _project(tmp_path: Path, management_port: int) -> Path:
    """mlci.toml + inventories/local (this machine, the given management port) + an empty registry folder."""
    project = tmp_path / "project"
    inventory = project / "inventories" / "local"
    inventory.mkdir(parents=True)
    host = {"ansible_connection": "local", "model_server_management_port": management_port}
    tree = {"all": {"children": {"serving": {"hosts": {"localhost": host}}}}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(tree))
    (project / "mlci.toml").write_text('[registry]\npath = "registry/registry.db"\n')
    return project


def _champion(project: Path, artifact) -> str:
    """Record a succeeded run with this model artifact and make it the champion; returns the run id."""
    with Registry(project / "registry" / "registry.db") as registry:
        run = registry.create_run(f"key-{artifact.sha256}", params={}, environment={})
        registry.add_artifact(run.id, "model", artifact.path, artifact.sha256, artifact.bytes)
        registry.finish_run(run.id)
        registry.promote(run.id, evidence={"test": "status"})
        return run.id


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_of_a_real_server_and_the_champion_check(
    make_artifact, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served = make_artifact(version=3, seed=1, hidden=(16,))
    other = make_artifact(version=4, seed=2, hidden=(16,))
    with serving(served.path, tmp_path / "serve", env={TOKEN_ENV: TOKEN}) as server:
        port = urlsplit(server.management_url).port
        assert port is not None
        project = _project(tmp_path, port)
        targets = hosts(project / "inventories" / "local")
        assert [(h.name, h.connection, h.management_port) for h in targets] == [("localhost", "local", port)]

        [status] = fetch(targets, timeout=5.0, token=TOKEN)
        assert status.reachable and status.error is None and status.status is not None
        current = status.status["current"]
        assert current["version"] == "3" and current["sha256"] == served.sha256 and current["run_id"] == "test-3-1"
        assert status.status["previous"] is None

        # The management API wants its token: without it the host is not "reachable" and the error says why.
        [refused] = fetch(targets, timeout=5.0)
        assert not refused.reachable and refused.status is None
        assert refused.error is not None and refused.error.startswith("HTTP 401")

        config = ["--config", str(project / "mlci.toml")]
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        assert main(["status", *config]) == 1  # no registry yet: nothing to compare with
        assert "no champion" in capsys.readouterr().out
        assert not (project / "registry" / "registry.db").exists()  # asking does not create a registry

        run_id = _champion(project, served)
        # A fresh process, as a user runs it: exit 0, and neither torch nor numpy imported on the way.
        check = (
            "import sys; from mlci.cli import main; code = main(sys.argv[1:]); "
            "heavy = sorted({'torch', 'numpy'} & set(sys.modules)); "
            "print('heavy:', heavy); sys.exit(code)"
        )
        env = {**os.environ, TOKEN_ENV: TOKEN}
        done = subprocess.run([sys.executable, "-c", check, "status", *config], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "heavy: []" in done.stdout
        line = next(row for row in done.stdout.splitlines() if "localhost" in row)
        assert all(word in line for word in ("3", "test-3-1", served.sha256[:12], "champion"))

        new_champion = _champion(project, other)  # the champion now has other weights than the host serves
        assert new_champion != run_id
        assert main(["status", *config]) == 1
        out = capsys.readouterr().out
        assert "not the champion" in out and served.sha256[:12] in out
        assert f"champion: {new_champion} {other.sha256[:12]}" in out


def test_an_unreachable_host_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    project = _project(tmp_path, port)
    [status] = fetch(hosts(project / "inventories" / "local"), timeout=2.0)
    assert not status.reachable and status.status is None
    assert status.error == f"management API: connection refused on 127.0.0.1:{port} (is the server running?)"
    assert main(["status", "--config", str(project / "mlci.toml")]) == 1
    captured = capsys.readouterr()
    assert "unreachable" in captured.out and "connection refused" in captured.out
    assert "Error: 1 of 1 host(s) do not serve the champion: localhost (unreachable)" in captured.err


def test_a_missing_env_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, 8001)
    assert main(["status", "--config", str(project / "mlci.toml"), "--env", "staging"]) == 2
    err = capsys.readouterr().err
    assert f"--env staging: no inventory folder {project / 'inventories' / 'staging'}" in err
    assert "(environments: local)" in err


def test_an_empty_group_and_an_unrenderable_variable_name_the_inventory(tmp_path: Path) -> None:
    from mlci.errors import UsageError

    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {"serving": {"hosts": {"web-1": None}}, "loadbalancer": {}}}})
    )
    (inventory / "group_vars" / "serving.yml").write_text('ansible_port: "{{ no_such_variable }}"\n')
    with pytest.raises(UsageError, match=r"host web-1: ansible_port = '\{\{ no_such_variable \}\}' cannot be rendered"):
        hosts(inventory)
    with pytest.raises(UsageError, match=f"inventory {inventory}: group 'loadbalancer' has no hosts"):
        hosts(inventory, "loadbalancer")
