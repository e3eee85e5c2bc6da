"""The inference listener: KServe v2 REST.

`POST .../infer` is the hot route: served straight from the lean HTTP layer (serve/http.py) with a callback
from the batcher; no task, router or Request object (measured with bench/serve.py: that overhead was most
of a request's cost). Every other route is a small Starlette app. Errors are `{"error": "..."}` with a 4xx
status; bad input never causes a 5xx.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlci import __version__
from mlci.serve.auth import authorized
from mlci.serve.batching import Batcher
from mlci.serve.http import JSON_HEADERS, Connection, Request, asgi_handler
from mlci.serve.manager import ModelManager
from mlci.serve.metrics import Metrics
from mlci.serve.protocol import ProtocolError, encode_infer, encode_infer_binary, error_body, parse_infer

Scope = dict[str, Any]
Receive = Any
Send = Any
log = logging.getLogger("mlci.serve")
_RETRY = ((b"content-type", b"application/json"), (b"retry-after", b"1"))
_BINARY = ((b"content-type", b"application/octet-stream"),)
_UNAUTHORIZED = ((b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"))


class InferenceApp:
    """The inference listener's handler: infer here, everything else through a small Starlette app."""

    def __init__(
        self,
        manager: ModelManager,
        batcher: Batcher,
        metrics: Metrics,
        *,
        max_rows: int,
        token: bytes | None,
    ) -> None:
        self.manager = manager
        self.batcher = batcher
        self.metrics = metrics
        self.max_rows = max_rows
        self.token = token
        self._ids = itertools.count(1)
        self.other = _routes(self)
        self._other_handler: Any = None

    def bind(self, server_name: tuple[str, int]) -> None:
        self._other_handler = asgi_handler(self.other, server_name)

    def __call__(self, r: Request, conn: Connection) -> None:
        if r.method == b"POST" and r.raw_url.split(b"?", 1)[0].endswith(b"/infer"):
            self.infer(r, conn)
        else:
            self._other_handler(r, conn)

    def model_for(self, name: str, version: str | None) -> Any:
        """The loaded model a path names, or ProtocolError(404)."""
        if name != self.manager.name:
            raise ProtocolError(404, f"model {name!r} is not served here (this server serves {self.manager.name!r})")
        model = self.manager.get(version)
        if model is None:
            loaded = ", ".join(self.manager.versions()) or "none"
            raise ProtocolError(404, f"model {name!r} has no loaded version {version!r} (loaded: {loaded})")
        return model

    def infer(self, r: Request, conn: Connection) -> None:
        t0 = time.perf_counter()
        metrics = self.metrics
        try:
            parts = r.path.split("/")
            # ['', 'v2', 'models', name, 'infer'] or [..., name, 'versions', v, 'infer']
            if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models":
                version = None
            elif len(parts) == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions":
                version = parts[5]
            else:
                raise ProtocolError(404, f"no route POST {r.path}")
            if self.token is not None and not authorized(r.headers, self.token):
                metrics.count("infer", 401)
                conn.respond(r, 401, error_body("missing or wrong bearer token"), _UNAUTHORIZED)
                return
            model = self.model_for(parts[3], version)
            if self.batcher.full():
                raise ProtocolError(503, "queue full: the server is overloaded; retry later")
            req = parse_infer(r.read(), model.signature, self.max_rows, r.header(b"inference-header-content-length"))
        except ProtocolError as exc:
            self._refuse(r, conn, exc)
            return

        def done(logits: Any, error: BaseException | None) -> None:
            try:
                if error is not None:
                    raise error
                rid = req.id if req.id is not None else str(next(self._ids))
                if req.binary:
                    out, json_length = encode_infer_binary(
                        self.manager.name, model.version, rid, logits, req, model.signature, model.classes
                    )
                    headers = (*_BINARY, (b"inference-header-content-length", b"%d" % json_length))
                else:
                    out = encode_infer(
                        self.manager.name, model.version, rid, logits, req, model.signature, model.classes
                    )
                    headers = JSON_HEADERS
            except Exception as exc:  # a server bug, not bad input: say so, keep serving
                log.error("infer failed on %s: %s", r.path, exc, exc_info=exc)
                metrics.count("infer", 500)
                conn.respond(r, 500, error_body(f"internal error: {type(exc).__name__}: {exc}"))
                return
            conn.respond(r, 200, out, headers)
            metrics.count("infer", 200)
            metrics.latency.observe(time.perf_counter() - t0)

        if not self.batcher.submit(model, req.x, done):
            self._refuse(r, conn, ProtocolError(503, "queue full: the server is overloaded; retry later"))

    def _refuse(self, r: Request, conn: Connection, exc: ProtocolError) -> None:
        headers = JSON_HEADERS
        if exc.status == 503:
            self.metrics.shed.inc()
            headers = _RETRY
        self.metrics.count("infer", exc.status)
        conn.respond(r, exc.status, error_body(exc.message), headers)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _routes(app: InferenceApp) -> Any:
    manager = app.manager

    def guarded(request: StarletteRequest) -> Response | None:
        if authorized(request.scope["headers"], app.token):
            return None
        return JSONResponse({"error": "missing or wrong bearer token"}, 401, {"www-authenticate": "Bearer"})

    async def server_metadata(request: StarletteRequest) -> Response:
        return _json({"name": "mlci", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def live(request: StarletteRequest) -> Response:
        return _json({"live": True})

    async def ready(request: StarletteRequest) -> Response:
        ok = manager.current is not None
        return _json({"ready": ok}, 200 if ok else 503)

    async def model_metadata(request: StarletteRequest) -> Response:
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

    async def model_ready(request: StarletteRequest) -> Response:
        if (denied := guarded(request)) is not None:
            return denied
        p = request.path_params
        try:
            model = app.model_for(p["name"], p.get("version"))
        except ProtocolError as exc:
            return _json({"error": exc.message}, exc.status)
        return _json({"name": manager.name, "version": model.version, "ready": True})

    async def metrics(request: StarletteRequest) -> Response:
        try:
            text = await app.metrics.exposition()
        except TimeoutError:  # worker processes: one did not answer in time
            return _json({"error": "metrics: not every worker process answered; retry"}, 503)
        return Response(text, media_type=app.metrics.content_type)

    async def http_error(request: StarletteRequest, exc: Exception) -> Response:
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
        if path.startswith("/v2/health"):
            route = "health"
        elif path == "/metrics":
            route = "metrics"
        elif path == "/v2" or path.startswith("/v2/models/"):
            route = "metadata"
        else:
            route = "other"

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                app.metrics.count(route, message["status"])
            await send(message)

        await starlette(scope, receive, send_counted)

    return counted
