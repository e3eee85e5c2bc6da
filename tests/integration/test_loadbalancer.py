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


# --- retries and load shedding: two backends -----------------------------------------------------------

RETRY_PORT = 18001  # its own port and unit, apart from the tiny backends above

# A backend whose answer to POST the test chooses: ok (200 with its name), shed (503 + Retry-After, as the
# model server answers when its queue is full) or drop (reads the request, then closes the connection
# without an answer). GET answers its name, or its health. Every request is appended to its log, so the
# test counts what really reached it.
RETRY_BACKEND = r"""
import http.server
import sys

PORT, NAME, MODE, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Backend(http.server.BaseHTTPRequestHandler):
    def _record(self, outcome):
        with open(LOG, "a") as log:
            log.write(self.command + " " + outcome + "\n")

    def _answer(self, status, body, headers=()):
        data = body.encode()
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._record("200")
        self._answer(200, "ready\n" if self.path == "/v2/health/ready" else "backend " + NAME + "\n")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if MODE == "shed":
            self._record("503")
            self._answer(503, "queue full\n", [("Retry-After", "1")])
        elif MODE == "drop":
            self._record("dropped")
            self.close_connection = True
        else:
            self._record("200")
            self._answer(200, "backend " + NAME + "\n")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("", PORT), Backend).serve_forever()
"""

RETRY_BACKENDS = """
- name: Start each test backend in the mode the test gives it (or leave it stopped)
  hosts: retry_backends
  gather_facts: false
  tasks:
    - name: Stop the backend a previous step or an interrupted run left behind
      ansible.builtin.command: systemctl stop mlci-test-retry-backend
      changed_when: false
      failed_when: false
    - name: Make the backend's folder
      ansible.builtin.file:
        path: /srv/mlci-test-retry-backend
        state: directory
        mode: "0755"
    - name: Write the backend and an empty request log
      ansible.builtin.copy:
        content: "{{ item.content }}"
        dest: /srv/mlci-test-retry-backend/{{ item.name }}
        mode: "0644"
      loop:
        - {name: backend.py, content: "{{ script }}"}
        - {name: requests.log, content: ""}
      loop_control:
        label: "{{ item.name }}"
    - name: Serve it as a transient unit
      ansible.builtin.command: >-
        systemd-run --unit=mlci-test-retry-backend --collect python3 /srv/mlci-test-retry-backend/backend.py
        {{ port }} {{ inventory_hostname }} {{ modes[inventory_hostname] }} /srv/mlci-test-retry-backend/requests.log
      changed_when: true
      when: modes[inventory_hostname] != 'stopped'
    - name: Wait for the backend
      ansible.builtin.wait_for:
        port: "{{ port }}"
        timeout: 30
      when: modes[inventory_hostname] != 'stopped'
"""

STOP_RETRY_BACKENDS = """
- name: Stop the retry test's backends
  hosts: retry_backends
  gather_facts: false
  tasks:
    - name: Stop the unit and remove its files
      ansible.builtin.shell: systemctl stop mlci-test-retry-backend; rm -rf /srv/mlci-test-retry-backend
      changed_when: true
"""

BACKEND_LOGS = """
- name: Read what reached each backend
  hosts: retry_backends
  gather_facts: false
  tasks:
    - name: Read the request log
      ansible.builtin.command: cat /srv/mlci-test-retry-backend/requests.log
      changed_when: false
"""

# Reloading nginx starts fresh workers, so each step begins with no backend counted as failed (they keep
# that count in their own memory); the old workers are waited for, so none of them takes a request.
SEND = """
- name: Send requests through the load balancer
  hosts: "{{ lb }}"
  gather_facts: false
  tasks:
    - name: Reload nginx and wait until the old workers are gone
      ansible.builtin.shell: |
        old=$(ps --ppid "$(cat /run/nginx.pid)" -o pid=)
        systemctl reload nginx
        for _ in $(seq 100); do
          alive=no
          for pid in $old; do kill -0 "$pid" 2>/dev/null && alive=yes; done
          [ "$alive" = no ] && exit 0
          sleep 0.1
        done
        echo "old nginx workers still running: $old" >&2
        exit 1
      changed_when: true
    - name: POST inference requests
      ansible.builtin.uri:
        url: http://127.0.0.1/v2/models/m/infer
        method: POST
        body: '{"inputs": []}'
        headers:
          Content-Type: application/json
        status_code: [200, 502, 503]
        return_content: true
      loop: "{{ range(posts | int) | list }}"
    - name: GET the backends' names
      ansible.builtin.uri:
        url: http://127.0.0.1/
        status_code: [200, 502]
        return_content: true
      loop: "{{ range(gets | int) | list }}"
"""


