"""site.yml on the sandbox (3 real SSH hosts): converge, idempotence, check mode, verify plays, drift repair,
preflight's single failure, and the docker role's daemon.json merge contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_json import ansible_playbook, failures
from test_gpu_roles_support import task_results

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def results(out: dict[str, Any], name_part: str) -> dict[str, list[dict[str, Any]]]:
    """Per host, the results of the tasks whose name contains `name_part`."""
    found: dict[str, list[dict[str, Any]]] = {}
    for play in out["plays"]:
        for task in play["tasks"]:
            if name_part in task["task"]["name"]:
                for host, result in task["hosts"].items():
                    found.setdefault(host, []).append(result)
    return found


@pytest.fixture(scope="module")
def converged(sandbox) -> dict[str, Any]:
    first = ansible_playbook(sandbox.inventory, "site.yml")
    second = ansible_playbook(sandbox.inventory, "site.yml")
    return {"first": first, "second": second}


def test_site_converges_on_every_host(sandbox, converged) -> None:
    stats = converged["first"]["stats"]
    assert set(stats) == {h.name for h in sandbox.hosts}
    assert all(s["failures"] == 0 and s["unreachable"] == 0 for s in stats.values()), stats


def test_a_second_run_changes_nothing(converged) -> None:
    stats = converged["second"]["stats"]
    changed = {host: s["changed"] for host, s in stats.items()}
    assert changed == dict.fromkeys(stats, 0), changed


def test_check_diff_after_converge_shows_no_change(sandbox, converged) -> None:
    out = ansible_playbook(sandbox.inventory, "site.yml", "--check", "--diff")
    changed = {host: s["changed"] for host, s in out["stats"].items()}
    assert changed == dict.fromkeys(out["stats"], 0), changed
    assert set(out["stats"]) == {h.name for h in sandbox.hosts}


def test_hosts_without_a_gpu_skip_the_driver_with_its_message(sandbox, converged) -> None:
    messages = {
        host: " ".join(str(r.get("msg", "")) for r in found)
        for host, found in results(converged["second"], "driver is skipped").items()
        if not all(r.get("skipped") for r in found)  # the driver role is not for load balancers
    }
    managed = {h.name for h in sandbox.hosts if {"gpu_runners", "serving"} & set(h.groups)}
    assert set(messages) == managed
    for host, text in messages.items():
        assert f"No NVIDIA GPU found on {host}" in text, text


def test_verify_plays_pass(sandbox, converged) -> None:
    out = ansible_playbook(sandbox.inventory, "playbooks/verify.yml")
    checked = results(out, "Check ")
    runners = {h.name for h in sandbox.group("gpu_runners")}
    serving = {h.name for h in sandbox.group("serving")}
    # Every assertion ran (none skipped) where it applies.
    assert runners <= {h for h, rs in results(out, "periodic job with its lock").items() if not rs[0].get("skipped")}
    assert serving <= {h for h, rs in results(out, "engine answers").items() if not rs[0].get("skipped")}
    assert {h.name for h in sandbox.hosts} <= set(checked)


def test_drift_is_caught_by_verify_and_repaired_by_site(sandbox, converged, tmp_path: Path) -> None:
    runner = sandbox.group("gpu_runners")[0].name
    ansible_playbook(sandbox.inventory, "-l", runner, _write_play(tmp_path, "crontab -r -u mlci-runner"))
    out = ansible_playbook(sandbox.inventory, "-l", runner, "playbooks/verify.yml", rc=2)
    assert any("runner not as configured" in f for f in failures(out)), failures(out)
    repaired = ansible_playbook(sandbox.inventory, "-l", runner, "--tags", "ci_runner", "site.yml")
    assert repaired["stats"][runner]["changed"] == 1
    ansible_playbook(sandbox.inventory, "-l", runner, "playbooks/verify.yml")


def test_preflight_fails_once_listing_every_unmet_requirement(sandbox, converged, tmp_path: Path) -> None:
    extra = {
        "preflight_min_memory_mb": 10**8,
        "preflight_required_ports": [{"port": 22, "owner": "nginx"}],
        "preflight_verdict_dir": str(tmp_path),
    }
    out = ansible_playbook(sandbox.inventory, "-e", json.dumps(extra), "playbooks/preflight.yml", rc=2)
    failed = failures(out)
    assert len(failed) == len(sandbox.hosts), failed
    for host in sandbox.hosts:
        (message,) = [f for f in failed if f.startswith(f"{host.name}: ")]
        assert "2 requirement(s)" in message
        assert "need 100000000 MiB" in message and "ports in use: 22 (held by sshd)" in message
        verdict = json.loads((tmp_path / "verdict.json").read_text())
        assert verdict["ok"] is False
        assert verdict["hosts"][host.name]["ok"] is False and len(verdict["hosts"][host.name]["unmet"]) == 2
    # The same hosts with reachable minimums pass and say so.
    ok = ansible_playbook(
        sandbox.inventory, "-e", json.dumps({"preflight_verdict_dir": str(tmp_path)}), "playbooks/preflight.yml"
    )
    assert not failures(ok)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["ok"] is True and set(verdict["hosts"]) == {h.name for h in sandbox.hosts}
    for host in sandbox.hosts:
        measured = verdict["hosts"][host.name]["measured"]
        assert measured["gpu_count"] == 0 and measured["driver_version"] is None, measured
        (said,) = task_results(ok, host.name, "Say what the host has")
        assert said["msg"].startswith(f"{host.name}: Debian 12"), said
        assert "no NVIDIA GPU, CUDA toolkit none; every requirement met" in said["msg"], said


def test_roles_merge_daemon_json_and_the_engine_restarts_past_start_limit(sandbox, converged, tmp_path: Path) -> None:
    host = sandbox.group("serving")[0].name
    play = tmp_path / "merge.yml"
    play.write_text(
        """
