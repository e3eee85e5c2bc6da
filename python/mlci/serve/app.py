"""The inference listener: KServe v2 REST.

`POST .../infer` is the hot route and is served by a plain ASGI function (no router, no Request object:
measured in bench/serve.py, that overhead is most of a request's cost). Every other route is a small
Starlette app. Errors are `{"error": "..."}` with a 4xx status; bad input never causes a 5xx.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlci import __version__
from mlci.serve.auth import authorized
from mlci.serve.batching import Batcher
from mlci.serve.manager import ModelManager
from mlci.serve.metrics import Metrics
from mlci.serve.protocol import ProtocolError, encode_infer, error_body, parse_infer

Send = Any
Receive = Any
Scope = dict[str, Any]

_JSON = (b"content-type", b"application/json")


async def _send(send: Send, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (413) one over `limit` bytes before reading it when Content-Length says so."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ProtocolError(400, f"Content-Length: {value[:40]!r} is not a number") from None
            if declared > limit:
                raise ProtocolError(413, f"body: {declared} bytes is over serving.max_body_bytes ({limit})")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"body: over serving.max_body_bytes ({limit})")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferenceApp:
    """The ASGI app of the inference listener."""

    def __init__(
        self,
        manager: ModelManager,
        batcher: Batcher,
        metrics: Metrics,
        *,
        max_rows: int,
        max_body_bytes: int,
        token: bytes | None,
    ) -> None:
        self.manager = manager
        self.batcher = batcher
        self.metrics = metrics
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self.token = token
        self._ids = itertools.count(1)
        self.other = _routes(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/infer"):
            await self.infer(scope, receive, send)
        else:
            await self.other(scope, receive, send)

    def model_for(self, name: str, version: str | None) -> Any:
        """The loaded model a path names, or ProtocolError(404)."""
        if name != self.manager.name:
            raise ProtocolError(404, f"model {name!r} is not served here (this server serves {self.manager.name!r})")
        model = self.manager.get(version)
        if model is None:
            loaded = ", ".join(self.manager.versions()) or "none"
            raise ProtocolError(404, f"model {name!r} has no loaded version {version!r} (loaded: {loaded})")
        return model

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        try:
            parts = scope["path"].split("/")
            # ['', 'v2', 'models', name, 'infer'] or [..., name, 'versions', v, 'infer']
            if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models":
                version = None
            elif len(parts) == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions":
                version = parts[5]
            else:
                raise ProtocolError(404, f"no route POST {scope['path']}")
            if not authorized(scope["headers"], self.token):
                self.metrics.count("infer", 401)
                await _send(send, 401, error_body("missing or wrong bearer token"), ((b"www-authenticate", b"Bearer"),))
                return
            model = self.model_for(parts[3], version)
            if self.batcher.full():
                raise ProtocolError(503, "queue full: the server is overloaded; retry later")
            body = await read_body(scope, receive, self.max_body_bytes)
            req = parse_infer(body, model.signature, self.max_rows)
            future = self.batcher.submit(model, req.x)
            if future is None:
                raise ProtocolError(503, "queue full: the server is overloaded; retry later")
            logits = await future
            rid = req.id if req.id is not None else str(next(self._ids))
            out = encode_infer(self.manager.name, model.version, rid, logits, req, model.signature, model.classes)
        except ProtocolError as exc:
            extra: tuple[tuple[bytes, bytes], ...] = ()
            if exc.status == 503:
                self.metrics.shed.inc()
                extra = ((b"retry-after", b"1"),)
            elif exc.status == 413:
                extra = ((b"connection", b"close"),)
            self.metrics.count("infer", exc.status)
            await _send(send, exc.status, error_body(exc.message), extra)
            return
        except ConnectionError:
            self.metrics.count("infer", 499)
            return
        except Exception as exc:  # a server bug: say so, keep serving
            self.metrics.count("infer", 500)
            await _send(send, 500, error_body(f"internal error: {type(exc).__name__}: {exc}"))
            return
        await _send(send, 200, out)
        self.metrics.count("infer", 200)
        self.metrics.latency.observe(time.perf_counter() - t0)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _routes(app: InferenceApp) -> Any:
    manager = app.manager

    def guarded(request: Request) -> Response | None:
        if authorized(request.scope["headers"], app.token):
            return None
        return JSONResponse({"error": "missing or wrong bearer token"}, 401, {"www-authenticate": "Bearer"})

    async def server_metadata(request: Request) -> Response:
        return _json({"name": "mlci", "version": __version__, "extensions": []})

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        ok = manager.current is not None
        return _json({"ready": ok}, 200 if ok else 503)

    async def model_metadata(request: Request) -> Response:
        if (denied := guarded(request)) is not None:
            return denied
        p = request.path_params
        try:
            model = app.model_for(p["name"], p.get("version"))
        except ProtocolError as exc:
            return _json({"error": exc.message}, exc.status)
        meta = model.signature.metadata(manager.name, manager.versions())
        if p.get("version") is not None:
            meta["versions"] = [model.version]
        return _json(meta)

    async def model_ready(request: Request) -> Response:
        if (denied := guarded(request)) is not None:
            return denied
        p = request.path_params
        try:
            model = app.model_for(p["name"], p.get("version"))
        except ProtocolError as exc:
            return _json({"error": exc.message}, exc.status)
        return _json({"name": manager.name, "version": model.version, "ready": True})

    async def metrics(request: Request) -> Response:
        return Response(app.metrics.render(), media_type=app.metrics.content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        why = {404: "no route", 405: "method not allowed for"}.get(exc.status_code, exc.detail)
        headers = {"allow": exc.headers["allow"]} if exc.headers and "allow" in exc.headers else None
        return JSONResponse({"error": f"{why} {request.method} {request.url.path}"}, exc.status_code, headers)

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}", model_metadata),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/metrics", metrics),
        # POST never gets here (InferenceApp serves it); these make other methods a 405, not a 404.
        Route("/v2/models/{name}/infer", live, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", live, methods=["POST"]),
    ]
    starlette = Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await starlette(scope, receive, send)
            return
        path = scope["path"]
        route = "health" if path.startswith("/v2/health") else "metrics" if path == "/metrics" else "metadata"

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                app.metrics.count(route, message["status"])
            await send(message)

        await starlette(scope, receive, send_counted)

    return counted
