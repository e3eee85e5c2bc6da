"""`mlci status` over real SSH to the sandbox hosts: the management port is reached through an SSH channel.

Each host runs a small stand-in for the management API bound to ITS loopback (what is under test is the
transport, not the model server), answering with a version that names the host. The port cannot be reached
from this machine directly, so an answer that names the host can only have come through SSH.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlci.deploy.inventory import InventoryHost, hosts
from mlci.deploy.status import fetch
from mlci.registry import Registry
from mlci.sandbox import connect

pytestmark = [pytest.mark.sandbox]

PIDFILE = "/run/mlci-status-standin.pid"
SHA256 = "5a" * 32  # the stand-ins' "weights"
# The stand-in: answers GET /manage/status with the given body on 127.0.0.1:<port> of the host it runs on.
STANDIN = r"""
import http.server, os, sys
port, pidfile, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
class Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/manage/status":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Status)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pidfile + ".tmp", pidfile)  # written once listening: the test waits for it
server.serve_forever()
"""


def _free_port() -> int:
    """A port nothing on this machine listens on (so a direct connection here must fail)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _refused(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return False
    except OSError:
        return True


def _body(host: str) -> str:
    current = {"version": f"standin-{host}", "sha256": SHA256, "artifact": "/standin", "run_id": f"run-{host}"}
    status = {"model_name": "digits", "current": current, "previous": None, "loading": None, "last_error": None}
    return json.dumps(status)


@pytest.fixture(scope="module")
def standins(sandbox) -> Iterator[int]:
    """The stand-in on every sandbox host, on one port; stopped (by its pid) at the end."""
    client = connect()
    port = _free_port()
    containers = {h.name: client.containers.get(h.container) for h in sandbox.hosts}
    try:
        for name, container in containers.items():
            container.exec_run(["python3", "-c", STANDIN, str(port), PIDFILE, _body(name)], detach=True)
        deadline = time.monotonic() + 20
        for name, container in containers.items():
            while container.exec_run(["test", "-s", PIDFILE]).exit_code != 0:
                assert time.monotonic() < deadline, f"the stand-in on {name} did not start"
                time.sleep(0.1)
        yield port
    finally:
        for container in containers.values():
            container.exec_run(["sh", "-c", f'test -s {PIDFILE} && kill "$(cat {PIDFILE})"; rm -f {PIDFILE}'])


def _with_port(targets: list[InventoryHost], port: int) -> list[InventoryHost]:
    return [dataclasses.replace(h, management_port=port) for h in targets]


def test_every_host_answers_through_its_ssh_channel(sandbox, standins: int) -> None:
    port = standins
    serving = hosts(sandbox.inventory)
    assert [h.name for h in serving] == [h.name for h in sandbox.group("serving")]
    everyone = hosts(sandbox.inventory, "all")
    assert {h.name for h in everyone} == {h.name for h in sandbox.hosts} and len(everyone) >= 3
    for h in everyone:  # what the generated inventory says, through group_vars
        assert h.connection == "ssh" and h.address == "127.0.0.1" and h.user == "root"
        assert h.key_file is not None and h.key_file.exists() and not h.host_key_checking
        assert h.port == next(s.ssh_port for s in sandbox.hosts if s.name == h.name)

    # The port is bound to each host's loopback: neither this machine's loopback nor the host's network
    # address reaches it.
    assert _refused("127.0.0.1", port)
    for s in sandbox.hosts:
        assert s.address is not None and _refused(s.address, port)

    started = time.perf_counter()
    results = fetch(_with_port(everyone, port), timeout=10.0)
    took = time.perf_counter() - started
    print(f"status of {len(everyone)} sandbox hosts over SSH: {took:.3f} s")
    assert [r.host for r in results] == [h.name for h in everyone]
    for r in results:
        assert r.reachable and r.error is None and r.status is not None, r
        assert r.status["current"]["version"] == f"standin-{r.host}"
        assert r.status["current"]["sha256"] == SHA256


def test_ssh_failures_are_named_per_host(sandbox, standins: int) -> None:
    [first, *_] = hosts(sandbox.inventory, "all")
    nothing_listens = _free_port()
    cases = [
        dataclasses.replace(first, management_port=standins),
        # sshd reaches 127.0.0.1:<port> on the host, where nothing listens.
        dataclasses.replace(first, management_port=nothing_listens),
        # No sshd on that port here.
        dataclasses.replace(first, name="no-sshd", port=_free_port(), management_port=standins),
        # Host key checking on: the sandbox hosts' keys are in no known_hosts, so the connection is refused.
        dataclasses.replace(first, name="unknown-key", host_key_checking=True, management_port=standins),
    ]
    ok, refused, no_sshd, unknown_key = fetch(cases, timeout=10.0)
    assert ok.reachable and ok.status is not None and ok.status["current"]["version"] == f"standin-{first.name}"
    assert not refused.reachable and refused.error == (
        f"management API: connection refused on 127.0.0.1:{nothing_listens} (is the server running?)"
    )
    assert not no_sshd.reachable and no_sshd.error is not None
    assert no_sshd.error.startswith(f"ssh: root@127.0.0.1:{cases[2].port}: ")
    assert not unknown_key.reachable and unknown_key.error is not None
    assert unknown_key.error.startswith("ssh: ") and "known_hosts" in unknown_key.error


def test_the_command_checks_every_host_against_the_champion(sandbox, standins: int, tmp_path: Path) -> None:
    """`python -m mlci status --env sandbox` end to end, on a copy of the inventory that names the port."""
    inventory = tmp_path / "inventories" / "sandbox"
    shutil.copytree(sandbox.inventory, inventory)
    with (inventory / "group_vars" / "all.yml").open("a") as f:
        f.write(f"model_server_management_port: {standins}\n")
    (tmp_path / "mlci.toml").write_text('[registry]\npath = "registry.db"\n')
    with Registry(tmp_path / "registry.db") as registry:
        run = registry.create_run("standin", params={}, environment={})
        registry.add_artifact(run.id, "model", "/standin", SHA256, 1)
        registry.finish_run(run.id)
        registry.promote(run.id, evidence={})

    command = [sys.executable, "-m", "mlci", "status", "--config", str(tmp_path / "mlci.toml"), "--env", "sandbox"]
    started = time.perf_counter()
    done = subprocess.run([*command, "--group", "all"], capture_output=True, text=True, timeout=60, check=False)
    took = time.perf_counter() - started
    print(f"python -m mlci status --group all ({len(sandbox.hosts)} sandbox hosts): {took:.3f} s wall")
    assert done.returncode == 0, done.stdout + done.stderr
    for h in sandbox.hosts:
        line = next(row for row in done.stdout.splitlines() if f" {h.name} " in row)
        assert f"standin-{h.name}" in line and f"run-{h.name}" in line and SHA256[:12] in line and "champion" in line

    # Another champion: every host now serves something else, and says so.
    with Registry(tmp_path / "registry.db") as registry:
        other = registry.create_run("other", params={}, environment={})
        registry.add_artifact(other.id, "model", "/other", "0f" * 32, 1)
        registry.finish_run(other.id)
        registry.promote(other.id, evidence={})
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("not the champion") == len(sandbox.group("serving"))
