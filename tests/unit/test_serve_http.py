"""The inference listener against slow and hostile clients: a real `mlci serve` process, raw sockets.

Head deadline (408, bytes dripping in do not extend it), connection cap that closes unfinished heads first,
header/URL caps (431/414), an early 413 for a declared body over the limit, interim `100 Continue` in
pipeline order, a `date` header.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from artifact_factory import build_artifact
from serve_process import Server, serving

HEAD_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 1.0
SLOW_CLIENTS = 1100  # more than serving.max_connections (1024 in mlci.toml)
INFER = b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: t\r\n"


def _raise_fd_limit(wanted: int) -> None:
    """Room for the slow clients' sockets here and in the server (a child inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _raise_fd_limit(2 * SLOW_CLIENTS + 1024)
    root = tmp_path_factory.mktemp("http")
    artifact = build_artifact(root / "artifacts", hidden=(16,)).path
    overrides = (f"serving.head_timeout_s={HEAD_TIMEOUT_S}", f"serving.body_timeout_s={BODY_TIMEOUT_S}")
    with serving(artifact, root / "serve", *overrides) as srv:
        yield srv


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _infer_body() -> bytes:
    data = [3.0] * 64
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data}]}).encode()


def _read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Read `count` responses (1xx ones included) as (status, headers, body); fewer if the server closes."""
    buf = b""
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    while len(out) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
            length = 0 if status < 200 else int(headers.get(b"content-length", b"0"))
            if len(buf) >= end + 4 + length:
                out.append((status, headers, buf[end + 4 : end + 4 + length]))
                buf = buf[end + 4 + length :]
                continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
    return out


def _exchange(server: Server, payload: bytes, count: int = 1) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(payload)
        return _read_responses(sock, count)


def _get_ready(server: Server) -> tuple[int, bytes]:
    """(status, body) of GET /v2/health/ready on a fresh connection."""
    answers = _exchange(server, b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n")
    assert answers, "the server closed a fresh connection without an answer"
    return answers[0][0], answers[0][2]


class _Drip:
    """Keeps sending one byte every `every` seconds on each socket until the server closes it."""

    def __init__(self, socks: list[socket.socket], every: float) -> None:
        self.socks, self.every = socks, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        alive = list(self.socks)
        while alive and not self._stop.wait(self.every):
            still = []
            for sock in alive:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
                    still.append(sock)
            alive = still

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _closed_by_server(socks: list[socket.socket], timeout: float) -> tuple[int, list[bytes]]:
    """Wait until the server closes each socket; (how many are still open at `timeout`, what each one got)."""
    sel = selectors.DefaultSelector()
    got: dict[socket.socket, bytes] = {}
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        got[sock] = b""
    open_ = len(socks)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:  # reset: the server closed while our byte was on the way
                chunk = b""
            if chunk:
                got[sock] += chunk
            else:
                sel.unregister(sock)
                open_ -= 1
    sel.close()
    return open_, list(got.values())


def test_slow_drip_clients_do_not_lock_out_fresh_ones(server: Server) -> None:
    socks: list[socket.socket] = []
    drip = None
    try:
        for i in range(SLOW_CLIENTS):
            sock = socket.create_connection(_address(server), timeout=10)
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\nx-slow-%d: " % i)
            socks.append(sock)
        opened = time.monotonic()
        drip = _Drip(socks, every=2.0)
        # More unfinished heads than serving.max_connections: a fresh client still gets in (the oldest
        # unfinished head makes room for it) ...
        status, body = _get_ready(server)
        assert status == 200, f"a fresh client was refused while slow clients held every connection: {body!r}"
        # ... and once the head deadline has passed, the slow ones are gone and a fresh client is served at once.
        time.sleep(max(0.0, opened + HEAD_TIMEOUT_S - time.monotonic()))
        t0 = time.monotonic()
        status, body = _get_ready(server)
        elapsed = time.monotonic() - t0
        assert status == 200, body
        assert elapsed <= 1.0, f"a fresh client waited {elapsed:.2f} s after the head deadline"
        still_open, answers = _closed_by_server(socks, timeout=HEAD_TIMEOUT_S + 30)
        assert still_open == 0, f"{still_open} of {SLOW_CLIENTS} dripping connections outlived the head deadline"
        timed_out = [a for a in answers if a]
        assert timed_out and all(a.startswith(b"HTTP/1.1 408 ") for a in timed_out), timed_out[:3]
        assert any(b"serving.head_timeout_s" in a for a in timed_out)
    finally:
        if drip is not None:
            drip.stop()
        for sock in socks:
            sock.close()
    assert _get_ready(server)[0] == 200


def test_a_stalled_body_is_408_after_body_timeout(server: Server) -> None:
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(INFER + b"content-length: 100\r\n\r\n" + b'{"inputs"')
        answers = _read_responses(sock, 1)
    assert answers and answers[0][0] == 408, answers
    assert b"serving.body_timeout_s" in answers[0][2]


def test_a_64_kib_header_is_431(server: Server) -> None:
    answers = _exchange(server, b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 65536 + b"\r\n\r\n")
    assert answers and answers[0][0] == 431, answers
    assert b"serving.max_header_bytes" in answers[0][2]


def test_too_many_headers_is_431(server: Server) -> None:
    headers = b"".join(b"x-h%d: 1\r\n" % i for i in range(101))
    answers = _exchange(server, b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n" + headers + b"\r\n")
    assert answers and answers[0][0] == 431, answers
    assert b"serving.max_headers" in answers[0][2]


def test_too_many_headers_are_431_before_the_head_ends(server: Server) -> None:
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n")
        for i in range(1000):  # one header line per send; the head never ends
            try:
                sock.sendall(b"x-h%d: 1\r\n" % i)
            except OSError:  # closed after its answer
                break
            time.sleep(0.002)
        answers = _read_responses(sock, 1)
    assert answers and answers[0][0] == 431, answers
    assert b"serving.max_headers" in answers[0][2]


def test_a_long_url_is_414(server: Server) -> None:
    answers = _exchange(server, b"GET /v2/models/" + b"a" * 9000 + b" HTTP/1.1\r\nhost: t\r\n\r\n")
    assert answers and answers[0][0] == 414, answers
    assert b"serving.max_url_bytes" in answers[0][2]


@pytest.mark.parametrize("expect", [False, True])
def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(server: Server, expect: bool) -> None:
    head = INFER + b"content-length: 10000000\r\n" + (b"expect: 100-continue\r\n" if expect else b"") + b"\r\n"
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(head)  # and never the body: the answer must not wait for it
        answers = _read_responses(sock, 2)
    assert [a[0] for a in answers] == [413], answers  # no `100 Continue` first, and the connection closes
    assert b"serving.max_body_bytes" in answers[0][2]


def test_interim_100_continue_follows_the_answers_to_earlier_pipelined_requests(server: Server) -> None:
    body = _infer_body()
    first = b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n"
    second = INFER + b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(first + second)
        answers = _read_responses(sock, 2)
        assert [a[0] for a in answers] == [200, 100], answers  # the first request's answer, then its 100
        assert json.loads(answers[0][2]) == {"ready": True}
        sock.sendall(body)
        (status, _, out), *_ = _read_responses(sock, 1)
    assert status == 200 and json.loads(out)["model_name"] == "digits"


def test_answers_carry_a_date_header(server: Server) -> None:
    body = _infer_body()
    answers = _exchange(server, INFER + b"content-length: %d\r\n\r\n%s" % (len(body), body))
    assert answers and answers[0][0] == 200
    date = answers[0][1].get(b"date", b"").decode()
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date), date
    assert abs(parsedate_to_datetime(date).timestamp() - time.time()) < 60


def test_the_new_limits_are_config_keys_that_name_themselves(tmp_path: Path) -> None:
    from mlci.config import config_from_dict
    from mlci.errors import ConfigError

    serving_ = config_from_dict({}).serving
    assert (serving_.head_timeout_s, serving_.max_url_bytes, serving_.max_header_bytes) == (10.0, 8192, 16384)
    with pytest.raises(ConfigError, match=r"serving.head_timeout_s = 0: must be > 0"):
        config_from_dict({"serving": {"head_timeout_s": 0}})
