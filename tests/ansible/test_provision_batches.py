"""The provisioning plays of GPU hosts run in batches: a canary host, then a quarter of the group at a time, or
what mlci_provision_serial says; the same keywords on the runners' and the serving hosts' play.

Runs playbooks/runners.yml on 8 hosts of a local-connection inventory that manages no system (every role's
tasks are skipped, on every host of each batch): the JSON callback starts a play entry per batch.
tests/integration/test_gpu_reboot.py runs the batches with a reboot that fails on the sandbox.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_project_ansible import ROOT, run_playbook

HOSTS = [f"gpu{i}" for i in range(1, 9)]
PROVISION_PLAYS = {
    "playbooks/runners.yml": "Provision the GPU runners",
    "playbooks/targets.yml": "Provision the serving hosts",
}


def _batches(tmp_path: Path, *extra: str) -> list[list[str]]:
    (tmp_path / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "mlci_manage_system": False,
                    },
                    "children": {"gpu_runners": {"hosts": dict.fromkeys(HOSTS)}},
                }
            }
        )
    )
    env = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_GATHERING": "explicit"}
    args = ["-i", str(tmp_path / "hosts.yml"), "--tags", "common", *extra, "playbooks/runners.yml"]
    rc, stdout, stderr = run_playbook(*args, env=env)
    assert rc == 0, stdout[-3000:] + stderr[-2000:]
    out: dict[str, Any] = json.loads(stdout)
    batches = []
    for play in out["plays"]:
        if play["play"]["name"] == PROVISION_PLAYS["playbooks/runners.yml"]:
            hosts = {host for task in play["tasks"] for host in task["hosts"]}
            batches.append(sorted(hosts, key=HOSTS.index))
    return batches


def test_by_default_a_canary_host_goes_first_then_a_quarter_of_the_group_at_a_time(tmp_path: Path) -> None:
    assert _batches(tmp_path) == [HOSTS[:1], HOSTS[1:3], HOSTS[3:5], HOSTS[5:7], HOSTS[7:]]


@pytest.mark.parametrize(
    ("serial", "sizes"), [('[2, "100%"]', [2, 6]), ('["100%"]', [8])], ids=["two-then-the-rest", "one-batch"]
)
def test_the_batches_come_from_mlci_provision_serial(serial: str, sizes: list[int], tmp_path: Path) -> None:
    batches = _batches(tmp_path, "-e", f'{{"mlci_provision_serial": {serial}}}')
    assert [len(b) for b in batches] == sizes and [h for b in batches for h in b] == HOSTS, batches


@pytest.mark.parametrize("playbook", sorted(PROVISION_PLAYS))
def test_both_provisioning_plays_take_the_same_batches_and_failure_limit(playbook: str) -> None:
    (play,) = [p for p in yaml.safe_load((ROOT / playbook).read_text()) if p.get("name") == PROVISION_PLAYS[playbook]]
    assert play["serial"] == "{{ mlci_provision_serial | default([1, '25%']) }}"
    assert play["max_fail_percentage"] == "{{ mlci_provision_max_fail_percentage | default(0) }}"
