"""The sandbox itself: real systemd hosts, real SSH on 127.0.0.1, an inventory that Ansible can use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlci.sandbox import CAPABILITIES, GROUPS, LABEL, Sandbox, assign_groups, connect

ROOT = Path(__file__).resolve().parents[2]


# --- without hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 16])
def test_every_group_gets_a_host_and_every_host_a_group(count: int) -> None:
    groups = assign_groups(count)
    assert len(groups) == count
    assert all(g for g in groups)
    assert {name for host in groups for name in host} == set(GROUPS)
    if count >= 3:
        assert sum("loadbalancer" in g for g in groups) == 1
        assert all(len(g) == 1 for g in groups)


def test_no_docker_engine_is_a_clear_error_with_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    run = subprocess.run(
        [sys.executable, "-m", "mlci", "sandbox", "status"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("Error: no Docker engine answers")
    assert "dockerd" in run.stderr and "apt-get install docker.io" in run.stderr


def test_a_bad_host_count_is_a_usage_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mlci", "sandbox", "up", "--hosts", "0"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "--hosts = 0" in run.stderr


def test_generated_files_are_never_committed() -> None:
    for path in (".sandbox/id_ed25519", ".sandbox/mlci.bundle", "inventories/sandbox/hosts.yml"):
        run = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert run.returncode == 0, f"{path} is not ignored by git"


# --- on the sandbox ----------------------------------------------------------------------------------


@pytest.mark.sandbox
def test_hosts_run_systemd_unprivileged_with_sshd_on_loopback(sandbox) -> None:
    client = connect()
    assert len(sandbox.hosts) == 5  # conftest.SANDBOX_HOSTS
    for host in sandbox.hosts:
        container = client.containers.get(host.container)
        config = container.attrs["HostConfig"]
        assert config["Privileged"] is False
        assert sorted(config["CapAdd"]) == sorted(CAPABILITIES)
        bindings = container.attrs["NetworkSettings"]["Ports"]["22/tcp"]
        assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
        code, out = container.exec_run(["systemctl", "is-system-running"])
        assert out.decode().strip() in ("running", "degraded"), out
        code, out = container.exec_run(["systemctl", "is-active", "ssh", "cron"])
        assert code == 0, out


@pytest.mark.sandbox
def test_inventory_groups_and_ssh_reach_every_host(sandbox) -> None:
    inventory = yaml.safe_load((sandbox.inventory / "hosts.yml").read_text())
    groups = inventory["all"]["children"]
    assert set(groups) == set(GROUPS)
    for name in GROUPS:
        assert groups[name]["hosts"], f"group {name} is empty"
    run = subprocess.run(
        ["ansible", "-i", str(sandbox.inventory), "all", "-m", "ansible.builtin.command", "-a", "hostname"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"},
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    # One task entry per host and task: the JSON callback groups results only under Ansible's own strategy names.
    results = {h: r for task in json.loads(run.stdout)["plays"][0]["tasks"] for h, r in task["hosts"].items()}
    # Each host answers over SSH with its own hostname: the inventory's ports lead to the right machines.
    assert {name: r["stdout"] for name, r in results.items()} == {h.name: h.name for h in sandbox.hosts}


@pytest.mark.sandbox
@pytest.mark.slow
def test_up_then_down_removes_everything_but_the_images(sandbox, tmp_path: Path) -> None:
    # A second, one-host sandbox of another project folder: its own names, so the session's hosts stay.
    project = tmp_path / "project"
    project.mkdir()
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "empty"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True)
    box = Sandbox(project)
    client = connect()
    try:
        hosts = box.up(1)
        assert [h.groups for h in hosts] == [GROUPS]
        assert (project / "inventories/sandbox/hosts.yml").exists()
        assert (project / ".sandbox/id_ed25519").stat().st_mode & 0o077 == 0
        assert client.containers.list(filters={"label": f"{LABEL}={box.project}"})
    finally:
        removed = box.down()
    assert any(name.startswith("network ") for name in removed)
    assert not client.containers.list(all=True, filters={"label": f"{LABEL}={box.project}"})
    assert not client.networks.list(filters={"label": f"{LABEL}={box.project}"})
    assert not client.volumes.list(filters={"label": f"{LABEL}={box.project}"})
    assert not (project / "inventories/sandbox").exists()
    assert not (project / ".sandbox/id_ed25519").exists()
    assert client.images.list(name="mlci-sandbox-host"), "the cached image went away with the hosts"
    # The session's own hosts are untouched.
    assert all(h.state == "running" for h in Sandbox(ROOT).status())