@pytest.fixture
def two_backends(inventory: Path, tmp_path: Path):
    """Two backends for the retry tests, and only those two: an inventory file of this test only puts two
    hosts in group retry_backends (two serving hosts, or the one serving host and a runner), and the role
    runs with loadbalancer_backend_group = retry_backends. Yields (load balancer, the two backends, the
    layers to pass to every play); the backends are stopped and the load balancer is put back on the
    sandbox's own inventory at the end."""
    serving = hosts_in_group(inventory, "serving")
    lb = hosts_in_group(inventory, "loadbalancer")[0]
    spare = [h for h in hosts_in_group(inventory, "gpu_runners") if h not in serving and h != lb]
    chosen = (serving + spare)[:2]
    if len(chosen) < 2:
        pytest.skip("the sandbox has no second host to serve as a backend")
    layer = tmp_path / "two-backends.yml"
    layer.write_text(yaml.safe_dump({"all": {"children": {"retry_backends": {"hosts": dict.fromkeys(chosen)}}}}))
    try:
        yield lb, chosen, [layer]
    finally:
        playbook(inventory, STOP_RETRY_BACKENDS, tmp_path, {}, layers=[layer])
        playbook(inventory, LOADBALANCER, tmp_path, {})


def _start(inventory: Path, tmp_path: Path, layers: list[Path], modes: dict[str, str]) -> None:
    playbook(
        inventory,
        RETRY_BACKENDS,
        tmp_path,
        {"port": RETRY_PORT, "script": RETRY_BACKEND, "modes": modes},
        layers=layers,
    )


def _send(
    inventory: Path, tmp_path: Path, layers: list[Path], lb: str, posts: int, gets: int = 0
) -> tuple[list[dict], list[dict]]:
    out = playbook(inventory, SEND, tmp_path, {"lb": lb, "posts": posts, "gets": gets}, layers=layers)
    post = task_results(out, lb, "POST inference requests")[0]["results"]
    get = task_results(out, lb, "GET the backends' names")[0].get("results", [])
    return post, get


def _received(inventory: Path, tmp_path: Path, layers: list[Path], hosts: list[str]) -> dict[str, list[str]]:
    """What reached each backend: one 'METHOD outcome' line per request, in order."""
    out = playbook(inventory, BACKEND_LOGS, tmp_path, {}, layers=layers)
    return {h: task_results(out, h, "Read the request log")[0]["stdout"].splitlines() for h in hosts}


def _converge(inventory: Path, tmp_path: Path, layers: list[Path], lb: str, **settings) -> str:
    """Run the role for the two backends; check that both are upstreams (sandbox addresses only); return
    the rendered proxy_next_upstream lines."""
    playbook(
        inventory,
        LOADBALANCER,
        tmp_path,
        {
            "loadbalancer_backend_port": RETRY_PORT,
            "loadbalancer_health_retries": 5,
            "loadbalancer_backend_group": "retry_backends",
            **settings,
        },
        layers=layers,
    )
    out = playbook(inventory, ENTRIES, tmp_path, {"lb": lb}, layers=layers)
    entries = task_results(out, lb, "Read the upstream entries")[0]["stdout"]
    upstreams = set(re.findall(rf"^server ([\d.]+):{RETRY_PORT} ", entries, flags=re.M))
    assert len(upstreams) == 2 and upstreams <= _sandbox_addresses(inventory), (entries, _sandbox_addresses(inventory))
    out = playbook(inventory, NEXT_UPSTREAM, tmp_path, {"lb": lb}, layers=layers)
    return task_results(out, lb, "Read the retry settings")[0]["stdout"]


NEXT_UPSTREAM = """
- name: Read the load balancer's retry settings
  hosts: "{{ lb }}"
  gather_facts: false
  tasks:
    - name: Read the retry settings
      ansible.builtin.command: grep -E '^ *proxy_next_upstream' /etc/nginx/nginx.conf
      changed_when: false
"""


