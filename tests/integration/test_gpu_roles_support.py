"""Helpers shared by the GPU-role and load-balancer sandbox tests: run a play, read its JSON results."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def sandbox_inventory(request: pytest.FixtureRequest) -> Path:
    """The sandbox's inventory folder, from a test's fixture (the sandbox fixture brings the hosts up or
    skips/fails)."""
    return request.getfixturevalue("sandbox").inventory


def host_in_group(inventory: Path, group: str) -> str:
    """The first host of an inventory group."""
    data = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts = list((data["all"]["children"].get(group) or {}).get("hosts") or {})
    if not hosts:
        pytest.fail(f"{inventory}/hosts.yml: group {group} has no host")
    return hosts[0]


def hosts_in_group(inventory: Path, group: str) -> list[str]:
    data = yaml.safe_load((inventory / "hosts.yml").read_text())
    return list((data["all"]["children"].get(group) or {}).get("hosts") or {})


def playbook(inventory: Path, plays: str, tmp_path: Path, extra: dict[str, Any], rc: int = 0) -> dict[str, Any]:
    """Run `plays` (YAML text) with ansible-playbook against `inventory`; return the JSON callback's output.

    Runs from the project folder, so ansible.cfg's roles_path finds the project's roles.
    """
    count = len(list(tmp_path.glob("play-*.yml")))
    play = tmp_path / f"play-{count}.yml"
    play.write_text(plays)
    extra_file = tmp_path / f"extra-{count}.json"
    extra_file.write_text(json.dumps(extra))
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "-e", f"@{extra_file}", str(play)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        out = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"ansible-playbook {play.name} printed no JSON (exit {run.returncode}):\n{run.stderr[-3000:]}")
    if run.returncode != rc:
        failed = [
            f"{task['task']['name']} on {host}: {result.get('msg') or result.get('stderr') or result}"
            for p in out["plays"]
            for task in p["tasks"]
            for host, result in task["hosts"].items()
            if result.get("failed") or result.get("unreachable")
        ]
        pytest.fail(
            f"ansible-playbook {play.name}: exit {run.returncode}, wanted {rc}:\n"
            + "\n".join(failed)
            + f"\n{run.stderr[-2000:]}"
        )
    return out


def task_results(out: dict[str, Any], host: str, name_start: str) -> list[dict[str, Any]]:
    """Results on `host` of the tasks whose name (without the role prefix) starts with `name_start`."""
    found = []
    for p in out["plays"]:
        for task in p["tasks"]:
            name = task["task"]["name"].split(" : ", 1)[-1]
            if name.startswith(name_start) and host in task["hosts"]:
                found.append(task["hosts"][host])
    return found
