"""The rollout's own settings: the controller's nice value (a real ansible-playbook, its task's nice value) and
the canary's request rate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlci.config import load_config
from mlci.deploy.rollout import run_playbook
from mlci.errors import ConfigError

# A task on this machine that writes the nice value of the process it runs in (field 19 of /proc/PID/stat).
PLAY = """
- name: Report the task's nice value
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Write the nice value of this task's shell
      ansible.builtin.shell: cut -d' ' -f19 /proc/$$/stat > {{ out }}
      changed_when: true
"""


def _nice_of_task(tmp_path: Path, nice: int) -> int:
    project = tmp_path / f"project-{nice}"
    (project / "playbooks").mkdir(parents=True)
    (project / "playbooks" / "nice.yml").write_text(PLAY)
    (project / "ansible.cfg").write_text("[defaults]\ninterpreter_python = auto_silent\n")
    inventory = project / "hosts.yml"
    host = "      ansible_connection: local\n      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
    inventory.write_text("all:\n  hosts:\n    localhost:\n" + host)
    (project / "mlci.toml").write_text(f"[deploy]\ncontroller_nice = {nice}\n")
    config = load_config(project / "mlci.toml")
    out = tmp_path / f"nice-{nice}.txt"
    evidence = tmp_path / f"evidence-{nice}"
    evidence.mkdir()
    code = run_playbook(config, inventory, "nice.yml", {"out": str(out)}, evidence, nice=config.deploy.controller_nice)
    assert code == 0
    return int(out.read_text())


@pytest.mark.skipif(os.nice(0) > 0, reason="the test runs at a nice value already; it compares against 0")
def test_the_playbook_and_its_tasks_run_at_the_configured_nice_value(tmp_path: Path) -> None:
    assert _nice_of_task(tmp_path, 10) == 10
    assert _nice_of_task(tmp_path, 0) == 0  # 0: the caller's own priority


def test_a_nice_value_outside_0_to_19_is_refused_with_the_key(tmp_path: Path) -> None:
    (tmp_path / "mlci.toml").write_text("[deploy]\ncontroller_nice = 25\n")
    with pytest.raises(ConfigError, match=r"deploy\.controller_nice.*25|25.*deploy\.controller_nice"):
        load_config(tmp_path / "mlci.toml")


def test_a_canary_rate_below_the_slo_floor_is_refused_naming_both_keys(tmp_path: Path) -> None:
    (tmp_path / "mlci.toml").write_text("[deploy]\ncanary_rps = 50.0\n[loadtest]\nmin_rps = 100.0\n")
    with pytest.raises(ConfigError, match=r"deploy\.canary_rps = 50\.0: is below loadtest\.min_rps \(100\.0\)"):
        load_config(tmp_path / "mlci.toml")
    (tmp_path / "mlci.toml").write_text("[deploy]\ncanary_rps = 0\n[loadtest]\nmin_rps = 100.0\n")
    assert load_config(tmp_path / "mlci.toml").deploy.canary_rps == 0  # 0: a closed loop, no floor to meet
