"""A lean HTTP/1.1 server for the inference listener: httptools parses, uvloop runs, no task per request.

Why not uvicorn here: with a trivial handler on the 2-core development machine (wrk, 64 connections),
uvicorn's ASGI request cycle cost about 35 us of server CPU per request and a bare httptools protocol about
6 us, while a whole infer request here costs about 60 us (bench/serve.py). The handler
gets each complete request and answers through `Connection.respond`, at once or later (after a batch);
answers go out in request order (pipelining). Rare routes reach a normal ASGI app through `asgi_handler`.

Limits that keep memory bounded: a body over `max_body_bytes` is answered 413 without being stored,
at most MAX_PIPELINED requests wait per connection (reading pauses beyond), connections beyond
`max_connections` get 503 and are closed, connections silent for `keepalive_s` (idle, or stuck halfway
through a request) are closed. `shutdown` stops accepting, closes idle connections and lets in-flight requests
finish (their answers carry `connection: close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools

MAX_PIPELINED = 32
JSON_HEADERS: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class Request:
    __slots__ = ("body", "close", "headers", "keep_alive", "method", "raw_url", "response", "size", "too_big")

    def __init__(self) -> None:
        self.raw_url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.too_big = False
        self.method = b""
        self.keep_alive = True
        self.response: bytes | None = None
        self.close = False

    @property
    def path(self) -> str:
        raw = self.raw_url.split(b"?", 1)[0].decode("latin-1")
        return unquote(raw) if "%" in raw else raw

    @property
    def query(self) -> bytes:
        return self.raw_url.partition(b"?")[2]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def read(self) -> bytes:
        return self.body[0] if len(self.body) == 1 else b"".join(self.body)


Handler = Callable[[Request, "Connection"], None]


def render(
    status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] | list, close: bool, length: int | None = None
) -> bytes:
    """A whole response; `length` overrides the body's (HEAD answers announce the GET body's length)."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    parts += [b"%s: %s\r\n" % (k, v) for k, v in headers if k not in (b"content-length", b"connection")]
    parts.append(b"content-length: %d\r\n" % (len(body) if length is None else length))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class Connection(asyncio.Protocol):
    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.pending: deque[Request] = deque()
        self.current: Request | None = None
        self.last_active = time.monotonic()
        self.peer: tuple[str, int] | None = None
        self._read_paused = False
        self._write_paused = False
        self._last_request_closes = False

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.server.connections) >= self.server.max_connections:
            self.server.on_refused(503)
            body = b'{"error": "too many connections (serving.max_connections); retry later"}'
            transport.write(render(503, body, (*JSON_HEADERS, (b"retry-after", b"1")), close=True))
            self.close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        # Closed by us, or the last request said `connection: close`: later bytes are not requests.
        if self.transport is None or self._last_request_closes:
            return
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self._last_request_closes:  # else: bytes after `connection: close`, ignored
                self._fail(400, f"malformed HTTP request ({exc})")

    def pause_writing(self) -> None:  # the client is not reading: stop reading its requests too
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # --- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.raw_url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        r = self.current
        assert r is not None
        if self.transport is None:
            return
        r.method = self.parser.get_method()
        r.keep_alive = self.parser.should_keep_alive()
        length = r.header(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.server.max_body_bytes:
            r.too_big = True
        elif (r.header(b"expect") or b"").lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        r = self.current
        assert r is not None
        if r.too_big:
            return
        r.size += len(chunk)
        if r.size > self.server.max_body_bytes:
            r.too_big = True
            r.body = []
        else:
            r.body.append(chunk)

    def on_message_complete(self) -> None:
        r = self.current
        assert r is not None
        self.current = None
        if self.transport is None or self._last_request_closes:  # no requests after a closing one
            return
        self._last_request_closes = not r.keep_alive
        self.pending.append(r)
        if len(self.pending) >= MAX_PIPELINED:
            self._update_reading()
        if r.too_big:
            limit = self.server.max_body_bytes
            body = b'{"error": "body: over serving.max_body_bytes (%d)"}' % limit
            self.server.on_refused(413)
            self.respond(r, 413, body, JSON_HEADERS, close=True)
            return
        try:
            self.server.handler(r, self)
        except Exception as exc:  # a handler bug: answer 500, keep the connection and the server
            self.respond(r, 500, b'{"error": "internal error: %s"}' % type(exc).__name__.encode(), JSON_HEADERS)

    # --- answers -----------------------------------------------------------------------------------
    def respond(
        self,
        r: Request,
        status: int,
        body: bytes,
        headers: tuple[tuple[bytes, bytes], ...] | list = JSON_HEADERS,
        *,
        close: bool = False,
        length: int | None = None,
    ) -> None:
        """Answer `r`; answers leave in request order. Safe to call after the client went away."""
        close = close or not r.keep_alive or self.server.stopping
        r.close = close
        r.response = render(status, body, headers, close, length)
        pending = self.pending
        while pending and pending[0].response is not None:
            done = pending.popleft()
            if self.transport is None:
                return
            self.transport.write(done.response)  # type: ignore[arg-type]
            if done.close:
                self.close()
                pending.clear()
                return
        self.last_active = time.monotonic()
        if self._read_paused:
            self._update_reading()

    def idle(self) -> bool:
        return not self.pending and self.current is None

    def close(self) -> None:
        """Close now; later answers and bytes for this connection are dropped."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _update_reading(self) -> None:
        if self.transport is None:
            return
        want_pause = self._write_paused or len(self.pending) >= MAX_PIPELINED
        if want_pause and not self._read_paused:
            self.transport.pause_reading()
        elif not want_pause and self._read_paused:
            self.transport.resume_reading()
        self._read_paused = want_pause

    def _fail(self, status: int, message: str) -> None:
        if self.transport is None:
            return
        self.server.on_refused(status)
        body = b'{"error": %s}' % _json_str(message)
        self.transport.write(render(status, body, JSON_HEADERS, close=True))
        self.close()


def _json_str(text: str) -> bytes:
    import json

    return json.dumps(text).encode()


class LeanServer:
    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        max_connections: int = 1024,
        keepalive_s: float = 15.0,
        on_refused: Callable[[int], None] = lambda status: None,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self.on_refused = on_refused
        self.connections: set[Connection] = set()
        self.stopping = False
        self.force_exit = False  # set by a second SIGTERM: stop waiting for in-flight requests
        self._server: asyncio.Server | None = None
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._sock = sock
        self._server = await loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Close connections silent for longer than keepalive_s: idle keep-alive ones, and ones stuck in
        the middle of sending a request (slow clients hold memory). One timer for all of them."""
        while True:
            await asyncio.sleep(1.0)
            cutoff = time.monotonic() - self.keepalive_s
            for conn in list(self.connections):
                if not conn.pending and conn.last_active < cutoff:
                    conn.close()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; close idle connections; give in-flight requests `timeout` seconds to finish.

        Connections the kernel has already accepted but this server has not (the loop was busy with a
        batch) hold requests their clients consider sent: they are taken in and answered, not reset.
        """
        self.stopping = True
        loop = asyncio.get_running_loop()
        waiting = self._accept_backlog()
        if self._server is not None:
            self._server.close()
        for conn_sock in waiting:
            with contextlib.suppress(OSError):
                await loop.connect_accepted_socket(lambda: Connection(self), conn_sock)
        await asyncio.sleep(0.1)  # let requests already in socket buffers be read before judging "idle"
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline and not self.force_exit:
            for conn in list(self.connections):
                if conn.idle():
                    conn.close()
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def _accept_backlog(self, limit: int = 4096) -> list[socket.socket]:
        accepted: list[socket.socket] = []
        if self._sock is None:
            return accepted
        try:
            self._sock.setblocking(False)
            while len(accepted) < limit:
                conn_sock, _ = self._sock.accept()
                accepted.append(conn_sock)
        except OSError:  # BlockingIOError: the backlog is empty
            pass
        return accepted


def asgi_handler(app: Any, server_name: tuple[str, int]) -> Handler:
    """Serve requests through an ASGI app (for the rare routes; each request becomes a task)."""

    tasks: set[asyncio.Task[None]] = set()  # strong references until done (asyncio keeps weak ones)

    def handle(r: Request, conn: Connection) -> None:
        task = asyncio.ensure_future(_run_asgi(app, r, conn, server_name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return handle


async def _run_asgi(app: Any, r: Request, conn: Connection, server_name: tuple[str, int]) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": r.method.decode("latin-1"),
        "scheme": "http",
        "path": r.path,
        "raw_path": r.raw_url.split(b"?", 1)[0],
        "query_string": r.query,
        "root_path": "",
        "headers": r.headers,
        "client": conn.peer,
        "server": server_name,
    }
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": r.read(), "more_body": False}
        await asyncio.Event().wait()  # never: a disconnect is not reported to these short handlers
        raise AssertionError

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except Exception as exc:
        conn.respond(r, 500, b'{"error": "internal error: %s"}' % type(exc).__name__.encode())
        return
    if r.method == b"HEAD":
        declared = next((v for k, v in headers if k.lower() == b"content-length"), b"0")
        conn.respond(r, status, b"", headers, length=int(declared))
        return
    conn.respond(r, status, b"".join(chunks), headers)
