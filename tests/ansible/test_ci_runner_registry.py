"""The ci_runner role points a runner at the fleet's registry: its tasks run for real on this machine
(connection local, every path under tmp_path, the runner user = the current user) and the test reads what
reached the host: the jobs' environment file (sourced the way the cron line does, it exports
MLCI_REGISTRY_URL), ~/.pgpass with mode 0600 and the escaped password -- a password no output shows."""

from __future__ import annotations

import getpass
import grp
import json
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
URL = "postgresql://mlci@db.example:6543/registry"
PASSWORD = "pa:ss\\w0rd-s3cret"
ROLE_TASKS = {"name": "ci_runner", "tasks_from": "registry"}
LOCAL = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter={{ ansible_playbook_python }}"]


def _play(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    home.mkdir(exist_ok=True)
    workspace.mkdir(exist_ok=True)
    variables = {
        "ci_runner_user": getpass.getuser(),
        "ci_runner_group": grp.getgrgid(os.getgid()).gr_name,
        "ci_runner_home": str(home),
        "ci_runner_workspace": str(workspace),
        "ci_runner_registry_url": URL,
        "ci_runner_registry_password": PASSWORD,
        **extra,
    }
    play = [
        {
            "name": "Point a runner at the registry",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [{"name": "Run the role's registry tasks", "ansible.builtin.include_role": ROLE_TASKS}],
        }
    ]  # fmt: skip
    (tmp_path / "play.yml").write_text(json.dumps(play))
    return tmp_path / "play.yml", variables


def _run(play: Path, variables: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ansible-playbook", *LOCAL, "-v", *flags, "-e", json.dumps(variables), str(play)],
        cwd=ROOT, env={**os.environ, "ANSIBLE_NOCOLOR": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_runner_gets_the_registry_url_in_its_environment_and_the_password_in_a_private_pgpass(
    tmp_path: Path,
) -> None:
    play, variables = _play(tmp_path)
    checked = _run(play, variables, "--check", "--diff")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (tmp_path / "ws/runner.env").exists() and not (tmp_path / "home/.pgpass").exists()

    done = _run(play, variables)
    assert done.returncode == 0, done.stdout + done.stderr
    for out in (checked, done):
        assert "s3cret" not in out.stdout + out.stderr

    env_file = tmp_path / "ws/runner.env"
    exported = subprocess.run(
        ["sh", "-c", f'set -a && . {env_file} && set +a && exec env'], capture_output=True, text=True, check=True,
        env={"PATH": os.environ["PATH"]},  # cron's environment is as bare
    ).stdout  # fmt: skip
    assert f"MLCI_REGISTRY_URL={URL}" in exported.splitlines()
    pgpass = tmp_path / "home/.pgpass"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600  # libpq ignores a pgpass others can read
    assert pgpass.read_text() == "db.example:6543:*:mlci:pa\\:ss\\\\w0rd-s3cret\n"

    again = _run(play, variables)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout


def test_a_registry_url_with_a_password_stops_the_role_without_showing_it(tmp_path: Path) -> None:
    play, variables = _play(tmp_path, ci_runner_registry_url="postgresql://mlci:s3cret@db.example/registry")
    done = _run(play, variables)
    assert done.returncode == 2
    assert "must be postgresql://user@host:port/db with no password" in done.stdout
    assert not (tmp_path / "ws/runner.env").exists()


def test_without_a_shared_registry_the_environment_names_none(tmp_path: Path) -> None:
    play, variables = _play(tmp_path, ci_runner_registry_url="", ci_runner_registry_password="")
    done = _run(play, variables)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MLCI_REGISTRY_URL" not in (tmp_path / "ws/runner.env").read_text()
    assert not (tmp_path / "home/.pgpass").exists()
