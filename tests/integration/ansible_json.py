"""Run ansible-playbook from the project folder with the JSON callback, for the sandbox tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ansible_playbook(inventory: Path, *args: str, rc: int = 0, timeout: float = 1500) -> dict[str, Any]:
    """Run ansible-playbook from the project folder with the JSON callback; check its exit code."""
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        out = json.loads(run.stdout)
    except json.JSONDecodeError:
        tail = run.stdout[-2000:] + run.stderr[-2000:]
        pytest.fail(f"ansible-playbook {args}: no JSON (exit {run.returncode}):\n{tail}")
    if run.returncode != rc:
        pytest.fail(f"ansible-playbook {args}: exit {run.returncode}, wanted {rc}:\n" + "\n".join(failures(out)))
    return out


def failures(out: dict[str, Any]) -> list[str]:
    return [
        f"{host}: {task['task']['name']}: {result.get('msg') or result.get('stderr') or result}"
        for play in out["plays"]
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("failed") or result.get("unreachable")
    ]
