"""Overload and shutdown of a real server: load shedding at ~2x capacity, bounded memory, SIGTERM drains.

The model is made slow on purpose (two 4096-wide layers, 64-row requests that each fill a batch) so that
the server, not the Python client on the same machine, is what limits throughput: the client can then
offer twice what the server does. Every load is bounded in requests and time.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from test_serve_support import Server, infer_body, make_artifact, serving

QUEUE = 8
HIDDEN = (4096, 4096)
ROWS = 64  # = max_batch_size: one forward pass per request


@pytest.fixture(scope="module")
def slow_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("artifacts"), hidden=HIDDEN)


@pytest.fixture
def overload_server(slow_artifact: Path, tmp_path: Path) -> Iterator[Server]:
    overrides = (f"serving.queue_size={QUEUE}", f"serving.max_batch_size={ROWS}", "serving.max_delay_ms=0")
    with serving(slow_artifact, tmp_path / "serve", *overrides) as s:
        yield s


async def closed_loop(url: str, users: int, seconds: float) -> float:
    """Requests per second the server completes with `users` clients each waiting for its answer."""
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        end = time.monotonic() + seconds

        async def user() -> None:
            nonlocal done
            while time.monotonic() < end:
                response = await client.post("/v2/models/digits/infer", json=infer_body(ROWS))
                assert response.status_code == 200, response.text
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(user() for _ in range(users)))
        return done / (time.monotonic() - start)


async def open_loop(url: str, rate: float, seconds: float, max_inflight: int = 256) -> dict[str, int]:
    """Send at `rate` per second for `seconds`, whatever the answers (up to max_inflight at once)."""
    counts: dict[str, int] = {}
    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        slots = asyncio.Semaphore(max_inflight)

        async def one() -> None:
            try:
                response = await client.post("/v2/models/digits/infer", json=infer_body(ROWS))
                key = str(response.status_code)
                if response.status_code == 503:
                    assert response.headers.get("retry-after") == "1"
                    assert "queue full" in response.json()["error"]
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            finally:
                slots.release()
            counts[key] = counts.get(key, 0) + 1

        tasks = []
        start = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    return counts


def test_overload_sheds_with_503_keeps_memory_bounded_and_recovers(overload_server: Server) -> None:
    url = overload_server.url
    process = psutil.Process(overload_server.proc.pid)
    capacity = asyncio.run(closed_loop(url, users=4, seconds=2.0))
    rss_before = process.memory_info().rss

    peak = [rss_before]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        counts = asyncio.run(open_loop(url, rate=2 * capacity, seconds=4.0))
    finally:
        stop.set()
        watcher.join()

    assert set(counts) <= {"200", "503"}, counts  # shed or served: no errors, no dropped connections
    assert counts.get("503", 0) > 0 and counts.get("200", 0) > 0, (capacity, counts)
    assert peak[0] - rss_before < 150 * 2**20, f"RSS grew by {(peak[0] - rss_before) / 2**20:.0f} MiB under overload"
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert "mlci_shed_total" in metrics and 'mlci_requests_total{route="infer",status="503"}' in metrics
    assert overload_server.proc.poll() is None
    assert httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200
    assert httpx.post(f"{url}/v2/models/digits/infer", json=infer_body(), timeout=30).status_code == 200


def test_sigterm_lets_in_flight_requests_finish(slow_artifact: Path, tmp_path: Path) -> None:
    rows, n = 384, 8  # each request is its own (slow) forward pass: seconds of work in all, even on a fast CPU
    body = json.dumps(infer_body(rows)).encode()
    request = b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    with serving(slow_artifact, tmp_path / "serve", "serving.max_batch_size=64") as server:
        host, port = server.url.removeprefix("http://").split(":")
        socks = [socket.create_connection((host, int(port)), timeout=60) for _ in range(n)]
        try:
            for sock in socks:  # every request fully sent before SIGTERM
                sock.sendall(request)
            time.sleep(0.2)
            answered, _, _ = select.select(socks, [], [], 0)
            code = server.terminate(timeout=60)
            replies = []
            for sock in socks:
                data = b""
                while chunk := sock.recv(1 << 16):  # the server closes each connection after answering
                    data += chunk
                replies.append(data)
        finally:
            for sock in socks:
                sock.close()

    assert len(answered) < n, "every request finished before SIGTERM: the test proves nothing"
    for data in replies:
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["outputs"]
    assert code == 0, server.output()[-2000:]


def test_connection_limit_and_silent_connections_are_closed(tmp_path: Path) -> None:
    small = make_artifact(tmp_path / "a")
    limits = ("serving.max_connections=2", "serving.keepalive_s=1", "serving.head_timeout_s=1")
    with serving(small, tmp_path / "serve", *limits) as server:
        host, port = server.url.removeprefix("http://").split(":")
        first, second = (socket.create_connection((host, int(port)), timeout=10) for _ in range(2))
        for sock in (first, second):  # kept alive after a request: neither is a slow head to close first
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
        with socket.create_connection((host, int(port)), timeout=10) as third:
            refused = third.recv(4096)
        assert refused.startswith(b"HTTP/1.1 503 ") and b"serving.max_connections" in refused
        assert b"retry-after: 1" in refused
        # Idle for longer than keepalive_s (the sweep runs at least each second): both closed by the server.
        deadline = time.monotonic() + 10
        for sock in (first, second):
            sock.settimeout(max(deadline - time.monotonic(), 0.1))
            assert sock.recv(4096) == b""
            sock.close()
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
