"""The model_server role alone (what site.yml runs): on a sandbox serving host (systemd runtime) it makes the
account and the folders and starts nothing; on the local runtime it only makes the project's own folders.
The server itself (venv, unit) comes with the first deploy (tests/integration/test_deploy.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ansible_json import ROOT
from test_gpu_roles_support import host_in_group, playbook, sandbox_inventory, task_results

ROLE = "- name: Model server\n  hosts: '{{ target }}'\n  roles: [model_server]\n"

INSPECT = """
- name: Inspect the serving host
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Read the account
      ansible.builtin.command: getent passwd mlci-serve
      changed_when: false
    - name: Read the folders
      ansible.builtin.command: stat -c '%n %U %G %a' /opt/mlci-serve /opt/mlci-serve/artifacts /opt/mlci-serve/config
      changed_when: false
    - name: Read the unit's state
      ansible.builtin.command: systemctl show -p ActiveState mlci-model-server
      changed_when: false
"""


@pytest.fixture
def inventory(request: pytest.FixtureRequest) -> Path:
    return sandbox_inventory(request)


@pytest.mark.sandbox
@pytest.mark.slow
def test_systemd_runtime_prepares_account_and_folders_and_starts_nothing(inventory: Path, tmp_path: Path) -> None:
    host = host_in_group(inventory, "serving")
    first = playbook(inventory, ROLE, tmp_path, {"target": host})
    second = playbook(inventory, ROLE, tmp_path, {"target": host})
    assert second["stats"][host]["changed"] == 0, first["stats"]

    out = playbook(inventory, INSPECT, tmp_path, {"target": host})
    account = task_results(out, host, "Read the account")[0]["stdout"].split(":")
    assert account[0] == "mlci-serve" and account[5] == "/opt/mlci-serve" and account[6] == "/usr/sbin/nologin"
    folders = task_results(out, host, "Read the folders")[0]["stdout"].splitlines()
    assert folders == [f"/opt/mlci-serve{sub} mlci-serve mlci-serve 750" for sub in ("", "/artifacts", "/config")]
    state = task_results(out, host, "Read the unit's state")[0]["stdout"]
    assert "ActiveState=inactive" in state


def test_local_runtime_only_makes_project_folders(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "playbooks").mkdir(parents=True)
    play = project / "playbooks" / "serve.yml"
    play.write_text("- name: Model server\n  hosts: serving\n  roles: [model_server]\n")
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run(
        ["ansible-playbook", "-i", str(ROOT / "inventories" / "local"), str(play)],  # the embedded default
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    serving = project / ".mlci" / "serving"
    assert sorted(p.name for p in serving.iterdir()) == ["artifacts", "config"]
    assert (serving.stat().st_mode & 0o777) == 0o750
    assert "Create the service user" in run.stdout and "skipping: [localhost]" in run.stdout
    assert not Path("/etc/systemd/system/mlci-model-server.service").exists()
