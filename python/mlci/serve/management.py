"""The management listener (serving.management_host:management_port, loopback by default).

    GET  /manage/status     {"model_name", "current": {...}, "previous": {...}|null, "loading", "last_error",
                            "server_version"}
    POST /manage/load       {"artifact": "/path/to/artifact/dir", "sha256": optional,
                             "signature_change": optional, default false} -> status (200);
                            422 artifact refused (sha256 mismatch, smoke test failed, missing, a model name,
                            inputs or outputs other than the served model's without "signature_change": true,
                            a model factory not in serving.factories), 409 busy
    POST /manage/rollback   serve the previous model again -> status (200); 409 when there is none

A bearer token (Authorization: Bearer ...) is required on every route when one is configured.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlci.errors import ArtifactError
from mlci.serve.auth import authorized
from mlci.serve.manager import ModelManager, SwapBusy


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def management_app(manager: ModelManager | Any, token: bytes | None) -> Any:
    async def status(request: Request) -> Response:
        return _json(manager.status())

    async def load(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _json({"error": f"body: not valid JSON ({exc})"}, 400)
        if type(body) is not dict or type(body.get("artifact")) is not str or not body["artifact"]:
            return _json({"error": 'body: must be {"artifact": "<artifact directory>"}'}, 400)
        sha256 = body.get("sha256")
        if sha256 is not None and type(sha256) is not str:
            return _json({"error": f"sha256: must be a string, got {sha256!r}"}, 400)
        signature_change = body.get("signature_change", False)
        if type(signature_change) is not bool:
            return _json({"error": f"signature_change: must be true or false, got {signature_change!r}"}, 400)
        try:
            return _json(await manager.load(body["artifact"], sha256=sha256, signature_change=signature_change))
        except SwapBusy as exc:
            return _json({"error": str(exc)}, 409)
        except ArtifactError as exc:
            return _json({"error": str(exc), "status": manager.status()}, 422)

    async def rollback(request: Request) -> Response:
        try:
            result = manager.rollback()
            return _json(await result if inspect.isawaitable(result) else result)  # worker processes: async
        except ArtifactError as exc:
            return _json({"error": str(exc)}, 409)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)

    app = Starlette(
        routes=[
            Route("/manage/status", status, methods=["GET"]),
            Route("/manage/load", load, methods=["POST"]),
            Route("/manage/rollback", rollback, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
    )

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not authorized(scope["headers"], token):
            response = _json({"error": "missing or wrong bearer token"}, 401, {"www-authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded
