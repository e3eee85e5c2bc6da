"""Helpers shared by the GPU-role and load-balancer sandbox tests: run a play, read its JSON results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_json import ansible_playbook


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


def playbook(
    inventory: Path, plays: str, tmp_path: Path, extra: dict[str, Any], rc: int = 0, layers: Sequence[Path] = ()
) -> dict[str, Any]:
    """Run `plays` (YAML text) with ansible-playbook against `inventory`; return the JSON callback's output.

    `layers` are further inventory sources read after `inventory` (e.g. one that adds a host to a group).
    Runs from the project folder, so ansible.cfg's roles_path finds the project's roles.
    """
    count = len(list(tmp_path.glob("play-*.yml")))
    play = tmp_path / f"play-{count}.yml"
    play.write_text(plays)
    extra_file = tmp_path / f"extra-{count}.json"
    extra_file.write_text(json.dumps(extra))
    more = [arg for layer in layers for arg in ("-i", str(layer))]
    return ansible_playbook(inventory, *more, "-e", f"@{extra_file}", str(play), rc=rc, timeout=900)


def task_results(out: dict[str, Any], host: str, name_start: str) -> list[dict[str, Any]]:
    """Results on `host` of the tasks whose name (without the role prefix) starts with `name_start`."""
    found = []
    for p in out["plays"]:
        for task in p["tasks"]:
            name = task["task"]["name"].split(" : ", 1)[-1]
            if name.startswith(name_start) and host in task["hosts"]:
                found.append(task["hosts"][host])
    return found