def test_loadbalancer_passes_a_shed_503_to_the_client_and_keeps_the_backend(
    inventory: Path, tmp_path: Path, two_backends: tuple[str, list[str], list[Path]]
):
    lb, (busy, free), layers = two_backends
    _start(inventory, tmp_path, layers, {busy: "shed", free: "ok"})
    settings = _converge(inventory, tmp_path, layers, lb)
    assert "http_503" not in settings and "proxy_next_upstream_tries 2;" in settings, settings

    posts, gets = _send(inventory, tmp_path, layers, lb, posts=24, gets=6)
    shed = [r for r in posts if r["status"] == 503]
    served = [r for r in posts if r["status"] == 200]
    # Every answer is the busy backend's 503, as it sent it (Retry-After, its body: not nginx's 502), or the
    # free backend's 200; no 503 was retried on the free backend instead.
    assert len(shed) + len(served) == len(posts), [r["status"] for r in posts]
    assert {(r.get("retry_after"), r["content"]) for r in shed} == {("1", "queue full\n")}
    assert {r["content"] for r in served} == {f"backend {free}\n"}
    received = _received(inventory, tmp_path, layers, [busy, free])
    assert received[busy].count("POST 503") == len(shed)
    assert received[free].count("POST 200") == len(served)
    # Round robin keeps sending it about half the POSTs: far more than max_fails (3) per nginx worker would
    # let through if a 503 counted as a failure; and it still takes requests after all those 503s.
    assert len(shed) >= len(posts) // 3, [r["status"] for r in posts]
    assert f"backend {busy}\n" in {r["content"] for r in gets}


def test_loadbalancer_retries_a_failed_post_once_on_the_other_backend(
    inventory: Path, tmp_path: Path, two_backends: tuple[str, list[str], list[Path]]
):
    lb, (broken, good), layers = two_backends
    settings = _converge(inventory, tmp_path, layers, lb)
    assert "non_idempotent" in settings and "proxy_next_upstream_tries 2;" in settings, settings

    # A stopped backend (connection refused): every POST is answered by the other one.
    _start(inventory, tmp_path, layers, {broken: "stopped", good: "ok"})
    posts, _ = _send(inventory, tmp_path, layers, lb, posts=6)
    assert [r["status"] for r in posts] == [200] * 6
    assert {r["content"] for r in posts} == {f"backend {good}\n"}

    # A backend that takes the POST and drops the connection: nginx already sent it, so only
    # non_idempotent lets it go to the other backend; the client still gets 200 every time.
    _start(inventory, tmp_path, layers, {broken: "drop", good: "ok"})
    posts, _ = _send(inventory, tmp_path, layers, lb, posts=6)
    assert [r["status"] for r in posts] == [200] * 6
    received = _received(inventory, tmp_path, layers, [broken, good])
    assert received[broken].count("POST dropped") >= 1, received
    assert received[good].count("POST 200") == 6, received

    # Both drop it: the client gets 502 after exactly two tries, one on each backend.
    _start(inventory, tmp_path, layers, {broken: "drop", good: "drop"})
    posts, _ = _send(inventory, tmp_path, layers, lb, posts=1)
    assert [r["status"] for r in posts] == [502]
    received = _received(inventory, tmp_path, layers, [broken, good])
    assert received == {broken: ["POST dropped"], good: ["POST dropped"]}, received

    # With loadbalancer_retry_tries 1 nothing is retried: a dropped POST is the client's 502.
    settings = _converge(inventory, tmp_path, layers, lb, loadbalancer_retry_tries=1)
    assert "proxy_next_upstream_tries 1;" in settings, settings
    _start(inventory, tmp_path, layers, {broken: "drop", good: "ok"})
    posts, _ = _send(inventory, tmp_path, layers, lb, posts=6)
    received = _received(inventory, tmp_path, layers, [broken, good])
    statuses = [r["status"] for r in posts]
    assert statuses.count(502) == received[broken].count("POST dropped") >= 1, (statuses, received)
    assert statuses.count(200) == received[good].count("POST 200"), (statuses, received)


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ({"loadbalancer_retry_on": ["error", "timeout", "http_503"]}, "Got no match for: http_503"),
        ({"loadbalancer_retry_tries": 0}, "loadbalancer_retry_tries must be at least 1"),
    ],
    ids=["retry_on_503", "unlimited_tries"],
)
def test_loadbalancer_refuses_retrying_a_shed_503_or_unlimited_tries(
    inventory: Path, tmp_path: Path, setting: dict, refusal: str
):
    lb = hosts_in_group(inventory, "loadbalancer")[0]
    out = playbook(inventory, LOADBALANCER, tmp_path, setting, rc=2)
    failed = [r for p in out["plays"] for t in p["tasks"] for h, r in t["hosts"].items() if h == lb and r.get("failed")]
    assert len(failed) == 1 and refusal in failed[0]["msg"], failed
    # Refused before the role touched anything: its argument check or its first task failed.
    ran = [t["task"]["name"].split(" : ", 1)[-1] for p in out["plays"] for t in p["tasks"] if lb in t["hosts"]]
    assert ran[-1] in {"Check the retry settings"} or ran[-1].startswith("Validating arguments"), ran
    assert len(ran) <= 2 and out["stats"][lb]["changed"] == 0, (ran, out["stats"])
