"""What each serving host serves: its management API's `GET /manage/status`, all hosts at once.

The management API listens on each host's loopback only. A local host is asked directly; an SSH host is
asked through an SSH direct-tcpip channel to 127.0.0.1:<management port> on that host (what `ssh -L`
does), so the port is never opened to the network and no process is started on the host.
"""

from __future__ import annotations

import json
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from mlci.deploy.inventory import InventoryHost

PATH = "/manage/status"
MAX_ANSWER_BYTES = 1 << 20  # a status is a few hundred bytes; a bigger answer is not our server
MAX_THREADS = 64

# paramiko logs each failure it raises (a refused channel, say); each is already returned as that host's
# error, and without a handler Python's last-resort handler would print them a second time to stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class HostStatus:
    host: str
    reachable: bool  # True when the management API answered with a status
    status: dict[str, Any] | None  # the answer of GET /manage/status
    error: str | None  # why there is no status ("ssh: ...", "management API: ...", "HTTP 401 ...")


class _Stream(Protocol):
    """What both a socket and a paramiko channel offer."""

    def sendall(self, data: bytes) -> Any: ...
    def recv(self, size: int) -> bytes: ...
    def settimeout(self, timeout: float | None) -> Any: ...
    def close(self) -> Any: ...


class _Failed(Exception):
    """A host's status could not be read; the message is the HostStatus error."""


def fetch(hosts: list[InventoryHost], *, timeout: float = 5.0, token: str | None = None) -> list[HostStatus]:
    """Ask every host at once (one thread each); results in the order of `hosts`. Never raises per host.

    `timeout` bounds each step (TCP/SSH connect, authentication, the answer), so a dead host costs about
    `timeout` seconds and the others do not wait for it. `token` is sent as the bearer token when given.
    """
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(len(hosts), MAX_THREADS), thread_name_prefix="mlci-status") as pool:
        return list(pool.map(lambda h: fetch_one(h, timeout=timeout, token=token), hosts))


def fetch_one(host: InventoryHost, *, timeout: float = 5.0, token: str | None = None) -> HostStatus:
    try:
        status = _local(host, timeout, token) if host.connection == "local" else _over_ssh(host, timeout, token)
    except _Failed as exc:
        return HostStatus(host.name, False, None, str(exc))
    return HostStatus(host.name, True, status, None)


def _local(host: InventoryHost, timeout: float, token: str | None) -> dict[str, Any]:
    try:
        sock = socket.create_connection(("127.0.0.1", host.management_port), timeout=timeout)
    except ConnectionRefusedError:
        raise _Failed(_refused(host)) from None
    except OSError as exc:
        raise _Failed(f"management API: cannot connect to 127.0.0.1:{host.management_port}: {exc}") from None
    return _get(sock, host, timeout, token)


def _over_ssh(host: InventoryHost, timeout: float, token: str | None) -> dict[str, Any]:
    import paramiko

    where = f"{host.user}@{host.address}:{host.port}"
    client = paramiko.SSHClient()
    if host.host_key_checking:
        # As ansible-playbook does by default: only hosts whose key the user's known_hosts already vouches for.
        client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        # The inventory turned host key checking off (the sandbox: fresh keys on reused ports); accept any
        # key for this connection only, never writing it to known_hosts.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        try:
            client.connect(
                host.address,
                port=host.port,
                username=host.user,
                key_filename=str(host.key_file) if host.key_file else None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except paramiko.BadHostKeyException as exc:
            raise _Failed(f"ssh: {where}: host key differs from known_hosts ({exc})") from None
        except paramiko.AuthenticationException as exc:
            key = f" with key {host.key_file}" if host.key_file else ""
            raise _Failed(f"ssh: {where}: authentication failed{key} ({exc})") from None
        except paramiko.SSHException as exc:  # includes RejectPolicy's "not found in known_hosts"
            raise _Failed(f"ssh: {where}: {exc}") from None
        except TimeoutError:
            raise _Failed(f"ssh: {where}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise _Failed(f"ssh: {where}: {exc.strerror or exc}") from None
        transport = client.get_transport()
        if transport is None:
            raise _Failed(f"ssh: {where}: connection closed")
        try:
            channel = transport.open_channel(
                "direct-tcpip", ("127.0.0.1", host.management_port), ("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as exc:
            # sshd answers "Connect failed" (code 2) when nothing listens on the host's port.
            if exc.code == 2:
                raise _Failed(_refused(host)) from None
            target = f"127.0.0.1:{host.management_port}"
            raise _Failed(f"ssh: {where}: port forwarding to {target} refused ({exc})") from None
        except paramiko.SSHException as exc:
            raise _Failed(f"ssh: {where}: cannot open a channel to 127.0.0.1:{host.management_port}: {exc}") from None
        return _get(channel, host, timeout, token)
    finally:
        client.close()


def _refused(host: InventoryHost) -> str:
    return f"management API: connection refused on 127.0.0.1:{host.management_port} (is the server running?)"


def _get(stream: _Stream, host: InventoryHost, timeout: float, token: str | None) -> dict[str, Any]:
    """A minimal HTTP/1.0 GET of the status over an open stream; closes it."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {PATH} HTTP/1.0\r\nHost: 127.0.0.1:{host.management_port}\r\n{auth}Accept: application/json\r\n\r\n"
    try:
        stream.settimeout(timeout)
        stream.sendall(request.encode("latin-1"))
        answer = _read_answer(stream)
    except TimeoutError:
        raise _Failed(f"management API: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise _Failed(f"management API: {exc.strerror or exc}") from None
    finally:
        stream.close()
    code, body = _parse(answer)
    if code == 401:
        sent = "the bearer token sent was refused" if token else "it wants a bearer token and none was sent"
        raise _Failed(f"HTTP 401 from the management API: {sent}")
    if code != 200:
        raise _Failed(f"HTTP {code} from the management API: {body[:200].decode(errors='replace')!r}")
    try:
        status = json.loads(body)
    except ValueError:
        raise _Failed(f"management API: answer is not JSON: {body[:200].decode(errors='replace')!r}") from None
    if not isinstance(status, dict):
        raise _Failed(f"management API: answer is not a JSON object: {status!r:.200}")
    return status


def _read_answer(stream: _Stream) -> bytes:
    """Read until the body is complete (Content-Length) or the server closes (HTTP/1.0)."""
    data = b""
    expected: int | None = None
    while len(data) <= MAX_ANSWER_BYTES:
        if expected is None and b"\r\n\r\n" in data:
            head, _, _ = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    expected = len(head) + 4 + int(value)
        if expected is not None and len(data) >= expected:
            return data[:expected]
        chunk = stream.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise _Failed(f"management API: answer larger than {MAX_ANSWER_BYTES} bytes")


def _parse(answer: bytes) -> tuple[int, bytes]:
    head, sep, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        shown = answer[:80].decode(errors="replace")
        raise _Failed(f"management API: not an HTTP answer: {shown!r}" if answer else "management API: closed early")
    return int(parts[1]), body
