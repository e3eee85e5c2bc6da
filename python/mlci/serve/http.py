"""A lean HTTP/1.1 server for the inference listener: httptools parses, uvloop runs, no task per request.

Why not uvicorn here: with a trivial handler on the 2-core development machine (wrk, 64 connections),
uvicorn's ASGI request cycle cost about 35 us of server CPU per request and a bare httptools protocol about
6 us, while a whole infer request here costs about 60 us (bench/serve.py). The handler
gets each complete request and answers through `Connection.respond`, at once or later (after a batch);
answers go out in request order (pipelining). Rare routes reach a normal ASGI app through `asgi_handler`.

Limits that keep memory and connections bounded against slow or hostile clients (like nginx does):
- a request head must arrive whole within `head_timeout_s` (counted from the connection's accept for its first
  request, from the first byte for later ones; bytes dripping in do not extend it), else 408 and close; a body
  read may wait at most `body_timeout_s` for the next bytes, else 408; a connection idle between requests is
  closed after `keepalive_s`;
- a URL over `max_url_bytes` is answered 414, more than `max_headers` header lines or over `max_header_bytes`
  of them 431; a body over `max_body_bytes` is answered 413 without being stored, and a declared
  `content-length` over it at once, before any body is read (and instead of `100 Continue`);
- at most MAX_PIPELINED requests wait per connection (reading pauses beyond);
- at `max_connections`, a new connection first closes one that is closing anyway (lingering after a refusal),
  else the one whose unfinished request head started first; when every connection is busy it gets 503.
Refused requests close the connection after a short lingering read (the client sees its answer, not a reset).
Answers, interim `100 Continue` included, go out in request order and carry a `date` header (formatted once
a second). `shutdown` stops accepting, closes idle connections and lets in-flight requests finish (their
answers carry `connection: close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools

MAX_PIPELINED = 32
LINGER_S = 2.0  # after a refusal, read and drop what the client still sends for this long, then close
JSON_HEADERS: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _format_date(now: float) -> bytes:
    return b"date: %s\r\n" % formatdate(int(now), usegmt=True).encode()


# The `date` header line of every answer: formatted once a second by a running LeanServer (_tick_date).
_date_line = _format_date(time.time())


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the connection answers `status` and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = (
        "body",
        "close",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "raw_url",
        "response",
        "size",
        "too_big",
    )

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
        self.expect_continue = False  # owes a `100 Continue` once the answers before it are out

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
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), _date_line]
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
        # When the request head now awaited began (the accept for the first one, then its first byte); None
        # between requests and while a body is read.
        self.head_since: float | None = self.last_active
        self.chunk_bytes = 0  # size of the chunk being parsed
        self.head_upper = 0  # at least the size of the current head so far (the chunks it spans)
        self.head_fed = 0  # bytes of chunks that began and ended inside the current head (exactly head bytes)
        self.linger_until = 0.0  # > 0: refused, answered; dropping input until then
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
        if len(self.server.connections) >= self.server.max_connections and not self.server.make_room():
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
        self.chunk_bytes = n = len(data)
        in_head = self.current if self.head_since is not None else None
        if in_head is not None:
            self.head_upper += n
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                self._fail(exc.__context__.status, exc.__context__.message)
            elif not self._last_request_closes:  # else: bytes after `connection: close`, ignored
                self._fail(400, f"malformed HTTP request ({exc})")
            return
        if in_head is not None and self.current is in_head and self.head_since is not None:
            # Still in the same head: the whole chunk was head bytes, some held by the parser until their
            # header line ends. Bound them too, and what is parsed so far.
            self.head_fed += n
            server = self.server
            try:
                if self.head_fed > server.max_url_bytes + server.max_header_bytes:
                    raise _Refused(431, f"request head: over serving.max_header_bytes ({server.max_header_bytes})")
                self._check_head(in_head)
            except _Refused as exc:
                self._fail(exc.status, exc.message)

    def pause_writing(self) -> None:  # the client is not reading: stop reading its requests too
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # --- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()
        if self.head_since is None:
            self.head_since = self.last_active
        self.head_upper = self.chunk_bytes
        self.head_fed = 0

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.raw_url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        r = self.current
        assert r is not None
        server = self.server
        # Cheap bounds first (a head that fits in its chunks cannot be over the byte limit); exact ones when
        # they do not settle it. A _Refused raised here stops the parser (data_received answers it).
        if (
            self.head_upper > server.max_header_bytes
            or len(r.raw_url) > server.max_url_bytes
            or len(r.headers) > server.max_headers
        ):
            self._check_head(r)
        self.head_since = None
        if self.transport is None or self._last_request_closes:  # no requests after a closing one
            return
        r.method = self.parser.get_method()
        r.keep_alive = self.parser.should_keep_alive()
        pending = self.pending
        pending.append(r)  # from here on the answers' order holds its place
        length = r.header(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.server.max_body_bytes:
            self._too_big(r)  # at once, before any body is read (and instead of `100 Continue`)
        elif (r.header(b"expect") or b"").lower() == b"100-continue":
            if pending[0] is r:
                self.transport.write(_CONTINUE)
            else:  # after the answers to the requests before it (respond writes it)
                r.expect_continue = True

    def _check_head(self, r: Request) -> None:
        """Raise _Refused when `r`'s head so far is over a limit: URL 414; header count or bytes 431."""
        server = self.server
        if len(r.raw_url) > server.max_url_bytes:
            raise _Refused(414, f"URL: over serving.max_url_bytes ({server.max_url_bytes})")
        if len(r.headers) > server.max_headers:
            raise _Refused(431, f"request headers: more than serving.max_headers ({server.max_headers})")
        if sum(len(k) + len(v) + 4 for k, v in r.headers) > server.max_header_bytes:  # name: value\r\n
            raise _Refused(431, f"request headers: over serving.max_header_bytes ({server.max_header_bytes})")

    def on_body(self, chunk: bytes) -> None:
        r = self.current
        assert r is not None
        if r.too_big:
            return
        r.size += len(chunk)
        if r.size > self.server.max_body_bytes:
            r.body = []
            self._too_big(r)
        else:
            r.body.append(chunk)

    def on_message_complete(self) -> None:
        r = self.current
        assert r is not None
        self.current = None
        if self.transport is None or self._last_request_closes:  # no requests after a closing one
            return
        self._last_request_closes = not r.keep_alive
        if len(self.pending) >= MAX_PIPELINED:
            self._update_reading()
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
                pending.clear()
                if done.too_big or self.current is not None:  # the client may still be sending
                    self._linger()
                else:
                    self.close()
                return
        if pending and pending[0].expect_continue:  # its turn now: the interim answer goes out
            pending[0].expect_continue = False
            self.transport.write(_CONTINUE)
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
        self.server.connections.discard(self)  # its place is free now, not when the loop reports the loss

    def check_deadlines(self, now: float) -> None:
        """Called about once a second: enforce head_timeout_s, body_timeout_s, keepalive_s and lingering."""
        if self.transport is None:
            return
        if self.linger_until:
            if now > self.linger_until:
                self.close()
            return
        if self._read_paused:  # this server stopped reading, not the client
            return
        server = self.server
        if self.head_since is not None:
            if now - self.head_since > server.head_timeout_s:
                self._timed_out(f"request head not complete within serving.head_timeout_s ({server.head_timeout_s} s)")
        elif self.current is not None:
            if now - self.last_active > server.body_timeout_s:
                self._timed_out(f"no request body bytes for serving.body_timeout_s ({server.body_timeout_s} s)")
        elif not self.pending and now - self.last_active > server.keepalive_s:
            self.close()

    def evictable_since(self) -> float | None:
        """When this connection's unfinished request head began, if closing it loses no answer; else None."""
        if self.transport is None or self.pending:
            return None
        return self.head_since

    def _timed_out(self, message: str) -> None:
        """408 and close, unless answers to earlier requests are still owed (their order comes first)."""
        pending = self.pending
        if pending and (len(pending) > 1 or pending[0] is not self.current):
            return
        assert self.transport is not None
        self.server.on_refused(408)
        self.transport.write(render(408, b'{"error": %s}' % _json_str(message), JSON_HEADERS, close=True))
        self.close()

    def _too_big(self, r: Request) -> None:
        r.too_big = True
        self._last_request_closes = True  # the rest of its body (and anything after it) is not read
        limit = self.server.max_body_bytes
        self.server.on_refused(413)
        self.respond(r, 413, b'{"error": "body: over serving.max_body_bytes (%d)"}' % limit, JSON_HEADERS, close=True)

    def _linger(self) -> None:
        """Answered and done: stop sending, drop what the client still sends for LINGER_S, then close.

        Closing at once with unread input makes the kernel reset the connection, and a client still sending
        its body may then lose the answer it was given."""
        transport = self.transport
        if transport is None:
            return
        self._last_request_closes = True
        self.head_since = None
        self.linger_until = time.monotonic() + LINGER_S
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.close()
            return
        if self._read_paused:
            transport.resume_reading()
            self._read_paused = False

    def _update_reading(self) -> None:
        if self.transport is None or self.linger_until:
            return
        want_pause = self._write_paused or len(self.pending) >= MAX_PIPELINED
        if want_pause and not self._read_paused:
            self.transport.pause_reading()
        elif not want_pause and self._read_paused:
            self.transport.resume_reading()
            if self.head_since is not None:  # its head waited on this server, not on the client
                self.head_since = time.monotonic()
        self._read_paused = want_pause

    def _fail(self, status: int, message: str) -> None:
        """Answer `status` and close, after the answers owed to earlier requests (a lingering close)."""
        if self.transport is None:
            return
        self.server.on_refused(status)
        body = b'{"error": %s}' % _json_str(message)
        r = self.current or Request()
        if not (self.pending and self.pending[-1] is r):
            self.pending.append(r)
        self._last_request_closes = True  # nothing after it is read
        self.head_since = None
        self.respond(r, status, body, JSON_HEADERS, close=True)  # after the answers owed before it


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
        head_timeout_s: float = 10.0,
        body_timeout_s: float = 10.0,
        max_url_bytes: int = 8192,
        max_header_bytes: int = 16384,
        max_headers: int = 100,
        on_refused: Callable[[int], None] = lambda status: None,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.on_refused = on_refused
        self.connections: set[Connection] = set()
        self.stopping = False
        self.force_exit = False  # set by a second SIGTERM: stop waiting for in-flight requests
        self._server: asyncio.Server | None = None
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._date_timer: asyncio.TimerHandle | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._sock = sock
        self._server = await loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
        self._sweeper = asyncio.ensure_future(self._sweep())
        self._tick_date()

    def _tick_date(self) -> None:
        """Format the `date` header line now, and again just after the next second begins."""
        global _date_line
        now = time.time()
        _date_line = _format_date(now)
        if not self.stopping:
            self._date_timer = asyncio.get_running_loop().call_later(1.0005 - now % 1.0, self._tick_date)

    async def _sweep(self) -> None:
        """Enforce every connection's deadlines (head, body read, keep-alive, lingering): one timer for all."""
        interval = min(1.0, self.head_timeout_s / 4, self.body_timeout_s / 4, self.keepalive_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_deadlines(now)

    def make_room(self) -> bool:
        """At max_connections: close a connection that is closing anyway (lingering after a refusal), else the
        one whose unfinished request head began first (slow clients must not lock out fresh ones).
        False when every connection is busy with requests."""
        oldest: Connection | None = None
        oldest_since = 0.0
        for conn in self.connections:
            if conn.linger_until:
                conn.close()
                return True
            since = conn.evictable_since()
            if since is not None and (oldest is None or since < oldest_since):
                oldest, oldest_since = conn, since
        if oldest is None:
            return False
        oldest._timed_out("closed to admit a new connection: request head not complete (serving.max_connections)")
        return True

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
        if self._date_timer is not None:
            self._date_timer.cancel()
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