- name: Add a drop-in fragment the way another role does, then take it away
  hosts: serving
  become: true
  tasks:
    - name: Write a fragment
      ansible.builtin.copy:
        content: '{"debug": true, "log-opts": {"max-file": "9", "compress": "true"}}'
        dest: /etc/docker/daemon.json.d/test.json
        mode: "0644"
      when: step == 'add'
    - name: Remove the fragment
      ansible.builtin.file:
        path: /etc/docker/daemon.json.d/test.json
        state: absent
      when: step == 'remove'
    - name: Merge
      ansible.builtin.include_role:
        name: docker
        tasks_from: daemon_json
    - name: Flush handlers so the engine restarts with the merged file
      ansible.builtin.meta: flush_handlers
    - name: Read the merged file and what the engine runs with
      ansible.builtin.shell: cat /etc/docker/daemon.json; docker info --format '{{ "{{" }} .Debug {{ "}}" }}'
      register: merged
      changed_when: false
    - name: Show it
      ansible.builtin.debug:
        var: merged.stdout
"""
    )
    # Four restarts in a row: more than the three a minute Debian's docker.service allows on its own.
    for step in ("add", "remove", "add", "remove"):
        out = ansible_playbook(sandbox.inventory, "-l", host, "-e", f"step={step}", str(play))
        daemon, debug = results(out, "Show it")[host][0]["merged.stdout"].rsplit("\n", 1)
        merged = json.loads(daemon)
        if step == "add":
            assert debug == "true"  # the engine restarted with the merged file
            assert merged["debug"] is True and merged["log-driver"] == "json-file"
            # Drop-ins come before the inventory's fragments: its max-file wins, the drop-in's other key stays.
            assert merged["log-opts"] == {"max-size": "10m", "max-file": "3", "compress": "true"}
        else:
            assert debug == "false" and "debug" not in merged


def _write_play(folder: Path, command: str) -> str:
    path = folder / "drift.yml"
    path.write_text(
        f"""
- name: Break the host on purpose
  hosts: all
  become: true
  tasks:
    - name: Run the breaking command
      ansible.builtin.command: {command}
      changed_when: true
"""
    )
    return str(path)
