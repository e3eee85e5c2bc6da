"""The loadbalancer role on real sandbox hosts: nginx on the load balancer proxies to real HTTP backends on
the serving hosts, keeps a drained backend out (also across a re-run of the role), takes it back after its
health check, and refuses a configuration that `nginx -t` rejects without touching the running one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from test_gpu_roles_support import hosts_in_group, playbook, sandbox_inventory, task_results

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

PORT = 18000  # not the model server's port: a real model server may run on the serving hosts

BACKENDS = """
- name: Start a tiny HTTP backend on every serving host
  hosts: serving
  gather_facts: false
  tasks:
    - name: Write the backend's pages (its name at /, a health page)
      ansible.builtin.shell: |
        mkdir -p /srv/mlci-test-backend/v2/health
        echo "backend {{ inventory_hostname }}" > /srv/mlci-test-backend/index.html
        echo ready > /srv/mlci-test-backend/v2/health/ready
      changed_when: true
    - name: Stop a backend an interrupted run left behind
      ansible.builtin.command: systemctl stop mlci-test-backend
      changed_when: false
      failed_when: false
    - name: Serve them as a transient unit
      ansible.builtin.command: >-
        systemd-run --unit=mlci-test-backend --collect python3 -m http.server {{ port }}
        --directory /srv/mlci-test-backend
      changed_when: true
    - name: Wait for the backend
      ansible.builtin.wait_for:
        port: "{{ port }}"
        timeout: 30
"""

STOP_BACKENDS = """
- name: Stop the tiny backends
  hosts: serving
  gather_facts: false
  tasks:
    - name: Stop the unit and remove its pages
      ansible.builtin.shell: systemctl stop mlci-test-backend; rm -rf /srv/mlci-test-backend
      changed_when: true
"""

LOADBALANCER = """
- name: Load balancer
  hosts: loadbalancer
  roles: [loadbalancer]
"""

BACKEND_STATE = """
- name: Change one backend's state
  hosts: "{{ backend }}"
  gather_facts: false
  tasks:
    - name: Drain or enable it on every load balancer
      ansible.builtin.include_role:
        name: loadbalancer
        tasks_from: backend
"""

ENTRIES = """
- name: Read the load balancer's upstream entries
  hosts: "{{ lb }}"
  gather_facts: false
  tasks:
    - name: Check the configuration
      ansible.builtin.command: nginx -t
      changed_when: false
    - name: Read the upstream entries
      ansible.builtin.shell: cat /etc/nginx/mlci-backends/*.conf
      changed_when: false
"""

ASK = """
- name: Ask the load balancer
  hosts: "{{ lb }}"
  gather_facts: false
  tasks:
    - name: Ask its own health
      ansible.builtin.uri:
        url: http://127.0.0.1/lb/health
        return_content: true
    - name: Send requests through it
      ansible.builtin.uri:
        url: http://127.0.0.1/
        return_content: true
        status_code: [200, 502]
      loop: "{{ range(requests | int) | list }}"
"""


@pytest.fixture
def inventory(request: pytest.FixtureRequest) -> Path:
    return sandbox_inventory(request)


@pytest.fixture
def backends(inventory: Path, tmp_path: Path):
    serving = hosts_in_group(inventory, "serving")
    playbook(inventory, BACKENDS, tmp_path, {"port": PORT})
    try:
        yield serving
    finally:
        playbook(inventory, STOP_BACKENDS, tmp_path, {})


def _sandbox_addresses(inventory: Path) -> set[str]:
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["hosts"]
    return {h["sandbox_address"] for h in hosts.values()}


def _ask(inventory: Path, tmp_path: Path, lb: str, requests: int) -> tuple[list[tuple[int, str]], str]:
    out = playbook(inventory, ENTRIES, tmp_path, {"lb": lb})
    assert task_results(out, lb, "Check the configuration")[0]["rc"] == 0
    entries = task_results(out, lb, "Read the upstream entries")[0]["stdout"]
    # Traffic goes only to the sandbox's own hosts: refuse to send any if an entry points elsewhere.
    upstreams = set(re.findall(r"^server ([\d.]+):", entries, flags=re.M))
    assert upstreams and upstreams <= _sandbox_addresses(inventory), (upstreams, _sandbox_addresses(inventory))

    out = playbook(inventory, ASK, tmp_path, {"lb": lb, "requests": requests})
    assert task_results(out, lb, "Ask its own health")[0]["content"] == "ok\n"
    answers = [
        (r["status"], r.get("content", "").strip())
        for r in task_results(out, lb, "Send requests through it")[0]["results"]
    ]
    return answers, entries


def test_loadbalancer_proxies_drains_and_enables_backends(inventory: Path, tmp_path: Path, backends: list[str]):
    lb = hosts_in_group(inventory, "loadbalancer")[0]
    settings = {"loadbalancer_backend_port": PORT, "loadbalancer_health_retries": 5}
    first = playbook(inventory, LOADBALANCER, tmp_path, settings)
    again = playbook(inventory, LOADBALANCER, tmp_path, settings)
    assert again["stats"][lb]["changed"] == 0, first["stats"]

    # Round robin over every serving host.
    answers, entries = _ask(inventory, tmp_path, lb, 2 * len(backends))
    assert {status for status, _ in answers} == {200}
    assert {body for _, body in answers} == {f"backend {host}" for host in backends}
    assert entries.count(f":{PORT} max_fails=3 fail_timeout=10s;") == len(backends)

    # Drain one backend: it gets no more requests (a lone backend drained leaves nginx answering 502).
    drained = backends[0]
    playbook(
        inventory, BACKEND_STATE, tmp_path, {**settings, "backend": drained, "loadbalancer_backend_state": "drained"}
    )
    answers, entries = _ask(inventory, tmp_path, lb, 2 * len(backends))
    assert f"backend {drained}" not in {body for _, body in answers}
    if len(backends) == 1:
        assert {status for status, _ in answers} == {502}
    assert f"# {drained} (drained" in entries and " down;" in entries

    # A later run of the role keeps it drained.
    playbook(inventory, LOADBALANCER, tmp_path, settings)
    answers, entries = _ask(inventory, tmp_path, lb, 2 * len(backends))
    assert f"backend {drained}" not in {body for _, body in answers}

    # Enable it again: after its health check it is back in rotation.
    enabled = playbook(
        inventory, BACKEND_STATE, tmp_path, {**settings, "backend": drained, "loadbalancer_backend_state": "enabled"}
    )
    health = task_results(enabled, drained, "Wait until the backend answers its health check")[0]["results"]
    assert [r["status"] for r in health] == [200]
    answers, entries = _ask(inventory, tmp_path, lb, 2 * len(backends))
    assert f"backend {drained}" in {body for _, body in answers}
    assert " down;" not in entries


def test_loadbalancer_refuses_a_config_nginx_rejects(inventory: Path, tmp_path: Path, backends: list[str]):
    lb = hosts_in_group(inventory, "loadbalancer")[0]
    settings = {"loadbalancer_backend_port": PORT}
    playbook(inventory, LOADBALANCER, tmp_path, settings)

    bad = playbook(
        inventory, LOADBALANCER, tmp_path, {**settings, "loadbalancer_client_max_body_size": "1 gigabyte"}, rc=2
    )
    refused = task_results(bad, lb, "Render the nginx configuration")[0]
    assert refused["failed"] is True
    assert "nginx" in refused["msg"] or "nginx" in str(refused.get("stderr", ""))

    # The running configuration is untouched and still proxies.
    answers, _ = _ask(inventory, tmp_path, lb, len(backends))
    assert {status for status, _ in answers} == {200}
