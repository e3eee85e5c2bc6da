"""The common role on a host whose site runs chrony: chrony stays (installing systemd-timesyncd would make apt
remove it), and the site's NTP servers go to chrony's sources.d instead of a timesyncd drop-in.

The host is the sandbox's load balancer, with Debian's real chrony package; the test puts systemd-timesyncd
back afterwards. Time sync itself is skipped inside containers, so its step runs in check mode with the diff
read: what would reach the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gpu_roles_support import host_in_group, playbook, sandbox_inventory, task_results

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

INSTALL_CHRONY = """
- name: Give the host chrony, as a site that runs it would have
  hosts: "{{ target }}"
  gather_facts: false
  become: true
  tasks:
    - name: Install chrony (apt removes systemd-timesyncd, which conflicts with it)
      ansible.builtin.apt:
        name: chrony
        state: present
"""

COMMON = """
- name: The common role, then its time sync step as it would run on a machine
  hosts: "{{ target }}"
  become: true
  roles:
    - role: common
  tasks:
    - name: Point the time sync at the site's servers
      ansible.builtin.include_role:
        name: common
        tasks_from: time_sync
        apply:
          check_mode: true
          diff: true
      vars:
        common_ntp_servers: [ntp1.example.invalid, ntp2.example.invalid]
    - name: Ask dpkg about both time sync packages
      ansible.builtin.command: >-
        dpkg-query --show --showformat='${Package} ${db:Status-Status}\\n' chrony systemd-timesyncd
      changed_when: false
      failed_when: false
"""

RESTORE = """
- name: Put systemd-timesyncd back
  hosts: "{{ target }}"
  gather_facts: false
  become: true
  tasks:
    - name: Remove chrony
      ansible.builtin.apt:
        name: chrony
        state: absent
        purge: true
    - name: Install systemd-timesyncd
      ansible.builtin.apt:
        name: systemd-timesyncd
        state: present
"""


def test_a_host_with_chrony_keeps_it_and_gets_ntp_servers_in_chrony_sources(request, tmp_path: Path) -> None:
    inventory = sandbox_inventory(request)
    host = host_in_group(inventory, "loadbalancer")
    playbook(inventory, INSTALL_CHRONY, tmp_path, {"target": host})
    try:
        out = playbook(inventory, COMMON, tmp_path, {"target": host})
    finally:
        playbook(inventory, RESTORE, tmp_path, {"target": host})
    status = dict(
        line.split(" ", 1)
        for line in task_results(out, host, "Ask dpkg about both time sync packages")[0]["stdout"].splitlines()
    )
    assert status.get("chrony") == "installed", status
    assert status.get("systemd-timesyncd", "not-installed") != "installed", status
    (sources,) = task_results(out, host, "Point the time sync service at the site's NTP servers")
    diffs = sources["diff"] if isinstance(sources["diff"], list) else [sources["diff"]]
    (diff,) = [d for d in diffs if "after" in d]
    (folder,) = task_results(out, host, "Create the time sync drop-in directory")
    assert folder["path"] == "/etc/chrony/sources.d", folder  # chrony's sourcedir, not timesyncd.conf.d
    assert "server ntp1.example.invalid iburst\nserver ntp2.example.invalid iburst\n" in diff["after"], diff
